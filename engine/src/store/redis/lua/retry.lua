-- retry: a failed run runs again from its failed step (replay keeps every
-- recorded result; steps that failed for good get another attempt).
-- KEYS[1]: partition prefix. ARGV: run id
local id = ARGV[1]
local h = redis.call('HMGET', k_run(id), 'st', 'wf', 'ca')
if not h[1] then return { 'NOT_FOUND' } end
if h[1] ~= 'failed' then return { 'NOT_FAILED', h[1] } end
redis.call('HDEL', k_run(id), 'err', 'fa')
redis.call('HSET', k_run(id), 'ua', n2s(now_ms()))
redis.call('ZREM', K_RETENTION, id)
journal_add(id, RUN_RETRIED)
set_status(id, 'failed', 'pending', h[3])
enqueue(id, h[2])
return { 'RETRIED' }
