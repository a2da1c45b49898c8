-- resume: let a paused run go on (or withdraw a pause not yet taken).
-- A: id, wf?, pr? (as the caller read them: its keys are declared)
local id = A.id
local h = call('HMGET', k_run(id), 'st', 'wf', 'ca', 'pr')
if not h[1] then return reply({ r = 'NOT_FOUND' }) end
if FINAL[h[1]] then return reply({ r = 'FINAL', status = h[1] }) end
if not same(h[2], A.wf) or not same(h[4], A.pr) then return reply({ r = 'RETRY' }) end
call('HDEL', k_run(id), 'pz')
if h[1] ~= 'paused' then return reply({ r = 'NOT_PAUSED' }) end
call('HSET', k_run(id), 'ua', n2s(now_ms()))
journal_add(id, RUN_RESUMED)
PRIORITY_OF[id] = h[4]
set_status(id, 'paused', 'pending', h[3])
enqueue(id, h[2])
return reply({ r = 'RESUMED' })
