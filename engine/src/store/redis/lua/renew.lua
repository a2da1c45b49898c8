-- renew_lease: extend the lease from now (server time) and keep the queue entry
-- ours with a fresh idle time, so XAUTOCLAIM leaves it alone. Fenced.
-- KEYS[1]: partition prefix. ARGV: run id, worker id, epoch, ttl ms, workflow, task id
local id, worker, epoch = ARGV[1], ARGV[2], ARGV[3]
if not fenced(id, worker, epoch) then return { 'LOST' } end
redis.call('SET', k_lease(id), worker .. ':' .. epoch, 'PX', ARGV[4])
redis.pcall('XCLAIM', k_queue(ARGV[5]), GROUP, worker, 0, ARGV[6], 'JUSTID')
return { 'OK' }
