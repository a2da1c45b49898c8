//! The worker runtime end to end, in process, on both stores.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, count, eventually, journal, shape, spawn_worker, start, wait_final};
use keel_engine::CancelOutcome;
use keel_engine::proto::{JournalEvent, RunStatus};
use keel_worker::{Context, Error, Result, RetryPolicy, StepError, Workflow};
use serde_json::{Value, json};

on_both_stores!(
    three_step_workflow_runs_each_step_once,
    a_failing_step_is_retried_with_durable_back_off,
    a_step_over_its_timeout_is_a_failed_attempt_and_is_retried,
    a_step_that_fails_for_good_fails_the_run_and_runs_the_failure_handler_once,
    wait_for_event_gets_its_data_times_out_or_catches_an_early_event,
    ten_parallel_steps_run_at_once,
    a_new_run_gets_no_event_older_than_itself_and_a_repeated_event_id_once,
    a_child_runs_output_and_failure_reach_the_parent,
    reordering_steps_between_replays_is_a_non_determinism_error,
    cancel_during_a_sleep_runs_no_later_step,
    shutdown_hands_unfinished_runs_back_at_once,
);

const LEASE: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(20);

type Counter = Arc<Mutex<HashMap<String, usize>>>;

fn bump(counter: &Counter, key: &str) {
    *counter.lock().unwrap().entry(key.to_owned()).or_default() += 1;
}

fn calls(counter: &Counter, key: &str) -> usize {
    counter.lock().unwrap().get(key).copied().unwrap_or(0)
}

async fn three_step_workflow_runs_each_step_once(b: Backend) {
    let counter: Counter = Arc::default();
    let c = counter.clone();
    let workflow = Workflow::new("three", move |ctx: Context, n: i64| {
        let c = c.clone();
        async move {
            ctx.progress(3).await?;
            let mut total = n;
            for name in ["one", "two", "three"] {
                let c = c.clone();
                total = ctx
                    .step(name)
                    .run(move || async move {
                        bump(&c, name);
                        Ok::<_, StepError>(total * 2)
                    })
                    .await?;
            }
            Ok(total)
        }
    });
    let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
    let id = start(&b.store, "three", json!(5)).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    worker.stop().await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output, Some(json!(40)));
    assert_eq!((run.completed_steps, run.total_steps), (3, Some(3)));
    for name in ["one", "two", "three"] {
        assert_eq!(calls(&counter, name), 1, "{name} ran once");
    }
    let j = journal(&b.store, &id).await;
    assert_eq!(
        shape(&j).iter().map(|(t, s)| format!("{t}:{s}")).collect::<Vec<_>>(),
        [
            "run_started:",
            "progress_declared:",
            "step_completed:one",
            "step_completed:two",
            "step_completed:three",
            "run_completed:"
        ]
    );
}

async fn a_failing_step_is_retried_with_durable_back_off(b: Backend) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let workflow = Workflow::new("flaky", move |ctx: Context, _: Value| {
        let a = a.clone();
        async move {
            let policy = RetryPolicy::attempts(5).initial(Duration::from_millis(200)).jitter(0.0);
            ctx.step("flaky")
                .retry(policy)
                .run_with(move |info| async move {
                    a.fetch_add(1, Ordering::SeqCst);
                    if info.attempt < 3 { Err(StepError::retryable("not yet")) } else { Ok(info.attempt) }
                })
                .await
        }
    });
    let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
    let id = start(&b.store, "flaky", json!(null)).await;
    let began = Instant::now();
    let run = wait_final(&b.store, &id, WAIT).await;
    worker.stop().await;
    assert_eq!((run.status, run.output), (RunStatus::Completed, Some(json!(3))));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert!(began.elapsed() >= Duration::from_millis(600), "back-offs of 200 + 400 ms were waited");
    let j = journal(&b.store, &id).await;
    let failures: Vec<Option<u64>> = j
        .iter()
        .filter_map(|r| match &r.entry.event {
            JournalEvent::StepFailed { retry_at_ms, .. } => Some(*retry_at_ms),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 2);
    assert!(failures.iter().all(Option::is_some), "each failure scheduled a retry");
    assert!(run.epoch >= 3, "the back-offs suspended the run (a new lease each time), got epoch {}", run.epoch);
}

async fn a_step_over_its_timeout_is_a_failed_attempt_and_is_retried(b: Backend) {
    let workflow = Workflow::new("slowpoke", |ctx: Context, _: Value| async move {
        ctx.step("sometimes-slow")
            .timeout(Duration::from_millis(200))
            .retry(RetryPolicy::attempts(3).initial(Duration::from_millis(50)))
            .run_with(|info| async move {
                if info.attempt == 1 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Ok::<_, StepError>(info.attempt)
            })
            .await
    });
    let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
    let id = start(&b.store, "slowpoke", json!(null)).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    worker.stop().await;
    assert_eq!((run.status, run.output), (RunStatus::Completed, Some(json!(2))));
    let j = journal(&b.store, &id).await;
    let timeout = j.iter().find_map(|r| match &r.entry.event {
        JournalEvent::StepFailed { attempt: 1, error, .. } => Some(error.kind.clone()),
        _ => None,
    });
    assert_eq!(timeout.as_deref(), Some("timeout"));
}

async fn a_step_that_fails_for_good_fails_the_run_and_runs_the_failure_handler_once(b: Backend) {
    let handled: Counter = Arc::default();
    let h = handled.clone();
    let workflow = Workflow::new("doomed", |ctx: Context, _: Value| async move {
        ctx.step("ok").run(|| async { Ok::<_, StepError>(1) }).await?;
        ctx.step("refuse").retry(3).run(|| async { Err::<(), _>(StepError::terminal("card declined")) }).await?;
        Ok(())
    })
    .on_failure(move |_ctx, input, error| {
        let h = h.clone();
        async move {
            bump(&h, &format!("{}|{input}", error.message));
            Ok(())
        }
    });
    let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
    let id = start(&b.store, "doomed", json!({"order": 7})).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    worker.stop().await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.expect("the run's error");
    assert_eq!((error.kind.as_str(), error.step_id.as_deref()), ("terminal", Some("refuse")));
    assert_eq!(error.message, "card declined");
    assert_eq!(calls(&handled, "card declined|{\"order\":7}"), 1, "the failure handler ran once with input and error");
    let j = journal(&b.store, &id).await;
    assert_eq!(
        count(&j, |e| matches!(e, JournalEvent::StepFailed { step_id, .. } if step_id == "refuse")),
        1,
        "terminal: no retry"
    );
    assert_eq!(
        count(
            &j,
            |e| matches!(e, JournalEvent::StepCompleted { step_id, .. } if step_id.starts_with("keel.on_failure"))
        ),
        1
    );
}

async fn wait_for_event_gets_its_data_times_out_or_catches_an_early_event(b: Backend) {
    let workflow = Workflow::new("approval", |ctx: Context, key: String| async move {
        // Asks for events sent before the run started too.
        let early: Option<(String, Value)> =
            ctx.wait_for_any_with("early", [format!("{key}:early")], None, keel_worker::Lookback::Window).await?;
        let early = early.map(|(_, data)| data);
        let decision: Option<Value> = ctx.wait_for_event("decision", format!("{key}:decision"), None).await?;
        let late: Option<Value> =
            ctx.wait_for_event("late", format!("{key}:never"), Some(Duration::from_millis(300))).await?;
        Ok(json!({"early": early, "decision": decision, "late": late}))
    });
    // The first event is sent before the run even exists (within the lookback).
    b.store.deliver_event("r1:early", &json!("already here")).await.unwrap();
    let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
    let id = start(&b.store, "approval", json!("r1")).await;
    eventually(WAIT, "the run to wait for its decision", || async {
        let run = b.store.get_run(&id).await.unwrap()?;
        (run.status == RunStatus::Waiting && run.waiting_for == ["r1:decision"]).then_some(())
    })
    .await;
    let delivered = b.store.deliver_event("r1:decision", &json!({"approved": true})).await.unwrap();
    assert_eq!(delivered.woken, vec![id.clone()]);
    let run = wait_final(&b.store, &id, WAIT).await;
    worker.stop().await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({"early": "already here", "decision": {"approved": true}, "late": null})));
    let j = journal(&b.store, &id).await;
    assert_eq!(count(&j, |e| matches!(e, JournalEvent::WaitTimedOut { step_id } if step_id == "late")), 1);
}

async fn ten_parallel_steps_run_at_once(b: Backend) {
    // How many steps run at this moment, and the most that ever did at once.
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    let workflow = Workflow::new("fan-out", move |ctx: Context, _: Value| {
        let (r, m) = (r.clone(), m.clone());
        async move {
            let outputs = ctx
                .all((0..10).map(|i| {
                    let (r, m) = (r.clone(), m.clone());
                    ctx.step(format!("part-{i}")).run(move || async move {
                        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        // Stay until every branch has started (bounded): they overlap.
                        for _ in 0..500 {
                            if m.load(Ordering::SeqCst) == 10 {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        r.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, StepError>(i)
                    })
                }))
                .await?;
            Ok(json!({"sum": outputs.iter().sum::<i32>()}))
        }
    });
    let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
    let id = start(&b.store, "fan-out", json!(null)).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    worker.stop().await;
    assert_eq!(run.status, RunStatus::Completed);
    let output = run.output.unwrap();
    assert_eq!(output["sum"], 45);
    assert_eq!(most.load(Ordering::SeqCst), 10, "all ten steps ran at the same time");
    let j = journal(&b.store, &id).await;
    let ids: Vec<String> = j
        .iter()
        .filter_map(|r| match &r.entry.event {
            JournalEvent::StepCompleted { step_id, .. } => Some(step_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 10);
    assert!(ids.contains(&"part-3@0.3".to_owned()), "branch steps carry their branch: {ids:?}");
}

async fn a_child_runs_output_and_failure_reach_the_parent(b: Backend) {
    let child = Workflow::new("square", |ctx: Context, n: i64| async move {
        if n < 0 {
            ctx.step("check").retry(1).run(|| async { Err::<(), _>(StepError::terminal("negative")) }).await?;
        }
        ctx.step("square").run(move || async move { Ok::<_, StepError>(n * n) }).await
    });
    let parent = Workflow::new("sum-of-squares", |ctx: Context, ns: Vec<i64>| async move {
        let squares =
            ctx.all(ns.iter().enumerate().map(|(i, n)| ctx.invoke::<_, i64>(format!("square-{i}"), "square", n))).await;
        match squares {
            Ok(squares) => Ok(json!({"sum": squares.iter().sum::<i64>()})),
            Err(e) => Ok(json!({"error": e.kind(), "message": e.message()})),
        }
    });
    let worker = spawn_worker(&b.store, vec![child, parent], LEASE).await;
    let ok = start(&b.store, "sum-of-squares", json!([1, 2, 3])).await;
    let bad = start(&b.store, "sum-of-squares", json!([4, -1])).await;
    let ok_run = wait_final(&b.store, &ok, WAIT).await;
    let bad_run = wait_final(&b.store, &bad, WAIT).await;
    worker.stop().await;
    assert_eq!(ok_run.output, Some(json!({"sum": 14})));
    assert_eq!(bad_run.output, Some(json!({"error": "child_failed", "message": "negative"})));
    let j = journal(&b.store, &ok).await;
    assert_eq!(count(&j, |e| matches!(e, JournalEvent::ChildStarted { .. })), 3);
    let children = b
        .store
        .list_runs(&keel_engine::RunQuery { workflow: Some("square".into()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(children.runs.len(), 5);
    assert!(children.runs.iter().all(|r| r.parent.is_some()));
}

async fn reordering_steps_between_replays_is_a_non_determinism_error(b: Backend) {
    // Version as deployed first: a, nap, b.
    let before = Workflow::new("evolving", |ctx: Context, _: Value| async move {
        ctx.step("a").run(|| async { Ok::<_, StepError>(1) }).await?;
        ctx.sleep("nap", Duration::from_millis(2000)).await?;
        ctx.step("b").run(|| async { Ok::<_, StepError>(2) }).await?;
        Ok(())
    });
    let worker = spawn_worker(&b.store, vec![before], LEASE).await;
    let id = start(&b.store, "evolving", json!(null)).await;
    eventually(WAIT, "the run to sleep", || async {
        (b.store.get_run(&id).await.unwrap()?.status == RunStatus::Sleeping).then_some(())
    })
    .await;
    worker.stop().await;
    // The same version redeployed with its steps reordered: nap, a, b.
    let after = Workflow::new("evolving", |ctx: Context, _: Value| async move {
        ctx.sleep("nap", Duration::from_millis(2000)).await?;
        ctx.step("a").run(|| async { Ok::<_, StepError>(1) }).await?;
        ctx.step("b").run(|| async { Ok::<_, StepError>(2) }).await?;
        Ok(())
    });
    let worker = spawn_worker(&b.store, vec![after], LEASE).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    worker.stop().await;
    assert_eq!(run.status, RunStatus::Failed, "{:#?}", journal(&b.store, &id).await);
    let error = run.error.unwrap();
    assert_eq!(error.kind, "non_determinism");
    assert!(
        error.message.contains("\"nap\"") && error.message.contains("\"a\""),
        "names both steps: {}",
        error.message
    );
    let j = journal(&b.store, &id).await;
    assert_eq!(count(&j, |e| matches!(e, JournalEvent::StepStarted { step_id, .. } if step_id == "b")), 0);
}

async fn cancel_during_a_sleep_runs_no_later_step(b: Backend) {
    let later = Arc::new(AtomicUsize::new(0));
    let l = later.clone();
    let workflow = Workflow::new("napper", move |ctx: Context, _: Value| {
        let l = l.clone();
        async move {
            ctx.step("first").run(|| async { Ok::<_, StepError>(1) }).await?;
            ctx.sleep("long-nap", Duration::from_secs(3600)).await?;
            ctx.step("later")
                .run(move || async move {
                    l.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, StepError>(2)
                })
                .await?;
            Ok(())
        }
    });
    let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
    let id = start(&b.store, "napper", json!(null)).await;
    eventually(WAIT, "the run to sleep", || async {
        (b.store.get_run(&id).await.unwrap()?.status == RunStatus::Sleeping).then_some(())
    })
    .await;
    assert_eq!(b.store.request_cancel(&id, Some("changed my mind")).await.unwrap(), CancelOutcome::Cancelled);
    let run = wait_final(&b.store, &id, WAIT).await;
    // A graceful stop ends everything the worker had in flight: after it, no
    // later step can still run.
    worker.stop().await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(later.load(Ordering::SeqCst), 0);
    let j = journal(&b.store, &id).await;
    assert_eq!(shape(&j).last().unwrap().0, "run_cancelled");
}

async fn shutdown_hands_unfinished_runs_back_at_once(b: Backend) {
    let long = Duration::from_secs(60);
    let workflow = || {
        Workflow::new("long-step", |ctx: Context, slow: bool| async move {
            ctx.step("work")
                .run(move || async move {
                    if slow {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Ok::<_, StepError>("done".to_owned())
                })
                .await
        })
    };
    // A long lease: only a hand-back lets another worker take the run soon.
    let first = spawn_worker(&b.store, vec![workflow()], long).await;
    let id = start(&b.store, "long-step", json!(true)).await;
    eventually(WAIT, "the step to start", || async {
        let j = b.store.read_journal(&id, None, 100).await.unwrap();
        (count(&j, |e| matches!(e, JournalEvent::StepStarted { .. })) == 1).then_some(())
    })
    .await;
    let began = Instant::now();
    first.stop().await;
    assert!(began.elapsed() < Duration::from_secs(5), "shutdown took {:?}", began.elapsed());
    let run = b.store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Pending, "handed back, not left to a lease expiry");
    // The next worker takes it at once; its replay re-runs the unfinished step.
    let redo = Workflow::new("long-step", |ctx: Context, _: bool| async move {
        ctx.step("work").run(|| async { Ok::<_, StepError>("redone".to_owned()) }).await
    });
    let second = spawn_worker(&b.store, vec![redo], long).await;
    let run = wait_final(&b.store, &id, Duration::from_secs(10)).await;
    second.stop().await;
    assert_eq!((run.status, run.output), (RunStatus::Completed, Some(json!("redone"))));
    let _: fn() -> Result<()> = || Err(Error::new("x", "y"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_registers_its_workflows() {
    let b = common::redis().await;
    let v1 = Workflow::new("greet", |_ctx: Context, _: Value| async { Ok(1) });
    let v2 = Workflow::new("greet", |_ctx: Context, _: Value| async { Ok(2) }).version(2);
    let worker = spawn_worker(&b.store, vec![v1, v2], LEASE).await;
    let registered = eventually(WAIT, "the worker's registration", || async {
        b.store.list_workers().await.unwrap().into_iter().next()
    })
    .await;
    worker.stop().await;
    assert_eq!(registered.workflows, [("greet".to_owned(), vec![1, 2])].into());
    assert!(registered.heartbeat_at_ms > 0);
}

/// Attempts cut off by a dead worker or a lost lease count against the retry
/// policy: once every allowed attempt began and none finished, the step fails
/// for good (`attempts_exhausted`) instead of being tried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_cut_off_by_crashes_count_against_the_retry_policy() {
    for b in [common::memory().await, common::redis().await] {
        let id = start(&b.store, "fragile", json!(null)).await;
        // Two workers took the run and died inside attempts 1 and 2 of "s".
        for attempt in 1..=2u32 {
            let claim = keel_engine::Claim {
                workflows: vec!["fragile".into()],
                worker_id: format!("ghost-{attempt}"),
                lease: LEASE,
                max: 1,
                block: Duration::from_secs(2),
                versions: Default::default(),
            };
            let task = b.store.claim(&claim).await.unwrap().pop().expect("the run's task");
            let pos = (attempt == 1).then(|| ":0".to_owned());
            let started = JournalEvent::StepStarted { step_id: "s".into(), attempt, pos };
            b.store.append(&task.lease, &[started]).await.unwrap();
            b.store.finish(&task.lease, &[], keel_engine::Finish::Release).await.unwrap();
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let workflow = Workflow::new("fragile", move |ctx: Context, _: Value| {
            let r = r.clone();
            async move {
                ctx.step("s")
                    .retry(RetryPolicy::attempts(2))
                    .run(move || async move {
                        r.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, StepError>(1)
                    })
                    .await
            }
        });
        let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
        let run = wait_final(&b.store, &id, WAIT).await;
        worker.stop().await;
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.error.as_ref().map(|e| e.kind.as_str()), Some("attempts_exhausted"));
        assert_eq!(ran.load(Ordering::SeqCst), 0, "no third attempt");
        let last_failure = journal(&b.store, &id).await.into_iter().find_map(|r| match r.entry.event {
            JournalEvent::StepFailed { attempt, retry_at_ms, .. } => Some((attempt, retry_at_ms)),
            _ => None,
        });
        assert_eq!(last_failure, Some((2, None)), "the interrupted attempt 2 is recorded as the last, failed for good");
    }
}

/// A step's result may travel with the run's next write (the last step's with
/// the run's end: one call), but never later than the start of the next
/// step's attempt: when step 2 runs, step 1's result is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_result_is_durable_before_the_next_attempt_begins() {
    for b in [common::memory().await, common::redis().await] {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (store, record) = (b.store.clone(), seen.clone());
        let workflow = Workflow::new("chain", move |ctx: Context, _: Value| {
            let (store, record) = (store.clone(), record.clone());
            async move {
                let run_id = ctx.run_id().clone();
                let mut total = 0u64;
                for i in 1..=3u64 {
                    let (store, record, run_id) = (store.clone(), record.clone(), run_id.clone());
                    total += ctx
                        .step(format!("s{i}"))
                        .run(move || async move {
                            let done = journal(&store, &run_id)
                                .await
                                .iter()
                                .filter(|r| matches!(r.entry.event, JournalEvent::StepCompleted { .. }))
                                .count();
                            record.lock().unwrap().push(done);
                            Ok::<_, StepError>(i)
                        })
                        .await?;
                }
                Ok(total)
            }
        });
        let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
        let id = start(&b.store, "chain", json!(null)).await;
        let run = wait_final(&b.store, &id, WAIT).await;
        worker.stop().await;
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.output, Some(json!(6)));
        assert_eq!(run.completed_steps, 3);
        assert_eq!(*seen.lock().unwrap(), [0, 1, 2], "each attempt saw every earlier step's result stored");
        let kinds: Vec<String> = shape(&journal(&b.store, &id).await).into_iter().map(|(t, _)| t).collect();
        assert_eq!(kinds, ["run_started", "step_completed", "step_completed", "step_completed", "run_completed"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_a_step_runs_stops_at_the_next_step_boundary() {
    for b in [common::memory().await, common::redis().await] {
        let later = Arc::new(AtomicUsize::new(0));
        let l = later.clone();
        let workflow = Workflow::new("busy", move |ctx: Context, _: Value| {
            let l = l.clone();
            async move {
                ctx.step("long")
                    .run(|| async {
                        tokio::time::sleep(Duration::from_millis(600)).await;
                        Ok::<_, StepError>(1)
                    })
                    .await?;
                ctx.step("next")
                    .run(move || async move {
                        l.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, StepError>(2)
                    })
                    .await?;
                Ok(())
            }
        });
        let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
        let id = start(&b.store, "busy", json!(null)).await;
        eventually(WAIT, "the long step to start", || async {
            (count(&journal(&b.store, &id).await, |e| matches!(e, JournalEvent::StepStarted { .. })) == 1).then_some(())
        })
        .await;
        assert_eq!(b.store.request_cancel(&id, Some("stop")).await.unwrap(), CancelOutcome::Requested);
        let run = wait_final(&b.store, &id, WAIT).await;
        worker.stop().await;
        assert_eq!(run.status, RunStatus::Cancelled);
        assert_eq!(later.load(Ordering::SeqCst), 0, "no step after the boundary");
        let kinds: Vec<String> = shape(&journal(&b.store, &id).await).into_iter().map(|(t, _)| t).collect();
        assert_eq!(kinds, ["run_started", "step_started", "cancel_requested", "step_completed", "run_cancelled"]);
    }
}

#[tokio::test]
async fn the_testing_harness_delivers_events_and_waits_for_the_first_of_several_keys() {
    use keel_worker::testing::TestEnv;
    let workflow = Workflow::new("review", |ctx: Context, doc: String| async move {
        let verdict: Option<(String, Value)> = ctx
            .wait_for_any(
                "verdict",
                [format!("{doc}:approved"), format!("{doc}:rejected")],
                Some(Duration::from_secs(3600)),
            )
            .await?;
        Ok(json!(verdict.map(|(key, data)| json!({"key": key, "data": data}))))
    });
    let env = TestEnv::new([workflow]).await;
    let id = env.start("review", "doc-1").await;
    env.run_until_idle().await;
    assert_eq!(env.run(&id).await.status, RunStatus::Waiting);
    env.send_event("doc-1:rejected", json!({"why": "typos"})).await;
    let run = env.run(&id).await;
    assert_eq!(run.output, Some(json!({"key": "doc-1:rejected", "data": {"why": "typos"}})));
    // And with nobody answering, the hour passes in no time.
    let silent = env.run_to_end("review", "doc-2").await;
    assert_eq!((silent.status, silent.output), (RunStatus::Completed, Some(json!(null))));
}

/// Regression: a new run waiting on a key got the oldest event in the lookback
/// window, even one sent (and consumed by another run) before it existed. By
/// default a wait sees only events since its run started; a client's event id
/// is delivered once.
async fn a_new_run_gets_no_event_older_than_itself_and_a_repeated_event_id_once(b: Backend) {
    let workflow = Workflow::new("listener", |ctx: Context, key: String| async move {
        let got: Option<Value> = ctx.wait_for_event("got", key, Some(Duration::from_millis(1500))).await?;
        Ok(got)
    });
    let worker = spawn_worker(&b.store, vec![workflow], LEASE).await;
    // An event for an earlier run, sent before the next one starts.
    b.store.deliver_event("stale:key", &json!("for somebody else")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let id = start(&b.store, "listener", json!("stale:key")).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    assert_eq!(run.output, Some(json!(null)), "the stale event was not delivered: {run:?}");

    // Sent after the run started but before it waits: within the lookback, it counts.
    let id = start(&b.store, "listener", json!("fresh:key")).await;
    b.store.deliver_event("fresh:key", &json!("for you")).await.unwrap();
    let run = wait_final(&b.store, &id, WAIT).await;
    assert_eq!(run.output, Some(json!("for you")));

    // A repeated client id is the same event: delivered to nobody again.
    let first = b.store.deliver("ids:key", &json!(1), Some("evt-1")).await.unwrap();
    let again = b.store.deliver("ids:key", &json!(1), Some("evt-1")).await.unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(again.event_id, first.event_id);
    worker.stop().await;
}
