-- unpark: a worker running some versions of a workflow is live; queue again the
-- runs a claim parked for want of one (see claim.lua).
-- A: wf, versions, ids (runs the caller found parked at those versions: their
--    keys are declared), prs ({ [id] = priority? } as the caller read them)
local want = {}
for _, v in ipairs(A.versions) do want[tostring(v)] = true end
local out = {}
for _, id in ipairs(A.ids) do
  local v = call('ZSCORE', k_parked(A.wf), id)
  local h = call('HMGET', k_run(id), 'st', 'blk', 'ca', 'pz', 'pr')
  -- A run whose priority the caller did not see (its queue is not declared)
  -- waits for the next pass.
  if v and want[v] and same(h[5], A.prs[id]) then
    call('ZREM', k_parked(A.wf), id)
    PRIORITY_OF[id] = h[5]
    if h[1] and h[2] and not FINAL[h[1]] then
      call('HDEL', k_run(id), 'blk')
      runnable(id, A.wf, h[1], h[3], h[4] == '1')
      out[#out + 1] = id
    end
  end
end
return reply({ ids = out })
