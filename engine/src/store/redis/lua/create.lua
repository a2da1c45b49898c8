-- create_run: the run, its first journal entry, its indexes, its idempotency key
-- and its first task (or start timer), all or nothing.
-- A: id, wf, ver, fp (fingerprint text), idem?, idem_ttl_ms, delay_ms,
--    labels? (json), parent? (json), started (entry), client_id (bool),
--    cb?, pp?, pr? (a priority other than the default), fc? (flow control, json), (the parent's partition prefix), existing? (the run the
--    idempotency key named when the caller read it: its key is declared),
--    claim? ({ worker, lease_ms }: create it leased to that worker)
local id, wf, idem = A.id, A.wf, A.idem
local fp = redis.sha1hex(A.fp)

if idem then
  local existing = call('GET', k_idem(idem))
  -- The key changed since the caller read it: read it again.
  if existing ~= (A.existing or false) then return reply({ r = 'RETRY' }) end
  if existing then
    local efp = call('HGET', k_run(existing), 'fp')
    if efp then
      if efp == fp and (not A.client_id or existing == id) then return reply({ r = 'EXISTS', id = existing }) end
      return reply({ r = 'CONFLICT', id = existing, what = 'idempotency key' })
    end
    -- The key outlived its run (retention shorter than the key's ttl): start anew.
  end
end

local efp = call('HGET', k_run(id), 'fp')
if efp then
  if efp ~= fp then return reply({ r = 'CONFLICT', id = id, what = 'run id' }) end
  if idem then call('SET', k_idem(idem), id, 'PX', A.idem_ttl_ms) end
  return reply({ r = 'EXISTS', id = id })
end

local now = now_ms()
-- Handed straight to a worker (A.claim: worker, lease_ms): created leased,
-- epoch 1, without a task; not when it starts later.
local claim = A.delay_ms == 0 and A.claim or nil
local status = (A.delay_ms > 0 and 'sleeping') or (claim and 'running') or 'pending'
local fields = { 'wf', wf, 'ver', tostring(A.ver), 'st', status, 'ca', n2s(now), 'ua', n2s(now),
  'ep', claim and '1' or '0', 'cs', '0', 'fp', fp, 'task', '' }
if A.labels then fields[#fields + 1] = 'lab'; fields[#fields + 1] = A.labels end
if A.parent then fields[#fields + 1] = 'par'; fields[#fields + 1] = A.parent end
if idem then fields[#fields + 1] = 'idem'; fields[#fields + 1] = idem end
if A.cb then fields[#fields + 1] = 'cb'; fields[#fields + 1] = A.cb end
-- The parent's partition, when it has one: its outcome goes there (notify_parent).
if A.pp then fields[#fields + 1] = 'pp'; fields[#fields + 1] = A.pp end
if A.fc then fields[#fields + 1] = 'fc'; fields[#fields + 1] = A.fc end
-- A priority other than the default (the field's absence).
if A.pr then fields[#fields + 1] = 'pr'; fields[#fields + 1] = tostring(A.pr) end
PRIORITY_OF[id] = A.pr and tostring(A.pr) or false
call('HSET', k_run(id), unpack(fields))
WORKFLOW_OF[id] = wf
HAS_CALLBACK[id] = A.cb ~= nil
local seq = journal_add(id, A.started)
call('ZADD', K('runs'), now, id)
call('ZADD', k_runs_wf(wf), now, id)
index_labels(id, A.labels, now, true)
if idem then call('SET', k_idem(idem), id, 'PX', A.idem_ttl_ms) end

index_status(id, nil, status, now)
if A.delay_ms > 0 then
  call('HSET', k_run(id), 'wake', n2s(now + A.delay_ms))
  call('ZADD', K('timers'), now + A.delay_ms, id)
elseif claim then
  call('SET', k_lease(id), claim.worker .. ':1', 'PX', claim.lease_ms)
  -- The hash as written.
  return reply({ r = 'CLAIMED', id = id, now = n2s(now), hash = fields, seq = seq })
else
  enqueue(id, wf)
end
return reply({ r = 'CREATED', id = id })
