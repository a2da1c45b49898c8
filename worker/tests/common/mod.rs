//! Shared by the worker's integration tests: stores, in-process workers, and
//! bounded waits.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::proto::{JournalEvent, JournalRecord, RunId, RunSummary};
use keel_engine::testing::RedisServer;
use keel_engine::{CreateRun, MemoryStore, RedisStore, Store, StoreConfig};
use keel_worker::{Worker, Workflow};
use tokio::sync::oneshot;

/// Each case once on the in-memory store and once on a private Redis.
#[allow(unused_macros)]
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::common::memory().await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::common::redis().await).await;
                }
            )*
        }
    };
}

/// A store to run on, and what keeps it alive.
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub redis: Option<RedisServer>,
    pub namespace: String,
}

pub async fn memory() -> Backend {
    Backend { store: Arc::new(MemoryStore::new(StoreConfig::default())), redis: None, namespace: "keel".into() }
}

pub async fn redis() -> Backend {
    let server = RedisServer::start();
    let namespace = RedisServer::unique_namespace("worker");
    let store =
        RedisStore::connect(&server.url(), StoreConfig::with_namespace(namespace.clone())).await.expect("connect");
    Backend { store: Arc::new(store), redis: Some(server), namespace }
}

/// A worker running in this process until stopped.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

pub async fn spawn_worker(store: &Arc<dyn Store>, workflows: Vec<Workflow>, lease: Duration) -> Running {
    let mut builder = Worker::builder()
        .store(store.clone())
        .lease(lease)
        .timer_tick(Duration::from_millis(20))
        .shutdown_grace(Duration::from_millis(500));
    for workflow in workflows {
        builder = builder.register(workflow);
    }
    run_worker(builder).await
}

/// Build and run a configured worker in this process until stopped.
pub async fn run_worker(builder: keel_worker::WorkerBuilder) -> Running {
    let worker = builder.build().await.expect("worker builds");
    let (stop, stopped) = oneshot::channel();
    let handle = tokio::spawn(async move {
        worker
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .expect("worker runs");
    });
    Running { stop: Some(stop), handle }
}

impl Running {
    /// Graceful shutdown, bounded.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle).await.expect("worker stops in time").ok();
    }
}

pub async fn start(store: &Arc<dyn Store>, workflow: &str, input: serde_json::Value) -> RunId {
    store
        .create_run(CreateRun { workflow: workflow.into(), version: 1, input, ..Default::default() })
        .await
        .expect("start run")
        .run_id
}

/// Poll until `check` holds (every 20 ms, at most `within`).
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_final(store: &Arc<dyn Store>, id: &RunId, within: Duration) -> RunSummary {
    eventually(within, &format!("run {id} to finish"), || async {
        store.get_run(id).await.expect("get_run").filter(|run| run.status.is_final())
    })
    .await
}

pub async fn journal(store: &Arc<dyn Store>, id: &RunId) -> Vec<JournalRecord> {
    store.read_journal(id, None, 100_000).await.expect("journal")
}

/// `(type, step_id)` of each entry.
pub fn shape(journal: &[JournalRecord]) -> Vec<(String, String)> {
    journal
        .iter()
        .map(|r| {
            let kind = serde_json::to_value(&r.entry).expect("json")["type"].as_str().unwrap_or_default().to_owned();
            (kind, r.entry.event.step_id().unwrap_or_default().to_owned())
        })
        .collect()
}

pub fn count(journal: &[JournalRecord], pred: impl Fn(&JournalEvent) -> bool) -> usize {
    journal.iter().filter(|r| pred(&r.entry.event)).count()
}
