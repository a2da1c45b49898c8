-- expire_finished: delete finished runs past their retention with every key and
-- index entry they had.
-- A: runs ({ id, wf?, st?, idem?, lab? } each: runs past retention as the
--    caller read them; one that changed since is left for the next pass)
local now = now_ms()
local n = 0
for _, r in ipairs(A.runs) do
  local due = call('ZSCORE', K('retention'), r.id)
  if due and tonumber(due) <= now then
    local id = r.id
    local h = call('HMGET', k_run(id), 'wf', 'st', 'idem', 'lab')
    if not h[1] or (same(h[1], r.wf) and same(h[2], r.st) and same(h[3], r.idem) and same(h[4], r.lab)) then
      if h[1] then
        call('ZREM', K('runs'), id)
        call('ZREM', k_runs_wf(h[1]), id)
        call('ZREM', k_runs_status(h[2]), id)
        call('ZREM', k_runs_wf_status(h[1], h[2]), id)
        index_labels(id, h[4], 0, false)
        if h[3] and call('GET', k_idem(h[3])) == id then call('DEL', k_idem(h[3])) end
      end
      call('DEL', k_run(id), k_journal(id), k_lease(id), k_watch(id))
      call('ZREM', K('retention'), id)
      n = n + 1
    end
  end
end
return reply({ n = n })
