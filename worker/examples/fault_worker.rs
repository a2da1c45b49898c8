//! A worker process with a few small workflows whose steps count their side
//! effects in Redis (`<namespace>:effects:<idempotency key>`), so a test (or
//! you) can kill it at any moment and check what ran how often.
//!
//! Run it against a local Redis:
//!
//! ```sh
//! KEEL_REDIS_URL=redis://127.0.0.1:6379 cargo run -p keel-worker --example fault_worker
//! ```
//!
//! Environment: `KEEL_REDIS_URL` (required), `KEEL_NAMESPACE` (default `keel`),
//! `KEEL_LEASE_MS` (default 30000), `KEEL_WORKER_ID` (default generated).
//! Workflows: `three-steps`, `flaky`, `slow`, `sleeper`, `panicky`, `blocking` (see below). It prints
//! `ready` once it runs, and stops gracefully on SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use keel_worker::{Context, Result, RetryPolicy, StepError, StepInfo, Worker, Workflow};
use redis::AsyncCommands;
use serde_json::{Value, json};

/// Counts a step attempt's side effect, keyed by the step's idempotency key.
#[derive(Clone)]
struct Effects {
    redis: redis::aio::MultiplexedConnection,
    namespace: String,
}

impl Effects {
    async fn record(&self, info: &StepInfo) -> std::result::Result<i64, StepError> {
        let mut redis = self.redis.clone();
        let key = format!("{}:effects:{}", self.namespace, info.idempotency_key);
        Ok(redis.incr(key, 1).await?)
    }
}

/// Three steps, each recording its side effect and returning its name.
async fn three_steps(ctx: Context, effects: Arc<Effects>) -> Result<Value> {
    let mut outputs = Vec::new();
    for name in ["a", "b", "c"] {
        let effects = effects.clone();
        let out: String = ctx
            .step(name)
            .run_with(|info| async move {
                effects.record(&info).await?;
                Ok::<_, StepError>(format!("{name}-done-by-{}", std::process::id()))
            })
            .await?;
        outputs.push(out);
    }
    Ok(json!(outputs))
}

/// One step that fails on its first two attempts (1.5 s then 3 s back-off).
async fn flaky(ctx: Context, effects: Arc<Effects>) -> Result<Value> {
    let policy = RetryPolicy::attempts(5).initial(Duration::from_millis(1500)).jitter(0.0);
    let out: String = ctx
        .step("flaky")
        .retry(policy)
        .run_with(|info| async move {
            effects.record(&info).await?;
            if info.attempt < 3 {
                return Err(StepError::retryable(format!("attempt {} fails on purpose", info.attempt)));
            }
            Ok(format!("succeeded on attempt {}", info.attempt))
        })
        .await?;
    Ok(json!(out))
}

/// `before`, then `slow` (which takes `ms` milliseconds), then `after`.
async fn slow(ctx: Context, effects: Arc<Effects>, ms: u64) -> Result<Value> {
    let mut outputs = Vec::new();
    for (name, pause) in [("before", 0), ("slow", ms), ("after", 0)] {
        let effects = effects.clone();
        let out: String = ctx
            .step(name)
            .run_with(|info| async move {
                effects.record(&info).await?;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                Ok::<_, StepError>(format!("{name}-done-by-{}", std::process::id()))
            })
            .await?;
        outputs.push(out);
    }
    Ok(json!(outputs))
}

/// An author's mistakes: a step that panics on its first attempt, then (with
/// `{"body": true}`) a workflow body that panics after it.
async fn panicky(ctx: Context, effects: Arc<Effects>, input: Value) -> Result<Value> {
    let policy = RetryPolicy::attempts(3).initial(Duration::from_millis(100)).jitter(0.0);
    let attempt: u32 = ctx
        .step("flinch")
        .retry(policy)
        .run_with(|info| async move {
            effects.record(&info).await?;
            if info.attempt == 1 {
                panic!("flinched on attempt 1");
            }
            Ok::<_, StepError>(info.attempt)
        })
        .await?;
    if input["body"] == true {
        panic!("the body gave up after attempt {attempt}");
    }
    Ok(json!(attempt))
}

/// A step that blocks its thread for `ms` milliseconds (a sync client, CPU
/// work), then another step.
async fn blocking(ctx: Context, effects: Arc<Effects>, ms: u64) -> Result<Value> {
    let mut outputs = Vec::new();
    for (name, hold) in [("hold", ms), ("after", 0)] {
        let effects = effects.clone();
        let out: String = ctx
            .step(name)
            .run_with(|info| async move {
                effects.record(&info).await?;
                std::thread::sleep(Duration::from_millis(hold));
                Ok::<_, StepError>(format!("{name}-by-{}", std::process::id()))
            })
            .await?;
        outputs.push(out);
    }
    Ok(json!(outputs))
}

/// A durable sleep of `ms` milliseconds, then a step.
async fn sleeper(ctx: Context, effects: Arc<Effects>, ms: u64) -> Result<Value> {
    ctx.sleep("nap", Duration::from_millis(ms)).await?;
    let out: String = ctx
        .step("after-nap")
        .run_with(|info| async move {
            effects.record(&info).await?;
            Ok::<_, StepError>(format!("woke-in-{}", std::process::id()))
        })
        .await?;
    Ok(json!(out))
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KEEL_REDIS_URL").map_err(|_| "set KEEL_REDIS_URL (redis://host:port)")?;
    let namespace = std::env::var("KEEL_NAMESPACE").unwrap_or_else(|_| "keel".into());
    let lease_ms: u64 = std::env::var("KEEL_LEASE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000);
    let redis = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
    let effects = Arc::new(Effects { redis, namespace: namespace.clone() });

    let e = effects.clone();
    let e2 = effects.clone();
    let e3 = effects.clone();
    let e4 = effects.clone();
    let e5 = effects.clone();
    let e6 = effects.clone();
    let mut builder = Worker::builder()
        .redis_url(url)
        .namespace(namespace)
        .lease(Duration::from_millis(lease_ms))
        .shutdown_grace(Duration::from_secs(2))
        .register(Workflow::new("three-steps", move |ctx, _: Value| three_steps(ctx, e.clone())))
        .register(Workflow::new("flaky", move |ctx, _: Value| flaky(ctx, e2.clone())))
        .register(Workflow::new("slow", move |ctx, ms: u64| slow(ctx, e3.clone(), ms)))
        .register(Workflow::new("sleeper", move |ctx, ms: u64| sleeper(ctx, e4.clone(), ms)))
        .register(Workflow::new("panicky", move |ctx, input: Value| panicky(ctx, e5.clone(), input)))
        .register(Workflow::new("blocking", move |ctx, ms: u64| blocking(ctx, e6.clone(), ms)));
    if let Ok(id) = std::env::var("KEEL_WORKER_ID") {
        builder = builder.worker_id(id);
    }
    let worker = builder.build().await?;
    println!("ready {}", worker.worker_id());
    worker.run_until_signal().await?;
    Ok(())
}
