//! The worker runtime: claims tasks, replays workflows, keeps leases alive,
//! and runs the store's periodic duties (timers, reclaiming, reconciling,
//! expiry, its own registration).
//!
//! Tasks it spawns, all owned and awaited on shutdown: one per run in flight
//! (each with a heartbeat task of its own), and one for the periodic duties.
//! Shutdown is staged: stop claiming -> let runs finish within the grace period
//! -> hand the rest back (released at once, not after a lease expiry).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use keel_engine::handoff::RunEnd;
use keel_engine::{Claim, ClaimedTask, Finish, Finished, Lease, Store, Suspension};
use keel_proto::{ErrorInfo, JournalEvent, RunStatus, WorkerInfo};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::{Interceptor, RunCore, Settings, Stop};
use crate::workflow::Workflow;
use crate::{Context, RetryPolicy, StepError, StepInfo};

/// Runs registered workflows from a store. Build one with [`Worker::builder`].
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_worker::{Context, Result, StepError, Worker, Workflow};
///
/// async fn hello(ctx: Context, name: String) -> Result<String> {
///     ctx.step("greet").run(|| async move { Ok::<_, StepError>(format!("hello {name}")) }).await
/// }
///
/// # async fn example() -> Result<(), keel_worker::WorkerError> {
/// let worker = Worker::builder()
///     .redis_url("redis://127.0.0.1:6379")
///     .register(Workflow::new("hello", hello))
///     .concurrency(32)
///     .build()
///     .await?;
/// worker.run_until_signal().await
/// # }
/// ```
pub struct Worker {
    store: Arc<dyn Store>,
    workflows: HashMap<String, BTreeMap<u32, Workflow>>,
    settings: Arc<Settings>,
    config: WorkerConfig,
    started_at_ms: u64,
    /// Runs an API in the same process hands over (`keel dev`).
    local: crate::local::Local,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("worker_id", &self.config.worker_id)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct WorkerConfig {
    worker_id: String,
    concurrency: usize,
    lease: Duration,
    claim_block: Duration,
    timer_tick: Duration,
    grace: Duration,
}

/// Why a worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the worker needs a store: call .store(...) or .redis_url(...)")]
    NoStore,
    #[error("no workflow registered: call .register(...) at least once")]
    NoWorkflows,
    #[error("workflow {0:?} version {1} is registered twice")]
    Duplicate(String, u32),
    #[error("bad setting {0}")]
    Setting(String),
    #[error(transparent)]
    Store(#[from] keel_engine::Error),
}

/// Configures a [`Worker`].
#[derive(Default)]
pub struct WorkerBuilder {
    store: Option<Arc<dyn Store>>,
    redis_url: Option<String>,
    /// Cluster mode and TLS files for `redis_url` (its `urls` stay empty).
    redis_extras: keel_engine::RedisTarget,
    namespace: Option<String>,
    workflows: Vec<Workflow>,
    concurrency: Option<usize>,
    lease: Option<Duration>,
    grace: Option<Duration>,
    timer_tick: Option<Duration>,
    worker_id: Option<String>,
    default_retry: Option<RetryPolicy>,
    interceptor: Option<Interceptor>,
    calls: crate::CallSettings,
    /// The caller decided the signer against the deployment's keys (and
    /// follows them): build uses it as it is (see `decided_signing_keys`).
    signer_decided: bool,
    max_value_bytes: Option<usize>,
    partitions: Option<u16>,
    wait_replicas: Option<u32>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder").field("workflows", &self.workflows).finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Run on this store (a `MemoryStore` for tests, a shared `RedisStore`).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Connect to Redis at `url` when building (seed nodes of a cluster
    /// separated by commas).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Cluster mode (`None`: asked of the first node) and TLS files (CA, client
    /// certificate and key) for [`redis_url`](Self::redis_url).
    pub fn redis_options(
        mut self,
        cluster: Option<bool>,
        ca_file: Option<std::path::PathBuf>,
        cert_file: Option<std::path::PathBuf>,
        key_file: Option<std::path::PathBuf>,
    ) -> Self {
        self.redis_extras = keel_engine::RedisTarget { urls: Vec::new(), cluster, ca_file, cert_file, key_file };
        self
    }

    /// The key namespace (with `redis_url`); default `keel`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    pub fn register(mut self, workflow: Workflow) -> Self {
        self.workflows.push(workflow);
        self
    }

    /// Read the settings `keel worker` reads from the environment: `KEEL_REDIS_URL`
    /// (or `REDIS_URL`), `KEEL_REDIS_CLUSTER`, `KEEL_REDIS_CA_FILE`,
    /// `KEEL_REDIS_CERT_FILE`, `KEEL_REDIS_KEY_FILE`, `KEEL_PARTITIONS`, `KEEL_REDIS_WAIT_REPLICAS`, `KEEL_NAMESPACE`, `KEEL_LEASE` (`30s`), `KEEL_CONCURRENCY`,
    /// `KEEL_SIGNING_KEY`, `KEEL_ALLOW_PRIVATE_TARGETS` (`1/0`, `true/false`,
    /// `yes/no`), `KEEL_MAX_VALUE_BYTES`. Unset ones keep their defaults; a value
    /// that does not parse is an error naming the variable.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), keel_worker::WorkerError> {
    /// # use keel_worker::{Worker, Workflow};
    /// # let workflow: Workflow = todo!();
    /// Worker::builder().from_env()?.register(workflow).build().await?.run_until_signal().await
    /// # }
    /// ```
    pub fn from_env(self) -> Result<Self, WorkerError> {
        self.read_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    fn read_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self, WorkerError> {
        let bad = |name: &str, reason: String| WorkerError::Setting(format!("{name}: {reason}"));
        if let Some(url) = var("KEEL_REDIS_URL").or_else(|| var("REDIS_URL")) {
            self.redis_url = Some(url);
        }
        if let Some(cluster) = var("KEEL_REDIS_CLUSTER") {
            self.redis_extras.cluster =
                Some(keel_engine::parse_bool(&cluster).map_err(|e| bad("KEEL_REDIS_CLUSTER", e))?);
        }
        for (name, file) in [
            ("KEEL_REDIS_CA_FILE", &mut self.redis_extras.ca_file),
            ("KEEL_REDIS_CERT_FILE", &mut self.redis_extras.cert_file),
            ("KEEL_REDIS_KEY_FILE", &mut self.redis_extras.key_file),
        ] {
            if let Some(path) = var(name) {
                *file = Some(path.into());
            }
        }
        if let Some(n) = var("KEEL_PARTITIONS") {
            self.partitions =
                Some(n.trim().parse().map_err(|_| bad("KEEL_PARTITIONS", format!("{n:?} is not a number")))?);
        }
        if let Some(n) = var("KEEL_REDIS_WAIT_REPLICAS") {
            self.wait_replicas =
                Some(n.trim().parse().map_err(|_| bad("KEEL_REDIS_WAIT_REPLICAS", format!("{n:?} is not a number")))?);
        }
        if let Some(namespace) = var("KEEL_NAMESPACE") {
            self.namespace = Some(namespace);
        }
        if let Some(lease) = var("KEEL_LEASE") {
            self.lease = Some(keel_engine::parse_duration(&lease).map_err(|e| bad("KEEL_LEASE", e))?);
        }
        if let Some(n) = var("KEEL_CONCURRENCY") {
            let n: usize = n.trim().parse().map_err(|_| bad("KEEL_CONCURRENCY", format!("{n:?} is not a number")))?;
            self = self.concurrency(n);
        }
        if let Some(key) = var("KEEL_SIGNING_KEY") {
            // Never echo the key itself.
            let signer = keel_net::Signer::from_base64(&key).map_err(|e| bad("KEEL_SIGNING_KEY", e.to_string()))?;
            self.calls.signer = Some(signer);
        }
        if let Some(allow) = var("KEEL_ALLOW_PRIVATE_TARGETS") {
            self.calls.allow_private_targets =
                keel_engine::parse_bool(&allow).map_err(|e| bad("KEEL_ALLOW_PRIVATE_TARGETS", e))?;
        }
        if let Some(max) = var("KEEL_MAX_VALUE_BYTES") {
            let max: usize =
                max.trim().parse().map_err(|_| bad("KEEL_MAX_VALUE_BYTES", format!("{max:?} is not a number")))?;
            self.max_value_bytes = Some(max.max(1));
        }
        Ok(self)
    }

    /// How many runs execute at once (default 32).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n.max(1));
        self
    }

    /// How long a lease lasts without a heartbeat (default 30 s). A crashed
    /// worker's runs are taken over after this long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// How long shutdown lets runs finish before handing them back (default 10 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// How often due timers are moved to the queues (default 100 ms).
    pub fn timer_tick(mut self, tick: Duration) -> Self {
        self.timer_tick = Some(tick);
        self
    }

    /// Default: `host:pid:uuid`, unique per process start.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// The retry policy of steps that set none (default: 3 attempts, 1 s then 2 s).
    pub fn default_retry(mut self, policy: RetryPolicy) -> Self {
        self.default_retry = Some(policy);
        self
    }

    /// The key `ctx.call(...signed())` signs with (the server's KEEL_SIGNING_KEY,
    /// so services can verify calls with the key from /v1/webhooks/signing-key).
    pub fn signing_key(mut self, signer: keel_net::Signer) -> Self {
        self.calls.signer = Some(signer);
        self
    }

    /// Sign with what [`crate::signing::signing_keys`] already decided in this
    /// process (`keel dev`, `keel worker`): the worker shares that signer, and
    /// its follower, instead of deciding and following again.
    pub fn decided_signing_keys(mut self, signer: keel_net::Signer) -> Self {
        self.calls.signer = Some(signer);
        self.signer_decided = true;
        self
    }

    /// Let `ctx.call` reach private and loopback addresses (off by default).
    pub fn allow_private_targets(mut self, allow: bool) -> Self {
        self.calls.allow_private_targets = allow;
        self
    }

    pub(crate) fn interceptor(mut self, interceptor: Interceptor) -> Self {
        self.interceptor = Some(interceptor);
        self
    }

    pub async fn build(self) -> Result<Worker, WorkerError> {
        let store: Arc<dyn Store> = match (self.store, self.redis_url) {
            (Some(store), _) => store,
            (None, Some(url)) => {
                let mut config =
                    keel_engine::StoreConfig::with_namespace(self.namespace.unwrap_or_else(|| "keel".into()));
                if let Some(max) = self.max_value_bytes {
                    config.max_value_bytes = max;
                }
                config.partitions = self.partitions;
                config.wait_replicas = self.wait_replicas.unwrap_or(0);
                let target =
                    keel_engine::RedisTarget { urls: keel_engine::RedisTarget::parse(&url)?.urls, ..self.redis_extras };
                Arc::new(keel_engine::RedisStore::connect_to(&target, config).await?)
            }
            (None, None) => return Err(WorkerError::NoStore),
        };
        if self.workflows.is_empty() {
            return Err(WorkerError::NoWorkflows);
        }
        let mut workflows: HashMap<String, BTreeMap<u32, Workflow>> = HashMap::new();
        for workflow in self.workflows {
            keel_proto::validate_workflow_name(&workflow.name).map_err(keel_engine::Error::from)?;
            let versions = workflows.entry(workflow.name.clone()).or_default();
            if versions.contains_key(&workflow.version) {
                return Err(WorkerError::Duplicate(workflow.name, workflow.version));
            }
            versions.insert(workflow.version, workflow);
        }
        let versions = workflows
            .iter()
            .filter_map(|(name, versions)| Some((name.clone(), *versions.keys().next_back()?)))
            .collect();
        let worker_id = self.worker_id.unwrap_or_else(default_worker_id);
        let heartbeats = crate::heartbeat::Heartbeats::start(&store).await?;
        let lease = self.lease.unwrap_or(Duration::from_secs(30));
        let flow = crate::flow::FlowGate::new(store.clone(), lease);
        let weak = Arc::downgrade(&flow);
        heartbeats.spawn_with_store(move |own| crate::flow::FlowGate::send(weak, own, lease));
        let mut calls = self.calls;
        calls.max_response_bytes.get_or_insert(store.config().max_value_bytes);
        // The worker signs calls with the deployment's keys (the first process
        // of the deployment made them; rotations reach it within seconds), so
        // services verify them with /v1/webhooks/signing-key of any server;
        // or with a KEEL_SIGNING_KEY of its own the deployment does not have.
        let signer = match calls.signer.take() {
            Some(decided) if self.signer_decided => decided,
            given => {
                let (offer, own) = match given {
                    Some(signer) => (signer, true),
                    None => (
                        keel_net::Signer::generate().map_err(|e| WorkerError::Setting(format!("signing key: {e}")))?,
                        false,
                    ),
                };
                match crate::signing::signing_keys(&store, offer, own).await? {
                    crate::signing::SigningKeys::Deployment(signer) => signer,
                    crate::signing::SigningKeys::Own { signer, deployment_public_key } => {
                        tracing::warn!(
                            deployment_public_key = %deployment_public_key,
                            "KEEL_SIGNING_KEY is not one of the deployment's signing keys: this worker signs calls \
                             with its own, which services that fetched a server's keys will refuse"
                        );
                        signer
                    }
                }
            }
        };
        calls.signer = Some(signer);
        Ok(Worker {
            store,
            workflows,
            settings: Arc::new(Settings {
                default_retry: self.default_retry.unwrap_or_default(),
                interceptor: self.interceptor,
                versions,
                calls,
                heartbeats,
                flow,
            }),
            config: WorkerConfig {
                worker_id,
                concurrency: self.concurrency.unwrap_or(32),
                lease,
                claim_block: Duration::from_secs(1),
                timer_tick: self.timer_tick.unwrap_or(Duration::from_millis(100)),
                grace: self.grace.unwrap_or(Duration::from_secs(10)),
            },
            started_at_ms: keel_engine::Clock::now_ms(&keel_engine::SystemClock),
            local: crate::local::Local::new(self.concurrency.unwrap_or(32)),
        })
    }
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "worker".into());
    let host: String = host.chars().filter(|c| !c.is_whitespace()).collect();
    format!("{host}:{}:{}", std::process::id(), uuid::Uuid::now_v7().simple())
}

impl Worker {
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The workflows this worker runs: name -> versions.
    pub fn workflows(&self) -> BTreeMap<String, Vec<u32>> {
        self.workflows.iter().map(|(name, versions)| (name.clone(), versions.keys().copied().collect())).collect()
    }

    /// The newest version registered for `workflow`.
    pub fn latest_version(&self, workflow: &str) -> Option<u32> {
        self.settings.versions.get(workflow).copied()
    }

    /// For an API in the same process (`keel dev`): starts it hands over are
    /// created leased to this worker and run here at once, without a trip
    /// through the queue (see keel_engine::handoff). They run once
    /// [`run`](Self::run) does, in slots apart from the claimed runs' (as many).
    pub fn handoff(&self) -> Arc<dyn keel_engine::handoff::LocalWorker> {
        self.local.handoff(&self.config.worker_id, self.config.lease, self.workflows())
    }

    pub(crate) fn local(&self) -> &crate::local::Local {
        &self.local
    }

    fn claim_request(&self, max: usize, block: Duration) -> Claim {
        Claim {
            workflows: self.workflows.keys().cloned().collect(),
            worker_id: self.config.worker_id.clone(),
            lease: self.config.lease,
            max,
            block,
            versions: self.workflows(),
        }
    }

    /// Run until SIGINT or SIGTERM, then shut down gracefully.
    pub async fn run_until_signal(self) -> Result<(), WorkerError> {
        self.run(shutdown_signal()).await
    }

    /// Run until `shutdown` completes, then shut down gracefully: stop claiming,
    /// let runs in flight finish within the grace period, hand the rest back.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), WorkerError> {
        let worker = Arc::new(self);
        let stop = CancellationToken::new();
        let handback = CancellationToken::new();
        let duties = tokio::spawn(worker.clone().periodic_duties(stop.clone()));
        let mut local = tokio::spawn(crate::local::Local::serve(worker.clone(), stop.clone(), handback.clone()));
        let permits = Arc::new(Semaphore::new(worker.config.concurrency));
        let mut runs = JoinSet::new();
        tracing::info!(worker_id = %worker.config.worker_id, workflows = ?worker.workflows(), "worker started");

        tokio::pin!(shutdown);
        let reclaim_every = (worker.config.lease / 4).max(Duration::from_millis(50));
        let mut last_reclaim = Instant::now() - reclaim_every;
        let mut failures = 0u32;
        loop {
            let first = tokio::select! {
                // Shutdown first: with a free permit both branches are ready, and a
                // random pick would go on claiming after the signal.
                biased;
                _ = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            };
            let mut held = vec![first];
            while let Ok(more) = permits.clone().try_acquire_owned() {
                held.push(more);
            }
            let reclaim = last_reclaim.elapsed() >= reclaim_every;
            let request =
                worker.claim_request(held.len(), if reclaim { Duration::ZERO } else { worker.config.claim_block });
            // The claim is not raced against shutdown: a claim dropped half-way would
            // strand delivered tasks until their lease expired. It blocks 1 s at most.
            let claimed = if reclaim {
                last_reclaim = Instant::now();
                worker.store.reclaim_expired(&request).await
            } else {
                worker.store.claim(&request).await
            };
            match claimed {
                Ok(tasks) => {
                    failures = 0;
                    for task in tasks {
                        let Some(permit) = held.pop() else { break };
                        let worker = worker.clone();
                        let handback = handback.clone();
                        runs.spawn(async move {
                            worker.execute_guarded(task, handback).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    failures += 1;
                    let pause = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
                    tracing::warn!(error = %e, ?pause, "claiming tasks failed; retrying");
                    tokio::select! { biased; _ = &mut shutdown => break, _ = tokio::time::sleep(pause) => {} }
                }
            }
            while let Some(joined) = runs.try_join_next() {
                log_join_error(joined);
            }
        }

        tracing::info!(in_flight = runs.len(), grace = ?worker.config.grace, "worker stopping: no new tasks");
        stop.cancel();
        let drained = tokio::time::timeout(worker.config.grace, async {
            while let Some(joined) = runs.join_next().await {
                log_join_error(joined);
            }
            log_join_error((&mut local).await);
        })
        .await;
        if drained.is_err() {
            tracing::info!(in_flight = runs.len(), "grace period over: handing the remaining runs back");
            handback.cancel();
            while let Some(joined) = runs.join_next().await {
                log_join_error(joined);
            }
            log_join_error(local.await);
        }
        let _ = duties.await;
        // Gone at once, not after the registration's time to live: the API and
        // other workers stop counting on this one now.
        if let Err(e) = worker.store.unregister_worker(&worker.config.worker_id).await {
            tracing::warn!(error = %e, "removing the worker's registration failed; it expires by itself");
        }
        tracing::info!("worker stopped");
        Ok(())
    }

    /// Timers, reconciling, expiry and the worker's registration.
    async fn periodic_duties(self: Arc<Self>, stop: CancellationToken) {
        let info = WorkerInfo {
            worker_id: self.config.worker_id.clone(),
            workflows: self.workflows(),
            input_schemas: self
                .workflows
                .iter()
                .filter_map(|(name, versions)| {
                    let newest = versions.values().next_back()?;
                    Some((name.clone(), serde_json::to_value(newest.input_schema()).ok()?))
                })
                .collect(),
            started_at_ms: self.started_at_ms,
            heartbeat_at_ms: 0,
        };
        let duties =
            keel_engine::Duties { timer_tick: self.config.timer_tick, registration: Some(info), ..Default::default() };
        keel_engine::run_duties(self.store.as_ref(), duties, stop.cancelled()).await;
    }

    /// Fire due timers, then claim what is queued (without blocking) and run each
    /// task to the end of its lease, one after another. Returns how many timers
    /// fired and tasks ran. For the testing harness.
    pub(crate) async fn drain_once(&self) -> Result<usize, keel_engine::Error> {
        let mut ran = self.store.fire_due_timers(1000).await?.len();
        loop {
            let tasks = self.store.claim(&self.claim_request(1, Duration::ZERO)).await?;
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                self.execute(task, CancellationToken::new()).await;
                ran += 1;
            }
        }
        Ok(ran)
    }

    /// Run one claimed task until its lease ends, in the run's tracing span.
    /// [`execute`](Self::execute), a panic of its own caught. A panic there is
    /// a bug of the runtime's (the workflow's own panics are caught closer to
    /// them): say so; the lease lapses (its renewals end with the execution)
    /// and another worker replays the run.
    pub(crate) async fn execute_guarded(&self, task: ClaimedTask, handback: CancellationToken) -> Option<RunEnd> {
        let run_id = task.lease.run_id.clone();
        match AssertUnwindSafe(self.execute(task, handback)).catch_unwind().await {
            Ok(end) => end,
            Err(panic) => {
                tracing::error!(%run_id, panic = %panic_message(&*panic), "the execution of a run panicked; its lease will lapse");
                None
            }
        }
    }

    /// Run one claimed task until its lease ends, in the run's tracing span;
    /// how the run ended, if this execution completed or failed it.
    async fn execute(&self, task: ClaimedTask, handback: CancellationToken) -> Option<RunEnd> {
        let lease = &task.lease;
        let span = tracing::info_span!("run", run_id = %lease.run_id, workflow = %lease.workflow, epoch = lease.epoch);
        self.execute_in_span(task, handback).instrument(span).await
    }

    async fn execute_in_span(&self, task: ClaimedTask, handback: CancellationToken) -> Option<RunEnd> {
        let lease = task.lease.clone();
        let Some(workflow) = self.workflows.get(&lease.workflow).and_then(|v| v.get(&task.run.version)).cloned() else {
            // Claims carry this worker's versions, so the store parks such runs
            // instead of handing them out; a store that did anyway gets it back.
            tracing::error!(version = task.run.version, "handed a run of a version this worker lacks; handing it back");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = self.finish(&lease, &[], Finish::Release).await;
            return None;
        };
        let Some(input) = task.journal.iter().find_map(|r| match &r.entry.event {
            JournalEvent::RunStarted { input, .. } => Some(input.clone()),
            _ => None,
        }) else {
            let error = ErrorInfo::new("corrupt_journal", "the run's journal has no run_started entry");
            let _ = self.finish(&lease, &[], Finish::Fail { error }).await;
            return None;
        };

        // Every step of the run under its start's flow-control key (checked
        // when it started; one that no longer checks runs without).
        let flow = task.run.flow_control.as_ref().and_then(|fc| match crate::flow::FlowAsk::of(fc) {
            Ok(ask) => Some(ask),
            Err(e) => {
                tracing::warn!(error = %e, "the run's flow control does not check; its steps run without");
                None
            }
        });
        // Renewals end when this guard drops: on every way out of here, panics included.
        let board = Arc::new(crate::marks::AttemptBoard::default());
        let (_renewals, lost) = self.settings.heartbeats.keep(lease.clone(), self.config.lease, board.clone());
        let base = (task.now_ms, Instant::now());
        let now = move || base.0 + base.1.elapsed().as_millis() as u64;
        let mut journal = task.journal;
        let mut stop = if task.run.cancel_requested {
            Some(Stop::Cancel)
        } else if task.run.pause_requested {
            Some(Stop::Pause)
        } else {
            None
        };
        loop {
            let core = RunCore::new(
                self.store.clone(),
                lease.clone(),
                self.settings.clone(),
                std::mem::take(&mut journal),
                now(),
                stop.clone(),
                crate::context::Shared { board: board.clone(), flow: flow.clone() },
            );
            let ctx = Context::new(core.clone());
            let outcome = self.drive(core.clone(), (workflow.handler)(ctx, input.clone()), &lost, &handback).await;
            let limit = self.store.config().max_value_bytes;
            let outcome = match outcome {
                Outcome::Returned(Ok(output)) => match keel_engine::check_value_size("run's output", &output, limit) {
                    Ok(()) => Outcome::Returned(Ok(output)),
                    Err(e) => Outcome::Fail(ErrorInfo::new("payload_too_large", e.to_string())),
                },
                other => other,
            };
            if let Outcome::Abandon(reason) = &outcome {
                tracing::warn!(%reason, "abandoning the run: its lease will lapse and another attempt replays it");
                break;
            }
            // Completed steps not yet written (see RunCore::deferred) go with a
            // finish that ends this execution; before a suspension (whose event
            // may already be there, replayed here from the journal) or a
            // failure handler (which reads the journal) they are written first.
            let ends_here = matches!(outcome, Outcome::Returned(Ok(_)) | Outcome::Cancel | Outcome::Release);
            if !ends_here && !core.flush().await {
                break;
            }
            let entries = core.take_deferred();
            let how = match outcome {
                Outcome::Returned(Ok(output)) => Finish::Complete { output },
                Outcome::Returned(Err(error)) => {
                    match self.on_failure(&workflow, &core, &input, error.info().clone(), &lost, &handback).await {
                        Some(how) => how,
                        None => break,
                    }
                }
                Outcome::Fail(error) => {
                    match self.on_failure(&workflow, &core, &input, error, &lost, &handback).await {
                        Some(how) => how,
                        None => break,
                    }
                }
                Outcome::Cancel => Finish::Cancel { reason: None },
                Outcome::Suspend(suspension) => Finish::Suspend(suspension),
                Outcome::Release => Finish::Release,
                Outcome::Abandon(_) => break,
            };
            let end = match &how {
                Finish::Complete { output } => {
                    Some(RunEnd { status: RunStatus::Completed, output: Some(output.clone()), error: None })
                }
                Finish::Fail { error } => {
                    Some(RunEnd { status: RunStatus::Failed, output: None, error: Some(error.clone()) })
                }
                _ => None,
            };
            match self.finish(&lease, &entries, how).await {
                Some(Finished::Done) => return end,
                Some(Finished::EventArrived(record)) => {
                    // The event was already there: the lease is still ours, go on.
                    journal = core.state().journal.clone();
                    journal.push(record);
                    stop = core.state().stop.clone().filter(|s| matches!(s, Stop::Cancel | Stop::Pause));
                }
                _ => break,
            }
        }
        None
    }

    /// Poll the workflow until it returns, suspends, stops, or loses its lease.
    async fn drive(
        &self,
        core: Arc<RunCore>,
        fut: impl Future<Output = crate::Result<Value>>,
        lost: &CancellationToken,
        handback: &CancellationToken,
    ) -> Outcome {
        tokio::select! {
            outcome = Driver { fut: Box::pin(fut), core } => outcome,
            _ = lost.cancelled() => Outcome::Abandon("the lease was taken over".into()),
            _ = handback.cancelled() => Outcome::Release,
        }
    }

    /// A run failed for good: run the workflow's failure handler once (journaled
    /// as the step `keel.on_failure`), then fail the run.
    async fn on_failure(
        &self,
        workflow: &Workflow,
        core: &Arc<RunCore>,
        input: &Value,
        error: ErrorInfo,
        lost: &CancellationToken,
        handback: &CancellationToken,
    ) -> Option<Finish> {
        let Some(handler) = workflow.on_failure.clone() else { return Some(Finish::Fail { error }) };
        let journal = core.state().journal.clone();
        let fresh = RunCore::new(
            self.store.clone(),
            core.lease.clone(),
            self.settings.clone(),
            journal,
            core.now_ms(),
            None,
            crate::context::Shared { board: core.board.clone(), flow: core.flow.clone() },
        );
        let ctx = Context::new(fresh.clone());
        let (input, reported) = (input.clone(), error.clone());
        let handled = crate::context::in_branch("failure", async move {
            ctx.step("keel.on_failure")
                .run(|| async move {
                    handler(ctx.clone(), input, reported).await.map_err(|e| StepError::retryable(e.to_string()))
                })
                .await
        });
        let outcome =
            self.drive(fresh.clone(), async move { handled.await.map(|()| Value::Null) }, lost, handback).await;
        // The handler's own completed step is written before the run fails.
        if !matches!(outcome, Outcome::Abandon(_)) && !fresh.flush().await {
            return None;
        }
        match outcome {
            Outcome::Suspend(suspension) => Some(Finish::Suspend(suspension)),
            Outcome::Abandon(_) => None,
            Outcome::Release => Some(Finish::Release),
            // Handled, or the handler itself failed for good: the run fails either way.
            _ => Some(Finish::Fail { error }),
        }
    }

    /// Finish the lease; retried on store errors (a fenced finish is safe to
    /// repeat: a second one that finds the lease spent changes nothing).
    async fn finish(&self, lease: &Lease, entries: &[JournalEvent], how: Finish) -> Option<Finished> {
        for attempt in 0..6u32 {
            match self.store.finish(lease, entries, how.clone()).await {
                Ok(finished) => return Some(finished),
                Err(keel_engine::Error::LeaseLost { .. }) => {
                    tracing::info!("the run's lease was taken over before it finished; the new holder goes on");
                    return None;
                }
                Err(keel_engine::Error::Invalid(reason)) => {
                    tracing::error!(%reason, "the store refused to finish the run");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "finishing the run failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt))).await;
                }
            }
        }
        None
    }
}

pub(crate) fn log_join_error(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        tracing::error!(error = %e, "a run's execution task ended abnormally");
    }
}

/// The text a panic was raised with.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// How one execution of a workflow ended.
#[derive(Debug)]
enum Outcome {
    Returned(crate::Result<Value>),
    Fail(ErrorInfo),
    Cancel,
    Suspend(Suspension),
    Release,
    Abandon(String),
}

/// Polls the workflow's future and, after each poll, asks whether the run can
/// go on: if every branch is blocked and none is working, it suspends.
struct Driver<F> {
    fut: Pin<Box<F>>,
    core: Arc<RunCore>,
}

impl<F: Future<Output = crate::Result<Value>>> Future for Driver<F> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Outcome> {
        // A panic in the workflow's body (outside any step) fails the run; the
        // future is dropped, never polled again.
        let polled = match std::panic::catch_unwind(AssertUnwindSafe(|| self.fut.as_mut().poll(cx))) {
            Ok(polled) => polled,
            Err(panic) => {
                let message = panic_message(&*panic);
                tracing::error!(panic = %message, "the workflow panicked");
                return Poll::Ready(Outcome::Fail(ErrorInfo::new(
                    "panicked",
                    format!("the workflow panicked: {message}"),
                )));
            }
        };
        let state = self.core.state();
        match (&state.stop, polled) {
            (Some(Stop::Abandon(reason)), _) => return Poll::Ready(Outcome::Abandon(reason.clone())),
            (Some(Stop::Fail(error)), _) => return Poll::Ready(Outcome::Fail(error.clone())),
            (_, Poll::Ready(result)) => return Poll::Ready(Outcome::Returned(result)),
            (Some(Stop::Cancel), Poll::Pending) if state.executing == 0 => return Poll::Ready(Outcome::Cancel),
            (Some(Stop::Pause), Poll::Pending) if state.executing == 0 => return Poll::Ready(Outcome::Release),
            _ => {}
        }
        if state.executing == 0 && (!state.blocked_until.is_empty() || !state.waits.is_empty()) {
            let timeouts = state.waits.iter().filter_map(|(_, timeout)| *timeout);
            let wake_at_ms = state.blocked_until.iter().copied().chain(timeouts).min();
            let waits = state.waits.iter().map(|(wait, _)| wait.clone()).collect();
            let blocked = state.flow_blocked.clone();
            return Poll::Ready(Outcome::Suspend(Suspension { wake_at_ms, waits, blocked }));
        }
        Poll::Pending
    }
}

/// Testing hook: make chosen step attempts fail without running.
pub(crate) fn interceptor_from(f: impl Fn(&StepInfo) -> Option<StepError> + Send + Sync + 'static) -> Interceptor {
    Arc::new(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_env_reads_what_keel_worker_reads() {
        let vars: HashMap<&str, &str> = [
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("KEEL_NAMESPACE", "shop"),
            ("KEEL_LEASE", "5s"),
            ("KEEL_CONCURRENCY", "7"),
            ("KEEL_ALLOW_PRIVATE_TARGETS", "yes"),
            ("KEEL_MAX_VALUE_BYTES", "2048"),
            ("KEEL_REDIS_CLUSTER", "yes"),
            ("KEEL_REDIS_CA_FILE", "/etc/keel/ca.pem"),
        ]
        .into();
        let builder = Worker::builder().read_vars(|name| vars.get(name).map(|v| v.to_string())).unwrap();
        assert_eq!(builder.redis_url.as_deref(), Some("redis://127.0.0.1:1"));
        assert_eq!(builder.namespace.as_deref(), Some("shop"));
        assert_eq!(builder.lease, Some(Duration::from_secs(5)));
        assert_eq!(builder.concurrency, Some(7));
        assert!(builder.calls.allow_private_targets);
        assert_eq!(builder.max_value_bytes, Some(2048));
        assert_eq!(builder.redis_extras.cluster, Some(true));
        assert_eq!(builder.redis_extras.ca_file, Some("/etc/keel/ca.pem".into()));
        for (name, value) in [("KEEL_LEASE", "soon"), ("KEEL_CONCURRENCY", "many"), ("KEEL_SIGNING_KEY", "not base64!")]
        {
            let err = Worker::builder().read_vars(|n| (n == name).then(|| value.to_owned())).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            assert!(name != "KEEL_SIGNING_KEY" || !err.to_string().contains(value), "the key is never echoed: {err}");
        }
    }
}
