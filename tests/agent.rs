//! The agent across a worker crash: `keel server` and `keel worker` processes,
//! a local service for plan / execute / reflect that verifies every signature
//! with the key from /v1/webhooks/signing-key and counts calls per idempotency
//! key; the worker is SIGKILLed during the execute phase. No process is given
//! KEEL_SIGNING_KEY: the server, the worker and its replacement sign with the
//! deployment's key, which the first of them made and kept in Redis.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use common::{Keel, wait_for_workflows};
use keel_engine::testing::RedisServer;
use serde_json::{Value, json};

#[derive(Default)]
struct Service {
    public_key: Mutex<String>,
    calls: Mutex<HashMap<String, usize>>,
    executed: Mutex<usize>,
    unverified: Mutex<usize>,
}

async fn endpoint(
    State(s): State<Arc<Service>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let key = s.public_key.lock().unwrap().clone();
    let ok = h("webhook-timestamp")
        .parse()
        .is_ok_and(|ts| keel_net::verify(&key, &h("webhook-id"), ts, &body, &h("webhook-signature")));
    if !ok {
        *s.unverified.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    *s.calls.lock().unwrap().entry(h("idempotency-key")).or_default() += 1;
    let request: Value = serde_json::from_slice(&body).unwrap();
    match uri.path() {
        "/plan" => axum::Json(json!({"steps": (1..=6).map(|i| json!({"id": format!("s{i}")})).collect::<Vec<_>>()}))
            .into_response(),
        "/execute" => {
            tokio::time::sleep(Duration::from_millis(600)).await;
            *s.executed.lock().unwrap() += 1;
            axum::Json(json!({"did": request["step"]["id"]})).into_response()
        }
        _ => axum::Json(json!({"done": true, "summary": "all six"})).into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_execute_does_not_repeat_completed_steps() {
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("agent");
    let env = [("KEEL_LEASE", "2s")];
    let server = Keel::spawn("server", &redis, &ns, &env);
    let worker = Keel::spawn("worker", &redis, &ns, &env);
    let http = reqwest::Client::new();
    wait_for_workflows(&http, &server, None).await;

    let service = Arc::new(Service::default());
    let key: Value =
        http.get(format!("{}/v1/webhooks/signing-key", server.url)).send().await.unwrap().json().await.unwrap();
    *service.public_key.lock().unwrap() = key["public_key"].as_str().unwrap().to_owned();
    let app = axum::Router::new().fallback(endpoint).with_state(service.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let input = json!({
        "goal": "six things",
        "endpoints": {"plan": format!("{base}/plan"), "execute": format!("{base}/execute"), "reflect": format!("{base}/reflect")},
        "max_parallel": 1,
    });
    let started: Value = http
        .post(format!("{}/v1/workflows/agent-http/runs", server.url))
        .json(&json!({"input": input}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["run_id"].as_str().unwrap().to_owned();

    // Kill the worker once two steps are done and a third is under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while *service.executed.lock().unwrap() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "execution never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(worker); // SIGKILL
    let detail: Value = http.get(format!("{}/v1/runs/{id}", server.url)).send().await.unwrap().json().await.unwrap();
    let done_before: Vec<String> = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "completed")
        .map(|s| s["step_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(done_before.iter().filter(|s| s.starts_with("execute-")).count() >= 2, "{done_before:?}");

    let _replacement = Keel::spawn("worker", &redis, &ns, &env);
    let result: Value =
        http.get(format!("{}/v1/runs/{id}/result?wait=60s", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["output"]["summary"], "all six");
    assert_eq!(result["output"]["rounds"][0]["outcomes"].as_array().unwrap().len(), 6);

    let calls = service.calls.lock().unwrap().clone();
    for step in &done_before {
        assert_eq!(
            calls.get(&format!("{id}:{step}")),
            Some(&1),
            "{step} completed before the kill and was not called again"
        );
    }
    assert_eq!(calls.len(), 8, "plan, six executes, reflect: {calls:?}");
    assert!(calls.values().all(|n| *n <= 2), "at most the interrupted step ran twice: {calls:?}");
    assert_eq!(*service.unverified.lock().unwrap(), 0, "every request verified with the published key");
    drop(server);
}
