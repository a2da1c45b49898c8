-- jobs_due: take due delivery jobs for `visibility` ms: a dispatcher that dies
-- with them leaves them to come due again (at least once).
-- ARGV: P, max, visibility ms
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', K_HOOK_JOBS, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(due) do
  redis.call('ZADD', K_HOOK_JOBS, now + tonumber(ARGV[3]), job)
end
return due
