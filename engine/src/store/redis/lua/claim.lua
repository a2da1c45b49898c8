-- claim: turn one delivered queue entry into a lease with a new epoch, and hand
-- back what replay needs (summary + journal) in the same round trip.
-- ARGV: P, workflow, task id, run id, worker id, lease ms, max deliveries,
--       dead-letter reason, run_failed entry json, error json, retention ms,
--       child outcome json (for a parent), lookback ms, lookback max entries
local wf, tid, id, worker = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local q = k_queue(wf)

-- The delivery must be ours: a reclaimer may have taken it since, or the holder
-- taken it back with a heartbeat.
local pend = redis.call('XPENDING', q, GROUP, tid, tid, 1)
if #pend == 0 then return { 'SKIP', 'task already finished' } end
if pend[1][2] ~= worker then return { 'BUSY', 'task delivered to another worker' } end
local deliveries = tonumber(pend[1][4])

local h = redis.call('HMGET', k_run(id), 'st', 'task', 'ca', 'wf')
if not h[1] then ack(wf, tid); return { 'SKIP', 'run no longer exists' } end
local st = h[1]
if FINAL[st] then ack(wf, tid); return { 'SKIP', 'run is ' .. st } end
if h[2] ~= tid then ack(wf, tid); return { 'SKIP', 'not the run\'s current task (duplicate)' } end
if redis.call('EXISTS', k_lease(id)) == 1 then
  -- Its holder is alive (it heartbeated after the reclaimer picked the entry).
  return { 'BUSY', 'lease still held' }
end

local now = now_ms()
if deliveries > tonumber(ARGV[7]) then
  redis.call('XADD', K_DEAD, 'MAXLEN', '~', '10000', '*', 'run_id', id, 'workflow', wf, 'task_id', tid,
    'deliveries', deliveries, 'reason', ARGV[8])
  journal_add(id, ARGV[9])
  redis.call('HSET', k_run(id), 'err', ARGV[10])
  finalize(id, st, 'failed', h[3], now, tonumber(ARGV[11]))
  ack(wf, tid)
  notify_parent(id, ARGV[12], ARGV[13], ARGV[14])
  return { 'DEAD', ARGV[8] }
end

local epoch = redis.call('HINCRBY', k_run(id), 'ep', 1)
redis.call('SET', k_lease(id), worker .. ':' .. epoch, 'PX', ARGV[6])
set_status(id, st, 'running', h[3])
redis.call('HSET', k_run(id), 'ua', n2s(now))
return { 'CLAIMED', epoch, deliveries, n2s(now), redis.call('HGETALL', k_run(id)),
  redis.call('XRANGE', k_journal(id), '-', '+') }
