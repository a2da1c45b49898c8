//! `keel dev`, `keel server`, `keel worker`: the long-running processes. Each
//! shuts down gracefully on SIGINT/SIGTERM: stop accepting, let work in flight
//! finish (within a grace period), stop the background tasks.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use keel_api::{AppState, Secret, Signer, dispatcher};
use keel_engine::{MemoryStore, RedisStore, Store};
use keel_worker::Worker;
use keel_worker::signing::SigningKeys;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, init_logging};

async fn redis_store(settings: &Settings, url: &str) -> anyhow::Result<Arc<dyn Store>> {
    let store = RedisStore::connect_to(&settings.redis_target(url)?, settings.store_config()?)
        .await
        .with_context(|| format!("connecting to Redis at {} (is it running?)", redacted(url)))?;
    if store.is_cluster() {
        tracing::info!("Redis Cluster mode: commands and scripts are routed by slot");
    }
    Ok(Arc::new(store))
}

/// A Redis URL (or several) without passwords, for messages.
fn redacted(urls: &str) -> String {
    urls.split(',').map(keel_engine::store::redis::redact).collect::<Vec<_>>().join(",")
}

/// The keys this process signs webhooks and calls with: the deployment's,
/// kept in the store, which the first process sets (its KEEL_SIGNING_KEY,
/// `keel dev`'s key file, or a new key) and every process follows through
/// rotations. A KEEL_SIGNING_KEY the deployment does not have still wins, with
/// a warning (refused with KEEL_STRICT). Also says whether the signer follows
/// the deployment's keys.
async fn signer(
    settings: &Settings,
    store: &Arc<dyn Store>,
    persist_in: Option<&Path>,
) -> anyhow::Result<(Signer, bool)> {
    let explicit = settings.signing_key.as_deref().map(Signer::from_base64).transpose().context("KEEL_SIGNING_KEY")?;
    let (offer, own) = match (explicit, persist_in) {
        (Some(signer), _) => (signer, true),
        (None, Some(dir)) => (dev_key_file(dir)?, false),
        (None, None) => (Signer::generate()?, false),
    };
    match keel_worker::signing::signing_keys(store, offer, own)
        .await
        .context("reading the deployment's signing keys")?
    {
        SigningKeys::Deployment(signer) => Ok((signer, true)),
        SigningKeys::Own { signer, deployment_public_key } => {
            if settings.strict.unwrap_or(false) {
                bail!(
                    "KEEL_SIGNING_KEY is not one of the deployment's signing keys stored in Redis (newest public key \
                     {deployment_public_key}): unset it to use the stored keys, or unset KEEL_STRICT to sign with it anyway"
                );
            }
            tracing::warn!(
                deployment_public_key = %deployment_public_key,
                "KEEL_SIGNING_KEY is not one of the deployment's signing keys in Redis: this process signs with its own, \
                 which receivers that fetched another server's keys will refuse"
            );
            Ok((signer, false))
        }
    }
}

/// `keel dev`'s key under `.keel/`, made on first use; readable by its owner only.
fn dev_key_file(dir: &Path) -> anyhow::Result<Signer> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = dir.join("signing.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        // A key file written by an earlier version may be readable by others.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} readable by its owner only", path.display()))?;
        return Signer::from_base64(&text).with_context(|| format!("{} is not a signing key", path.display()));
    }
    let signer = Signer::generate()?;
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, signer.secret_base64().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a signing key");
    Ok(signer)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}

/// The QStash signing key pair: the operator's (KEEL_QSTASH_*_SIGNING_KEY,
/// stored for every process), else the deployment's, made by its first process.
async fn qstash_keys(settings: &Settings, store: &Arc<dyn Store>) -> anyhow::Result<(String, String)> {
    match (&settings.qstash_current_signing_key, &settings.qstash_next_signing_key) {
        (Some(current), Some(next)) => Ok(store.qstash_signing_keys((current, next), true).await?),
        (None, None) => {
            let key = || {
                keel_net::qstash::generate_key().map_err(|e| anyhow::anyhow!("no randomness for a signing key: {e}"))
            };
            let offer = (key()?, key()?);
            Ok(store.qstash_signing_keys((&offer.0, &offer.1), false).await?)
        }
        _ => bail!("set both KEEL_QSTASH_CURRENT_SIGNING_KEY and KEEL_QSTASH_NEXT_SIGNING_KEY, or neither"),
    }
}

/// The `upstash` workflow (QStash-protocol runs) with this deployment's keys.
fn upstash_workflow(
    settings: &Settings,
    store: Arc<dyn Store>,
    keys: (String, String),
) -> anyhow::Result<keel_worker::Workflow> {
    let mut deliverer = keel_workflows::upstash::Deliverer::new(keys, settings.allow_private_targets.unwrap_or(false));
    deliverer.timeout = settings.qstash_delivery_timeout()?;
    deliverer.max_response_bytes = settings.store_config()?.max_value_bytes;
    Ok(keel_workflows::upstash::workflow(store, deliverer))
}

fn built_in_worker(
    settings: &Settings,
    store: Arc<dyn Store>,
    signer: Signer,
    qstash_keys: (String, String),
) -> anyhow::Result<keel_worker::WorkerBuilder> {
    let mut builder = Worker::builder()
        .store(store.clone())
        .lease(settings.lease()?)
        .concurrency(settings.concurrency.unwrap_or(32))
        .decided_signing_keys(signer)
        .allow_private_targets(settings.allow_private_targets.unwrap_or(false));
    for workflow in keel_workflows::all() {
        builder = builder.register(workflow);
    }
    builder = builder.register(upstash_workflow(settings, store, qstash_keys)?);
    if settings.chaos_workflow.unwrap_or(false) {
        builder = builder.register(keel_workflows::chaos());
    }
    Ok(builder)
}

/// The API, the store's duties, the dispatcher and (for dev) a worker, until a signal.
async fn serve(
    settings: &Settings,
    store: Arc<dyn Store>,
    (signer, follows_deployment_keys): (Signer, bool),
    worker: Option<Worker>,
    handoff: bool,
    qstash_keys: (String, String),
) -> anyhow::Result<()> {
    let listener = StdListener::bind(settings.addr()).with_context(|| format!("listening on {}", settings.addr()))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut state = AppState::new(store.clone(), settings.api_config(), signer);
    if follows_deployment_keys {
        state = state.following_deployment_keys();
    }
    if let Some(worker) = worker.as_ref().filter(|_| handoff) {
        // `keel dev`: a start the caller waits on goes straight to this worker.
        state = state.with_local_worker(worker.handoff());
    }
    state = state.with_qstash_keys(Secret::new(qstash_keys.0), Secret::new(qstash_keys.1));
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (store, stop, duties) = (store.clone(), stop.clone(), settings.duties()?);
        tasks.spawn(async move { keel_engine::run_duties(store.as_ref(), duties, stop.cancelled()).await });
    }
    {
        let config = dispatcher::DispatchConfig {
            retry_base: settings.webhook_retry_base()?,
            visibility: settings.webhook_visibility()?,
            ..Default::default()
        };
        tasks.spawn(dispatcher::run(state.clone(), config, stop.clone()));
    }
    // The dashboard's overview charts: the counters, sampled.
    tasks.spawn(keel_api::ui::sample(state.clone(), stop.clone()));
    if let Some(worker) = worker {
        let stop = stop.clone();
        tasks.spawn(async move {
            if let Err(e) = worker.run(stop.cancelled_owned()).await {
                tracing::error!(error = %e, "the worker stopped with an error");
            }
        });
    }
    tracing::info!(addr = %listener.local_addr()?, "Keel API listening");
    let graceful = {
        let stop = stop.clone();
        async move {
            tokio::select! { _ = shutdown_signal() => {}, _ = stop.cancelled() => {} }
            stop.cancel();
        }
    };
    keel_api::serve(listener, keel_api::router(state), settings.serve_limits()?, graceful).await?;
    stop.cancel();
    if tokio::time::timeout(Duration::from_secs(20), async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop within 20 s");
    }
    if let Err(e) = store.flush_counters().await {
        tracing::warn!(error = %e, "the last /metrics counts could not be written");
    }
    tracing::info!("stopped");
    Ok(())
}

pub async fn server(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings);
    let Some(url) = settings.redis_url.clone() else {
        bail!("keel server needs Redis: set KEEL_REDIS_URL (or --redis-url). `keel dev` runs without one.");
    };
    let store = redis_store(&settings, &url).await?;
    let signer = signer(&settings, &store, None).await?;
    let keys = qstash_keys(&settings, &store).await?;
    // A server delivers the QStash-protocol runs (`upstash`) itself: an
    // Upstash SDK app needs no Keel worker of its own.
    let worker = Worker::builder()
        .store(store.clone())
        .lease(settings.lease()?)
        .concurrency(settings.concurrency.unwrap_or(32))
        .register(upstash_workflow(&settings, store.clone(), keys.clone())?)
        .build()
        .await?;
    serve(&settings, store, signer, Some(worker), false, keys).await
}

pub async fn worker(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings);
    let Some(url) = settings.redis_url.clone() else {
        bail!("keel worker needs Redis: set KEEL_REDIS_URL (or --redis-url). `keel dev` runs without one.");
    };
    let store = redis_store(&settings, &url).await?;
    // The agent signs its calls with the deployment's key, which services
    // verify with /v1/webhooks/signing-key of any server.
    let (signer, _) = signer(&settings, &store, None).await?;
    let keys = qstash_keys(&settings, &store).await?;
    built_in_worker(&settings, store, signer, keys)?.build().await?.run_until_signal().await?;
    Ok(())
}

/// A private redis-server for `keel dev`, its data under `.keel/redis`.
struct DevRedis {
    child: Child,
    url: String,
}

impl Drop for DevRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev_redis(dir: &Path) -> anyhow::Result<Option<DevRedis>> {
    let found = Command::new("redis-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if found.is_err() {
        return Ok(None);
    }
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--appendonly", "yes", "--appendfsync", "everysec"])
        .args(["--save", "", "--maxmemory-policy", "noeviction", "--stream-node-max-bytes", "512", "--dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let redis = DevRedis { child, url: format!("redis://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the private redis-server did not start within 10 s");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(Some(redis))
}

pub async fn dev(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings);
    let dir = PathBuf::from(".keel");
    let mut private_redis = None;
    let (store, store_note): (Arc<dyn Store>, String) = match settings.redis_url.clone() {
        Some(url) => (redis_store(&settings, &url).await?, format!("Redis at {}", redacted(&url))),
        None => match start_dev_redis(&dir)? {
            Some(redis) => {
                let store = redis_store(&settings, &redis.url).await?;
                let note = format!("a private redis-server ({}, data in .keel/redis)", redis.url);
                private_redis = Some(redis);
                (store, note)
            }
            None => (
                Arc::new(MemoryStore::new(settings.store_config()?)),
                "memory (no redis-server installed: runs are lost when this stops)".into(),
            ),
        },
    };
    let signer = signer(&settings, &store, Some(&dir)).await?;
    let keys = qstash_keys(&settings, &store).await?;
    let worker = built_in_worker(&settings, store.clone(), signer.0.clone(), keys.clone())?.build().await?;
    let url = format!("http://{}", settings.addr());
    println!("Keel dev: API on {url}, store: {store_note}");
    println!("Workflows: {}", worker.workflows().keys().cloned().collect::<Vec<_>>().join(", "));
    println!("Start a run:");
    println!(
        "  curl -s -X POST '{url}/v1/workflows/demo/runs?wait=30s' -H 'content-type: application/json' -d '{{\"input\": {{\"steps\": 3}}}}'"
    );
    println!("or: keel run demo --input '{{\"steps\": 3}}' --wait");
    let result = serve(&settings, store, signer, Some(worker), true, keys).await;
    drop(private_redis);
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_dev_key_file_is_readable_by_its_owner_only() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("keel-key-{}-{nanos}", std::process::id()));
        let made = dev_key_file(&dir).unwrap();
        let path = dir.join("signing.key");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "a new key file");
        // One an earlier version left readable by others is narrowed, and kept.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let again = dev_key_file(&dir).unwrap();
        assert_eq!(again.public_key_base64(), made.public_key_base64());
        assert_eq!(mode(&path), 0o600, "an old key file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
