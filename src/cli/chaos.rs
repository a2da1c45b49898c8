//! `keel chaos`: a mixed workload under injected faults, then the checks that
//! say whether anything acknowledged was lost or recorded twice.
//!
//! It starts a private redis-server (AOF on, `appendfsync` as asked), two
//! `keel server`s and several `keel worker`s, a local receiver that counts step
//! side effects (by idempotency key) and webhooks (failing some at random), and
//! runs of the built-in `chaos` workflow (3–10 durable calls, some with a
//! sleep, an event wait or a child run; one step's first call always fails).
//! Meanwhile it injects faults: SIGKILL and restart of workers and servers,
//! SIGSTOP of a worker past its lease then SIGCONT, SIGKILL and restart of
//! Redis, CLIENT PAUSE longer than the lease. Everything talks to 127.0.0.1,
//! is bounded in count and time, and stops by itself.
//!
//! With `--redis-cluster`, Redis is a private cluster of three masters with one
//! replica each (AOF on every node), Keel's namespace has 16 partitions and
//! waits for a replica's acknowledgement of every write; the Redis fault kills
//! a master, waits for its replica to take over, and restarts the old master
//! (it rejoins as a replica).
//!
//! When node is installed, an app on the unmodified `@upstash/workflow` SDK
//! (sdk-tests/app.mjs) runs alongside (chaos_sdk.rs): its runs go through the
//! QStash protocol under the same faults and must all complete, right.

use keel_engine::{RegistryStore, RunStore};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use clap::Args;
use keel_engine::proto::{JournalEvent, RunId, RunStatus};
use keel_engine::{RedisStore, RunQuery, StoreConfig};
use serde_json::{Value, json};

use super::bench::{Proc, free_port};

const SIGNING_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const LEASE: &str = "2s";

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// How many runs to start.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// How many faults to inject.
    #[arg(long, default_value_t = 20)]
    faults: usize,
    /// Redis `appendfsync`: always or everysec.
    #[arg(long, default_value = "everysec")]
    fsync: String,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Runs started per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seed of the random choices (printed, to replay a run).
    #[arg(long)]
    seed: Option<u64>,
    /// After the faults, how long runs may take to settle.
    #[arg(long, default_value_t = 180)]
    settle_s: u64,
    /// Run on a private Redis Cluster (3 masters, 1 replica each); the Redis
    /// fault is then a master's failover.
    #[arg(long)]
    redis_cluster: bool,
    /// Runs of the Upstash SDK app (when node is installed) [default: a
    /// quarter of --runs; 0: none].
    #[arg(long)]
    sdk_runs: Option<usize>,
    /// Where the SDK app (app.mjs, with the pinned SDKs installed) is [default: ./sdk-tests].
    #[arg(long)]
    sdk_app: Option<PathBuf>,
}

/// Masters and replicas per master of the `--redis-cluster` mode.
const CLUSTER_MASTERS: usize = 3;
const CLUSTER_PARTITIONS: &str = "16";

/// A small deterministic random source (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    effects: HashMap<String, u64>,
    /// (run id, sequence) -> webhook ids seen, for run.completed.
    completed_hooks: HashMap<(String, String), HashSet<String>>,
    hook_attempts: u64,
    rng: u64,
}

type Shared = Arc<Mutex<Seen>>;

async fn effects(State(seen): State<Shared>, headers: HeaderMap) -> impl IntoResponse {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    let n = seen.effects.entry(key.clone()).or_default();
    *n += 1;
    let n = *n;
    // Step s1's first call fails: every run exercises a durable retry.
    if n == 1 && key.ends_with(":s1") {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "first call fails"}))).into_response();
    }
    axum::Json(json!({"n": n})).into_response()
}

async fn hook(State(seen): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    seen.hook_attempts += 1;
    seen.rng = seen.rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    // A receiver that fails a fifth of the time.
    if (seen.rng >> 33) % 5 == 0 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if payload["type"] == "run.completed" {
        let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let run = payload["run_id"].as_str().unwrap_or_default().to_owned();
        let seq = payload["sequence"].as_str().unwrap_or_default().to_owned();
        seen.completed_hooks.entry((run, seq)).or_default().insert(id);
    }
    StatusCode::OK
}

/// One redis-server: its port, cluster bus port (cluster mode), data directory.
struct RedisNode {
    port: u16,
    bus_port: Option<u16>,
    dir: PathBuf,
    proc: Option<Proc>,
}

/// The processes under test.
struct Cluster {
    exe: PathBuf,
    fsync: String,
    redis: Vec<RedisNode>,
    servers: Vec<(u16, Option<Proc>)>,
    workers: Vec<Option<Proc>>,
    /// Where the servers' and workers' stderr go (`server-0.log`, …).
    logs: PathBuf,
}

impl Cluster {
    fn redis_url(&self) -> String {
        self.redis.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    fn is_cluster(&self) -> bool {
        self.redis.len() > 1
    }

    fn start_redis(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.redis[i];
        std::fs::create_dir_all(&node.dir)?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &node.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", &self.fsync, "--maxmemory-policy", "noeviction", "--stream-node-max-bytes", "512"])
            .arg("--dir")
            .arg(&node.dir);
        if let Some(bus) = node.bus_port {
            cmd.args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()]).args([
                "--cluster-node-timeout",
                "1000",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        node.proc =
            Some(Proc(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting redis-server")?));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not come back within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// A node's `redis-cli` answer.
    fn cli(&self, i: usize, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.redis[i].port.to_string()])
            .args(args)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Join the nodes into a cluster (masters with a replica each) and wait
    /// until it serves every slot.
    fn create_cluster(&self) -> anyhow::Result<()> {
        let addresses: Vec<String> = self.redis.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context("redis-cli --cluster create (is redis-tools installed?)")?;
        if !out.status.success() {
            bail!("redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        self.wait_cluster_ok(Duration::from_secs(30))
    }

    /// Every running node says `cluster_state:ok` and there are as many masters as at the start.
    fn wait_cluster_ok(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let up: Vec<usize> = (0..self.redis.len()).filter(|&i| self.redis[i].proc.is_some()).collect();
            let ok = up.iter().all(|&i| self.cli(i, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok && self.masters().len() == CLUSTER_MASTERS {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the Redis cluster did not recover within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The running nodes that are masters now.
    fn masters(&self) -> Vec<usize> {
        (0..self.redis.len())
            .filter(|&i| self.redis[i].proc.is_some() && self.cli(i, &["ROLE"]).starts_with("master"))
            .collect()
    }

    fn spawn(&self, command: &str, port: u16, name: &str) -> anyhow::Result<Proc> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.logs.join(format!("{name}.log")))?;
        Ok(Proc(
            Command::new(&self.exe)
                .arg(command)
                // The measured Keel is the bench's own: nothing of the caller's
                // configuration (tokens, namespace, keel.toml) leaks into it.
                .env_remove("KEEL_API_TOKENS")
                .env_remove("KEEL_READ_TOKENS")
                .env_remove("KEEL_NAMESPACE")
                .env("KEEL_CONFIG", "/dev/null")
                .env("KEEL_ADDR", format!("127.0.0.1:{port}"))
                .env("KEEL_REDIS_URL", self.redis_url())
                .env("KEEL_LOG", "error")
                .env("KEEL_LEASE", LEASE)
                .env("KEEL_SIGNING_KEY", SIGNING_KEY)
                .env("KEEL_ALLOW_PRIVATE_TARGETS", "true")
                .env("KEEL_CHAOS_WORKFLOW", "true")
                .env("KEEL_WEBHOOK_RETRY_BASE", "200ms")
                .env("KEEL_RECONCILE_EVERY", "3s")
                .env("KEEL_WEBHOOK_VISIBILITY", "5s")
                // An SDK app that hangs (its own request to a server that is
                // down) is given up on and delivered to again, as the lease is.
                .env("KEEL_QSTASH_DELIVERY_TIMEOUT", "10s")
                .envs(self.is_cluster().then_some(("KEEL_PARTITIONS", CLUSTER_PARTITIONS)))
                .envs(self.is_cluster().then_some(("KEEL_REDIS_WAIT_REPLICAS", "1")))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        ))
    }

    fn start_server(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.servers[i].0;
        self.servers[i].1 = Some(self.spawn("server", port, &format!("server-{i}"))?);
        Ok(())
    }

    fn start_worker(&mut self, i: usize) -> anyhow::Result<()> {
        self.workers[i] = Some(self.spawn("worker", 0, &format!("worker-{i}"))?);
        Ok(())
    }

    /// Start again a server or worker that exited while the cluster came up
    /// (a server whose port another process took between `free_port` and its
    /// bind gets a new one). Whether any had exited.
    fn restart_exited(&mut self) -> anyhow::Result<bool> {
        let mut any = false;
        for i in 0..self.servers.len() {
            if let Some(proc) = &mut self.servers[i].1
                && let Some(status) = proc.0.try_wait()?
            {
                eprintln!("keel chaos: server {i} exited at start ({status}): starting it again on another port");
                self.servers[i].0 = free_port()?;
                self.start_server(i)?;
                any = true;
            }
        }
        for i in 0..self.workers.len() {
            if let Some(proc) = &mut self.workers[i]
                && let Some(status) = proc.0.try_wait()?
            {
                eprintln!("keel chaos: worker {i} exited at start ({status}): starting it again");
                self.start_worker(i)?;
                any = true;
            }
        }
        Ok(any)
    }

    /// The last lines each server and worker wrote to stderr, for a report.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        let names = (0..self.servers.len())
            .map(|i| format!("server-{i}"))
            .chain((0..self.workers.len()).map(|i| format!("worker-{i}")));
        for name in names {
            let text = std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(10)..].join("\n");
            out.push_str(&format!("--- {name}.log (last lines)\n{tail}\n"));
        }
        out
    }

    fn signal(proc: &Proc, signal: &str) {
        let _ = Command::new("kill").args([signal, &proc.0.id().to_string()]).status();
    }
}

#[derive(Default, Debug)]
struct Faults {
    workers_killed: u64,
    servers_killed: u64,
    redis_restarts: u64,
    stops: u64,
    pauses: u64,
}

/// Retry a request against the servers in turn until it answers (bounded).
async fn send(bases: &[String], build: impl Fn(&str) -> reqwest::RequestBuilder) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    while Instant::now() < deadline {
        let base = &bases[i % bases.len()];
        i += 1;
        if let Ok(response) = build(base).send().await
            && (response.status().is_success() || response.status() == StatusCode::ACCEPTED)
            && let Ok(value) = response.json::<Value>().await
        {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

pub async fn chaos(args: ChaosArgs) -> anyhow::Result<u8> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7) | 1
    });
    let mut rng = Rng(seed);
    eprintln!("keel chaos: seed {seed}, {} runs, {} faults, appendfsync {}", args.runs, args.faults, args.fsync);

    // The receiver.
    let seen: Shared = Arc::new(Mutex::new(Seen { rng: seed, ..Default::default() }));
    let app = axum::Router::new()
        .route("/effects", axum::routing::post(effects))
        .route("/hook", axum::routing::post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = format!("http://{}", listener.local_addr()?);
    let receiver_task = tokio::spawn(async move { axum::serve(listener, app).await });

    // The cluster.
    let dir = std::env::temp_dir().join(format!("keel-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let nodes = if args.redis_cluster { CLUSTER_MASTERS * 2 } else { 1 };
    let mut redis = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let bus_port = if args.redis_cluster { Some(free_port()?) } else { None };
        redis.push(RedisNode { port: free_port()?, bus_port, dir: dir.join(format!("redis-{i}")), proc: None });
    }
    let mut cluster = Cluster {
        exe: std::env::current_exe()?,
        fsync: args.fsync.clone(),
        redis,
        servers: vec![(free_port()?, None), (free_port()?, None)],
        workers: (0..args.workers.max(1)).map(|_| None).collect(),
        logs: dir.clone(),
    };
    for i in 0..nodes {
        cluster.start_redis(i)?;
    }
    if cluster.is_cluster() {
        cluster.create_cluster()?;
    }
    for i in 0..cluster.servers.len() {
        cluster.start_server(i)?;
    }
    for i in 0..cluster.workers.len() {
        cluster.start_worker(i)?;
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut restarts = 0;
    loop {
        if restarts < 5 && cluster.restart_exited()? {
            restarts += 1;
        }
        let ready = http.get(format!("http://127.0.0.1:{}/v1/workflows", cluster.servers[0].0)).send().await.ok();
        let body = match ready {
            Some(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            None => Value::Null,
        };
        if body["workflows"].as_array().is_some_and(|w| w.iter().any(|w| w["name"] == "chaos")) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not come up within 60 s (no worker's `chaos` listed by server 0)\n{}",
                cluster.log_tails()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bases: Vec<String> = cluster.servers.iter().map(|(port, _)| format!("http://127.0.0.1:{port}")).collect();
    send(&bases, |b| {
        http.post(format!("{b}/v1/webhooks"))
            .json(&json!({"url": format!("{receiver}/hook"), "event_types": ["run.completed"]}))
    })
    .await
    .context("subscribing the receiver")?;
    // Runs pinned to a version no worker has: they must wait, showing why.
    let mut pinned = Vec::new();
    {
        let store = RedisStore::connect(&cluster.redis_url(), StoreConfig::default()).await?;
        for i in 0..2 {
            let input = json!({"steps": 1, "effects_url": format!("{receiver}/effects")});
            let req = keel_engine::CreateRun { workflow: "chaos".into(), version: 99, input, ..Default::default() };
            pinned.push(store.create_run(req).await.with_context(|| format!("starting pinned run {i}"))?.run_id);
        }
    }

    // The Upstash SDK app's workload, beside the chaos workflow's.
    let sdk_runs = args.sdk_runs.unwrap_or(args.runs / 4);
    let sdk = if sdk_runs > 0 {
        super::chaos_sdk::SdkWorkload::start(&super::chaos_sdk::app_dir(args.sdk_app.as_ref()), &bases, &http).await?
    } else {
        None
    };
    let sdk_gap = Duration::from_secs_f64(args.runs as f64 / args.rate.max(0.1) / sdk_runs.max(1) as f64);
    let sdk_load = sdk.as_ref().map(|w| w.load(sdk_runs, sdk_gap, seed, &http));

    // The workload: runs started at a steady rate, each followed to its end.
    let acknowledged: Arc<Mutex<BTreeMap<usize, RunId>>> = Arc::default();
    let observed: Arc<Mutex<HashMap<RunId, Value>>> = Arc::default();
    let mut load = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let started_at = Instant::now();
    let mut plans = Vec::new();
    for i in 0..args.runs {
        let steps = 3 + rng.below(8);
        let wait_key = rng.chance(25).then(|| format!("chaos-event-{seed}-{i}"));
        // Authors' mistakes in the mix: panics in a step and in the body, a step
        // that blocks its thread past the lease.
        let hazard = match rng.below(100) {
            0..=4 => json!("panic-step"),
            5..=9 => json!("block"),
            10..=12 => json!("panic-body"),
            _ => Value::Null,
        };
        let input = json!({
            "steps": steps,
            "effects_url": format!("{receiver}/effects"),
            "sleep_ms": if rng.chance(30) { json!(200 + rng.below(1800)) } else { Value::Null },
            "wait_key": wait_key,
            "child": rng.chance(15),
            "hazard": hazard,
        });
        plans.push((i, input, wait_key));
    }
    let plans_for_load = plans.clone();
    let (http2, bases2, acked2, observed2) = (http.clone(), bases.clone(), acknowledged.clone(), observed.clone());
    load.spawn(async move {
        let mut followers = tokio::task::JoinSet::new();
        for (i, input, wait_key) in plans_for_load {
            tokio::time::sleep_until((started_at + gap * i as u32).into()).await;
            let (http, bases, acked, observed) = (http2.clone(), bases2.clone(), acked2.clone(), observed2.clone());
            followers.spawn(async move {
                let key = format!("chaos-{i}");
                let started = send(&bases, |b| {
                    http.post(format!("{b}/v1/workflows/chaos/runs"))
                        .header("idempotency-key", &key)
                        .json(&json!({"input": input}))
                })
                .await;
                let Some(id) = started.and_then(|s| s["run_id"].as_str().and_then(|id| RunId::new(id).ok())) else {
                    return;
                };
                acked.lock().unwrap_or_else(|p| p.into_inner()).insert(i, id.clone());
                let follow_deadline = Instant::now() + Duration::from_secs(600);
                let mut sent_event = Instant::now() - Duration::from_secs(10);
                while Instant::now() < follow_deadline {
                    if let Some(key) = &wait_key
                        && sent_event.elapsed() > Duration::from_secs(3)
                    {
                        let _ = http
                            .post(format!("{}/v1/events/{key}", bases[i % bases.len()]))
                            .json(&json!({"i": i}))
                            .send()
                            .await;
                        sent_event = Instant::now();
                    }
                    let result = send(&bases, |b| http.get(format!("{b}/v1/runs/{id}/result?wait=2s"))).await;
                    if let Some(result) = result {
                        if result["status"] == "completed" {
                            observed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(id.clone(), result["output"].clone());
                            return;
                        }
                        if result["status"] == "failed" {
                            return;
                        }
                    }
                }
            });
        }
        while followers.join_next().await.is_some() {}
    });

    // The faults, spread over the load.
    let expected = Duration::from_secs_f64(args.runs as f64 / args.rate.max(0.1)).max(Duration::from_secs(5));
    let spacing = expected / (args.faults as u32 + 1);
    let mut faults = Faults::default();
    for n in 0..args.faults {
        tokio::time::sleep(spacing.mul_f64(0.5 + rng.below(100) as f64 / 100.0)).await;
        // On a cluster the first fault is always a master's failover.
        let choice = if cluster.is_cluster() && n == 0 { 70 } else { rng.below(100) };
        match choice {
            0..=34 => {
                let i = rng.below(cluster.workers.len() as u64) as usize;
                cluster.workers[i] = None; // SIGKILL
                faults.workers_killed += 1;
                tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
                cluster.start_worker(i)?;
            }
            35..=54 => {
                let i = rng.below(cluster.workers.len() as u64) as usize;
                if let Some(worker) = &cluster.workers[i] {
                    Cluster::signal(worker, "-STOP");
                    faults.stops += 1;
                    tokio::time::sleep(Duration::from_millis(3000)).await; // past the 2 s lease
                    Cluster::signal(worker, "-CONT");
                }
            }
            55..=69 => {
                let i = rng.below(cluster.servers.len() as u64) as usize;
                cluster.servers[i].1 = None;
                faults.servers_killed += 1;
                tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
                cluster.start_server(i)?;
            }
            70..=84 if cluster.is_cluster() => {
                // A master dies; its replica takes over; the old master comes
                // back as a replica (of the new master).
                let masters = cluster.masters();
                let i = masters[rng.below(masters.len() as u64) as usize];
                cluster.redis[i].proc = None; // SIGKILL
                faults.redis_restarts += 1;
                let deadline = Instant::now() + Duration::from_secs(30);
                while cluster.masters().len() < CLUSTER_MASTERS && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                cluster.start_redis(i)?;
                cluster.wait_cluster_ok(Duration::from_secs(30))?;
            }
            70..=84 => {
                cluster.redis[0].proc = None; // SIGKILL
                faults.redis_restarts += 1;
                tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
                cluster.start_redis(0)?;
            }
            _ => {
                let masters = cluster.masters();
                let node = masters[rng.below(masters.len().max(1) as u64) as usize % masters.len().max(1)];
                if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", cluster.redis[node].port))
                    && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                {
                    let _: redis::RedisResult<()> =
                        redis::cmd("CLIENT").arg("PAUSE").arg(3000).query_async(&mut conn).await;
                    faults.pauses += 1;
                    tokio::time::sleep(Duration::from_millis(3000)).await;
                }
            }
        }
    }
    eprintln!("keel chaos: faults done ({faults:?}); letting the runs settle");

    // Settle: every run final, every webhook delivered (bounded).
    let settle = Instant::now() + Duration::from_secs(args.settle_s);
    let store = RedisStore::connect(&cluster.redis_url(), StoreConfig::default()).await?;
    while let Some(done) = tokio::time::timeout_at(settle.into(), load.join_next()).await.ok().flatten() {
        done?;
    }
    if let Some(sdk_load) = sdk_load {
        let _ = tokio::time::timeout_at(settle.into(), sdk_load).await;
    }
    if let Some(sdk) = &sdk {
        while sdk.unfinished(&store).await > 0 && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // (The pinned runs never finish: they wait for a worker with their version.)
    while unfinished(&store).await > pinned.len() && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Tasks delivered to a worker that died before claiming them (or stale
    // copies of a finished run's task) drain once their lease has lapsed and
    // a live worker reclaims them: wait for that too (bounded).
    while open_tasks(&store).await > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let hooks_deadline = Instant::now().min(settle) + Duration::from_secs(30);
    loop {
        let missing = count_missing_hooks(&store, &seen, &acknowledged).await;
        if missing == 0 || Instant::now() > hooks_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The checks.
    let acked = acknowledged.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let observed = observed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (mut completed, mut lost, mut duplicated, mut effects_missing, mut failed) = (0, 0, 0, 0, 0);
    let (mut panicked, mut blocked, mut over_attempts, mut exhausted) = (0, 0, 0, 0);
    let hazards: HashMap<RunId, String> = plans
        .iter()
        .filter_map(|(i, input, _)| Some((acked.get(i)?.clone(), input["hazard"].as_str()?.to_owned())))
        .collect();
    let effects_seen = seen.lock().unwrap_or_else(|p| p.into_inner()).effects.clone();
    let mut checked_runs: Vec<RunId> = acked.values().cloned().collect();
    // Child runs too: every run in the store.
    let mut cursor = None;
    loop {
        let page = store.list_runs(&RunQuery { limit: 1000, cursor, ..Default::default() }).await?;
        for run in &page.runs {
            if !checked_runs.contains(&run.run_id) {
                checked_runs.push(run.run_id.clone());
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    for id in &checked_runs {
        let Some(run) = store.get_run(id).await? else {
            lost += 1; // an acknowledged start that vanished
            continue;
        };
        let hazard = hazards.get(id).map(String::as_str);
        match run.status {
            _ if pinned.contains(id) && !run.status.is_final() && run.blocked.is_some() => blocked += 1,
            _ if pinned.contains(id) => {}
            RunStatus::Failed if hazard == Some("panic-body") => {
                if run.error.as_ref().is_some_and(|e| e.kind == "panicked") {
                    panicked += 1;
                } else {
                    failed += 1;
                }
            }
            // A misbehaving step whose every allowed attempt was cut off by
            // the faults fails for good, as its policy says.
            RunStatus::Failed
                if hazard.is_some() && run.error.as_ref().is_some_and(|e| e.kind == "attempts_exhausted") =>
            {
                exhausted += 1;
            }
            RunStatus::Completed => completed += 1,
            RunStatus::Failed | RunStatus::Cancelled => failed += 1,
            _ => {}
        }
        if observed.contains_key(id) && run.status != RunStatus::Completed {
            lost += 1; // a result a client saw, regressed
        }
        let journal = store.read_journal(id, None, 100_000).await?;
        let mut results: HashMap<String, u64> = HashMap::new();
        for record in &journal {
            if let JournalEvent::StepCompleted { step_id, .. } = &record.entry.event {
                *results.entry(step_id.clone()).or_default() += 1;
            }
        }
        // A misbehaving step never takes more attempts than its policy allows.
        let hazard_attempts = journal
            .iter()
            .filter_map(|r| match &r.entry.event {
                JournalEvent::StepStarted { step_id, attempt, .. }
                | JournalEvent::StepCompleted { step_id, attempt, .. }
                | JournalEvent::StepFailed { step_id, attempt, .. }
                    if step_id == "hazard" =>
                {
                    Some(*attempt)
                }
                _ => None,
            })
            .max()
            .unwrap_or(0);
        if hazard_attempts > keel_workflows::CHAOS_HAZARD_ATTEMPTS {
            over_attempts += 1;
        }
        for (step, n) in &results {
            duplicated += n.saturating_sub(1);
            if *n > 1 {
                eprintln!("keel chaos: run {id} ({}) journaled step {step} {n} times", run.workflow);
            }
            if run.workflow == "chaos"
                && step.starts_with('s')
                && effects_seen.get(&format!("{id}:{step}")).copied().unwrap_or(0) == 0
            {
                effects_missing += 1;
            }
        }
    }
    // The pinned runs wait on purpose (and say why).
    let stuck = unfinished(&store).await.saturating_sub(blocked);
    let stats = store.stats(&["chaos".to_owned(), "upstash".to_owned()]).await?;
    let stuck_tasks = stats.queued.values().sum::<u64>() + stats.in_flight.values().sum::<u64>();
    if stuck > 0 || stuck_tasks > 0 {
        report_stuck(&store, &stats).await;
    }
    let webhooks_missing = count_missing_hooks(&store, &seen, &acknowledged).await;
    let sdk_outcome = match &sdk {
        Some(sdk) => sdk.check(&store).await?,
        None => Default::default(),
    };
    let sdk_expected = if sdk.is_some() { sdk_runs } else { 0 };
    let unacknowledged = args.runs - acked.len();
    let total_faults =
        faults.workers_killed + faults.servers_killed + faults.redis_restarts + faults.stops + faults.pauses;
    println!(
        "keel-chaos redis={} runs={} faults={total_faults} (workers_killed={} servers_killed={} redis_restarts={} stops={} pauses={}) fsync={} completed={completed}/{} panicked={panicked} exhausted={exhausted} blocked={blocked}/{} lost={lost} duplicated_results={duplicated} stuck={} over_attempts={over_attempts} webhooks_missing={webhooks_missing} effects_missing={effects_missing} failed={failed} unacknowledged={unacknowledged} sdk_completed={}/{}/{sdk_expected} seed={seed}",
        if cluster.is_cluster() { "cluster" } else { "single" },
        args.runs,
        faults.workers_killed,
        faults.servers_killed,
        faults.redis_restarts,
        faults.stops,
        faults.pauses,
        args.fsync,
        checked_runs.len(),
        pinned.len(),
        stuck + stuck_tasks as usize,
        sdk_outcome.completed,
        sdk_outcome.acknowledged,
    );
    drop(cluster);
    receiver_task.abort();
    let _ = std::fs::remove_dir_all(&dir);
    let healthy = completed + panicked + exhausted + blocked == checked_runs.len()
        && blocked == pinned.len()
        && over_attempts == 0
        && failed == 0
        && duplicated == 0
        && stuck == 0
        && stuck_tasks == 0
        && webhooks_missing == 0
        && effects_missing == 0
        && unacknowledged == 0
        && sdk_outcome.completed == sdk_expected
        && sdk_outcome.acknowledged == sdk_expected
        && (args.fsync != "always" || lost == 0);
    Ok(if healthy { 0 } else { 1 })
}

/// Tasks of the chaos and upstash workflows queued or delivered and not yet finished.
async fn open_tasks(store: &RedisStore) -> u64 {
    store
        .stats(&["chaos".to_owned(), "upstash".to_owned()])
        .await
        .map_or(0, |s| s.queued.values().sum::<u64>() + s.in_flight.values().sum::<u64>())
}

/// What a failed check needs to be understood: every run not final (with its
/// last journal entries) and the tasks left, on stderr.
async fn report_stuck(store: &RedisStore, stats: &keel_engine::Stats) {
    eprintln!("keel chaos: tasks left: queued {:?}, delivered and unfinished {:?}", stats.queued, stats.in_flight);
    for status in [RunStatus::Pending, RunStatus::Running, RunStatus::Sleeping, RunStatus::Waiting, RunStatus::Paused] {
        let Ok(page) = store.list_runs(&RunQuery { status: Some(status), limit: 100, ..Default::default() }).await
        else {
            continue;
        };
        for run in page.runs {
            eprintln!(
                "keel chaos: not final: {} {} {} v{} epoch={} step={:?} wake={:?} waiting_for={:?} blocked={:?}",
                run.run_id,
                run.workflow,
                run.status,
                run.version,
                run.epoch,
                run.current_step,
                run.wake_at_ms,
                run.waiting_for,
                run.blocked
            );
            if let Ok(journal) = store.read_journal(&run.run_id, None, 100_000).await {
                for record in journal.iter().rev().take(4).rev() {
                    eprintln!("keel chaos:   {} {:?}", record.seq, record.entry.event);
                }
            }
        }
    }
}

/// Runs not yet final.
async fn unfinished(store: &RedisStore) -> usize {
    let mut open = 0;
    for status in [RunStatus::Pending, RunStatus::Running, RunStatus::Sleeping, RunStatus::Waiting, RunStatus::Paused] {
        open += store
            .list_runs(&RunQuery { status: Some(status), limit: 1000, ..Default::default() })
            .await
            .map_or(0, |p| p.runs.len());
    }
    open
}

/// Completed runs whose run.completed webhook has not arrived, plus events that
/// arrived under more than one webhook-id.
async fn count_missing_hooks(
    store: &RedisStore,
    seen: &Shared,
    acknowledged: &Arc<Mutex<BTreeMap<usize, RunId>>>,
) -> usize {
    let hooks = seen.lock().unwrap_or_else(|p| p.into_inner()).completed_hooks.clone();
    let by_run: HashSet<String> = hooks.keys().map(|(run, _)| run.clone()).collect();
    let mismatched = hooks.values().filter(|ids| ids.len() != 1).count();
    let ids: Vec<RunId> = acknowledged.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    let mut missing = 0;
    for id in ids {
        if let Ok(Some(run)) = store.get_run(&id).await
            && run.status == RunStatus::Completed
            && !by_run.contains(id.as_str())
        {
            missing += 1;
        }
    }
    missing + mismatched
}
