-- fire_due_timers: every due timer becomes exactly one task. The ZREM and the
-- enqueue happen in one script, so two schedulers can never both fire one timer.
-- A: runs ({ id, wf?, wk?, pr? } each: due timers' runs as the caller read them;
--    one that changed since is left for the next pass)
local now = now_ms()
local woken = {}
for _, r in ipairs(A.runs) do
  local due = call('ZSCORE', K('timers'), r.id)
  if due and tonumber(due) <= now then
    local h = call('HMGET', k_run(r.id), 'st', 'wf', 'ca', 'wk', 'pr')
    if h[1] == 'sleeping' or h[1] == 'waiting' then
      if same(h[2], r.wf) and same(h[4], r.wk) and same(h[5], r.pr) then
        PRIORITY_OF[r.id] = h[5]
        call('ZREM', K('timers'), r.id)
        wake(r.id, h[2], h[1], h[3], h[4])
        woken[#woken + 1] = r.id
      end
    else
      -- Any other status means the timer is stale (the run woke another way).
      call('ZREM', K('timers'), r.id)
    end
  end
end
return reply({ woken = woken })
