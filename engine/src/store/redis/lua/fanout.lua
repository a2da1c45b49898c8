-- fanout: one outbox entry becomes one delivery job per receiver, and leaves the
-- outbox, together. Idempotent: a second fan-out of the same entry (a slow
-- dispatcher racing the one that reclaimed it) finds the entry gone and adds
-- nothing, whatever its jobs look like; jobs are also added NX.
-- KEYS[1]: partition prefix. ARGV: outbox entry id, n, jobs...
redis.pcall('XACK', K_OUTBOX, 'dispatch', ARGV[1])
if redis.call('XDEL', K_OUTBOX, ARGV[1]) == 0 then return 0 end
local now = now_ms()
for i = 1, tonumber(ARGV[2]) do
  redis.call('ZADD', K_HOOK_JOBS, 'NX', now, ARGV[2 + i])
end
return 1
