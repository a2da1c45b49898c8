-- pause: hold a run between steps. A run nobody holds and that waits for its
-- turn (pending) is paused at once, its task withdrawn; a held one stops at its
-- next step boundary; a suspended one becomes paused when it wakes.
-- A: id, wf?, pr? (as the caller read them: its keys are declared)
local id = A.id
local h = call('HMGET', k_run(id), 'st', 'wf', 'ca', 'task', 'pr')
if not h[1] then return reply({ r = 'NOT_FOUND' }) end
if FINAL[h[1]] then return reply({ r = 'FINAL', status = h[1] }) end
if h[1] == 'paused' then return reply({ r = 'PAUSED' }) end
if h[1] == 'pending' or (h[1] == 'running' and call('EXISTS', k_lease(id)) == 0) then
  if not same(h[2], A.wf) or not same(h[5], A.pr) then return reply({ r = 'RETRY' }) end
  ack(h[2], h[5], h[4])
  call('HSET', k_run(id), 'task', '', 'ua', n2s(now_ms()))
  call('DEL', k_lease(id))
  set_status(id, h[1], 'paused', h[3])
  journal_add(id, RUN_PAUSED)
  return reply({ r = 'PAUSED' })
end
call('HSET', k_run(id), 'pz', '1')
return reply({ r = 'REQUESTED' })
