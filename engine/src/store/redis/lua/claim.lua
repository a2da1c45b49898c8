-- claim: one delivered queue entry becomes a lease (see claim_one in prelude.lua).
-- ARGV: P, workflow, task id, run id, worker id, lease ms, max deliveries,
--       dead-letter reason, run_failed entry json, error json, retention ms,
--       child outcome json (for a parent), lookback ms, lookback max entries,
--       the claimer's versions ('wf=1,2' lines, '' for any)
local c = { worker = ARGV[5], lease_ms = ARGV[6], max_deliveries = ARGV[7], reason = ARGV[8], failed_entry = ARGV[9],
  error = ARGV[10], retention = ARGV[11], child_outcome = ARGV[12], lookback = ARGV[13], lookback_max = ARGV[14],
  versions = parse_versions(ARGV[15]) }
return claim_one(c, ARGV[2], ARGV[3], ARGV[4])
