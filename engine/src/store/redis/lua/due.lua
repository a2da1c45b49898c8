-- due: up to `limit` members of a sorted set scored by a time (timers,
-- retention) that are due by the server's clock. Read-only: the caller reads
-- what they need, then a script that declares their keys acts on them.
-- A: limit
return reply({ ids = call('ZRANGEBYSCORE', K('set'), '-inf', now_ms(), 'LIMIT', 0, A.limit) })
