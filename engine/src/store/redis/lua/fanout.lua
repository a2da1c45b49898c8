-- fanout: one outbox entry becomes one delivery job per receiver, and leaves the
-- outbox, together. Jobs are deterministic members (NX), so a repeated fan-out
-- (a dispatcher died before acking) adds nothing twice.
-- ARGV: P, outbox entry id, n, jobs...
local now = now_ms()
for i = 1, tonumber(ARGV[3]) do
  redis.call('ZADD', K_HOOK_JOBS, 'NX', now, ARGV[3 + i])
end
redis.pcall('XACK', K_OUTBOX, 'dispatch', ARGV[2])
redis.call('XDEL', K_OUTBOX, ARGV[2])
return 1
