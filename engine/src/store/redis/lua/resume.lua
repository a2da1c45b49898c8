-- resume: let a paused run go on (or withdraw a pause not yet taken).
-- KEYS[1]: partition prefix. ARGV: run id
local id = ARGV[1]
local h = redis.call('HMGET', k_run(id), 'st', 'wf', 'ca')
if not h[1] then return { 'NOT_FOUND' } end
if FINAL[h[1]] then return { 'FINAL', h[1] } end
redis.call('HDEL', k_run(id), 'pz')
if h[1] ~= 'paused' then return { 'NOT_PAUSED' } end
redis.call('HSET', k_run(id), 'ua', n2s(now_ms()))
journal_add(id, RUN_RESUMED)
set_status(id, 'paused', 'pending', h[3])
enqueue(id, h[2])
return { 'RESUMED' }
