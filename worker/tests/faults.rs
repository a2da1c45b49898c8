//! Faults with real processes: worker processes (the `fault_worker` example) are
//! SIGKILLed, SIGSTOPped and restarted by PID while they run workflows against a
//! private redis-server. Every wait is bounded.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{Backend, count, eventually, journal, start, wait_final};
use keel_engine::Store;
use keel_engine::proto::{JournalEvent, RunId, RunStatus};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The example worker binary, built once per test process.
fn fault_worker() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "keel-worker", "--example", "fault_worker"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the fault_worker example failed");
            // target/<profile>/deps/<this test> -> target/<profile>/examples/fault_worker
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
            let path = profile_dir.join("examples").join("fault_worker");
            assert!(path.exists(), "{} was not built", path.display());
            path
        })
        .clone()
}

/// A worker process, killed when dropped.
struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    fn spawn(b: &Backend, lease_ms: u64) -> Self {
        let server = b.redis.as_ref().expect("fault tests run on Redis");
        let mut child = Command::new(fault_worker())
            .env("KEEL_REDIS_URL", server.url())
            .env("KEEL_NAMESPACE", &b.namespace)
            .env("KEEL_LEASE_MS", lease_ms.to_string())
            .env("KEEL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fault_worker");
        // Bounded wait for "ready" on stdout.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Ok(line))) if line.starts_with("ready") => {}
            other => panic!("fault_worker did not become ready: {other:?}"),
        }
        Self { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.pid().to_string()]).status().expect("kill");
        assert!(status.success(), "kill {signal} {} failed", self.pid());
    }

    /// SIGTERM, then wait (bounded) for the process to exit: a graceful stop
    /// finishes (or abandons) everything it had in flight first.
    fn stop_and_wait(mut self) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "the worker did not stop within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often a step's side effect happened (counted by the worker in Redis).
async fn effects(b: &Backend, id: &RunId, step: &str) -> i64 {
    let server = b.redis.as_ref().expect("redis");
    let mut conn = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:effects:{id}:{step}", b.namespace);
    let n: Option<i64> = redis::cmd("GET").arg(key).query_async(&mut conn).await.unwrap();
    n.unwrap_or(0)
}

async fn journal_has(store: &Arc<dyn Store>, id: &RunId, what: &str, pred: impl Fn(&JournalEvent) -> bool) {
    eventually(WAIT, what, || async { (count(&journal(store, id).await, &pred) > 0).then_some(()) }).await;
}

fn completed_output(j: &[keel_engine::proto::JournalRecord], step: &str) -> Vec<Value> {
    j.iter()
        .filter_map(|r| match &r.entry.event {
            JournalEvent::StepCompleted { step_id, output, .. } if step_id == step => Some(output.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_a_retry_back_off_is_replaced_and_the_run_completes() {
    let b = common::redis().await;
    let first = WorkerProcess::spawn(&b, 2000);
    let id = start(&b.store, "flaky", json!(null)).await;
    journal_has(&b.store, &id, "the first failed attempt", |e| {
        matches!(e, JournalEvent::StepFailed { attempt: 1, .. })
    })
    .await;
    first.sigkill();
    let _second = WorkerProcess::spawn(&b, 2000);
    let run = wait_final(&b.store, &id, WAIT).await;
    assert_eq!((run.status, run.output), (RunStatus::Completed, Some(json!("succeeded on attempt 3"))));
    let j = journal(&b.store, &id).await;
    let attempts: Vec<u32> = j
        .iter()
        .filter_map(|r| match &r.entry.event {
            JournalEvent::StepFailed { attempt, .. } | JournalEvent::StepCompleted { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2, 3], "two failed attempts, then the result (fast attempts are journaled once)");
    assert_eq!(completed_output(&j, "flaky").len(), 1, "one recorded result");
    assert_eq!(effects(&b, &id, "flaky").await, 3, "three attempts ran, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_step_is_taken_over_after_its_lease_and_results_stay_unique() {
    let b = common::redis().await;
    let first = WorkerProcess::spawn(&b, 1500);
    let first_pid = first.pid();
    let id = start(&b.store, "slow", json!(3000)).await;
    journal_has(
        &b.store,
        &id,
        "the slow step to start",
        |e| matches!(e, JournalEvent::StepStarted { step_id, .. } if step_id == "slow"),
    )
    .await;
    let killed_at = Instant::now();
    first.sigkill();
    let second = WorkerProcess::spawn(&b, 1500);
    let run = wait_final(&b.store, &id, WAIT).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert!(killed_at.elapsed() >= Duration::from_millis(1500), "not taken over before the lease expired");
    let j = journal(&b.store, &id).await;
    for step in ["before", "slow", "after"] {
        assert_eq!(completed_output(&j, step).len(), 1, "{step}'s result is recorded exactly once");
    }
    assert_eq!(completed_output(&j, "before"), [json!(format!("before-done-by-{first_pid}"))]);
    assert_eq!(completed_output(&j, "slow"), [json!(format!("slow-done-by-{}", second.pid()))]);
    let slow_attempts: Vec<u32> = j
        .iter()
        .filter_map(|r| match &r.entry.event {
            JournalEvent::StepStarted { step_id, attempt, .. } if step_id == "slow" => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(slow_attempts, [1, 2], "the journal shows the re-run attempt");
    assert_eq!(effects(&b, &id, "before").await, 1, "a recorded step never runs again");
    assert_eq!(effects(&b, &id, "slow").await, 2, "the interrupted step ran again (at least once)");
    assert_eq!(effects(&b, &id, "after").await, 1);
    assert_eq!(run.epoch, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_past_its_lease_has_its_late_writes_rejected() {
    let b = common::redis().await;
    let stalled = WorkerProcess::spawn(&b, 1000);
    let stalled_pid = stalled.pid();
    let id = start(&b.store, "slow", json!(2500)).await;
    journal_has(
        &b.store,
        &id,
        "the slow step to start",
        |e| matches!(e, JournalEvent::StepStarted { step_id, .. } if step_id == "slow"),
    )
    .await;
    stalled.signal("-STOP");
    let fresh = WorkerProcess::spawn(&b, 1000);
    journal_has(
        &b.store,
        &id,
        "the takeover",
        |e| matches!(e, JournalEvent::StepStarted { step_id, attempt: 2, .. } if step_id == "slow"),
    )
    .await;
    stalled.signal("-CONT");
    let run = wait_final(&b.store, &id, WAIT).await;
    // The resumed worker either tries its late write or notices first that its
    // lease is gone; stopped gracefully, it exits only when its execution has
    // ended: after that, nothing more can come from it.
    stalled.stop_and_wait();
    assert_eq!(run.status, RunStatus::Completed);
    let j = journal(&b.store, &id).await;
    assert_eq!(
        run.output,
        Some(json!([
            format!("before-done-by-{stalled_pid}"),
            format!("slow-done-by-{}", fresh.pid()),
            format!("after-done-by-{}", fresh.pid())
        ])),
        "the outputs are the new worker's"
    );
    for step in ["before", "slow", "after"] {
        assert_eq!(
            completed_output(&j, step).len(),
            1,
            "{step} recorded once: the stalled worker's late write was rejected"
        );
    }
    assert_eq!(
        j.last().map(|r| matches!(r.entry.event, JournalEvent::RunCompleted { .. })),
        Some(true),
        "nothing after the end"
    );
    assert_eq!(b.store.get_run(&id).await.unwrap().unwrap().status, RunStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_sleep_resumes_on_time_although_its_only_worker_restarted() {
    let b = common::redis().await;
    let first = WorkerProcess::spawn(&b, 2000);
    let id = start(&b.store, "sleeper", json!(2000)).await;
    eventually(WAIT, "the run to sleep", || async {
        (b.store.get_run(&id).await.unwrap()?.status == RunStatus::Sleeping).then_some(())
    })
    .await;
    first.sigkill();
    let second = WorkerProcess::spawn(&b, 2000);
    let run = wait_final(&b.store, &id, WAIT).await;
    assert_eq!((run.status, run.output), (RunStatus::Completed, Some(json!(format!("woke-in-{}", second.pid())))));
    let j = journal(&b.store, &id).await;
    let fire_at = j.iter().find_map(|r| match &r.entry.event {
        JournalEvent::TimerScheduled { fire_at_ms, .. } => Some((*fire_at_ms, r.at_ms)),
        _ => None,
    });
    let (fire_at, scheduled_at) = fire_at.expect("timer_scheduled");
    let fired_at =
        j.iter().find(|r| matches!(r.entry.event, JournalEvent::TimerFired { .. })).expect("timer_fired").at_ms;
    // fire_at is the worker's estimate of store time + 2 s; the entry's own
    // time is the store's: they agree to within a few ms.
    assert!(fire_at.abs_diff(scheduled_at + 2000) < 100, "a 2 s timer: {fire_at} vs {scheduled_at}");
    assert!(fired_at >= fire_at, "not early");
    assert!(fired_at - fire_at < 1500, "resumed {} ms after it was due", fired_at - fire_at);
    assert_eq!(effects(&b, &id, "after-nap").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_a_running_run_back_for_another_worker_to_take_at_once() {
    let b = common::redis().await;
    // A long lease: only the hand-back lets the second worker in soon.
    let leaving = WorkerProcess::spawn(&b, 60_000);
    let id = start(&b.store, "slow", json!(8000)).await;
    journal_has(
        &b.store,
        &id,
        "the slow step to start",
        |e| matches!(e, JournalEvent::StepStarted { step_id, .. } if step_id == "slow"),
    )
    .await;
    leaving.signal("-TERM");
    // The example's grace period is 2 s, shorter than the step: the run is handed back.
    eventually(WAIT, "the run to be handed back", || async {
        (b.store.get_run(&id).await.unwrap()?.status == RunStatus::Pending).then_some(())
    })
    .await;
    let staying = WorkerProcess::spawn(&b, 60_000);
    let taken = Instant::now();
    let run = wait_final(&b.store, &id, WAIT).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert!(taken.elapsed() < Duration::from_secs(20), "taken at once, not after the 60 s lease");
    let j = journal(&b.store, &id).await;
    assert_eq!(completed_output(&j, "slow"), [json!(format!("slow-done-by-{}", staying.pid()))]);
}

/// An author's mistakes with two worker processes: a step that panics, a body
/// that panics, a step that blocks its thread for over three leases, a run
/// pinned to a version no worker has. Every run ends, or waits saying why; the
/// blocking step runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_workflows_end_or_say_why_under_two_worker_processes() {
    let b = common::redis().await;
    let _first = WorkerProcess::spawn(&b, 600);
    let _second = WorkerProcess::spawn(&b, 600);
    let mut flinching = Vec::new();
    let mut giving_up = Vec::new();
    let mut holding = Vec::new();
    for _ in 0..2 {
        flinching.push(start(&b.store, "panicky", json!({"body": false})).await);
        giving_up.push(start(&b.store, "panicky", json!({"body": true})).await);
        holding.push(start(&b.store, "blocking", json!(2000)).await);
    }
    let pinned = b
        .store
        .create_run(keel_engine::CreateRun {
            workflow: "three-steps".into(),
            version: 9,
            input: json!(null),
            ..Default::default()
        })
        .await
        .unwrap()
        .run_id;

    for id in &flinching {
        let run = wait_final(&b.store, id, WAIT).await;
        assert_eq!((run.status, run.output), (RunStatus::Completed, Some(json!(2))), "{id}");
        assert_eq!(effects(&b, id, "flinch").await, 2, "the panicking attempt, then the retry");
    }
    for id in &giving_up {
        let run = wait_final(&b.store, id, WAIT).await;
        assert_eq!(run.status, RunStatus::Failed, "{run:?}");
        let error = run.error.unwrap();
        assert_eq!(error.kind, "panicked");
        assert!(error.message.contains("the body gave up after attempt 2"), "{error:?}");
    }
    for id in &holding {
        let run = wait_final(&b.store, id, WAIT).await;
        assert_eq!(run.status, RunStatus::Completed, "{run:?}");
        assert_eq!(effects(&b, id, "hold").await, 1, "the blocking step ran once, never taken over");
        let j = journal(&b.store, id).await;
        assert_eq!(
            count(&j, |e| matches!(e, JournalEvent::StepStarted { step_id, .. } if step_id == "hold")),
            1,
            "one attempt, journaled as started while it blocked"
        );
    }
    let parked = eventually(WAIT, "the pinned run to say why it waits", || async {
        b.store.get_run(&pinned).await.unwrap().filter(|r| r.blocked.is_some())
    })
    .await;
    assert_eq!(parked.blocked.as_deref(), Some("no live worker has three-steps v9"));
    assert_eq!((parked.status, parked.epoch), (RunStatus::Pending, 0));
}

/// A worker killed while a step blocks its thread: the step was journaled as
/// started (from the heartbeat thread), so the re-run counts as attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_a_worker_died_in_a_blocking_step_is_a_new_attempt() {
    let b = common::redis().await;
    let first = WorkerProcess::spawn(&b, 600);
    let id = start(&b.store, "blocking", json!(5000)).await;
    journal_has(
        &b.store,
        &id,
        "the blocking attempt journaled as started",
        |e| matches!(e, JournalEvent::StepStarted { step_id, attempt: 1, .. } if step_id == "hold"),
    )
    .await;
    first.sigkill();
    let _second = WorkerProcess::spawn(&b, 600);
    let run = wait_final(&b.store, &id, WAIT).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    let j = journal(&b.store, &id).await;
    assert_eq!(
        count(&j, |e| matches!(e, JournalEvent::StepCompleted { step_id, attempt: 2, .. } if step_id == "hold")),
        1,
        "the re-run is attempt 2: {j:?}"
    );
    assert_eq!(effects(&b, &id, "hold").await, 2);
}

/// A worker SIGKILLed while its runs hold two slots of a flow-control key
/// (parallelism 2): the slots stay taken until its lease lapses (nothing is
/// renewing them), then come back; the runs waiting for the key go on and
/// every run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_of_a_killed_worker_come_back_after_its_lease() {
    let b = common::redis().await;
    let first = WorkerProcess::spawn(&b, 1500);
    let fc = keel_engine::proto::FlowControl {
        key: "kill".into(),
        limits: keel_engine::proto::FlowLimits { parallelism: Some(2), ..Default::default() },
    };
    let mut ids = Vec::new();
    for _ in 0..4 {
        let req = keel_engine::CreateRun {
            workflow: "slow".into(),
            version: 1,
            input: json!(4000),
            flow_control: Some(fc.clone()),
            ..Default::default()
        };
        ids.push(b.store.create_run(req).await.unwrap().run_id);
    }
    // Two slow steps under way (their long attempts are journaled as started).
    eventually(WAIT, "two slow steps holding the key's two slots", || async {
        let mut started = 0;
        for id in &ids {
            let j = journal(&b.store, id).await;
            started += count(&j, |e| matches!(e, JournalEvent::StepStarted { step_id, .. } if step_id == "slow"));
        }
        (started >= 2).then_some(())
    })
    .await;
    assert_eq!(b.store.flow_key("kill").await.unwrap().unwrap().in_flight, 2);
    first.sigkill();
    let status = b.store.flow_key("kill").await.unwrap().unwrap();
    assert_eq!(status.in_flight, 2, "a dead worker's slots count until its lease lapses: {status:?}");
    let _second = WorkerProcess::spawn(&b, 1500);
    for id in &ids {
        let run = wait_final(&b.store, id, Duration::from_secs(60)).await;
        assert_eq!(run.status, RunStatus::Completed, "{id}: {:?}", run.error);
    }
    // The last give-back goes out just after the attempt ends, not with the finish.
    eventually(WAIT, "every slot back", || async {
        let status = b.store.flow_key("kill").await.unwrap().unwrap();
        (status.in_flight == 0 && status.waiting == 0).then_some(())
    })
    .await;
}
