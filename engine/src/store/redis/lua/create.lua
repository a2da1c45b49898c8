-- create_run: the run, its first journal entry, its indexes, its idempotency key
-- and its first task (or start timer), all or nothing.
-- KEYS[1]: partition prefix. ARGV: run_id, workflow, version, fingerprint text, idempotency key or '',
--       idempotency ttl ms, delay ms, labels json or '', parent json or '',
--       run_started entry json, client chose the id ('1'/'0'), callback url or '',
--       parent's partition prefix or ''
local id, wf, idem = ARGV[1], ARGV[2], ARGV[5]
local fp = redis.sha1hex(ARGV[4])

if idem ~= '' then
  local existing = redis.call('GET', k_idem(idem))
  if existing then
    local efp = redis.call('HGET', k_run(existing), 'fp')
    if efp then
      if efp == fp and (ARGV[11] == '0' or existing == id) then return { 'EXISTS', existing } end
      return { 'CONFLICT', existing, 'idempotency key' }
    end
    -- The key outlived its run (retention shorter than the key's ttl): start anew.
  end
end

local efp = redis.call('HGET', k_run(id), 'fp')
if efp then
  if efp ~= fp then return { 'CONFLICT', id, 'run id' } end
  if idem ~= '' then redis.call('SET', k_idem(idem), id, 'PX', ARGV[6]) end
  return { 'EXISTS', id }
end

local now = now_ms()
local fields = { 'wf', wf, 'ver', ARGV[3], 'ca', n2s(now), 'ua', n2s(now), 'ep', '0', 'cs', '0', 'fp', fp, 'task', '' }
if ARGV[8] ~= '' then fields[#fields + 1] = 'lab'; fields[#fields + 1] = ARGV[8] end
if ARGV[9] ~= '' then fields[#fields + 1] = 'par'; fields[#fields + 1] = ARGV[9] end
if idem ~= '' then fields[#fields + 1] = 'idem'; fields[#fields + 1] = idem end
if ARGV[12] ~= '' then fields[#fields + 1] = 'cb'; fields[#fields + 1] = ARGV[12] end
-- The parent's partition, when it has one: its outcome goes there (notify_parent).
if ARGV[13] ~= '' then fields[#fields + 1] = 'pp'; fields[#fields + 1] = ARGV[13] end
redis.call('HSET', k_run(id), unpack(fields))
journal_add(id, ARGV[10])
redis.call('ZADD', K_RUNS, now, id)
redis.call('ZADD', k_runs_wf(wf), now, id)
WORKFLOW_OF[id] = wf
index_labels(id, ARGV[8], now, true)
if idem ~= '' then redis.call('SET', k_idem(idem), id, 'PX', ARGV[6]) end

local delay = tonumber(ARGV[7])
if delay > 0 then
  set_status(id, nil, 'sleeping', now)
  redis.call('HSET', k_run(id), 'wake', n2s(now + delay))
  redis.call('ZADD', K_TIMERS, now + delay, id)
else
  set_status(id, nil, 'pending', now)
  enqueue(id, wf)
end
return { 'CREATED', id }
