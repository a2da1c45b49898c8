-- reconcile: the repair after Redis lost its last writes (or a bug): every run
-- that should have a task gets one, every sleeping run keeps its timer, every
-- waiting run its waiter entries. The caller picks the batch (up to a limit
-- per status, going on from where the previous pass stopped: `reconcile`
-- holds the offset per status) and reads what its keys need; this script
-- checks and repairs, and records where the next pass goes on. A run whose
-- status is no longer the one it was read under is left alone (it moved on).
-- A: offsets ({ [status] = offset }), runs ({ id, st (the index it came
--    from), wf?, wk?, pr? } each, as the caller read them)
local fixed = {}
-- The run's task is still queued: an entry with its id *for this run* (a queue
-- Redis lost and that was written anew may reuse ids, within the same ms).
local function has_task(id, wf, pr, tid)
  if not tid or tid == '' then return false end
  local found = call('XRANGE', k_queue(wf, pr), tid, tid)
  if #found == 0 then return false end
  local fields = found[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'run_id' then return fields[i + 1] == id end
  end
  return false
end
for st, offset in pairs(A.offsets) do call('HSET', K('reconcile'), st, offset) end
for _, r in ipairs(A.runs) do
  local id = r.id
  local h = call('HMGET', k_run(id), 'st', 'wf', 'task', 'ca', 'blk', 'wake', 'wk', 'pr')
  PRIORITY_OF[id] = h[8]
  if h[1] ~= r.st then
    -- The run moved since the caller read the index (or the index entry is
    -- stale): nothing of this status to repair; a stale entry goes.
    if h[2] and h[2] == r.wf then
      call('ZREM', k_runs_status(r.st), id)
      call('ZREM', k_runs_wf_status(h[2], r.st), id)
    end
  elseif r.st == 'pending' or r.st == 'running' then
    -- A parked run ('blk') has no task on purpose: unpark.lua queues it.
    if same(h[2], r.wf) and not h[5] and same(h[8], r.pr) and not has_task(id, h[2], h[8], h[3]) and call('EXISTS', k_lease(id)) == 0 then
      set_status(id, r.st, 'pending', h[4])
      enqueue(id, h[2])
      fixed[#fixed + 1] = id
    end
  elseif same(h[7], r.wk) then
    if h[6] and not call('ZSCORE', K('timers'), id) then
      call('ZADD', K('timers'), h[6], id)
      fixed[#fixed + 1] = id
    end
    for _, key in ipairs(split_lines(h[7])) do call('SADD', k_waiters(key), id) end
  end
end
return reply({ fixed = fixed })
