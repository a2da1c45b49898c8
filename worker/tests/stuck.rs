//! Runs that used to stay stuck for ever: a step or a body that panics, a step
//! that blocks its thread past the lease. On both stores.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, count, eventually, journal, spawn_worker, start, wait_final};
use keel_engine::Store;
use keel_engine::proto::{JournalEvent, RunId, RunStatus};
use keel_worker::{Context, RetryPolicy, StepError, Worker, Workflow};
use serde_json::{Value, json};

on_both_stores!(
    a_panicking_step_attempt_is_a_failed_attempt_and_is_retried,
    a_step_that_always_panics_fails_the_run_and_runs_the_failure_handler,
    a_panic_in_the_body_fails_the_run_as_panicked_and_runs_the_failure_handler,
    a_step_that_blocks_its_thread_past_the_lease_runs_once,
    a_run_pinned_to_a_missing_version_waits_blocked_then_goes_on,
    durations_past_the_end_of_time_saturate_instead_of_wrapping,
);

const WAIT: Duration = Duration::from_secs(20);

fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy::attempts(attempts).initial(Duration::from_millis(50)).jitter(0.0)
}

async fn a_panicking_step_attempt_is_a_failed_attempt_and_is_retried(b: Backend) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let workflow = Workflow::new("panics-twice", move |ctx: Context, _: Value| {
        let a = a.clone();
        async move {
            ctx.step("flaky")
                .retry(quick(5))
                .run_with(move |info| async move {
                    a.fetch_add(1, Ordering::SeqCst);
                    if info.attempt < 3 {
                        panic!("boom on attempt {}", info.attempt);
                    }
                    Ok::<_, StepError>(info.attempt)
                })
                .await
        }
    });
    let worker = spawn_worker(&b.store, vec![workflow], Duration::from_secs(5)).await;
    let id = start(&b.store, "panics-twice", json!(null)).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    worker.stop().await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output, Some(json!(3)));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let failures: Vec<(u32, String, String)> = journal(&b.store, &id)
        .await
        .into_iter()
        .filter_map(|r| match r.entry.event {
            JournalEvent::StepFailed { attempt, error, retry_at_ms: Some(_), .. } => {
                Some((attempt, error.kind, error.message))
            }
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    for (i, (attempt, kind, message)) in failures.iter().enumerate() {
        assert_eq!(*attempt, i as u32 + 1);
        assert_eq!(kind, "panicked");
        assert!(message.contains(&format!("boom on attempt {attempt}")), "{message}");
    }
}

async fn a_step_that_always_panics_fails_the_run_and_runs_the_failure_handler(b: Backend) {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    let workflow = Workflow::new("always-panics", |ctx: Context, _: Value| async move {
        let n: u32 = ctx.step("bad").retry(quick(2)).run(|| async { panic!("always") }).await?;
        Ok(n)
    })
    .on_failure(move |_ctx, _input, error| {
        let h = h.clone();
        async move {
            h.lock().unwrap().push(error.message);
            Ok(())
        }
    });
    let worker = spawn_worker(&b.store, vec![workflow], Duration::from_secs(5)).await;
    let id = start(&b.store, "always-panics", json!(null)).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    worker.stop().await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let error = run.error.expect("an error");
    assert!(error.message.contains("the step panicked: always"), "{error:?}");
    assert_eq!(error.step_id.as_deref(), Some("bad"));
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 1, "the failure handler ran once: {handled:?}");
    let j = journal(&b.store, &id).await;
    assert_eq!(count(&j, |e| matches!(e, JournalEvent::StepFailed { step_id, .. } if step_id == "bad")), 2);
}

async fn a_panic_in_the_body_fails_the_run_as_panicked_and_runs_the_failure_handler(b: Backend) {
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let workflow = Workflow::new("body-panics", |ctx: Context, n: u32| async move {
        let n: u32 = ctx.step("first").run(move || async move { Ok::<_, StepError>(n + 1) }).await?;
        if n > 0 {
            panic!("the body gave up after {n}");
        }
        Ok(n)
    })
    .on_failure(move |_ctx, _input, error| {
        let h = h.clone();
        async move {
            assert_eq!(error.kind, "panicked");
            h.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let worker = spawn_worker(&b.store, vec![workflow], Duration::from_secs(5)).await;
    let id = start(&b.store, "body-panics", json!(1)).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let error = run.error.expect("an error");
    assert_eq!(error.kind, "panicked");
    assert!(error.message.contains("the body gave up after 2"), "{error:?}");
    assert_eq!(handled.load(Ordering::SeqCst), 1, "the failure handler ran once");
    // The worker goes on running other runs after the panic.
    let other = start(&b.store, "body-panics", json!(0)).await;
    assert_eq!(wait_final(&b.store, &other, WAIT).await.status, RunStatus::Failed);
    worker.stop().await;
}

/// A worker on a single-threaded runtime of its own thread, as an author's
/// `#[tokio::main(flavor = "current_thread")]` binary runs it: a step that
/// blocks blocks everything on that runtime.
struct ThreadWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ThreadWorker {
    fn start(store: Arc<dyn Store>, workflow: Workflow, lease: Duration) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let worker = Worker::builder()
                    .store(store)
                    .register(workflow)
                    .lease(lease)
                    .timer_tick(Duration::from_millis(20))
                    .shutdown_grace(Duration::from_millis(200))
                    .build()
                    .await
                    .expect("worker builds");
                worker
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("worker runs");
            });
        });
        Self { stop: Some(stop), thread: Some(thread) }
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the worker thread ends");
        }
    }
}

async fn a_step_that_blocks_its_thread_past_the_lease_runs_once(b: Backend) {
    let lease = Duration::from_millis(600);
    let executions = Arc::new(AtomicUsize::new(0));
    let workflow = |executions: Arc<AtomicUsize>| {
        Workflow::new("blocks", move |ctx: Context, _: Value| {
            let executions = executions.clone();
            async move {
                ctx.step("blocking")
                    .run(move || async move {
                        executions.fetch_add(1, Ordering::SeqCst);
                        // Blocks the thread for four leases: no await can run on it.
                        std::thread::sleep(Duration::from_millis(2400));
                        Ok::<_, StepError>("done".to_owned())
                    })
                    .await
            }
        })
    };
    // Two workers on runtimes of their own: the idle one takes over any lease
    // the blocked one lets lapse.
    let first = ThreadWorker::start(b.store.clone(), workflow(executions.clone()), lease);
    let second = ThreadWorker::start(b.store.clone(), workflow(executions.clone()), lease);
    let id = start(&b.store, "blocks", json!(null)).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    first.stop();
    second.stop();
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(executions.load(Ordering::SeqCst), 1, "the blocking step ran once");
    let j = journal(&b.store, &id).await;
    assert_eq!(
        count(&j, |e| matches!(e, JournalEvent::StepStarted { attempt: 1, .. })),
        1,
        "the attempt was journaled as started while it blocked its thread"
    );
    assert_eq!(count(&j, |e| matches!(e, JournalEvent::StepCompleted { .. })), 1);
}

async fn a_run_pinned_to_a_missing_version_waits_blocked_then_goes_on(b: Backend) {
    let versioned = |version: u32| {
        Workflow::new("versioned", move |ctx: Context, _: Value| async move {
            ctx.step("which").run(move || async move { Ok::<_, StepError>(version) }).await
        })
        .version(version)
    };
    let old = spawn_worker(&b.store, vec![versioned(1)], Duration::from_secs(5)).await;
    let id = b
        .store
        .create_run(keel_engine::CreateRun {
            workflow: "versioned".into(),
            version: 2,
            input: json!(null),
            ..Default::default()
        })
        .await
        .unwrap()
        .run_id;
    let blocked = eventually(WAIT, "the run to show why it waits", || async {
        b.store.get_run(&id).await.unwrap().filter(|r| r.blocked.is_some())
    })
    .await;
    assert_eq!(blocked.blocked.as_deref(), Some("no live worker has versioned v2"));
    assert_eq!(blocked.status, RunStatus::Pending);
    assert_eq!(blocked.epoch, 0, "set aside at the claim, never leased");
    // A while later it still waits, unclaimed (it used to be claimed and released
    // every second, its epoch rising).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let still = b.store.get_run(&id).await.unwrap().unwrap();
    assert_eq!((still.epoch, still.blocked.is_some()), (0, true), "{still:?}");

    // A worker with v2 appears: the run goes on at once.
    let new = spawn_worker(&b.store, vec![versioned(2)], Duration::from_secs(5)).await;
    let run = wait_final(&b.store, &id, WAIT).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output, Some(json!(2)));
    assert_eq!(run.blocked, None);
    assert_eq!(run.epoch, 1, "leased once, by the worker that has v2");

    // A graceful shutdown removes the registration at once.
    let before = b.store.list_workers().await.unwrap().len();
    old.stop().await;
    assert_eq!(b.store.list_workers().await.unwrap().len(), before - 1);
    new.stop().await;
    assert!(b.store.list_workers().await.unwrap().is_empty());
}

/// Regression: `sleep_ms: u64::MAX` wrapped to a timer in the past and the run
/// completed at once.
async fn durations_past_the_end_of_time_saturate_instead_of_wrapping(b: Backend) {
    let workflow = Workflow::new("forever", |ctx: Context, ms: u64| async move {
        ctx.sleep("nap", Duration::from_millis(ms)).await?;
        let waited: Option<Value> = ctx.wait_for_event("wait", "never:comes", Some(Duration::from_millis(ms))).await?;
        Ok(waited)
    });
    let worker = spawn_worker(&b.store, vec![workflow], Duration::from_secs(5)).await;
    let id = start(&b.store, "forever", json!(u64::MAX)).await;
    let sleeping = eventually(WAIT, "the run to sleep", || async {
        b.store.get_run(&id).await.unwrap().filter(|r| r.status == RunStatus::Sleeping)
    })
    .await;
    assert_eq!(sleeping.wake_at_ms, Some(u64::MAX), "{sleeping:?}");
    worker.stop().await;
}

/// Regression: a store error while starting a child failed the parent
/// (`child_not_started`) where every other store error abandons and replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_error_starting_a_child_abandons_and_replays_instead_of_failing() {
    let b = common::redis().await;
    let parent = Workflow::new("parent", |ctx: Context, _: Value| async move {
        let doubled: u32 = ctx.invoke("kid", "kid", &21u32).await?;
        Ok(doubled)
    });
    let kid = Workflow::new("kid", |ctx: Context, n: u32| async move {
        ctx.step("double").run(move || async move { Ok::<_, StepError>(n * 2) }).await
    });
    let id = RunId::new(uuid::Uuid::now_v7().to_string()).unwrap();
    // The child's id is derived from the parent's and the step's: occupy its key
    // with a value of the wrong type, so creating it fails inside Redis.
    let child =
        RunId::new(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("keel/{id}/kid").as_bytes()).to_string())
            .unwrap();
    let child_key = keel_engine::keys::Keys::new(b.namespace.clone()).run(&child);
    let server = b.redis.as_ref().unwrap();
    let mut raw = ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("SET").arg(&child_key).arg("in the way").query_async(&mut raw).await.unwrap();

    let worker = spawn_worker(&b.store, vec![parent, kid], Duration::from_millis(600)).await;
    b.store
        .create_run(keel_engine::CreateRun {
            workflow: "parent".into(),
            version: 1,
            input: json!(null),
            run_id: Some(id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    // Abandoned, taken over after its lease, and tried again.
    eventually(WAIT, "the parent to be picked up again", || async {
        b.store.get_run(&id).await.unwrap().filter(|r| r.epoch >= 2)
    })
    .await;
    assert!(!b.store.get_run(&id).await.unwrap().unwrap().status.is_final(), "the parent did not fail");
    let _: () = ::redis::cmd("DEL").arg(&child_key).query_async(&mut raw).await.unwrap();
    let run = wait_final(&b.store, &id, WAIT).await;
    worker.stop().await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output, Some(json!(42)));
}
