-- deliver_event: keep the event for the lookback window and wake every run
-- waiting on its key, each exactly once (its waiter entries go in the same step).
-- ARGV: P, event key, data json, lookback ms, lookback max entries
local key, data = ARGV[2], ARGV[3]
local eid = redis.call('XADD', k_events(key), 'MAXLEN', '~', ARGV[5], '*', 'd', data)
redis.call('PEXPIRE', k_events(key), ARGV[4])
local now = n2s(now_ms())
local woken = {}
for _, id in ipairs(redis.call('SMEMBERS', k_waiters(key))) do
  local h = redis.call('HMGET', k_run(id), 'st', 'wf', 'ca', 'wk', 'wstep')
  local waits_here = false
  for _, k in ipairs(split_lines(h[4])) do if k == key then waits_here = true end end
  if h[1] == 'waiting' and waits_here then
    redis.call('XADD', k_journal(id), '*', 'e', event_received_json(h[5], key, eid, data))
    redis.call('HINCRBY', k_run(id), 'cs', 1)
    redis.call('HSET', k_run(id), 'evf:' .. key, eid, 'cur', h[5], 'ua', now)
    wake(id, h[2], h[1], h[3], h[4])
    woken[#woken + 1] = id
  else
    redis.call('SREM', k_waiters(key), id)
  end
end
return { eid, woken }
