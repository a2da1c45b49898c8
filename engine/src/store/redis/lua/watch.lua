-- watch: a long-poll or a journal stream begins (or goes on) waiting on a run.
-- Marks the run watched for `ttl` ms, so its scripts publish its id on the
-- notify channel while it is; says whether the run exists and is over (a final
-- run is not marked: nothing more will be published for it).
-- A: id, ttl_ms
local st = call('HGET', k_run(A.id), 'st')
if not st then return reply({ r = 'NONE' }) end
if FINAL[st] then return reply({ r = 'FINAL' }) end
call('SET', k_watch(A.id), '1', 'PX', A.ttl_ms)
return reply({ r = 'WAIT' })
