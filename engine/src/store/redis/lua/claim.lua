-- claim: queue entries delivered to this worker (read by the caller with
-- XREADGROUP or XAUTOCLAIM) become leases with a new epoch, each handing back
-- its run's hash. The caller reads the journals after this script (XRANGE,
-- pipelined): the new epoch already fences every earlier holder's writes, so
-- no step result of an earlier attempt can land after that read, and a long
-- journal is never re-read (and JSON-encoded) inside Lua.
-- One partition's entries per call.
-- A: tasks ({ wf, pr? (the queue's priority), tid, id } each), worker, lease_ms, max_deliveries,
--    reason, failed (run_failed entry), error (json), retention_ms,
--    child_outcome (json, for a parent), versions? ({ wf = { '1', ... } }:
--    the versions the claimer runs; absent: any)
local function allowed_versions()
  if not A.versions then return nil end
  local out = {}
  for wf, list in pairs(A.versions) do
    local set = {}
    for _, v in ipairs(list) do set[tostring(v)] = true end
    out[wf] = set
  end
  return out
end
local VERSIONS = allowed_versions()

local function claim_one(wf, pr, tid, id)
  local q = k_queue(wf, pr)
  -- The delivery must be ours: a reclaimer may have taken it since, or the holder
  -- taken it back with a heartbeat.
  local pend = call('XPENDING', q, GROUP, tid, tid, 1)
  if #pend == 0 then return { r = 'SKIP', why = 'task already finished' } end
  if pend[1][2] ~= A.worker then return { r = 'BUSY', why = 'task delivered to another worker' } end
  local deliveries = tonumber(pend[1][4])

  local h = call('HMGET', k_run(id), 'st', 'task', 'ca', 'wf', 'ver')
  if not h[1] then ack(wf, pr, tid); return { r = 'SKIP', why = 'run no longer exists' } end
  local st = h[1]
  WORKFLOW_OF[id] = h[4]
  if FINAL[st] then ack(wf, pr, tid); return { r = 'SKIP', why = 'run is ' .. st } end
  if h[2] ~= tid then ack(wf, pr, tid); return { r = 'SKIP', why = 'not the run\'s current task (duplicate)' } end
  if call('EXISTS', k_lease(id)) == 1 then
    -- Its holder is alive (it heartbeated after the reclaimer picked the entry).
    return { r = 'BUSY', why = 'lease still held' }
  end

  -- A version the claimer does not run: set the run aside (no lease, no epoch)
  -- until a worker that has it registers (unpark.lua), instead of handing it out.
  local allowed = VERSIONS and VERSIONS[wf]
  if allowed and not allowed[h[5]] then
    ack(wf, pr, tid)
    call('HSET', k_run(id), 'task', '', 'blk', 'no live worker has ' .. wf .. ' v' .. h[5])
    set_status(id, st, 'pending', h[3])
    call('ZADD', k_parked(wf), h[5], id)
    return { r = 'PARKED', version = h[5] }
  end

  local now = now_ms()
  if deliveries > A.max_deliveries then
    call('XADD', K('dead'), 'MAXLEN', '~', '10000', '*', 'run_id', id, 'workflow', wf, 'task_id', tid,
      'deliveries', deliveries, 'reason', A.reason)
    journal_add(id, A.failed)
    call('HSET', k_run(id), 'err', A.error)
    finalize(id, st, 'failed', h[3], now)
    ack(wf, pr, tid)
    notify_parent(id, A.child_outcome)
    return { r = 'DEAD' }
  end

  local epoch = call('HINCRBY', k_run(id), 'ep', 1)
  call('SET', k_lease(id), A.worker .. ':' .. epoch, 'PX', A.lease_ms)
  set_status(id, st, 'running', h[3])
  call('HSET', k_run(id), 'ua', n2s(now))
  return { r = 'CLAIMED', epoch = epoch, deliveries = deliveries, now = n2s(now), hash = call('HGETALL', k_run(id)),
    id = id, tid = tid, wf = wf, pr = pr }
end

local out = {}
for i, task in ipairs(A.tasks) do out[i] = claim_one(task.wf, task.pr, task.tid, task.id) end
return reply({ r = 'OK', tasks = out })
