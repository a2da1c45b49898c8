//! A harness for testing workflows without Redis and without waiting: runs on
//! the in-memory store with a clock the test moves.
//!
//! ```
//! use std::time::Duration;
//! use keel_worker::testing::TestEnv;
//! use keel_worker::{Context, Result, StepError, Workflow};
//! use keel_engine::proto::RunStatus;
//!
//! async fn remind(ctx: Context, who: String) -> Result<String> {
//!     ctx.sleep("wait-a-day", Duration::from_secs(24 * 3600)).await?;
//!     ctx.step("send").retry(3).run(|| async move { Ok::<_, StepError>(format!("reminded {who}")) }).await
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let env = TestEnv::new([Workflow::new("remind", remind)]).await;
//! // The first attempt of "send" fails; the retry (after a durable back-off) succeeds.
//! env.fail_step("send", 1, StepError::retryable("smtp down"));
//! // A day of sleep and the back-off pass in no time.
//! let run = env.run_to_end("remind", "ann").await;
//! assert_eq!(run.status, RunStatus::Completed);
//! assert_eq!(run.output, Some(serde_json::json!("reminded ann")));
//! // The journal: the failed attempt, then the result of the second.
//! let attempts: Vec<u32> = env.journal(&run.run_id).await.iter().filter_map(|r| match &r.entry.event {
//!     keel_engine::proto::JournalEvent::StepFailed { attempt, .. }
//!     | keel_engine::proto::JournalEvent::StepCompleted { attempt, .. } => Some(*attempt),
//!     _ => None,
//! }).collect();
//! assert_eq!(attempts, [1, 2]);
//! # });
//! ```

use keel_engine::RunStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_engine::proto::{JournalRecord, RunId, RunSummary};
use keel_engine::{CreateRun, Delivered, ManualClock, MemoryStore, StoreConfig};
use serde::Serialize;

use crate::{StepError, Worker, Workflow};

/// Workflows on an in-memory store, driven step by step by the test.
pub struct TestEnv {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    worker: Worker,
    failures: Arc<Mutex<HashMap<String, (u32, StepError)>>>,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv").field("worker", &self.worker).finish_non_exhaustive()
    }
}

/// The step name an id was made from (`fetch#2@0/1` -> `fetch`).
fn step_name(step_id: &str) -> &str {
    let end = step_id.find(['#', '@']).unwrap_or(step_id.len());
    &step_id[..end]
}

impl TestEnv {
    /// An environment running these workflows.
    pub async fn new(workflows: impl IntoIterator<Item = Workflow>) -> Self {
        let clock = Arc::new(ManualClock::new());
        let store = Arc::new(MemoryStore::with_clock(StoreConfig::default(), clock.clone()));
        let failures: Arc<Mutex<HashMap<String, (u32, StepError)>>> = Arc::default();
        let injected = failures.clone();
        let mut builder =
            Worker::builder().store(store.clone()).interceptor(crate::runtime::interceptor_from(move |info| {
                let mut failures = injected.lock().unwrap_or_else(|p| p.into_inner());
                let (left, error) = failures.get_mut(step_name(&info.step_id))?;
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                Some(error.clone())
            }));
        for workflow in workflows {
            builder = builder.register(workflow);
        }
        let worker = builder.build().await.unwrap_or_else(|e| panic!("the test workflows do not register: {e}"));
        Self { store, clock, worker, failures }
    }

    /// The next `times` attempts of steps named `name` fail with `error` without running.
    pub fn fail_step(&self, name: &str, times: u32, error: StepError) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), (times, error));
    }

    pub fn store(&self) -> Arc<MemoryStore> {
        self.store.clone()
    }

    /// Start a run (not yet executed: see [`run_until_idle`](Self::run_until_idle)).
    pub async fn start(&self, workflow: &str, input: impl Serialize) -> RunId {
        let input = serde_json::to_value(input).unwrap_or_else(|e| panic!("the input is not JSON: {e}"));
        let version = self.worker.latest_version(workflow).unwrap_or_else(|| panic!("{workflow:?} is not registered"));
        let req = CreateRun { workflow: workflow.into(), version, input, ..Default::default() };
        self.store.create_run(req).await.unwrap_or_else(|e| panic!("start {workflow}: {e}")).run_id
    }

    /// Execute everything that can run now (tasks, due timers), until nothing can.
    pub async fn run_until_idle(&self) {
        for _ in 0..10_000 {
            match self.worker.drain_once().await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => panic!("the in-memory store failed: {e}"),
            }
        }
        panic!("the workflows kept running for 10,000 rounds: a loop without end?");
    }

    /// Move time forward (sleeps, back-offs and wait timeouts come due) and run.
    pub async fn skip(&self, by: Duration) {
        self.clock.advance_ms(by.as_millis() as u64);
        self.run_until_idle().await;
    }

    /// Start a run and drive it to its end, skipping every timer it waits for.
    /// Returns early (not final) if it waits for an event with no timeout.
    pub async fn run_to_end(&self, workflow: &str, input: impl Serialize) -> RunSummary {
        let id = self.start(workflow, input).await;
        self.drive_to_end(&id).await
    }

    /// Drive an existing run to its end, skipping every timer it waits for.
    pub async fn drive_to_end(&self, id: &RunId) -> RunSummary {
        loop {
            self.run_until_idle().await;
            let run = self.run(id).await;
            if run.status.is_final() {
                return run;
            }
            match run.wake_at_ms {
                Some(at) => {
                    let now = keel_engine::Clock::now_ms(self.clock.as_ref());
                    self.clock.advance_ms(at.saturating_sub(now) + 1);
                }
                None => return run,
            }
        }
    }

    /// Deliver an event, then run what it woke.
    pub async fn send_event(&self, key: &str, data: impl Serialize) -> Delivered {
        let data = serde_json::to_value(data).unwrap_or_else(|e| panic!("the event is not JSON: {e}"));
        let delivered = self.store.deliver_event(key, &data).await.unwrap_or_else(|e| panic!("deliver {key}: {e}"));
        self.run_until_idle().await;
        delivered
    }

    pub async fn run(&self, id: &RunId) -> RunSummary {
        self.store.get_run(id).await.ok().flatten().unwrap_or_else(|| panic!("run {id} does not exist"))
    }

    pub async fn journal(&self, id: &RunId) -> Vec<JournalRecord> {
        self.store.read_journal(id, None, usize::MAX).await.unwrap_or_else(|e| panic!("journal of {id}: {e}"))
    }

    /// Request a cancel, then run what it changed.
    pub async fn cancel(&self, id: &RunId) {
        self.store.request_cancel(id, None).await.unwrap_or_else(|e| panic!("cancel {id}: {e}"));
        self.run_until_idle().await;
    }
}
