-- reconcile: the repair after Redis lost its last writes (or a bug): every run
-- that should have a task gets one, every sleeping run keeps its timer, every
-- waiting run its waiter entries. Checks up to `limit` runs per status.
-- ARGV: P, limit
local limit = tonumber(ARGV[2])
local fixed = {}
local function has_task(wf, tid)
  return tid and tid ~= '' and #redis.call('XRANGE', k_queue(wf), tid, tid) > 0
end
for _, st in ipairs({ 'pending', 'running' }) do
  for _, id in ipairs(redis.call('ZRANGE', k_runs_status(st), 0, limit - 1)) do
    local h = redis.call('HMGET', k_run(id), 'wf', 'task', 'ca', 'blk')
    -- A parked run ('blk') has no task on purpose: unpark.lua queues it.
    if h[1] and not h[4] and not has_task(h[1], h[2]) and redis.call('EXISTS', k_lease(id)) == 0 then
      set_status(id, st, 'pending', h[3])
      enqueue(id, h[1])
      fixed[#fixed + 1] = id
    end
  end
end
for _, st in ipairs({ 'sleeping', 'waiting' }) do
  for _, id in ipairs(redis.call('ZRANGE', k_runs_status(st), 0, limit - 1)) do
    local h = redis.call('HMGET', k_run(id), 'wake', 'wk')
    if h[1] and not redis.call('ZSCORE', K_TIMERS, id) then
      redis.call('ZADD', K_TIMERS, h[1], id)
      fixed[#fixed + 1] = id
    end
    for _, key in ipairs(split_lines(h[2])) do redis.call('SADD', k_waiters(key), id) end
  end
end
return fixed
