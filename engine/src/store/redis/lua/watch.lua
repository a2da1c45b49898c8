-- watch: a long-poll or a journal stream begins (or goes on) waiting on a run.
-- Marks the run watched for `ttl` ms, so its scripts publish its id on the
-- notify channel while it is; says whether the run exists and is over (a final
-- run is not marked: nothing more will be published for it).
-- KEYS[1]: partition prefix. ARGV: run id, ttl ms
local id = ARGV[1]
local st = redis.call('HGET', k_run(id), 'st')
if not st then return 'NONE' end
if FINAL[st] then return 'FINAL' end
redis.call('SET', k_watch(id), '1', 'PX', ARGV[2])
return 'WAIT'
