-- fire_due_timers: every due timer becomes exactly one task. The ZREM and the
-- enqueue happen in one script, so two schedulers can never both fire one timer.
-- KEYS[1]: partition prefix. ARGV: limit
local due = redis.call('ZRANGEBYSCORE', K_TIMERS, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
local woken = {}
for _, id in ipairs(due) do
  redis.call('ZREM', K_TIMERS, id)
  local h = redis.call('HMGET', k_run(id), 'st', 'wf', 'ca', 'wk')
  -- Any other status means the timer is stale (the run woke another way).
  if h[1] == 'sleeping' or h[1] == 'waiting' then
    wake(id, h[2], h[1], h[3], h[4])
    woken[#woken + 1] = id
  end
end
return woken
