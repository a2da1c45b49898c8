-- job_update: a delivery job is done (delivered or given up), or comes back at
-- a later time as its next attempt.
-- KEYS[1]: partition prefix. ARGV: old job, next job or '', next attempt at (ms from now)
redis.call('ZREM', K_HOOK_JOBS, ARGV[1])
if ARGV[2] ~= '' then
  redis.call('ZADD', K_HOOK_JOBS, now_ms() + tonumber(ARGV[3]), ARGV[2])
end
return 1
