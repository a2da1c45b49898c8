-- nudge: a run that waits for a flow-control slot goes on at the next timer
-- tick (a release made room for it); a run that waits for anything else, or
-- no longer waits, is left alone.
-- A: id, mark (the start of a flow-control wait's `blk`)
local h = call('HMGET', k_run(A.id), 'st', 'blk')
if (h[1] == 'sleeping' or h[1] == 'waiting') and h[2] and string.sub(h[2], 1, #A.mark) == A.mark then
  local now = now_ms()
  call('HSET', k_run(A.id), 'wake', n2s(now))
  call('ZADD', K('timers'), now, A.id)
  return reply({ r = 'WOKEN' })
end
return reply({ r = 'LEFT' })
