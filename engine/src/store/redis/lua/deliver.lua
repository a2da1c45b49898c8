-- deliver_event, one partition's part: keep the event for the lookback window
-- and wake every run waiting on its key, each exactly once (its waiter entries
-- go in the same step). The first partition gives the event its id (its stream
-- id there); the others keep that id beside their own stream id (field `g`),
-- so journals say the same id everywhere; `evf` floors stay local stream ids.
-- With a client's event id (`once`, its key declared as `event_id`), a repeat
-- is answered with the first delivery's id and delivered to nobody. Without
-- one the call carries an id of its own (`resent`), kept 30 s, so that a
-- cluster client's re-send of the call gets the first answer instead of
-- adding the event again (which a later wait on the key could take).
-- A: key, data (json), lookback_ms, max_len, gid?, once (bool), once_ttl_ms,
--    runs ({ [id] = { wf?, wk?, pr? } }: the waiters the caller read; their keys
--    are declared. A waiter it did not see, or that changed: RETRY.)
if A.once then
  local first = call('GET', K('event_id'))
  -- This very call sent again (`resent`: the id is our own, see deliver.rs):
  -- what it answered; a client's repeat: delivered to nobody again.
  if first and A.resent then return first end
  if first then return reply({ r = 'OK', id = first, woken = {}, duplicate = true }) end
end

-- First look, change nothing: every run to wake must be as the caller saw it.
local plan = {}
for _, id in ipairs(call('SMEMBERS', k_waiters(A.key))) do
  local seen = A.runs[id]
  if not seen then return reply({ r = 'RETRY' }) end
  local h = call('HMGET', k_run(id), 'st', 'wf', 'ca', 'wk', 'ws', 'pr')
  -- The step waiting on this key (the first, if several wait on it).
  local step
  local steps = split_lines(h[5])
  for i, k in ipairs(split_lines(h[4])) do if k == A.key and not step then step = steps[i] end end
  if h[1] == 'waiting' and step then
    if not same(h[2], seen.wf) or not same(h[4], seen.wk) or not same(h[6], seen.pr) then return reply({ r = 'RETRY' }) end
    PRIORITY_OF[id] = h[6]
    plan[#plan + 1] = { id = id, step = step, wf = h[2], ca = h[3], wk = h[4] }
  else
    plan[#plan + 1] = { id = id }
  end
end

local sid
if A.gid then
  sid = call('XADD', k_events(A.key), 'MAXLEN', '~', A.max_len, '*', 'd', A.data, 'g', A.gid)
else
  sid = call('XADD', k_events(A.key), 'MAXLEN', '~', A.max_len, '*', 'd', A.data)
end
local eid = A.gid or sid
call('PEXPIRE', k_events(A.key), A.lookback_ms)
local now = n2s(now_ms())
local woken = {}
for _, w in ipairs(plan) do
  if w.step then
    journal_add(w.id, event_received(w.step, A.key, eid, A.data))
    call('HINCRBY', k_run(w.id), 'cs', 1)
    call('HSET', k_run(w.id), 'evf:' .. A.key, sid, 'cur', w.step, 'ua', now)
    wake(w.id, w.wf, 'waiting', w.ca, w.wk)
    woken[#woken + 1] = w.id
  else
    call('SREM', k_waiters(A.key), w.id)
  end
end
local answer = reply({ r = 'OK', id = eid, woken = woken, duplicate = false })
if A.once then call('SET', K('event_id'), A.resent and answer or eid, 'PX', A.once_ttl_ms) end
return answer
