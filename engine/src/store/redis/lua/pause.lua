-- pause: hold a run between steps. A run nobody holds and that waits for its
-- turn (pending) is paused at once, its task withdrawn; a held one stops at its
-- next step boundary; a suspended one becomes paused when it wakes.
-- KEYS[1]: partition prefix. ARGV: run id
local id = ARGV[1]
local h = redis.call('HMGET', k_run(id), 'st', 'wf', 'ca', 'task')
if not h[1] then return { 'NOT_FOUND' } end
if FINAL[h[1]] then return { 'FINAL', h[1] } end
if h[1] == 'paused' then return { 'PAUSED' } end
if h[1] == 'pending' or (h[1] == 'running' and redis.call('EXISTS', k_lease(id)) == 0) then
  ack(h[2], h[4])
  redis.call('HSET', k_run(id), 'task', '', 'ua', n2s(now_ms()))
  redis.call('DEL', k_lease(id))
  set_status(id, h[1], 'paused', h[3])
  journal_add(id, RUN_PAUSED)
  return { 'PAUSED' }
end
redis.call('HSET', k_run(id), 'pz', '1')
return { 'REQUESTED' }
