-- job_update: a delivery job is done (delivered or given up), or comes back at
-- a later time as its next attempt.
-- ARGV: P, old job, next job or '', next attempt at (ms from now)
redis.call('ZREM', K_HOOK_JOBS, ARGV[2])
if ARGV[3] ~= '' then
  redis.call('ZADD', K_HOOK_JOBS, now_ms() + tonumber(ARGV[4]), ARGV[3])
end
return 1
