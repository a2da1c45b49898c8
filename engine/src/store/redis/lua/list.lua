-- list_runs: newest first from the index that matches the filters exactly
-- (label, workflow + status, status, workflow, all), one page plus where the
-- scan stopped. Only a label filter combined with another leaves filtering to do
-- here; such a scan stops after a budget of entries and answers where it stopped,
-- so the caller pages on with a cursor instead of getting a silently short list.
-- Read-only.
-- KEYS[1]: partition prefix. ARGV: workflow filter or '', status filter or '', limit, cursor score or '',
--       cursor run id or '', label name or '', label value
-- Returns: { runs ({ id, hash } each), last scanned id or '', its score or '', '1' if the index goes on }
local wf, st, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local label = ARGV[6] ~= ''
local index
if label then index = k_runs_label(ARGV[6], ARGV[7])
elseif wf ~= '' and st ~= '' then index = k_runs_wf_status(wf, st)
elseif st ~= '' then index = k_runs_status(st)
elseif wf ~= '' then index = k_runs_wf(wf)
else index = K_RUNS end
local check_wf, check_st = label and wf ~= '', label and st ~= ''

-- Where to resume: just after the cursor's run if it is still in the index,
-- else just after its place in the order (score, then id, both descending): a
-- run that left the index meanwhile, or the cursor of another partition.
local pos, below, after_score, after_id = 0, nil, nil, nil
if ARGV[5] ~= '' then
  local rank = redis.call('ZREVRANK', index, ARGV[5])
  if rank then pos = rank + 1 else below, after_score, after_id = ARGV[4], tonumber(ARGV[4]), ARGV[5] end
end

local out = {}
local budget = 2000
local batch = math.min(math.max(limit + 1, 100), budget)
local scanned = 0
local last_id, last_score, more = '', '', '0'
while #out <= limit do
  if scanned >= budget then more = '1'; break end
  local page
  if below then
    page = redis.call('ZREVRANGEBYSCORE', index, below, '-inf', 'WITHSCORES', 'LIMIT', pos, batch)
  else
    page = redis.call('ZREVRANGE', index, pos, pos + batch - 1, 'WITHSCORES')
  end
  if #page == 0 then break end
  for i = 1, #page, 2 do
    local id = page[i]
    last_id, last_score = id, page[i + 1]
    scanned = scanned + 1
    -- Same score as the cursor: only ids after it (descending) come next.
    local keep = not (after_score and tonumber(page[i + 1]) == after_score and id >= after_id)
    if keep and (check_wf or check_st) then
      local h = redis.call('HMGET', k_run(id), 'wf', 'st')
      keep = (not check_wf or h[1] == wf) and (not check_st or h[2] == st)
    end
    if keep then
      local hash = redis.call('HGETALL', k_run(id))
      if #hash > 0 then out[#out + 1] = { id, hash } end
    end
    if #out > limit then break end
  end
  pos = pos + #page / 2
  if #page / 2 < batch then break end
end
return { out, last_id, last_score, more }
