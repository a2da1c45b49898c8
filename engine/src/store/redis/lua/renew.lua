-- renew_lease: extend the lease from now (server time) and keep the queue entry
-- ours with a fresh idle time, so XAUTOCLAIM leaves it alone. Fenced.
-- A: id, worker, epoch, ttl_ms, wf, pr? (the task's queue), tid
if not fenced(A.id, A.worker, A.epoch) then return reply({ r = 'LOST' }) end
call('SET', k_lease(A.id), A.worker .. ':' .. A.epoch, 'PX', A.ttl_ms)
-- (A run created leased to its worker has no queue entry.)
if A.tid ~= '' then pcall_('XCLAIM', k_queue(A.wf, A.pr), GROUP, A.worker, 0, A.tid, 'JUSTID') end
return reply({ r = 'OK' })
