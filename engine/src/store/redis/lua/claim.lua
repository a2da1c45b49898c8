-- claim: one delivered queue entry becomes a lease (see claim_one in prelude.lua).
-- KEYS[1]: partition prefix. ARGV: workflow, task id, run id, worker id, lease ms, max deliveries,
--       dead-letter reason, run_failed entry json, error json, retention ms,
--       child outcome json (for a parent), lookback ms, lookback max entries,
--       the claimer's versions ('wf=1,2' lines, '' for any)
local c = { worker = ARGV[4], lease_ms = ARGV[5], max_deliveries = ARGV[6], reason = ARGV[7], failed_entry = ARGV[8],
  error = ARGV[9], retention = ARGV[10], child_outcome = ARGV[11], lookback = ARGV[12], lookback_max = ARGV[13],
  versions = parse_versions(ARGV[14]) }
return claim_one(c, ARGV[1], ARGV[2], ARGV[3])
