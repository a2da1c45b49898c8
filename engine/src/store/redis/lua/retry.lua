-- retry: a failed run runs again from its failed step (replay keeps every
-- recorded result; steps that failed for good get another attempt).
-- A: id, wf?, pr? (as the caller read them: its keys are declared)
local id = A.id
local h = call('HMGET', k_run(id), 'st', 'wf', 'ca', 'pr')
if not h[1] then return reply({ r = 'NOT_FOUND' }) end
if h[1] ~= 'failed' then return reply({ r = 'NOT_FAILED', status = h[1] }) end
if not same(h[2], A.wf) or not same(h[4], A.pr) then return reply({ r = 'RETRY' }) end
call('HDEL', k_run(id), 'err', 'fa')
call('HSET', k_run(id), 'ua', n2s(now_ms()))
call('ZREM', K('retention'), id)
journal_add(id, RUN_RETRIED)
PRIORITY_OF[id] = h[4]
set_status(id, 'failed', 'pending', h[3])
enqueue(id, h[2])
return reply({ r = 'RETRIED' })
