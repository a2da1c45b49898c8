-- expire_finished: delete finished runs past their retention with every key and
-- index entry they had.
-- KEYS[1]: partition prefix. ARGV: limit
local due = redis.call('ZRANGEBYSCORE', K_RETENTION, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  local h = redis.call('HMGET', k_run(id), 'wf', 'st', 'idem', 'lab')
  if h[1] then
    redis.call('ZREM', K_RUNS, id)
    redis.call('ZREM', k_runs_wf(h[1]), id)
    redis.call('ZREM', k_runs_status(h[2]), id)
    redis.call('ZREM', k_runs_wf_status(h[1], h[2]), id)
    index_labels(id, h[4], 0, false)
    if h[3] and redis.call('GET', k_idem(h[3])) == id then redis.call('DEL', k_idem(h[3])) end
  end
  redis.call('DEL', k_run(id), k_journal(id), k_lease(id), k_watch(id))
  redis.call('ZREM', K_RETENTION, id)
end
return #due
