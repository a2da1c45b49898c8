-- request_cancel: a run no worker holds is cancelled at once (it is between
-- steps by definition); a held run is flagged and stops at its next boundary.
-- A: id, wf?, wk?, pr? (as the caller read them: the keys they name are declared),
--    requested (cancel_requested entry), cancelled (run_cancelled entry), retention_ms
local id = A.id
local h = call('HMGET', k_run(id), 'st', 'wf', 'ca', 'wk', 'task', 'cr', 'pr')
if not h[1] then return reply({ r = 'NOT_FOUND' }) end
if FINAL[h[1]] then return reply({ r = 'FINAL', status = h[1] }) end
if h[1] == 'running' and call('EXISTS', k_lease(id)) == 1 then
  if h[6] ~= '1' then
    call('HSET', k_run(id), 'cr', '1')
    journal_add(id, A.requested)
  end
  return reply({ r = 'REQUESTED' })
end
if not same(h[2], A.wf) or not same(h[4], A.wk) or not same(h[7], A.pr) then return reply({ r = 'RETRY' }) end
local now = now_ms()
journal_add(id, A.requested)
journal_add(id, A.cancelled)
clear_wait(id, h[4])
ack(h[2], h[7], h[5])
finalize(id, h[1], 'cancelled', h[3], now)
notify_parent(id, CHILD_CANCELLED)
return reply({ r = 'CANCELLED' })
