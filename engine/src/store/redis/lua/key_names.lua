-- Test probe: the key names the scripts build, to compare with keys.rs.
-- ARGV: P, run id, workflow, event key, idempotency key, status
return { k_run(ARGV[2]), k_journal(ARGV[2]), k_lease(ARGV[2]), k_queue(ARGV[3]), k_runs_wf(ARGV[3]),
  k_runs_status(ARGV[6]), k_waiters(ARGV[4]), k_events(ARGV[4]), k_idem(ARGV[5]), K_RUNS, K_TIMERS,
  K_RETENTION, K_DEAD, child_key(ARGV[2]), K_HOOKS, K_OUTBOX, K_HOOK_JOBS, K_STATS, k_watch(ARGV[2]), K_NOTIFY, k_parked(ARGV[3]), K_RECONCILE }
