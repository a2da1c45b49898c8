-- claim_batch: take up to `max` new tasks from the workflows' queues and claim
-- them, all in one round trip (the non-blocking fast path of a claim; a claim
-- that finds nothing then blocks outside a script).
-- KEYS[1]: partition prefix. ARGV: worker id, lease ms, max deliveries, dead-letter reason, run_failed
--       entry json, error json, retention ms, child outcome json, lookback ms,
--       lookback max entries, the claimer's versions ('wf=1,2' lines, '' for any),
--       max, n workflows, workflows...
local c = { worker = ARGV[1], lease_ms = ARGV[2], max_deliveries = ARGV[3], reason = ARGV[4], failed_entry = ARGV[5],
  error = ARGV[6], retention = ARGV[7], child_outcome = ARGV[8], lookback = ARGV[9], lookback_max = ARGV[10],
  versions = parse_versions(ARGV[11]) }
local left = tonumber(ARGV[12])
local out = {}
for i = 1, tonumber(ARGV[13]) do
  if left <= 0 then break end
  local wf = ARGV[13 + i]
  local read = redis.pcall('XREADGROUP', 'GROUP', GROUP, c.worker, 'COUNT', left, 'STREAMS', k_queue(wf), '>')
  -- A missing group (Redis restarted empty) is the caller's to recreate.
  if type(read) == 'table' and read.err then return { 'NOGROUP', read.err } end
  if read then
    for _, entry in ipairs(read[1][2]) do
      local fields = entry[2]
      local run_id
      for j = 1, #fields, 2 do if fields[j] == 'run_id' then run_id = fields[j + 1] end end
      if run_id then
        local claimed = claim_one(c, wf, entry[1], run_id)
        if claimed[1] == 'CLAIMED' then
          out[#out + 1] = claimed
          left = left - 1
        end
      end
    end
  end
end
return { 'OK', out }
