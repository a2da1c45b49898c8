//! `keel bench`: an honest, repeatable measurement of throughput, latency and
//! cost per step. It starts N runs of the built-in `bench` workflow over HTTP at
//! concurrency C, against a running Keel (`--url`) or against a server, W worker
//! processes and a private redis-server it starts itself, waits for every run to
//! finish, and prints one line (or JSON). Latency is from the start request to
//! completion as the API reports it (`?wait=`).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How many runs.
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Steps per run.
    #[arg(long, default_value_t = 3)]
    steps: u32,
    /// Runs in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Worker processes to start (when the bench starts Keel itself).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Bench a running Keel at this URL instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// The Redis to run on (a cluster: its seed nodes, comma-separated): the
    /// bench starts Keel against it instead of a private redis-server, in a
    /// namespace of its own. With --url: the running Keel's Redis, for counts.
    #[arg(long)]
    redis_url: Option<String>,
    /// Partitions of the bench's namespace (see KEEL_PARTITIONS; e.g. 16 on a cluster).
    #[arg(long)]
    partitions: Option<u16>,
    /// Measure the engine's overhead per step instead: one run of 100 sequential 1 ms steps.
    #[arg(long)]
    overhead: bool,
    /// Print JSON instead of the one line.
    #[arg(long)]
    json: bool,
    /// `appendfsync` of the private redis-server (always, everysec, no).
    #[arg(long, default_value = "everysec")]
    fsync: String,
    /// Every step under this flow-control key (what one costs per step):
    /// with --flow-parallelism, at most that many at once.
    #[arg(long)]
    flow_key: Option<String>,
    /// The flow-control key's parallelism (default: more than the bench can
    /// reach, so the key is never contended).
    #[arg(long, default_value_t = 10_000)]
    flow_parallelism: u32,
}

/// A child process killed on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU time of a process so far (user + system), from /proc.
fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start after ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/pid/stat, in USER_HZ (100) ticks.
    (ticks(11) + ticks(12)) * 10.0
}

/// The Redis nodes whose counters the bench reads: the one server, or every
/// master of a cluster.
struct Redis {
    nodes: Vec<(String, redis::aio::MultiplexedConnection)>,
}

impl Redis {
    async fn connect(urls: &str) -> anyhow::Result<Self> {
        let first = urls.split(',').next().unwrap_or_default().trim().to_owned();
        let mut conn = redis::Client::open(first.as_str())?.get_multiplexed_async_connection().await?;
        let cluster: String = redis::cmd("INFO").arg("cluster").query_async(&mut conn).await?;
        if !cluster.contains("cluster_enabled:1") {
            return Ok(Self { nodes: vec![(first, conn)] });
        }
        // `<id> <ip:port@cport> <flags> ...`: the masters.
        let table: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn).await?;
        let scheme = if first.starts_with("rediss://") { "rediss" } else { "redis" };
        let mut nodes = Vec::new();
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 2 && fields[2].contains("master") && !fields[2].contains("fail") {
                let address = fields[1].split('@').next().unwrap_or_default();
                let url = format!("{scheme}://{address}");
                nodes.push((address.to_owned(), redis::Client::open(url)?.get_multiplexed_async_connection().await?));
            }
        }
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { nodes })
    }

    /// Each node's INFO, in node order.
    async fn info(&mut self) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for (_, conn) in &mut self.nodes {
            let text: String = redis::cmd("INFO").arg("everything").query_async(conn).await?;
            out.push(
                text.lines()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                    .collect(),
            );
        }
        Ok(out)
    }
}

/// Commands Redis executed (inside scripts too), from commandstats.
fn commands(info: &BTreeMap<String, String>) -> u64 {
    info.iter()
        .filter(|(k, _)| k.starts_with("cmdstat_") && !k.starts_with("cmdstat_info"))
        .filter_map(|(_, v)| v.split(',').find_map(|p| p.strip_prefix("calls="))?.parse::<u64>().ok())
        .sum()
}

/// Script calls Redis ran (FCALL, or EVALSHA where Redis has no FUNCTION): one round trip each.
fn script_calls(info: &BTreeMap<String, String>) -> u64 {
    ["cmdstat_fcall", "cmdstat_fcall_ro", "cmdstat_evalsha", "cmdstat_eval"]
        .iter()
        .filter_map(|k| info.get(*k)?.split(',').find_map(|p| p.strip_prefix("calls="))?.parse::<u64>().ok())
        .sum()
}

/// `keel_redis_round_trips_total` from /metrics: what every Keel process
/// reported sending to Redis (commands, script calls, pipelines).
async fn round_trips(http: &reqwest::Client, url: &str) -> Option<u64> {
    let text = http.get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix("keel_redis_round_trips_total ")?.trim().parse().ok())
}

fn redis_cpu_ms(info: &BTreeMap<String, String>) -> f64 {
    ["used_cpu_sys", "used_cpu_user"].iter().filter_map(|k| info.get(*k)?.parse::<f64>().ok()).sum::<f64>() * 1000.0
}

struct Started {
    url: String,
    redis_url: String,
    keel: Vec<Proc>,
    /// The private redis-server, if the bench started one (killed on drop).
    _redis: Option<Proc>,
    _dir: std::path::PathBuf,
}

/// `keel server` and W `keel worker` processes on `redis_url`, or on a private
/// redis-server when there is none.
async fn start_keel(args: &BenchArgs) -> anyhow::Result<Started> {
    let dir = std::env::temp_dir().join(format!("keel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (redis, redis_url) = match &args.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let (redis, url) = private_redis(&dir, &args.fsync)?;
            (Some(redis), url)
        }
    };
    let exe = std::env::current_exe()?;
    let port = free_port()?;
    // A namespace of its own on a shared Redis; the default on the private one.
    let namespace = if args.redis_url.is_some() { format!("bench-{}", std::process::id()) } else { "keel".into() };
    let spawn = |command: &str| -> anyhow::Result<Proc> {
        let mut cmd = Command::new(&exe);
        cmd.arg(command)
            // The measured Keel is the bench's own: nothing of the caller's
            // configuration (tokens, namespace, keel.toml) leaks into it.
            .env_remove("KEEL_API_TOKENS")
            .env_remove("KEEL_READ_TOKENS")
            .env("KEEL_NAMESPACE", &namespace)
            .env("KEEL_CONFIG", "/dev/null")
            .env("KEEL_ADDR", format!("127.0.0.1:{port}"))
            .env("KEEL_REDIS_URL", &redis_url)
            .env("KEEL_LOG", "warn")
            .env("KEEL_CONCURRENCY", args.concurrency.max(32).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(partitions) = args.partitions {
            cmd.env("KEEL_PARTITIONS", partitions.to_string());
        }
        Ok(Proc(cmd.spawn()?))
    };
    // The server first: it records the namespace's partition count.
    let mut keel = vec![spawn("server")?];
    wait_for_listen(port).await?;
    for _ in 0..args.workers {
        keel.push(spawn("worker")?);
    }
    Ok(Started { url: format!("http://127.0.0.1:{port}"), redis_url, keel, _redis: redis, _dir: dir })
}

async fn wait_for_listen(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("keel server did not listen on 127.0.0.1:{port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A private redis-server in `dir`, with the persistence asked for.
fn private_redis(dir: &std::path::Path, fsync: &str) -> anyhow::Result<(Proc, String)> {
    let redis_port = free_port()?;
    let redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .args(["--appendfsync", fsync, "--maxmemory-policy", "noeviction", "--stream-node-max-bytes", "512", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (is it installed?)")?;
    let redis = Proc(redis);
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((redis, redis_url))
}

async fn wait_for_bench(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/v1/workflows")).send().await
            && let Ok(v) = r.json::<Value>().await
            && v["workflows"].as_array().is_some_and(|w| w.iter().any(|w| w["name"] == "bench"))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no worker running the `bench` workflow answered at {url} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A start's body: the bench input, under the flow-control key if one is asked for.
fn start_body(args: &BenchArgs, input: Value) -> Value {
    match &args.flow_key {
        Some(key) => json!({"input": input, "flow_control": {"key": key, "parallelism": args.flow_parallelism}}),
        None => json!({"input": input}),
    }
}

/// One run, start to finish through the API: its latency, or why it failed.
async fn one_run(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let response = http.post(format!("{url}/v1/workflows/bench/runs?wait=120s")).json(body).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if body["status"] != "completed" {
        bail!("a run did not complete ({status}): {body}");
    }
    Ok(began.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<u8> {
    let started = match &args.url {
        Some(_) => None,
        None => Some(start_keel(&args).await?),
    };
    let url = args.url.clone().or_else(|| started.as_ref().map(|s| s.url.clone())).unwrap_or_default();
    let redis_url = args.redis_url.clone().or_else(|| started.as_ref().map(|s| s.redis_url.clone()));
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency.max(1)).build()?;
    wait_for_bench(&http, &url).await?;
    let mut redis = match &redis_url {
        Some(u) => Some(Redis::connect(u).await?),
        None => None,
    };

    if args.overhead {
        // Warm up, then one run of 100 sequential 1 ms steps.
        one_run(&http, &url, &start_body(&args, json!({"steps": 3}))).await?;
        let took = one_run(&http, &url, &start_body(&args, json!({"steps": 100, "step_ms": 1}))).await?;
        let overhead = (took.as_secs_f64() * 1000.0 - 100.0) / 100.0;
        let line = json!({"steps": 100, "step_ms": 1, "wall_ms": took.as_secs_f64() * 1000.0, "overhead_ms_per_step": overhead});
        if args.json {
            println!("{line}");
        } else {
            println!(
                "keel-bench-overhead steps=100 step_ms=1 wall_ms={:.1} overhead_ms_per_step={overhead:.3}",
                took.as_secs_f64() * 1000.0
            );
        }
        return Ok(0);
    }

    // Warm-up runs (connections, scripts loaded), not counted.
    for _ in 0..args.concurrency.clamp(1, 20) {
        one_run(&http, &url, &start_body(&args, json!({"steps": args.steps}))).await?;
    }
    // Every process reports its round trips within about a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let trips_before = round_trips(&http, &url).await;
    let before = match redis.as_mut() {
        Some(r) => Some(r.info().await?),
        None => None,
    };
    let keel_pids: Vec<u32> = started.iter().flat_map(|s| s.keel.iter().map(|p| p.0.id())).collect();
    let cpu_before: f64 = keel_pids.iter().map(|p| cpu_ms(*p)).sum();

    let bar = ProgressBar::new(args.runs as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} runs {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let input = start_body(&args, json!({"steps": args.steps}));
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.runs {
        let permit = permits.clone().acquire_owned().await?;
        let (http, url, input, bar) = (http.clone(), url.clone(), input.clone(), bar.clone());
        tasks.spawn(async move {
            let result = one_run(&http, &url, &input).await;
            bar.inc(1);
            drop(permit);
            result
        });
    }
    let mut latencies = Vec::with_capacity(args.runs);
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done? {
            Ok(latency) => latencies.push(latency),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let wall = began.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let cpu_keel = keel_pids.iter().map(|p| cpu_ms(*p)).sum::<f64>() - cpu_before;
    latencies.sort();

    let after = match redis.as_mut() {
        Some(r) => Some(r.info().await?),
        None => None,
    };
    let total_steps = (args.runs as f64) * f64::from(args.steps);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let trips_per_step = match (trips_before, round_trips(&http, &url).await) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / total_steps),
        _ => None,
    };
    let scripts_per_step = match (&before, &after) {
        (Some(b), Some(a)) => Some(
            a.iter().zip(b).map(|(a, b)| script_calls(a).saturating_sub(script_calls(b))).sum::<u64>() as f64
                / total_steps,
        ),
        _ => None,
    };
    let (cmds_per_step, bytes_per_run, cpu_redis, shares) = match (&before, &after) {
        (Some(b), Some(a)) => {
            let used =
                |i: &BTreeMap<String, String>| i.get("used_memory").and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let per_node: Vec<f64> =
                a.iter().zip(b).map(|(a, b)| commands(a).saturating_sub(commands(b)) as f64).collect();
            let total: f64 = per_node.iter().sum();
            (
                Some(total / total_steps),
                Some(a.iter().zip(b).map(|(a, b)| used(a) - used(b)).sum::<f64>() / args.runs as f64),
                Some(a.iter().zip(b).map(|(a, b)| redis_cpu_ms(a) - redis_cpu_ms(b)).sum::<f64>()),
                per_node.iter().map(|n| 100.0 * n / total.max(1.0)).collect::<Vec<f64>>(),
            )
        }
        _ => (None, None, None, Vec::new()),
    };
    // Redis CPU counts only when the bench owns the whole Redis.
    let owns_redis = started.as_ref().is_some_and(|s| s._redis.is_some());
    let cpu_per_run = if owns_redis { cpu_redis.map(|r| (r + cpu_keel) / args.runs as f64) } else { None };
    // The two halves, to tell Redis's work from Keel's.
    let redis_cpu_per_run = if owns_redis { cpu_redis.map(|r| r / args.runs as f64) } else { None };
    let keel_cpu_per_run = started.is_some().then(|| cpu_keel / args.runs as f64);
    let redis_cpu_us_per_step = redis_cpu_per_run.map(|ms| ms * 1000.0 / f64::from(args.steps.max(1)));
    let fmt = |v: Option<f64>, digits: usize| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"));
    let report = json!({
        "runs": args.runs, "steps": args.steps, "concurrency": args.concurrency, "flow_key": args.flow_key,
        "workers": if started.is_some() { json!(args.workers) } else { json!(null) },
        "wall_s": wall, "runs_per_s": args.runs as f64 / wall, "steps_per_s": total_steps / wall,
        "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99),
        "cpu_ms_per_run": cpu_per_run, "redis_cmds_per_step": cmds_per_step, "bytes_per_run": bytes_per_run,
        "redis_cpu_ms_per_run": redis_cpu_per_run, "keel_cpu_ms_per_run": keel_cpu_per_run,
        "redis_cpu_us_per_step": redis_cpu_us_per_step, "round_trips_per_step": trips_per_step,
        "scripts_per_step": scripts_per_step,
        "failed": failures.len(),
        "command_share_per_master_pct": shares,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "keel-bench runs={} steps={} concurrency={} workers={} wall_s={wall:.2} runs_per_s={:.0} steps_per_s={:.0} p50_ms={:.2} p99_ms={:.2} cpu_ms_per_run={} redis_cmds_per_step={} bytes_per_run={} redis_cpu_ms_per_run={} keel_cpu_ms_per_run={} redis_cpu_us_per_step={} round_trips_per_step={} scripts_per_step={}",
            args.runs,
            args.steps,
            args.concurrency,
            if started.is_some() { args.workers.to_string() } else { "external".into() },
            args.runs as f64 / wall,
            total_steps / wall,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            fmt(cpu_per_run, 3),
            fmt(cmds_per_step, 1),
            fmt(bytes_per_run, 0),
            fmt(redis_cpu_per_run, 3),
            fmt(keel_cpu_per_run, 3),
            fmt(redis_cpu_us_per_step, 1),
            fmt(trips_per_step, 2),
            fmt(scripts_per_step, 2),
        );
        if shares.len() > 1 {
            let shares: Vec<String> = shares.iter().map(|s| format!("{s:.1}")).collect();
            println!("keel-bench-cluster masters={} command_share_pct={}", shares.len(), shares.join("/"));
        }
    }
    if !failures.is_empty() {
        eprintln!("{} of {} runs did not complete; first: {}", failures.len(), args.runs, failures[0]);
        return Ok(1);
    }
    Ok(0)
}
