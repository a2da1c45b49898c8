-- jobs_due: take due delivery jobs for `visibility` ms: a dispatcher that dies
-- with them leaves them to come due again (at least once).
-- KEYS[1]: partition prefix. ARGV: max, visibility ms
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', K_HOOK_JOBS, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, job in ipairs(due) do
  redis.call('ZADD', K_HOOK_JOBS, now + tonumber(ARGV[2]), job)
end
return due
