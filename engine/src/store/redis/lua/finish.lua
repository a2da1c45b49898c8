-- finish: the last entries of a lease, then complete / fail / cancel / suspend /
-- release the run, and ack its task, together. Fenced.
-- A: id, worker, epoch, w (the write's token: see `fenced`), patch, entries, how ('complete' | 'fail' | 'cancel' |
--    'suspend' | 'release'), retention_ms, final? (entry), payload? (output /
--    error json), cancelled (run_cancelled entry), wake_at? (ms, as text), waits ({ step,
--    key, since } each), blocked? (why the run waits: its `blk`), lookback_ms,
--    child_outcome? (json, for a parent)
local id = A.id
local h, again = fenced(id, A.worker, A.epoch)
if again then return again end
if not h then return reply({ r = 'LOST' }) end
local st, wf, created, cr, tid = h[2], h[3], h[4], h[5], h[6]
local how = A.how
local now = now_ms()
append_entries(id, A.entries)
-- Written with the run's end when it ends here (one HSET), else at once.
local patch = patch_fields(A.patch, now, h)

local function final(status, field)
  journal_add(id, A.final)
  if field then
    patch[#patch + 1] = field
    patch[#patch + 1] = A.payload
  end
  -- The token goes with the run's end; a repeat is answered DONE (see `fenced`).
  finalize(id, st, status, created, now, remember(patch, nil))
  ack(wf, h[10], tid)
  notify_parent(id, A.child_outcome)
  return reply({ r = 'DONE' })
end

if how == 'complete' then return final('completed', 'out') end
if how == 'fail' then return final('failed', 'err') end
if how == 'cancel' then return final('cancelled', nil) end
call('HSET', k_run(id), unpack(patch))

if how == 'release' then
  ack(wf, h[10], tid)
  call('DEL', k_lease(id))
  call('HSET', k_run(id), 'task', '')
  -- Handed back at a step boundary: paused there if a pause was asked for.
  runnable(id, wf, st, created, h[7] == '1')
  return remembered(id, reply({ r = 'DONE' }), 'D')
end

-- suspend
if cr == '1' then
  journal_add(id, A.cancelled)
  finalize(id, st, 'cancelled', created, now)
  ack(wf, h[10], tid)
  notify_parent(id, CHILD_CANCELLED)
  return remembered(id, reply({ r = 'CANCELLED' }), 'C')
end

local waits = A.waits or {}
if #waits > 0 then
  -- The lookback: an event delivered shortly before a wait began still counts,
  -- but never one this run already consumed on that key. (Stream ids of
  -- different keys' streams are not comparable, so the floor is per key.)
  local best, best_w, best_data, best_gid
  for _, w in ipairs(waits) do
    local from = n2s(math.max(0, w.since - A.lookback_ms))
    local start = from
    local floor = call('HGET', k_run(id), 'evf:' .. w.key)
    if floor and id_gt(floor, from .. '-0') then start = '(' .. floor end
    local found = call('XRANGE', k_events(w.key), start, '+', 'COUNT', 1)
    if #found > 0 and (not best or id_gt(best, found[1][1])) then
      local f = found[1][2]
      best, best_w, best_data, best_gid = found[1][1], w, f[2], f[3] == 'g' and f[4] or found[1][1]
    end
  end
  if best then
    local entry = event_received(best_w.step, best_w.key, best_gid, best_data)
    local seq = journal_add(id, entry)
    call('HINCRBY', k_run(id), 'cs', 1)
    call('HSET', k_run(id), 'evf:' .. best_w.key, best, 'cur', best_w.step)
    return remembered(id, reply({ r = 'EVENT', seq = seq, entry = entry.e }), 'E' .. seq)
  end
  local keys, steps = {}, {}
  for i, w in ipairs(waits) do
    call('SADD', k_waiters(w.key), id)
    keys[i], steps[i] = w.key, w.step
  end
  call('HSET', k_run(id), 'wk', table.concat(keys, '\n'), 'ws', table.concat(steps, '\n'))
end
if A.wake_at then
  call('HSET', k_run(id), 'wake', A.wake_at)
  call('ZADD', K('timers'), A.wake_at, id)
end
ack(wf, h[10], tid)
call('HSET', k_run(id), 'task', '')
if A.blocked then call('HSET', k_run(id), 'blk', A.blocked) end
call('DEL', k_lease(id))
if #waits > 0 or A.blocked then set_status(id, st, 'waiting', created) else set_status(id, st, 'sleeping', created) end
return remembered(id, reply({ r = 'DONE' }), 'D')
