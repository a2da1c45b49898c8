//! The store conformance suite: every case is written once (in `cases.rs`) and
//! run against three stores: memory, a single Redis and a three-master Redis
//! Cluster, each Redis case on its own private servers.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

mod cases;
mod fixture;

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::cases::$case(crate::fixture::Fixture::memory(Default::default())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::cases::$case(crate::fixture::Fixture::redis(Default::default()).await).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::cases::$case(crate::fixture::Fixture::cluster(Default::default()).await).await;
                }
            )*
        }
    };
}

conformance!(
    create_writes_summary_journal_indexes_and_task,
    invalid_requests_are_refused_and_write_nothing,
    idempotency_key_maps_to_one_run_and_refuses_other_input,
    client_run_id_is_idempotent,
    hundred_concurrent_creates_with_one_key_make_one_run,
    claim_hands_out_a_lease_with_the_journal,
    claim_blocks_until_a_task_arrives,
    two_claimers_racing_for_one_task_exactly_one_wins,
    many_claimers_claim_each_task_exactly_once,
    renewed_lease_is_not_reclaimed,
    reclaimable_after_lease_expiry_and_not_before,
    stale_lease_is_fenced_out_and_changes_nothing,
    append_updates_the_summary,
    complete_fail_and_cancel_finish_the_run,
    release_hands_the_run_back_at_once,
    sleep_suspends_until_the_timer_fires,
    due_timer_fires_exactly_once_with_two_schedulers,
    delayed_start_waits_for_its_timer,
    event_wakes_each_waiter_exactly_once,
    wait_on_several_keys_takes_the_first_event,
    event_within_lookback_reaches_a_late_waiter,
    event_older_than_lookback_or_consumed_is_not_reused,
    consuming_one_key_does_not_hide_an_earlier_event_on_another,
    wait_times_out_by_timer,
    cancel_depends_on_where_the_run_stands,
    suspend_after_cancel_request_cancels,
    listing_pages_through_every_run_exactly_once,
    listing_filters_by_workflow_and_status,
    listing_filters_by_creation_time,
    task_delivered_too_often_is_dead_lettered,
    expired_runs_leave_nothing_behind,
    reconcile_requeues_runs_that_lost_their_task,
    store_recovers_from_an_empty_restart,
    journal_reads_resume_after_a_sequence_number,
    workers_register_and_expire,
    the_first_signing_key_offered_is_the_deployments,
    signing_keys_rotate_and_retire_without_ever_leaving_none,
    schedules_move_on_from_a_tick_once,
    priorities_order_claims_and_the_lowest_still_gets_its_turn,
    a_runs_priority_holds_on_every_way_back_to_its_queue,
    flow_control_slots_windows_and_waiters,
    a_run_waiting_for_a_flow_control_slot_is_woken_by_a_release,
    a_run_created_claimed_is_leased_and_outlives_its_worker,
    a_finished_child_wakes_its_waiting_parent,
    parallel_waits_each_get_their_own_event,
    pause_holds_a_run_between_steps_until_resumed,
    retry_runs_a_failed_run_again,
    watch_journal_waits_for_new_entries,
    listing_filters_by_label,
    webhook_events_flow_from_outbox_to_jobs_and_logs,
    stats_count_runs_steps_and_queues,
    wait_finished_wakes_when_the_run_ends,
    filtered_lists_return_every_match_behind_thousands_of_runs,
    a_run_of_a_version_nobody_claims_is_parked_until_unparked,
    reconcile_reaches_every_run_over_successive_passes,
    a_repeated_key_must_repeat_the_whole_request,
    fanning_out_one_outbox_entry_twice_adds_its_jobs_once,
    a_runs_inbox_keeps_order_is_closed_once_and_is_bounded,
);
