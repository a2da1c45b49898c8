//! Values over the store's limit: a step's output, a `ctx.call` response, a
//! run's output. Each fails terminally with `payload_too_large`, naming the size
//! and the limit; nothing oversized is stored. On both stores.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, journal, start, wait_final};
use keel_engine::proto::{JournalEvent, RunStatus};
use keel_engine::testing::RedisServer;
use keel_engine::{MemoryStore, RedisStore, StoreConfig};
use keel_worker::{CallRequest, Context, StepError, Worker, Workflow};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: usize = 1000;

fn config(namespace: String) -> StoreConfig {
    StoreConfig { max_value_bytes: LIMIT, ..StoreConfig::with_namespace(namespace) }
}

async fn small_memory() -> Backend {
    Backend { store: Arc::new(MemoryStore::new(config("keel".into()))), redis: None, namespace: "keel".into() }
}

async fn small_redis() -> Backend {
    let server = RedisServer::start();
    let namespace = RedisServer::unique_namespace("payload");
    let store = RedisStore::connect(&server.url(), config(namespace.clone())).await.unwrap();
    Backend { store: Arc::new(store), redis: Some(server), namespace }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_oversized_values_fail_terminally_and_are_not_stored() {
    oversized_values_fail_terminally_and_are_not_stored(small_memory().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_oversized_values_fail_terminally_and_are_not_stored() {
    oversized_values_fail_terminally_and_are_not_stored(small_redis().await).await;
}

/// A worker whose calls may reach this machine's local test servers.
async fn calling_worker(b: &Backend, workflows: Vec<Workflow>) -> common::Running {
    let mut builder =
        Worker::builder().store(b.store.clone()).allow_private_targets(true).timer_tick(Duration::from_millis(20));
    for workflow in workflows {
        builder = builder.register(workflow);
    }
    common::run_worker(builder).await
}

/// A local server answering every request with `size` bytes of JSON string.
async fn big_responder(size: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/big", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let body = format!("\"{}\"", "x".repeat(size));
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    url
}

async fn oversized_values_fail_terminally_and_are_not_stored(b: Backend) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let big_step = Workflow::new("big-step", move |ctx: Context, _: Value| {
        let a = a.clone();
        async move {
            ctx.step("huge")
                .retry(5)
                .run(move || async move {
                    a.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, StepError>("y".repeat(5 * LIMIT))
                })
                .await
        }
    });
    let big_output = Workflow::new("big-output", |ctx: Context, _: Value| async move {
        let piece: String = ctx.step("piece").run(|| async { Ok::<_, StepError>("z".repeat(LIMIT / 2)) }).await?;
        Ok(vec![piece.clone(), piece.clone(), piece])
    });
    let big_call = Workflow::new("big-call", |ctx: Context, url: String| async move {
        let response = ctx.call("fetch", CallRequest::get(url).retry(3)).await?;
        Ok(response.status)
    });
    let worker = calling_worker(&b, vec![big_step, big_output, big_call]).await;

    let step = start(&b.store, "big-step", json!(null)).await;
    let output = start(&b.store, "big-output", json!(null)).await;
    let call = start(&b.store, "big-call", json!(big_responder(10 * LIMIT).await)).await;
    for (id, what) in [(&step, "step's output"), (&output, "run's output"), (&call, "response body")] {
        let run = wait_final(&b.store, id, Duration::from_secs(20)).await;
        assert_eq!(run.status, RunStatus::Failed, "{run:?}");
        let error = run.error.unwrap();
        assert!(error.message.contains(what) && error.message.contains(&LIMIT.to_string()), "{error:?}");
        assert!(error.message.contains("KEEL_MAX_VALUE_BYTES"), "{error:?}");
        let stored: usize =
            journal(&b.store, id).await.iter().map(|r| serde_json::to_string(&r.entry).unwrap().len()).max().unwrap();
        assert!(stored < 2 * LIMIT, "an entry of {stored} bytes was stored");
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "an oversized output is not retried");
    let failed = journal(&b.store, &step).await.into_iter().find_map(|r| match r.entry.event {
        JournalEvent::StepFailed { error, retry_at_ms: None, .. } => Some(error.kind),
        _ => None,
    });
    assert_eq!(failed.as_deref(), Some("payload_too_large"));
    let call_error = journal(&b.store, &call).await.into_iter().find_map(|r| match r.entry.event {
        JournalEvent::StepFailed { error, .. } => Some(error.kind),
        _ => None,
    });
    assert_eq!(call_error.as_deref(), Some("payload_too_large"), "the call is refused while reading, not retried");

    // The store refuses oversized inputs and event data itself, writing nothing.
    let refused = b
        .store
        .create_run(keel_engine::CreateRun {
            workflow: "big-step".into(),
            version: 1,
            input: json!("w".repeat(2 * LIMIT)),
            ..Default::default()
        })
        .await;
    assert!(matches!(refused, Err(keel_engine::Error::PayloadTooLarge { .. })), "{refused:?}");
    let refused = b.store.deliver_event("big", &json!("v".repeat(2 * LIMIT))).await;
    assert!(matches!(refused, Err(keel_engine::Error::PayloadTooLarge { .. })), "{refused:?}");

    worker.stop().await;
}

/// Regression: `ctx.call` journaled a 3xx as a success though it follows no
/// redirect. It is a terminal failure that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_fails_the_call_saying_redirects_are_not_followed() {
    let b = small_memory().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/moved", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 302 Found\r\nlocation: http://example.com/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let call = Workflow::new("redirected", |ctx: Context, url: String| async move {
        Ok(ctx.call("fetch", CallRequest::get(url).retry(3)).await?.status)
    });
    let worker = calling_worker(&b, vec![call]).await;
    let id = start(&b.store, "redirected", json!(url)).await;
    let run = wait_final(&b.store, &id, Duration::from_secs(20)).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    assert!(run.error.unwrap().message.contains("redirects are not followed"));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "not retried: a redirect will not change by itself");
    worker.stop().await;
}
