-- watch: a long-poll begins waiting for a run's result. Marks the run watched
-- (for `ttl` ms) so its finish writes the end signal; says if it is over already.
-- ARGV: P, run id, ttl ms
local id = ARGV[2]
local st = redis.call('HGET', k_run(id), 'st')
if not st then return 'NONE' end
if FINAL[st] then return 'FINAL' end
-- An end signal of a run that is not final is stale (it ended once and was
-- retried since): it must not wake this waiter.
redis.call('DEL', k_end(id))
redis.call('SET', k_watch(id), '1', 'PX', ARGV[3])
return 'WAIT'
