//! The end-to-end harness: the real `keel` binary and a private redis-server on
//! free ports, a webhook receiver, and bounded waits. Everything talks to 127.0.0.1.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use keel_engine::testing::{RedisCluster, RedisServer, TestRedis};
use serde_json::Value;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A `keel` process, killed when dropped; its output goes to a log file.
pub struct Keel {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Keel {
    /// `keel <command>` with `env`, waiting (bounded) until /healthz answers when it serves.
    pub fn spawn(command: &str, redis: &dyn TestRedis, namespace: &str, env: &[(&str, &str)]) -> Self {
        // A KEEL_ADDR in `env` (a restart on the same port) wins.
        let port = env
            .iter()
            .find(|(k, _)| *k == "KEEL_ADDR")
            .and_then(|(_, addr)| addr.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(free_port);
        let log = std::env::temp_dir().join(format!("keel-e2e-{}-{port}.log", std::process::id()));
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        cmd.arg(command)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEEL_ADDR", format!("127.0.0.1:{port}"))
            .env("KEEL_REDIS_URL", redis.url())
            .env("KEEL_NAMESPACE", namespace)
            .env("KEEL_ALLOW_PRIVATE_TARGETS", "true")
            .env("KEEL_WEBHOOK_RETRY_BASE", "200ms")
            .env("KEEL_LEASE", "5s")
            .env("KEEL_LOG", "debug,hyper=info,h2=info,reqwest=info")
            // On a cluster, the namespace gets several partitions (every process
            // says so: the first to start records the count).
            .env("KEEL_PARTITIONS", partitions(redis).to_string())
            .envs(env.iter().copied())
            .current_dir(std::env::temp_dir())
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        let child = cmd.spawn().expect("spawn keel");
        let keel = Self { child, url: format!("http://127.0.0.1:{port}"), log };
        if command != "worker" {
            keel.wait_healthy();
        }
        keel
    }

    /// `keel <command>` that is expected to exit at once (a refused setting):
    /// waits (bounded) for it and returns its output.
    pub fn spawn_exiting(command: &str, redis: &dyn TestRedis, namespace: &str, env: &[(&str, &str)]) -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg(command)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEEL_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("KEEL_REDIS_URL", redis.url())
            .env("KEEL_NAMESPACE", namespace)
            .envs(env.iter().copied())
            .current_dir(std::env::temp_dir())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn keel");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("keel {command} did not exit within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "keel {command} was expected to fail");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = std::net::TcpStream::connect(self.url.trim_start_matches("http://")).is_ok();
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "keel did not listen within 30 s; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Waits until the worker registered its workflows (a start before that is a 404).
pub async fn wait_for_workflows(http: &reqwest::Client, keel: &Keel, token: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut req = http.get(format!("{}/v1/workflows", keel.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Ok(r) = req.send().await
            && let Ok(v) = r.json::<Value>().await
            && v["workflows"].as_array().is_some_and(|w| w.iter().any(|w| w["name"] == "demo"))
        {
            return;
        }
        assert!(Instant::now() < deadline, "the worker never registered; log:\n{}", keel.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    /// Statuses to answer, in order; then 200.
    script: Mutex<VecDeque<(u16, Option<String>)>>,
}

/// A local webhook receiver that records what it gets.
#[derive(Clone)]
pub struct Receiver {
    state: Arc<ReceiverState>,
    pub url: String,
}

impl Receiver {
    pub async fn start(script: Vec<(u16, Option<String>)>) -> Self {
        let state = Arc::new(ReceiverState { received: Mutex::default(), script: Mutex::new(script.into()) });
        let app = axum::Router::new().fallback(receive).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { state, url }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    state.received.lock().unwrap().push(Received { headers, body: body.to_vec() });
    let next = state.script.lock().unwrap().pop_front();
    match next {
        Some((status, Some(location))) => {
            (StatusCode::from_u16(status).unwrap(), [("location", location)], "").into_response()
        }
        Some((status, None)) => StatusCode::from_u16(status).unwrap().into_response(),
        None => StatusCode::OK.into_response(),
    }
}

/// Poll until `check` holds (every 50 ms, at most `within`).
pub async fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The partitions an end-to-end test's namespace gets: several on a cluster.
pub fn partitions(redis: &dyn TestRedis) -> u16 {
    if redis.is_cluster() { 8 } else { 1 }
}

/// Every key of a namespace, on every node, sorted.
pub async fn keys(redis: &dyn TestRedis, namespace: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for url in redis.node_urls() {
        let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        for pattern in keel_engine::keys::Keys::new(namespace).patterns() {
            let some: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.unwrap();
            keys.extend(some);
        }
    }
    keys.sort();
    keys
}

/// A command on the node that holds its key (one Redis or a cluster).
pub async fn query<T: redis::FromRedisValue>(redis: &dyn TestRedis, cmd: &redis::Cmd) -> T {
    if redis.is_cluster() {
        let client = redis::cluster::ClusterClient::new(redis.node_urls()).unwrap();
        cmd.query_async(&mut client.get_async_connection().await.unwrap()).await.unwrap()
    } else {
        let client = redis::Client::open(redis.url()).unwrap();
        cmd.query_async(&mut client.get_multiplexed_async_connection().await.unwrap()).await.unwrap()
    }
}

/// The Redis an end-to-end test runs on: a single server, or a 3-master cluster.
pub fn redis_of(kind: &str) -> Box<dyn TestRedis> {
    match kind {
        "cluster" => Box::new(RedisCluster::start(3, 0)),
        _ => Box::new(RedisServer::start()),
    }
}

/// `#[tokio::test]`s that run one end-to-end test body on a single Redis and on
/// a cluster: `on_both!(body_fn)` makes `body_fn::single` and `body_fn::cluster`.
#[macro_export]
macro_rules! on_both {
    ($($body:ident),* $(,)?) => {
        $(
            mod $body {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn single() {
                    super::$body(&*$crate::common::redis_of("single")).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$body(&*$crate::common::redis_of("cluster")).await;
                }
            }
        )*
    };
}

pub fn schema(name: &str) -> jsonschema::Validator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto-schemas/json-schema").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}
