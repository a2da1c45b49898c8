-- jobs_due: take due delivery jobs for `visibility` ms: a dispatcher that dies
-- with them leaves them to come due again (at least once).
-- A: max, visibility_ms
local now = now_ms()
local due = call('ZRANGEBYSCORE', K('jobs'), '-inf', now, 'LIMIT', 0, A.max)
for _, job in ipairs(due) do
  call('ZADD', K('jobs'), now + A.visibility_ms, job)
end
return reply({ jobs = due })
