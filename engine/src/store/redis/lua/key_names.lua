-- Test probe: the key names the scripts build, to compare with keys.rs.
-- KEYS[1]: partition prefix. ARGV: run id, workflow, event key, idempotency key, status
return { k_run(ARGV[1]), k_journal(ARGV[1]), k_lease(ARGV[1]), k_queue(ARGV[2]), k_runs_wf(ARGV[2]),
  k_runs_status(ARGV[5]), k_waiters(ARGV[3]), k_events(ARGV[3]), k_idem(ARGV[4]), K_RUNS, K_TIMERS,
  K_RETENTION, K_DEAD, child_key(ARGV[1]), K_HOOKS, K_OUTBOX, K_HOOK_JOBS, K_STATS, k_watch(ARGV[1]), K_NOTIFY, k_parked(ARGV[2]), K_RECONCILE, K_RELAY }
