//! [`RedisStore`]: the store on Redis, with the data model of DESIGN.md §3.
//!
//! Every state transition is one Lua script under `lua/`, loaded once and called
//! by SHA (the `redis` crate reloads it on NOSCRIPT). Reads and scripts share one
//! auto-reconnecting multiplexed connection; blocking reads (XREADGROUP BLOCK of
//! claims and the outbox) take a dedicated connection from a small pool, under a
//! watchdog timeout. Long-polls and journal streams wait on one shared
//! subscriber connection (`notify.rs`), the one task this store spawns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use keel_proto::{
    DeliveryJob, ErrorInfo, JournalEvent, JournalRecord, ParentRef, RunId, RunPage, RunStatus, RunSummary,
    WebhookDelivery, WebhookEventType, WebhookSubscription, WorkerInfo,
};
use redis::Value;
use serde_json::Value as Json;

use super::{
    Appended, CancelOutcome, Claim, ClaimOnCreate, ClaimedTask, CreateRun, Created, DeadLetter, Delivered, Finish,
    Finished, HookStore, Lease, OutboxItem, PauseOutcome, RegistryStore, ResumeOutcome, RunQuery, RunStore, Stats,
    Store, decode_record, make_cursor, page_limit, parse_cursor, validate_claim, validate_create,
};
use crate::keys::{DISPATCH_GROUP, GROUP, Keys, LAYOUT};
use crate::{Error, Result, StoreConfig};

mod claims;
mod conn;
mod counters;
mod flow_control;
mod hooks;
mod inbox;
mod list;
mod notify;
mod ops;
mod partitions;
mod registry;
mod runs;
mod schedules;
mod scripts;
mod signing_keys;

use conn::{Conn, Endpoint};
pub use conn::{RedisTarget, redact};
mod values;

use scripts::Scripts;
use values::{array, int, opt_text, pairs, text};

/// Blocking reads get this much beyond their BLOCK time before the watchdog
/// drops their connection (a read that hangs after a peer reset must not hang us).
const BLOCK_MARGIN: Duration = Duration::from_secs(3);
/// Idle blocking connections kept for reuse; more are closed after use.
const BLOCKING_POOL: usize = 4;
/// With several partitions, an idle claim or outbox read blocks on one
/// partition for at most this long before sweeping all of them again: the
/// longest a new task in a partition nobody blocks on waits while workers idle.
const SWEEP_BLOCK: Duration = Duration::from_millis(250);
/// How long `connect` keeps trying a Redis that answers but is not ready
/// (loading its data, a cluster electing a master).
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);
/// How long a write waits for its replicas (`StoreConfig::wait_replicas`).
const REPLICA_WAIT: Duration = Duration::from_secs(2);
/// A waiter re-checks its run this often even without a notification.
const RECHECK: Duration = Duration::from_secs(10);

/// The Redis-backed [`Store`].
pub struct RedisStore {
    endpoint: Endpoint,
    conn: Conn,
    blocking: Mutex<Vec<Conn>>,
    /// Every partition's key names (index = partition); the global keys too.
    parts: Vec<Keys>,
    /// Partition prefix -> index (a relay entry names its target by prefix).
    part_index: HashMap<String, u16>,
    /// Where the next claim or outbox read starts its sweep over partitions.
    sweep: std::sync::atomic::AtomicUsize,
    /// Claim reads made: every tenth goes lowest priority first (claims.rs).
    reads: std::sync::atomic::AtomicUsize,
    config: StoreConfig,
    scripts: Scripts,
    /// Whether the operations run as Redis Functions (FCALL), not EVALSHA.
    functions: std::sync::atomic::AtomicBool,
    /// Queues whose consumer group this process created or found.
    groups: Mutex<HashSet<String>>,
    /// Flow-control keys this process noted as in use, and when (flow_control.rs).
    flow_noted: Mutex<HashMap<String, u64>>,
    /// Long-polls and journal streams, woken through one subscriber connection.
    notifier: notify::Notifier,
    /// The /metrics counts the scripts reported, not yet added to Redis.
    counters: std::sync::Arc<counters::Counters>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never print the client.
        f.debug_struct("RedisStore").field("namespace", &self.config.namespace).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connect to `url` (`redis://`, `rediss://`; seed URLs of a cluster
    /// separated by commas). Warns when Redis may evict keys.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self> {
        Self::connect_to(&RedisTarget::parse(url)?, config).await
    }

    /// Connect to one Redis or a cluster, over TCP or TLS.
    pub async fn connect_to(target: &RedisTarget, config: StoreConfig) -> Result<Self> {
        if config.namespace.contains(['{', '}']) {
            return Err(Error::Invalid(format!(
                "namespace {:?} holds a brace; it is part of every key's hash tag, use letters, digits, - _ : .",
                config.namespace
            )));
        }
        // A Redis that is starting (loading its data, failing over) answers
        // soon: transient errors are retried for a while before giving up.
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        let mut pause = Duration::from_millis(50);
        loop {
            match Self::connect_once(target, config.clone()).await {
                Err(e) if not_ready(&e) && tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!(error = %e, "Redis is not ready; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    async fn connect_once(target: &RedisTarget, config: StoreConfig) -> Result<Self> {
        let endpoint = Endpoint::open(target).await?;
        let partitions = check_layout(&mut endpoint.shared().await?, &config).await?;
        let store = Self::with_endpoint(endpoint, config, partitions).await?;
        store.load_scripts().await?;
        store.warn_on_eviction().await;
        Ok(store)
    }

    /// Load the operations now (on every master of a cluster): as a Redis
    /// Functions library, loaded once and called with FCALL, or where Redis
    /// has no FUNCTION (before 7.0, or not allowed), as EVALSHA scripts. A
    /// Redis that refuses scripting fails the start, saying so, instead of
    /// the first run.
    async fn load_scripts(&self) -> Result<()> {
        match self.load_library().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "Redis has no FUNCTION (or refuses it): running operations with EVALSHA")
            }
        }
        let mut conn = self.conn.clone();
        for script in self.scripts.all() {
            if let Err(e) = script.load_async(&mut conn).await {
                let e = Error::from(e);
                if e.is_transient() {
                    return Err(e);
                }
                return Err(Error::Invalid(format!(
                    "Redis refused to load a Lua script ({e}); Keel needs scripting (FUNCTION LOAD and FCALL, or \
                     SCRIPT LOAD and EVALSHA), streams with consumer groups and pub/sub: see README, \
                     \"Redis Cluster, TLS and managed Redis\""
                )));
            }
        }
        Ok(())
    }

    /// FUNCTION LOAD the library (REPLACE: the same name is the same text).
    async fn load_library(&self) -> Result<()> {
        let _: redis::Value = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&self.scripts.library)
            .query_async(&mut self.conn.clone())
            .await?;
        self.functions.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// A script's counts for /metrics (see counters.rs): kept here until
    /// the next flush.
    fn count(&self, partition: u16, counts: &str) {
        self.counters.add(partition, counts);
    }

    /// Start a flush of the counts in the background if some wait and a
    /// second has passed since the last one.
    fn flush_counters_when_due(&self) {
        if self.counters.has_pending() && self.counters.due() {
            let (counters, conn, parts) = (self.counters.clone(), self.conn.clone(), self.parts.clone());
            tokio::spawn(async move {
                if let Err(e) = counters.flush(&conn, &parts).await {
                    tracing::warn!(error = %e, "could not add the /metrics counts to Redis; kept for the next try");
                }
            });
        }
    }

    /// Whether the operations run as a Redis Functions library (FCALL);
    /// else as EVALSHA scripts (a Redis without FUNCTION).
    pub fn uses_functions(&self) -> bool {
        self.functions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// FCALL `function`; when the store waits for replicas, followed by WAIT
    /// in one pipeline. A Redis that lost the library (restarted empty, a new
    /// master) gets it again and the call is repeated once.
    async fn fcall(&self, function: &str, keys: &[String], argument: String, write: bool) -> Result<String> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function).arg(keys.len()).arg(keys).arg(argument);
        let mut conn = self.conn.clone();
        let wanted = if write { self.config.wait_replicas } else { 0 };
        let mut reloaded = false;
        loop {
            let result = if wanted == 0 {
                cmd.query_async::<String>(&mut conn).await
            } else {
                let mut pipe = redis::pipe();
                pipe.add_command(cmd.clone()).cmd("WAIT").arg(wanted).arg(REPLICA_WAIT.as_millis() as u64);
                match pipe.query_async::<(String, u32)>(&mut conn).await {
                    Ok((_, acked)) if acked < wanted => return Err(Error::NotReplicated { wanted, acked }),
                    other => other.map(|(reply, _)| reply),
                }
            };
            match result {
                Err(e) if !reloaded && e.to_string().contains("Function not found") => {
                    self.load_library().await?;
                    reloaded = true;
                }
                other => return Ok(other?),
            }
        }
    }

    async fn with_endpoint(endpoint: Endpoint, config: StoreConfig, partitions: u16) -> Result<Self> {
        let conn = endpoint.shared().await?;
        let parts: Vec<Keys> =
            (0..partitions).map(|p| Keys::partition(config.namespace.clone(), p, partitions)).collect();
        let channels = parts.iter().map(Keys::notify).collect();
        let scripts = Scripts::new(config.check_keys);
        Ok(Self {
            notifier: notify::Notifier::new(endpoint.subscribers(), channels),
            counters: std::sync::Arc::default(),
            endpoint,
            conn,
            blocking: Mutex::new(Vec::new()),
            part_index: parts.iter().map(|k| (k.prefix().to_owned(), k.index())).collect(),
            sweep: std::sync::atomic::AtomicUsize::new(0),
            reads: std::sync::atomic::AtomicUsize::new(0),
            parts,
            config,
            scripts,
            functions: std::sync::atomic::AtomicBool::new(false),
            groups: Mutex::new(HashSet::new()),
            flow_noted: Mutex::new(HashMap::new()),
        })
    }

    /// The key names of partition 0 (and the global ones).
    pub fn keys(&self) -> &Keys {
        &self.parts[0]
    }

    /// Every partition's key names.
    pub fn partition_keys(&self) -> &[Keys] {
        &self.parts
    }

    /// How many partitions this namespace has.
    pub fn partitions(&self) -> u16 {
        self.parts.len() as u16
    }

    /// The key names of the partition a run lives in.
    pub fn keys_of(&self, run_id: &RunId) -> &Keys {
        &self.parts[usize::from(crate::keys::partition_of(run_id.as_str(), self.partitions()))]
    }

    /// How long a read may block on one partition.
    fn sweep_block(&self, block: Duration) -> Duration {
        if self.parts.len() == 1 { block } else { block.min(SWEEP_BLOCK) }
    }

    /// Every partition, starting at a place that moves on with each call, so
    /// that sweeps over partitions do not always favour the first.
    fn sweep_order(&self) -> impl Iterator<Item = &Keys> {
        let start = self.sweep.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self.parts.len();
        (0..n).map(move |i| &self.parts[(start + i) % n])
    }

    async fn warn_on_eviction(&self) {
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<Vec<String>> =
            redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut conn).await;
        // Managed Redis often forbids CONFIG: then we cannot tell, and say nothing.
        let node_bytes: redis::RedisResult<Vec<String>> =
            redis::cmd("CONFIG").arg("GET").arg("stream-node-max-bytes").query_async(&mut conn).await;
        if let Ok(reply) = node_bytes
            && let Some(bytes) = reply.get(1).and_then(|b| b.parse::<u64>().ok())
            && bytes > 1024
        {
            tracing::info!(
                stream_node_max_bytes = bytes,
                "Redis preallocates every stream node at stream-node-max-bytes; Keel's journals are small, so \
                 `stream-node-max-bytes 512` keeps a finished run under 2 KiB instead of about 5"
            );
        }
        if let Ok(reply) = reply
            && let Some(policy) = reply.get(1)
            && policy != "noeviction"
        {
            tracing::warn!(
                policy = %policy,
                "redis maxmemory-policy is not noeviction: Redis may evict Keel's keys and lose runs; \
                 set `maxmemory-policy noeviction`"
            );
        }
    }

    fn lost(lease: &Lease) -> Error {
        Error::LeaseLost { run_id: lease.run_id.clone(), epoch: lease.epoch }
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.endpoint.is_cluster()
    }

    async fn blocking_conn(&self, response_timeout: Duration) -> Result<Conn> {
        let pooled = self.blocking.lock().map_err(|_| Error::Invalid("connection pool poisoned".into()))?.pop();
        match pooled {
            // A pooled connection keeps the timeout it was made with: set this call's.
            Some(mut conn) => {
                conn.set_response_timeout(response_timeout);
                Ok(conn)
            }
            None => self.endpoint.dedicated(response_timeout).await,
        }
    }

    fn return_blocking_conn(&self, conn: Conn) {
        if let Ok(mut pool) = self.blocking.lock()
            && pool.len() < BLOCKING_POOL
        {
            pool.push(conn);
        }
    }

    /// Mark the run watched for `ttl` (its scripts notify while it is).
    async fn watch(&self, run_id: &RunId, ttl: Duration) -> Result<ops::watch::Watched> {
        ops::watch::call(self, run_id, ttl).await
    }

    /// Create the consumer group of each queue, every priority's (at id 0, with
    /// MKSTREAM) unless this process already did. Recreating at 0 after a Redis
    /// restart may redeliver tasks; the fenced claim makes that harmless. (The
    /// queue of a priority is also made by the first enqueue at it: prelude.lua.)
    async fn ensure_groups(&self, workflows: &[String]) -> Result<()> {
        let missing: Vec<String> = {
            let known = self.groups.lock().map_err(|_| Error::Invalid("group cache poisoned".into()))?;
            self.parts
                .iter()
                .flat_map(|keys| {
                    workflows.iter().flat_map(move |wf| keel_proto::PRIORITIES.map(move |pr| keys.queue_at(wf, pr)))
                })
                .filter(|q| !known.contains(&format!("{q}\u{0}{GROUP}")))
                .collect()
        };
        // All at once: the connection pipelines them.
        futures::future::try_join_all(missing.iter().map(|queue| self.ensure_group(queue, GROUP))).await?;
        Ok(())
    }

    /// Create a consumer group (at id 0, with MKSTREAM) unless this process knows
    /// it exists.
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<()> {
        let name = format!("{stream}\u{0}{group}");
        if self.groups.lock().map(|known| known.contains(&name)).unwrap_or(false) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        if let Ok(mut known) = self.groups.lock() {
            known.insert(name);
        }
        Ok(())
    }

    fn forget_groups(&self) {
        if let Ok(mut known) = self.groups.lock() {
            known.clear();
        }
    }

    /// Runs `op`, and once more after recreating the consumer groups when Redis
    /// answers NOGROUP (it restarted empty, or someone deleted the queue).
    async fn with_groups<T, F, Fut>(&self, workflows: &[String], op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.ensure_groups(workflows).await?;
        match op().await {
            Err(Error::NoGroup) => {
                tracing::warn!("a queue's consumer group vanished (Redis restarted empty?); recreating it");
                self.forget_groups();
                self.ensure_groups(workflows).await?;
                op().await
            }
            Err(Error::Redis(e)) if e.code() == Some("NOGROUP") => {
                tracing::warn!("a queue's consumer group vanished (Redis restarted empty?); recreating it");
                self.forget_groups();
                self.ensure_groups(workflows).await?;
                op().await
            }
            other => other,
        }
    }

    /// A blocking read (BLOCK `block`) on a dedicated connection, under a watchdog.
    /// A read that does not block (the sweeps over partitions make many) goes
    /// on the shared connection instead.
    async fn blocking_query(&self, cmd: redis::Cmd, block: Duration) -> Result<Value> {
        if block.is_zero() {
            return Ok(cmd.query_async(&mut self.conn.clone()).await?);
        }
        let watchdog = block + BLOCK_MARGIN;
        let mut conn = self.blocking_conn(watchdog).await?;
        match tokio::time::timeout(watchdog, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Ok(reply)) => {
                self.return_blocking_conn(conn);
                Ok(reply)
            }
            // The connection is dropped, not pooled: its state is unknown.
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Timeout(watchdog)),
        }
    }
}

impl RedisStore {
    /// Run a probe script in partition 0 that reads `key`, declaring it in
    /// KEYS or not: the test that the key check (`StoreConfig::check_keys`)
    /// refuses an undeclared key.
    #[cfg(feature = "testing")]
    pub async fn probe_key(&self, key: &str, declare: bool) -> Result<Option<String>> {
        #[derive(serde::Serialize)]
        struct Args<'a> {
            key: &'a str,
        }
        #[derive(serde::Deserialize)]
        struct Reply {
            v: Option<Json>,
        }
        let mut declared = ops::Declared::new(&self.parts[0]);
        if declare {
            declared.one("probe", key.to_owned());
        }
        let probe = scripts::probe(self.config.check_keys);
        let reply = ops::eval(self, &probe, &declared, Args { key }, false).await?;
        let reply: Reply = from_json("probe reply", &reply)?;
        Ok(reply.v.and_then(|v| v.as_str().map(str::to_owned)))
    }
}

/// How a script is called: plainly, or, when the store waits for replicas
/// (`StoreConfig::wait_replicas`), followed by `WAIT` on the same node in one
/// pipeline, so a result is acknowledged only once a replica has it (a master
/// that dies right after cannot take it with it).
pub(super) trait Invoke {
    fn invoke_on<'a, T: redis::FromRedisValue + Send + 'a>(
        &'a self,
        store: &'a RedisStore,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>>;
}

impl Invoke for redis::ScriptInvocation<'_> {
    fn invoke_on<'a, T: redis::FromRedisValue + Send + 'a>(
        &'a self,
        store: &'a RedisStore,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>> {
        Box::pin(async move {
            let mut conn = store.conn.clone();
            let wanted = store.config.wait_replicas;
            if wanted == 0 {
                return Ok(self.invoke_async(&mut conn).await?);
            }
            let mut reloaded = false;
            loop {
                let mut pipe = redis::pipe();
                pipe.invoke_script(self).cmd("WAIT").arg(wanted).arg(REPLICA_WAIT.as_millis() as u64);
                match pipe.query_async::<(Value, u32)>(&mut conn).await {
                    Ok((_, acked)) if acked < wanted => return Err(Error::NotReplicated { wanted, acked }),
                    Ok((reply, _)) => {
                        return T::from_redis_value(reply).map_err(|e| Error::corrupt("script reply", e));
                    }
                    // A promoted replica does not have the scripts loaded.
                    Err(e) if !reloaded && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        self.load_async(&mut conn).await?;
                        reloaded = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })
    }
}

/// Whether Redis is there but not ready yet: refusing connections (starting),
/// loading its data, or a cluster without a master for some slots. (A TLS or
/// authentication failure is not retried: it will not get better.)
fn not_ready(e: &Error) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    match e {
        Error::Redis(e) => {
            e.is_connection_refusal()
                || matches!(e.kind(), ErrorKind::Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown))
        }
        _ => false,
    }
}

/// Record the key layout at first start, and the partition count; refuse a
/// namespace written with another layout, or another count than configured.
/// Returns the partition count.
async fn check_layout(conn: &mut Conn, config: &StoreConfig) -> Result<u16> {
    let keys = Keys::new(config.namespace.clone());
    let layout = keys.layout();
    if let Some(p) = config.partitions
        && !(1..=crate::keys::MAX_PARTITIONS).contains(&p)
    {
        return Err(Error::Invalid(format!("partitions must be 1 to {}, not {p}", crate::keys::MAX_PARTITIONS)));
    }
    let (version, partitions): (Option<u32>, Option<u16>) =
        redis::cmd("HMGET").arg(&layout).arg("version").arg("partitions").query_async(conn).await?;
    let namespace = keys.namespace();
    match (version, partitions) {
        (Some(LAYOUT), Some(recorded)) if config.partitions.is_none_or(|p| p == recorded) => Ok(recorded),
        (Some(LAYOUT), Some(recorded)) => Err(Error::Invalid(format!(
            "namespace {namespace:?} was created with {recorded} partition(s), not {}; the count cannot change \
             without a migration (leave KEEL_PARTITIONS unset to use the recorded count)",
            config.partitions.unwrap_or(1)
        ))),
        (None, _) => {
            let old: bool = redis::cmd("EXISTS").arg(keys.layout_v1_marker()).query_async(conn).await?;
            if old {
                return Err(Error::Invalid(format!(
                    "namespace {namespace:?} holds runs in Keel's first key layout, which this version does not \
                     read; finish or drop them with the previous version (or use another KEEL_NAMESPACE)"
                )));
            }
            let wanted = config.partitions.unwrap_or(1);
            // HSETNX: of two processes starting at once, the first one's count stands.
            let _: () = redis::cmd("HSETNX").arg(&layout).arg("partitions").arg(wanted).query_async(conn).await?;
            let _: () = redis::cmd("HSETNX").arg(&layout).arg("version").arg(LAYOUT).query_async(conn).await?;
            Box::pin(check_layout(conn, config)).await
        }
        (version, _) => Err(Error::Invalid(format!(
            "namespace {namespace:?} was written with key layout {}; this version uses layout {LAYOUT}",
            version.map_or("?".into(), |v| v.to_string()),
        ))),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Invalid(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::corrupt(what, e))
}

fn now_wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Decode the run hash (short field names, see `lua/prelude.lua`).
fn summary_from_hash(run_id: &RunId, hash: HashMap<String, String>) -> Result<RunSummary> {
    let what = || format!("run {run_id}");
    let field = |name: &str| hash.get(name).filter(|v| !v.is_empty());
    let num = |name: &str| -> Result<Option<u64>> {
        field(name).map(|v| v.parse::<u64>().map_err(|e| Error::corrupt(what(), format!("{name}: {e}")))).transpose()
    };
    let status: RunStatus = field("st")
        .ok_or_else(|| Error::corrupt(what(), "no status"))?
        .parse()
        .map_err(|e: String| Error::corrupt(what(), e))?;
    Ok(RunSummary {
        run_id: run_id.clone(),
        workflow: field("wf").cloned().ok_or_else(|| Error::corrupt(what(), "no workflow"))?,
        version: num("ver")?.unwrap_or(0) as u32,
        status,
        priority: ops::priority_of(field("pr").map(String::as_str)),
        created_at_ms: num("ca")?.unwrap_or(0),
        updated_at_ms: num("ua")?.unwrap_or(0),
        finished_at_ms: num("fa")?,
        epoch: num("ep")?.unwrap_or(0),
        completed_steps: num("cs")?.unwrap_or(0) as u32,
        total_steps: num("ts")?.map(|n| n as u32),
        current_step: field("cur").cloned(),
        wake_at_ms: num("wake")?,
        waiting_for: field("wk").map(|s| s.lines().map(str::to_owned).collect()).unwrap_or_default(),
        cancel_requested: field("cr").is_some_and(|v| v == "1"),
        pause_requested: field("pz").is_some_and(|v| v == "1"),
        callback_url: field("cb").cloned(),
        blocked: field("blk").cloned(),
        flow_control: field("fc").map(|v| from_json::<keel_proto::FlowControl>(&what(), v)).transpose()?,
        output: field("out").map(|v| from_json::<Json>(&what(), v)).transpose()?,
        error: field("err").map(|v| from_json::<ErrorInfo>(&what(), v)).transpose()?,
        parent: field("par").map(|v| from_json::<ParentRef>(&what(), v)).transpose()?,
        labels: field("lab")
            .map(|v| from_json::<BTreeMap<String, String>>(&what(), v))
            .transpose()?
            .unwrap_or_default(),
    })
}

fn journal_from_stream(reply: &Value) -> Result<Vec<JournalRecord>> {
    array(reply)?
        .iter()
        .map(|entry| {
            let entry = array(entry)?;
            let seq = text(entry.first().unwrap_or(&Value::Nil))?;
            let fields = pairs(entry.get(1).unwrap_or(&Value::Nil))?;
            let body = fields.get("e").ok_or_else(|| Error::corrupt(format!("journal entry {seq}"), "no e field"))?;
            decode_record(&seq, body)
        })
        .collect()
}

fn stream_id(s: &str) -> Result<&str> {
    let ok = s.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit())
    });
    if ok { Ok(s) } else { Err(Error::Invalid(format!("{s:?} is not a journal sequence number (<ms>-<n>)"))) }
}

#[async_trait]
impl Store for RedisStore {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    async fn independent(&self) -> Result<Option<std::sync::Arc<dyn Store>>> {
        Ok(Some(std::sync::Arc::new(
            Self::with_endpoint(self.endpoint.clone(), self.config.clone(), self.partitions()).await?,
        )))
    }
}
