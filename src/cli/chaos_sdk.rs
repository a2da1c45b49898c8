//! `keel chaos`'s second workload, when node is installed: an app written with
//! the unmodified `@upstash/workflow` SDK (sdk-tests/app.mjs) whose runs go
//! through the QStash protocol while the faults hit the same servers, workers
//! and Redis. Every run the app's `client.trigger` got acknowledged must end
//! completed with its right output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use keel_engine::proto::{RunId, RunStatus};
use keel_engine::{RedisStore, RunStore};
use serde_json::{Value, json};

use super::bench::{Proc, free_port};

/// The SDK app (one process per Keel server, its QSTASH_URL that server's)
/// and the runs it started.
pub(crate) struct SdkWorkload {
    _apps: Vec<Proc>,
    urls: Vec<String>,
    /// Run index -> the run id `client.trigger` acknowledged.
    acknowledged: Arc<Mutex<BTreeMap<usize, RunId>>>,
}

/// What the checks found.
#[derive(Debug, Default)]
pub(crate) struct SdkOutcome {
    pub completed: usize,
    pub acknowledged: usize,
}

fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl SdkWorkload {
    /// The app on `dir`, one process per server in `bases` (each its
    /// QSTASH_URL); None (and why, on stderr) when node or the pinned SDK is
    /// not here.
    pub(crate) async fn start(dir: &Path, bases: &[String], http: &reqwest::Client) -> anyhow::Result<Option<Self>> {
        if !node_available() {
            eprintln!("keel chaos: node is not installed: no Upstash SDK workload");
            return Ok(None);
        }
        if !dir.join("node_modules/@upstash/workflow").is_dir() {
            eprintln!(
                "keel chaos: the Upstash SDKs are not installed in {} (npm ci there): no Upstash SDK workload",
                dir.display()
            );
            return Ok(None);
        }
        let keys: Value = http.get(format!("{}/v2/keys", bases[0])).send().await?.json().await?;
        let (mut apps, mut urls) = (Vec::new(), Vec::new());
        for base in bases {
            let port = free_port()?;
            let app = Command::new("node")
                .arg("app.mjs")
                .current_dir(dir)
                .env("PORT", port.to_string())
                .env("QSTASH_URL", base)
                .env("QSTASH_TOKEN", "chaos")
                .env("QSTASH_CURRENT_SIGNING_KEY", keys["current"].as_str().unwrap_or_default())
                .env("QSTASH_NEXT_SIGNING_KEY", keys["next"].as_str().unwrap_or_default())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting the SDK app (node app.mjs)")?;
            apps.push(Proc(app));
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                anyhow::ensure!(Instant::now() < deadline, "the SDK app did not listen within 30 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            urls.push(format!("http://127.0.0.1:{port}"));
        }
        Ok(Some(Self { _apps: apps, urls, acknowledged: Arc::default() }))
    }

    /// Start `runs` runs of the app's three-step workflow, one per `gap`, each
    /// retried (same run id: deduplicated) until the trigger is acknowledged.
    pub(crate) fn load(
        &self,
        runs: usize,
        gap: Duration,
        seed: u64,
        http: &reqwest::Client,
    ) -> tokio::task::JoinHandle<()> {
        let (urls, acknowledged, http) = (self.urls.clone(), self.acknowledged.clone(), http.clone());
        tokio::spawn(async move {
            let started_at = Instant::now();
            let mut triggers = tokio::task::JoinSet::new();
            for i in 0..runs {
                tokio::time::sleep_until((started_at + gap * i as u32).into()).await;
                let (urls, acknowledged, http) = (urls.clone(), acknowledged.clone(), http.clone());
                triggers.spawn(async move {
                    let options =
                        json!({"workflowRunId": format!("chaos-{seed}-{i}"), "retries": 20, "retryDelay": "500"});
                    let request = json!({"path": "/plain/sequential", "body": {"n": i}, "options": options});
                    let deadline = Instant::now() + Duration::from_secs(120);
                    // The apps in turn (each behind its own server), as a
                    // client would fail over; the run id makes a repeat the same run.
                    let mut turn = i;
                    while Instant::now() < deadline {
                        let url = &urls[turn % urls.len()];
                        turn += 1;
                        let answer = http.post(format!("{url}/control/trigger")).json(&request).send().await;
                        if let Ok(answer) = answer
                            && answer.status().is_success()
                            && let Ok(body) = answer.json::<Value>().await
                            && let Some(id) = body["workflowRunId"].as_str().and_then(|id| RunId::new(id).ok())
                        {
                            acknowledged.lock().unwrap_or_else(|p| p.into_inner()).insert(i, id);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                });
            }
            while triggers.join_next().await.is_some() {}
        })
    }

    /// How many acknowledged runs are not final yet.
    pub(crate) async fn unfinished(&self, store: &RedisStore) -> usize {
        let ids: Vec<RunId> = self.acknowledged.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut open = 0;
        for id in ids {
            if !matches!(store.get_run(&id).await, Ok(Some(run)) if run.status.is_final()) {
                open += 1;
            }
        }
        open
    }

    /// Every acknowledged run: completed, with the output its input implies.
    pub(crate) async fn check(&self, store: &RedisStore) -> anyhow::Result<SdkOutcome> {
        let acked = self.acknowledged.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut outcome = SdkOutcome { acknowledged: acked.len(), ..Default::default() };
        for (i, id) in acked {
            let run = store.get_run(&id).await?;
            let expected = Value::String(format!("c(b(a({i})))"));
            match run {
                Some(run) if run.status == RunStatus::Completed && run.output.as_ref() == Some(&expected) => {
                    outcome.completed += 1;
                }
                other => eprintln!("keel chaos: SDK run {id} ended wrong: {other:?}"),
            }
        }
        Ok(outcome)
    }
}

/// Where the SDK app is: `--sdk-app`, else `sdk-tests` here.
pub(crate) fn app_dir(given: Option<&PathBuf>) -> PathBuf {
    given.cloned().unwrap_or_else(|| PathBuf::from("sdk-tests"))
}
