-- job_update: a delivery job is done (delivered or given up), or comes back at
-- a later time as its next attempt.
-- A: old (job json), next? (job json), delay_ms
call('ZREM', K('jobs'), A.old)
if A.next then
  call('ZADD', K('jobs'), now_ms() + A.delay_ms, A.next)
end
return reply({})
