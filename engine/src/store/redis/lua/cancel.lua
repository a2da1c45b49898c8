-- request_cancel: a run no worker holds is cancelled at once (it is between
-- steps by definition); a held run is flagged and stops at its next boundary.
-- KEYS[1]: partition prefix. ARGV: run id, cancel_requested entry json, run_cancelled entry json, retention ms,
--       lookback ms, lookback max entries
local id = ARGV[1]
local h = redis.call('HMGET', k_run(id), 'st', 'wf', 'ca', 'wk', 'task', 'cr')
if not h[1] then return { 'NOT_FOUND' } end
if FINAL[h[1]] then return { 'FINAL', h[1] } end
if h[1] == 'running' and redis.call('EXISTS', k_lease(id)) == 1 then
  if h[6] ~= '1' then
    redis.call('HSET', k_run(id), 'cr', '1')
    journal_add(id, ARGV[2])
  end
  return { 'REQUESTED' }
end
local now = now_ms()
journal_add(id, ARGV[2])
journal_add(id, ARGV[3])
clear_wait(id, h[4])
ack(h[2], h[5])
finalize(id, h[1], 'cancelled', h[3], now, tonumber(ARGV[4]))
notify_parent(id, '{"status":"cancelled"}', ARGV[5], ARGV[6])
return { 'CANCELLED' }
