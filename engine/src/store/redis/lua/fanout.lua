-- fanout: one outbox entry becomes one delivery job per receiver, and leaves the
-- outbox, together. Idempotent: a second fan-out of the same entry (a slow
-- dispatcher racing the one that reclaimed it) finds the entry gone and adds
-- nothing, whatever its jobs look like; jobs are also added NX.
-- A: entry (outbox entry id), jobs (json each)
pcall_('XACK', K('outbox'), DISPATCH_GROUP, A.entry)
if call('XDEL', K('outbox'), A.entry) == 0 then return reply({ added = false }) end
local now = now_ms()
for _, job in ipairs(A.jobs) do
  call('ZADD', K('jobs'), 'NX', now, job)
end
return reply({ added = true })
