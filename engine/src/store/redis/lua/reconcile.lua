-- reconcile: the repair after Redis lost its last writes (or a bug): every run
-- that should have a task gets one, every sleeping run keeps its timer, every
-- waiting run its waiter entries. Checks up to `limit` runs per status per call,
-- going on from where the previous call stopped (`keel:reconcile` holds the
-- offset per status), so every run is checked over time, not only the oldest.
-- KEYS[1]: partition prefix. ARGV: limit
local limit = tonumber(ARGV[1])
local fixed = {}
-- The run's task is still queued: an entry with its id *for this run* (a queue
-- Redis lost and that was written anew may reuse ids, within the same ms).
local function has_task(id, wf, tid)
  if not tid or tid == '' then return false end
  local found = redis.call('XRANGE', k_queue(wf), tid, tid)
  if #found == 0 then return false end
  local fields = found[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'run_id' then return fields[i + 1] == id end
  end
  return false
end
local function next_batch(st)
  local offset = tonumber(redis.call('HGET', K_RECONCILE, st) or '0')
  local ids = redis.call('ZRANGE', k_runs_status(st), offset, offset + limit - 1)
  if #ids < limit then
    -- The end: start over next time (and look at the first ones now, if this
    -- batch started past the end because the index shrank).
    redis.call('HSET', K_RECONCILE, st, 0)
    if #ids == 0 and offset > 0 then ids = redis.call('ZRANGE', k_runs_status(st), 0, limit - 1) end
  else
    redis.call('HSET', K_RECONCILE, st, offset + #ids)
  end
  return ids
end
for _, st in ipairs({ 'pending', 'running' }) do
  for _, id in ipairs(next_batch(st)) do
    local h = redis.call('HMGET', k_run(id), 'wf', 'task', 'ca', 'blk')
    -- A parked run ('blk') has no task on purpose: unpark.lua queues it.
    if h[1] and not h[4] and not has_task(id, h[1], h[2]) and redis.call('EXISTS', k_lease(id)) == 0 then
      set_status(id, st, 'pending', h[3])
      enqueue(id, h[1])
      fixed[#fixed + 1] = id
    end
  end
end
for _, st in ipairs({ 'sleeping', 'waiting' }) do
  for _, id in ipairs(next_batch(st)) do
    local h = redis.call('HMGET', k_run(id), 'wake', 'wk')
    if h[1] and not redis.call('ZSCORE', K_TIMERS, id) then
      redis.call('ZADD', K_TIMERS, h[1], id)
      fixed[#fixed + 1] = id
    end
    for _, key in ipairs(split_lines(h[2])) do redis.call('SADD', k_waiters(key), id) end
  end
end
return fixed
