-- list_runs: newest first from the narrowest index, filtered, one page plus a
-- cursor. Read-only.
-- ARGV: P, workflow filter or '', status filter or '', limit, cursor score or '',
--       cursor run id or '', label name or '', label value
local wf, st, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local index = K_RUNS
if st ~= '' then index = k_runs_status(st) elseif wf ~= '' then index = k_runs_wf(wf) end

-- Where to resume: just after the cursor's run if it is still in the index, else
-- just below its score (a run that left the index meanwhile).
local pos, below = 0, nil
if ARGV[6] ~= '' then
  local rank = redis.call('ZREVRANK', index, ARGV[6])
  if rank then pos = rank + 1 else below = '(' .. ARGV[5] end
end

local out = {}
local batch = math.max(limit + 1, 100)
local scanned = 0
while #out <= limit and scanned < 10 * batch + 1000 do
  local ids
  if below then
    ids = redis.call('ZREVRANGEBYSCORE', index, below, '-inf', 'LIMIT', pos, batch)
  else
    ids = redis.call('ZREVRANGE', index, pos, pos + batch - 1)
  end
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local hash = redis.call('HGETALL', k_run(id))
    if #hash > 0 then
      local keep = true
      if wf ~= '' and st ~= '' then keep = redis.call('HGET', k_run(id), 'wf') == wf end
      if keep and ARGV[7] ~= '' then
        local labels = redis.call('HGET', k_run(id), 'lab')
        keep = labels ~= false and cjson.decode(labels)[ARGV[7]] == ARGV[8]
      end
      if keep then out[#out + 1] = { id, hash } end
      if #out > limit then break end
    end
  end
  pos = pos + #ids
  scanned = scanned + #ids
end
return out
