//! End to end: the real `keel` binary over HTTP, against a private redis-server
//! and (the tests in `on_both!`) a private three-master Redis Cluster too.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Keel, Receiver, eventually, keys, query, schema, wait_for_workflows};
use futures::StreamExt;
use keel_engine::testing::{RedisServer, TestRedis};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

async fn start(http: &reqwest::Client, keel: &Keel, workflow: &str, body: Value) -> reqwest::Response {
    http.post(format!("{}/v1/workflows/{workflow}/runs", keel.url)).json(&body).send().await.unwrap()
}

/// Subscribe `url` to webhook events of these types (all when empty).
async fn subscribe(http: &reqwest::Client, keel: &Keel, url: &str, event_types: Value) {
    let created = http
        .post(format!("{}/v1/webhooks", keel.url))
        .json(&json!({"url": url, "event_types": event_types}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
}

async fn a_run_started_over_http_is_followed_to_completion_by_polling_and_by_sse(redis: &dyn TestRedis) {
    let ns = RedisServer::unique_namespace("e2e");
    // Separate processes: the API server and a worker.
    let server = Keel::spawn("server", redis, &ns, &[]);
    let _worker = Keel::spawn("worker", redis, &ns, &[]);
    let http = http();
    wait_for_workflows(&http, &server, None).await;

    let workflows: Value = http.get(format!("{}/v1/workflows", server.url)).send().await.unwrap().json().await.unwrap();
    let demo = workflows["workflows"].as_array().unwrap().iter().find(|w| w["name"] == "demo").unwrap();
    assert_eq!(demo["versions"], json!([1]));
    assert!(demo["input_schema"]["properties"]["steps"].is_object(), "the input schema is published: {demo}");

    let started =
        start(&http, &server, "demo", json!({"input": {"steps": 3, "sleep_ms": 200}, "labels": {"team": "core"}}))
            .await;
    assert_eq!(started.status(), 201);
    let started: Value = started.json().await.unwrap();
    let id = started["run_id"].as_str().unwrap().to_owned();

    // SSE: the journal live, in order, ending with the final entry.
    let response = http.get(format!("{}/v1/runs/{id}/events", server.url)).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut events: Vec<(String, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    'read: while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = text.find("\n\n") {
            let message: String = text.drain(..end + 2).collect();
            let field = |name: &str| message.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
            if let (Some(id), Some(kind)) = (field("id:"), field("event:")) {
                events.push((id, kind.clone()));
                if kind == "run_completed" {
                    break 'read;
                }
            }
        }
    }
    let kinds: Vec<&str> = events.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "progress_declared",
            "step_completed",
            "step_completed",
            "step_completed",
            "timer_scheduled",
            "timer_fired",
            "run_completed"
        ],
        "fast steps are journaled once, by their result"
    );
    // Resumable: after the 5th event, only the last three come.
    let resumed = http
        .get(format!("{}/v1/runs/{id}/events", server.url))
        .header("last-event-id", &events[4].0)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(resumed.matches("event: ").count(), 3, "{resumed}");

    // Polling: the detail with steps, and the result.
    let detail: Value = http.get(format!("{}/v1/runs/{id}", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(detail["status"], "completed");
    assert_eq!(detail["labels"], json!({"team": "core"}));
    let steps: Vec<(String, String)> = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step_id"].as_str().unwrap().to_owned(), s["status"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        steps,
        [("step-1", "completed"), ("step-2", "completed"), ("step-3", "completed"), ("nap", "completed")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert!(detail["steps"][0]["duration_ms"].is_u64());
    let result: Value =
        http.get(format!("{}/v1/runs/{id}/result", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(result["output"], json!({"steps": [1, 2, 3], "event": null}));
    // Synchronous start: ?wait= answers with the result.
    let sync = http
        .post(format!("{}/v1/workflows/demo/runs?wait=20s", server.url))
        .json(&json!({"input": {"steps": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(sync.status(), 200);
    assert_eq!(sync.json::<Value>().await.unwrap()["output"], json!({"steps": [1], "event": null}));
    // Events reach waiting runs, and the list filters.
    let waiting: Value =
        start(&http, &server, "demo", json!({"input": {"steps": 1, "wait_for": "e2e:go"}})).await.json().await.unwrap();
    let waiting_id = waiting["run_id"].as_str().unwrap().to_owned();
    let pending = http.get(format!("{}/v1/runs/{waiting_id}/result?wait=300ms", server.url)).send().await.unwrap();
    assert_eq!(pending.status(), 202);
    let mut woken = Value::Null;
    for _ in 0..100 {
        woken = http
            .post(format!("{}/v1/events/e2e:go", server.url))
            .json(&json!({"ok": true}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if woken["woken"].as_array().is_some_and(|w| !w.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(woken["woken"], json!([waiting_id]));
    let done: Value = http
        .get(format!("{}/v1/runs/{waiting_id}/result?wait=20s", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["output"]["event"], json!({"ok": true}));
    let listed: Value = http
        .get(format!("{}/v1/runs?workflow=demo&label=team=core", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1);
    // The worker's counts reach Redis within about a second of its transitions.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = http.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
        if metrics.contains("keel_runs_completed_total{workflow=\"demo\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains("keel_runs_completed_total{workflow=\"demo\"}"), "{metrics}");
    assert!(metrics.contains("keel_step_duration_seconds_bucket"), "{metrics}");
}

async fn signed_webhooks_arrive_retry_with_the_same_id_and_410_disables(redis: &dyn TestRedis) {
    let ns = RedisServer::unique_namespace("hooks");
    let keel = Keel::spawn("dev", redis, &ns, &[]);
    let http = http();
    wait_for_workflows(&http, &keel, None).await;
    let key: Value =
        http.get(format!("{}/v1/webhooks/signing-key", keel.url)).send().await.unwrap().json().await.unwrap();
    let public_key = key["public_key"].as_str().unwrap().to_owned();

    let flaky = Receiver::start(vec![(500, None), (500, None)]).await;
    let gone = Receiver::start(vec![(410, None)]).await;
    for (receiver, types) in [(&flaky, json!(["run.completed"])), (&gone, json!([]))] {
        subscribe(&http, &keel, &receiver.url, types).await;
    }
    let run: Value = start(&http, &keel, "demo", json!({"input": {"steps": 1}})).await.json().await.unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_owned();

    let attempts = eventually(WAIT, "three attempts at the flaky receiver", || {
        let got = flaky.received();
        (got.len() >= 3).then_some(got)
    })
    .await;
    let payload_schema = schema("webhook-payload.json");
    let ids: Vec<String> = attempts.iter().map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "the same webhook-id on every attempt: {ids:?}");
    let mut signatures = Vec::new();
    for attempt in &attempts {
        let h = |name: &str| attempt.headers[name].to_str().unwrap().to_owned();
        let timestamp: i64 = h("webhook-timestamp").parse().unwrap();
        assert!(
            keel_api::signing::verify(&public_key, &h("webhook-id"), timestamp, &attempt.body, &h("webhook-signature")),
            "every attempt's signature verifies with the published key"
        );
        signatures.push(h("webhook-signature"));
        let body: Value = serde_json::from_slice(&attempt.body).unwrap();
        assert!(payload_schema.is_valid(&body), "the payload matches webhook-payload.json: {body}");
        assert_eq!((body["type"].as_str(), body["run_id"].as_str()), (Some("run.completed"), Some(run_id.as_str())));
    }
    let subs: Value = http.get(format!("{}/v1/webhooks", keel.url)).send().await.unwrap().json().await.unwrap();
    let flaky_id = subs["webhooks"].as_array().unwrap().iter().find(|s| s["url"] == flaky.url).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let log: Value =
        http.get(format!("{}/v1/webhooks/{flaky_id}/deliveries", keel.url)).send().await.unwrap().json().await.unwrap();
    let outcomes: Vec<&str> =
        log["deliveries"].as_array().unwrap().iter().map(|d| d["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["delivered", "retrying", "retrying"], "the delivery log, newest first");
    for d in log["deliveries"].as_array().unwrap() {
        let next = d["next_attempt_at_ms"].as_u64();
        if d["outcome"] == "retrying" {
            assert!(next.is_some_and(|n| n > d["at_ms"].as_u64().unwrap()), "a retry says when: {d}");
        } else {
            assert_eq!(next, None, "{d}");
        }
    }

    // The 410 receiver got the first event (run.started) and was disabled: nothing more.
    let mut disabled = Value::Null;
    for _ in 0..100 {
        let subs: Value = http.get(format!("{}/v1/webhooks", keel.url)).send().await.unwrap().json().await.unwrap();
        disabled = subs["webhooks"].as_array().unwrap().iter().find(|s| s["url"] == gone.url).unwrap().clone();
        if !disabled["disabled"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(disabled["disabled"].as_str().unwrap().contains("410"), "{disabled}");
    // Once the outbox and the job set are empty, no delivery can come any more:
    // then count what each receiver got.
    // (Every partition's outbox and jobs.)
    let partitions = common::partitions(redis);
    let parts: Vec<_> =
        (0..partitions).map(|p| keel_engine::keys::Keys::partition(ns.as_str(), p, partitions)).collect();
    let mut settled = false;
    for _ in 0..300 {
        let mut pending = 0u64;
        for keys in &parts {
            pending += query::<u64>(redis, redis::cmd("ZCARD").arg(keys.webhook_jobs())).await;
            pending += query::<u64>(redis, redis::cmd("XLEN").arg(keys.outbox())).await;
        }
        if pending == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "webhook work was still pending after 30 s");
    assert_eq!(flaky.received().len(), 3, "no attempt after the 2xx");
    assert_eq!(gone.received().len(), 1, "a disabled subscription gets nothing more");
}

async fn every_bad_input_gets_its_problem_and_writes_nothing(redis: &dyn TestRedis) {
    let ns = RedisServer::unique_namespace("bad");
    let keel = Keel::spawn("dev", redis, &ns, &[("KEEL_MAX_BODY_BYTES", "2048")]);
    let http = http();
    wait_for_workflows(&http, &keel, None).await;
    let done: Value = http
        .post(format!("{}/v1/workflows/demo/runs?wait=20s", keel.url))
        .header("idempotency-key", "k-1")
        .json(&json!({"input": {"steps": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let done_id = done["run_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = keys(redis, &ns).await;

    let url = |path: &str| format!("{}{path}", keel.url);
    let big = format!("{{\"input\": \"{}\"}}", "x".repeat(4096));
    let deep = format!("{{\"input\": {}1{}}}", "[".repeat(200), "]".repeat(200));
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed JSON",
            http.post(url("/v1/workflows/demo/runs")).header("content-type", "application/json").body("{\"input\": "),
            400,
            "malformed-json",
        ),
        (
            "not JSON",
            http.post(url("/v1/workflows/demo/runs")).header("content-type", "text/plain").body("steps=3"),
            415,
            "unsupported-media-type",
        ),
        (
            "too large",
            http.post(url("/v1/workflows/demo/runs")).header("content-type", "application/json").body(big.clone()),
            413,
            "body-too-large",
        ),
        (
            "too large, chunked",
            http.post(url("/v1/workflows/demo/runs")).header("content-type", "application/json").body(
                reqwest::Body::wrap_stream(futures::stream::iter(
                    (0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])),
                )),
            ),
            413,
            "body-too-large",
        ),
        (
            "deeply nested",
            http.post(url("/v1/workflows/demo/runs")).header("content-type", "application/json").body(deep),
            400,
            "malformed-json",
        ),
        (
            "not UTF-8",
            http.post(url("/v1/workflows/demo/runs"))
                .header("content-type", "application/json")
                .body(vec![b'{', 0xff, 0xfe, b'}']),
            400,
            "malformed-json",
        ),
        (
            "unknown workflow",
            http.post(url("/v1/workflows/nope/runs")).json(&json!({"input": 1})),
            404,
            "unknown-workflow",
        ),
        (
            "input against the schema",
            http.post(url("/v1/workflows/demo/runs")).json(&json!({"input": {"steps": "three"}})),
            422,
            "invalid-input",
        ),
        (
            "unknown field",
            http.post(url("/v1/workflows/demo/runs")).json(&json!({"input": {}, "surprise": 1})),
            422,
            "invalid-request",
        ),
        (
            "bad run id",
            http.post(url("/v1/workflows/demo/runs")).json(&json!({"input": {}, "run_id": "a b"})),
            422,
            "invalid-request",
        ),
        (
            "bad delay",
            http.post(url("/v1/workflows/demo/runs")).json(&json!({"input": {}, "delay": "soon"})),
            422,
            "invalid-request",
        ),
        (
            "reused idempotency key",
            http.post(url("/v1/workflows/demo/runs"))
                .header("idempotency-key", "k-1")
                .json(&json!({"input": {"steps": 2}})),
            422,
            "idempotency-conflict",
        ),
        ("unknown run", http.get(url("/v1/runs/nope")), 404, "run-not-found"),
        ("cancel a finished run", http.post(url(&format!("/v1/runs/{done_id}/cancel"))), 409, "invalid-transition"),
        ("retry a completed run", http.post(url(&format!("/v1/runs/{done_id}/retry"))), 409, "invalid-transition"),
        ("reserved event key", http.post(url("/v1/events/keel.child:x")).json(&json!(1)), 422, "invalid-request"),
        ("bad status filter", http.get(url("/v1/runs?status=sleepy")), 422, "invalid-request"),
        ("webhook to metadata", http.post(url("/v1/webhooks")).json(&json!({"url": "ftp://x"})), 422, "target-refused"),
        ("unknown path", http.get(url("/v2/anything")), 404, "not-found"),
    ];
    for (name, request, status, problem) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        if status == 413 {
            // The rest of the body was never read: the server ends the connection and says so.
            assert_eq!(response.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]), "{name}");
        }
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], format!("urn:keel:problem:{problem}"), "{name}: {body}");
        assert_eq!(body["status"], status, "{name}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{name}");
    }
    // A chunked body over the limit, sent whole before reading (the server may close
    // the connection as soon as it has answered, which would cut a streaming client off).
    let addr = keel.url.trim_start_matches("http://").to_owned();
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request = b"POST /v1/workflows/demo/runs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..4 {
            request.extend_from_slice(b"400\r\n");
            request.extend_from_slice(&[b' '; 1024]);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        stream.write_all(&request).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 413"), "a chunked body over the limit: {raw}");
    assert!(raw.contains("urn:keel:problem:body-too-large"), "{raw}");
    assert_eq!(keys(redis, &ns).await, before, "Redis holds exactly the same keys");
    let listed: Value = http.get(url("/v1/runs")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1, "no run was started by a bad request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_api_and_never_reach_the_log() {
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("auth");
    let (full, read) = ("full-token-s3cr3t-1234567890", "read-token-s3cr3t-0987654321");
    let keel = Keel::spawn("dev", &redis, &ns, &[("KEEL_API_TOKENS", full), ("KEEL_READ_TOKENS", read)]);
    let http = http();
    wait_for_workflows(&http, &keel, Some(full)).await;
    let url = |path: &str| format!("{}{path}", keel.url);
    let body = json!({"input": {"steps": 1}});

    let missing = http.post(url("/v1/workflows/demo/runs")).json(&body).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.json::<Value>().await.unwrap()["type"], "urn:keel:problem:unauthorized");
    let wrong = http.get(url("/v1/runs")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let read_start = http.post(url("/v1/workflows/demo/runs")).bearer_auth(read).json(&body).send().await.unwrap();
    assert_eq!(read_start.status(), 403, "a read-only token cannot start");
    let started: Value = http
        .post(url("/v1/workflows/demo/runs?wait=20s"))
        .bearer_auth(full)
        .json(&json!({"input": {"steps": 1, "wait_for": "auth:never"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["run_id"].as_str().unwrap_or_else(|| panic!("no run id in {started}"));
    let read_cancel = http.post(url(&format!("/v1/runs/{id}/cancel"))).bearer_auth(read).send().await.unwrap();
    assert_eq!(read_cancel.status(), 403, "a read-only token cannot cancel");
    let read_get = http.get(url(&format!("/v1/runs/{id}"))).bearer_auth(read).send().await.unwrap();
    assert_eq!(read_get.status(), 200, "but it can read");
    let cancelled = http.post(url(&format!("/v1/runs/{id}/cancel"))).bearer_auth(full).send().await.unwrap();
    assert_eq!(cancelled.status(), 200);
    assert_eq!(http.get(url("/healthz")).send().await.unwrap().status(), 200, "probes need no token");
    let log = keel.log_text();
    assert!(log.len() > 1000, "the server logged (at debug): {} bytes", log.len());
    assert!(!log.contains(full) && !log.contains(read), "a token reached the log");
    assert!(!log.contains("s3cr3t"));
}

async fn fifty_concurrent_starts_with_one_idempotency_key_make_one_run(redis: &dyn TestRedis) {
    let ns = RedisServer::unique_namespace("idem");
    let keel = Keel::spawn("dev", redis, &ns, &[]);
    let http = http();
    wait_for_workflows(&http, &keel, None).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, url) = (http.clone(), format!("{}/v1/workflows/demo/runs", keel.url));
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("idempotency-key", "order-42")
                .json(&json!({"input": {"steps": 1}}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap()["run_id"].as_str().unwrap().to_owned())
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let (status, id) = t.await.unwrap();
        assert!(status == 201 || status == 200, "{status}");
        created += usize::from(status == 201);
        ids.insert(id);
    }
    assert_eq!((ids.len(), created), (1, 1), "one run, created once");
    let listed: Value = http.get(format!("{}/v1/runs", keel.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1);
}

async fn keel_run_wait_exits_zero_on_success_and_non_zero_on_failure(redis: &dyn TestRedis) {
    let ns = RedisServer::unique_namespace("cli");
    let keel = Keel::spawn("dev", redis, &ns, &[]);
    wait_for_workflows(&http(), &keel, None).await;
    let run = |input: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["run", "demo", "--input", input, "--wait", "--url", &keel.url])
            .output()
            .expect("keel run")
    };
    let ok = tokio::task::spawn_blocking({
        let run = run(r#"{"steps": 2}"#);
        move || run
    })
    .await
    .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let output: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(output, json!({"steps": [1, 2], "event": null}));
    let failed = run(r#"{"steps": 3, "fail_at": 2}"#);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("step 2 fails"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let unreachable = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["runs", "--url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("could not reach the Keel API"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_webhook_targets_are_refused_when_private_targets_are_not_allowed() {
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("ssrf");
    let keel = Keel::spawn("dev", &redis, &ns, &[("KEEL_ALLOW_PRIVATE_TARGETS", "false")]);
    let http = http();
    wait_for_workflows(&http, &keel, None).await;
    for target in [
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]:8080/hook",
        "http://localhost:1/x",
        "http://10.0.0.1/x",
        "http://[::ffff:0:7f00:1]/x",
        "http://[64:ff9b:1::a00:1]/x",
        "http://[2001::1]/x",
        "http://[fec0::1]/x",
    ] {
        for request in [
            http.post(format!("{}/v1/webhooks", keel.url)).json(&json!({"url": target})),
            http.post(format!("{}/v1/workflows/demo/runs", keel.url))
                .json(&json!({"input": {}, "callback_url": target})),
        ] {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 422, "{target}");
            let problem = response.json::<Value>().await.unwrap();
            assert_eq!(problem["type"], "urn:keel:problem:target-refused", "{target}");
            let detail = problem["detail"].as_str().unwrap();
            if target.contains("localhost") {
                assert!(!detail.contains("127.0.0.1") && !detail.contains("::1"), "what a name resolved to: {detail}");
            }
        }
    }
    assert!(keys(&redis, &ns).await.iter().all(|k| !k.ends_with(":webhooks")), "no subscription was stored");

    // Credentials in a webhook URL are kept for sending, never shown back.
    let allowed = Keel::spawn("dev", &redis, &RedisServer::unique_namespace("creds"), &[]);
    let created = http
        .post(format!("{}/v1/webhooks", allowed.url))
        .json(&json!({"url": "http://user:hunter2@127.0.0.1:9/hook"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    for shown in [
        created.to_string(),
        http.get(format!("{}/v1/webhooks", allowed.url)).send().await.unwrap().text().await.unwrap(),
        http.get(format!("{}/v1/webhooks/{id}", allowed.url)).send().await.unwrap().text().await.unwrap(),
    ] {
        assert!(!shown.contains("hunter2") && !shown.contains("user:"), "credentials shown back: {shown}");
        assert!(shown.contains("***@127.0.0.1:9/hook"), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed() {
    // Private targets allowed (everything here is loopback): a receiver that
    // redirects to another gets a failed attempt, and the other gets nothing.
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("redir");
    let keel = Keel::spawn("dev", &redis, &ns, &[]);
    let http = http();
    wait_for_workflows(&http, &keel, None).await;
    let inner = Receiver::start(vec![]).await;
    let redirecting = Receiver::start(vec![(307, Some(inner.url.clone())); 10]).await;
    http.post(format!("{}/v1/workflows/demo/runs", keel.url))
        .json(&json!({"input": {"steps": 1}, "callback_url": redirecting.url}))
        .send()
        .await
        .unwrap();
    eventually(WAIT, "two attempts at the redirecting receiver", || (redirecting.received().len() >= 2).then_some(()))
        .await;
    assert!(inner.received().is_empty(), "the redirect was not followed");
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto-schemas/openapi.json")).unwrap_or_default();
    let generated = keel_api::openapi_json();
    if std::env::var_os("KEEL_BLESS").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/proto-schemas/openapi.json"), &generated).unwrap();
        return;
    }
    assert!(
        committed == generated,
        "proto-schemas/openapi.json is out of date: the API changed. If deliberate, run \
         `KEEL_BLESS=1 cargo test --test api the_served_openapi` and commit it."
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    for path in ["/v1/workflows/{name}/runs", "/v1/runs/{id}/events", "/v1/webhooks/signing-key", "/metrics"] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    // Every parameter is where the handler reads it: path parameters are exactly
    // the template's, the query ones are in the query (a generated client builds
    // its URLs from this).
    let mut operation_ids = std::collections::BTreeSet::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        let template: std::collections::BTreeSet<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        for (method, operation) in operations.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(operation_ids.insert(id.to_owned()), "operationId {id} is used twice");
            let params = operation["parameters"].as_array().cloned().unwrap_or_default();
            let in_path: std::collections::BTreeSet<&str> =
                params.iter().filter(|p| p["in"] == "path").map(|p| p["name"].as_str().unwrap()).collect();
            assert_eq!(in_path, template, "{method} {path}: path parameters");
            for param in &params {
                if param["in"] == "query" {
                    assert_ne!(param["required"], true, "{method} {path}: query {} is optional", param["name"]);
                }
            }
        }
    }
    for (path, method, query) in [
        ("/v1/runs", "get", vec!["workflow", "status", "label", "limit", "cursor"]),
        ("/v1/runs/{id}/result", "get", vec!["wait"]),
        ("/v1/workflows/{name}/runs", "post", vec!["wait"]),
    ] {
        let params = doc["paths"][path][method]["parameters"].as_array().unwrap();
        for name in query {
            assert!(
                params.iter().any(|p| p["name"] == name && p["in"] == "query"),
                "{method} {path}: {name} is a query parameter"
            );
        }
    }
    // And a real validator agrees (openapi-spec-validator from PyPI; .ci/run installs it).
    let validated = std::process::Command::new("openapi-spec-validator")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/proto-schemas/openapi.json"))
        .output()
        .expect("openapi-spec-validator is missing: `pip install openapi-spec-validator==0.7.1` (.ci/run does)");
    assert!(
        validated.status.success(),
        "openapi-spec-validator rejects the document:\n{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );
}

async fn operators_pause_resume_and_retry_runs(redis: &dyn TestRedis) {
    let ns = RedisServer::unique_namespace("ops");
    let keel = Keel::spawn("dev", redis, &ns, &[]);
    let http = http();
    wait_for_workflows(&http, &keel, None).await;
    let url = |path: String| format!("{}{path}", keel.url);
    let post = |path: String| http.post(url(path)).send();

    // A delayed run is sleeping: pause it, resume it, and it completes.
    let started: Value =
        start(&http, &keel, "demo", json!({"input": {"steps": 2}, "delay": "1s"})).await.json().await.unwrap();
    let id = started["run_id"].as_str().unwrap().to_owned();
    let paused: Value = post(format!("/v1/runs/{id}/pause")).await.unwrap().json().await.unwrap();
    assert_eq!(paused["outcome"], "pause_requested", "a sleeping run pauses when it wakes");
    let mut status = Value::Null;
    for _ in 0..100 {
        let run: Value = http.get(url(format!("/v1/runs/{id}"))).send().await.unwrap().json().await.unwrap();
        status = run["status"].clone();
        if status == "paused" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "paused");
    let resumed: Value = post(format!("/v1/runs/{id}/resume")).await.unwrap().json().await.unwrap();
    assert_eq!(resumed["outcome"], "resumed");
    let done: Value =
        http.get(url(format!("/v1/runs/{id}/result?wait=20s"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(done["status"], "completed");

    // A failed run is retried from its failed step (the demo fails the same way again).
    let failed: Value = http
        .post(url("/v1/workflows/demo/runs?wait=20s".into()))
        .json(&json!({"input": {"steps": 2, "fail_at": 2}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(failed["status"], "failed");
    let fid = failed["run_id"].as_str().unwrap().to_owned();
    let retried: Value = post(format!("/v1/runs/{fid}/retry")).await.unwrap().json().await.unwrap();
    assert_eq!(retried["outcome"], "retried");
    let again: Value =
        http.get(url(format!("/v1/runs/{fid}/result?wait=20s"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["status"], "failed");
    let detail: Value = http.get(url(format!("/v1/runs/{fid}"))).send().await.unwrap().json().await.unwrap();
    let step2 = detail["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == "step-2").unwrap();
    assert_eq!(step2["attempts"], 2, "the failed step ran again; step-1 kept its result");
    let step1 = detail["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == "step-1").unwrap();
    assert_eq!(step1["attempts"], 1);
}

on_both!(
    a_run_started_over_http_is_followed_to_completion_by_polling_and_by_sse,
    signed_webhooks_arrive_retry_with_the_same_id_and_410_disables,
    every_bad_input_gets_its_problem_and_writes_nothing,
    fifty_concurrent_starts_with_one_idempotency_key_make_one_run,
    keel_run_wait_exits_zero_on_success_and_non_zero_on_failure,
    operators_pause_resume_and_retry_runs,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_runs_on_a_tls_redis_with_a_custom_ca_and_a_client_certificate() {
    let certs = keel_engine::testing::TestCertificates::generate();
    let redis = certs.server("yes");
    let (ca, cert, key) = (certs.ca(), certs.client_cert(), certs.client_key());
    let files = [
        ("KEEL_REDIS_CA_FILE", ca.to_str().unwrap()),
        ("KEEL_REDIS_CERT_FILE", cert.to_str().unwrap()),
        ("KEEL_REDIS_KEY_FILE", key.to_str().unwrap()),
    ];
    let ns = RedisServer::unique_namespace("tls");
    let keel = Keel::spawn("dev", &redis, &ns, &files);
    let http = http();
    wait_for_workflows(&http, &keel, None).await;
    let done: Value = start(&http, &keel, "demo", json!({"input": {"steps": 2}})).await.json().await.unwrap();
    let run_id = done["run_id"].as_str().unwrap().to_owned();
    let result: Value =
        http.get(format!("{}/v1/runs/{run_id}/result?wait=20s", keel.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(result["status"], "completed", "{result}");
    assert!(keel.log_text().contains("rediss://"), "the log names the TLS Redis");

    // Without the CA the server refuses to start, saying why.
    let untrusted = Keel::spawn_exiting("server", &redis, &RedisServer::unique_namespace("tls"), &files[1..]);
    assert!(untrusted.to_lowercase().contains("certificate"), "{untrusted}");
}

/// Two servers and a worker started without KEEL_SIGNING_KEY on one Redis sign
/// with one key, the deployment's: both servers publish it, and every webhook,
/// whichever server's dispatcher sent it, verifies with either's key. With
/// KEEL_STRICT, a process given another key refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_and_workers_without_a_signing_key_share_the_deployments() {
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("keys");
    let a = Keel::spawn("server", &redis, &ns, &[]);
    let b = Keel::spawn("server", &redis, &ns, &[]);
    let _worker = Keel::spawn("worker", &redis, &ns, &[]);
    let http = http();
    wait_for_workflows(&http, &a, None).await;
    let mut published = Vec::new();
    for keel in [&a, &b] {
        let key: Value =
            http.get(format!("{}/v1/webhooks/signing-key", keel.url)).send().await.unwrap().json().await.unwrap();
        published.push(key["public_key"].as_str().unwrap().to_owned());
    }
    assert_eq!(published[0], published[1], "one key for the deployment");

    let receiver = Receiver::start(Vec::new()).await;
    subscribe(&http, &a, &receiver.url, json!(["run.completed"])).await;
    for keel in [&a, &b, &a, &b] {
        assert!(start(&http, keel, "demo", json!({"input": {"steps": 1}})).await.status().is_success());
    }
    let got = eventually(WAIT, "four run.completed webhooks", || {
        let got = receiver.received();
        (got.len() >= 4).then_some(got)
    })
    .await;
    for delivery in &got {
        let h = |name: &str| delivery.headers[name].to_str().unwrap().to_owned();
        let timestamp: i64 = h("webhook-timestamp").parse().unwrap();
        for key in &published {
            assert!(
                keel_api::signing::verify(key, &h("webhook-id"), timestamp, &delivery.body, &h("webhook-signature")),
                "a webhook verifies with the deployment's key"
            );
        }
    }

    let other = keel_api::Signer::generate().unwrap().secret_base64();
    let refused =
        Keel::spawn_exiting("server", &redis, &ns, &[("KEEL_SIGNING_KEY", other.as_str()), ("KEEL_STRICT", "1")]);
    assert!(refused.contains("is not one of the deployment's signing keys"), "{refused}");
    assert!(!refused.contains(&other), "the key is not printed");
}

/// A receiver as the README tells services to write one: it keeps the key list
/// it fetched, and when a message names a key id it does not know, fetches the
/// list again (from either server) before verifying.
#[derive(Clone)]
struct VerifyingReceiver {
    state: std::sync::Arc<VerifierState>,
    url: String,
}

struct VerifierState {
    servers: Vec<String>,
    keys: tokio::sync::Mutex<Vec<(String, String)>>,
    refreshes: std::sync::atomic::AtomicUsize,
    /// (key ids header, verified) per delivery.
    seen: std::sync::Mutex<Vec<(String, bool)>>,
}

impl VerifyingReceiver {
    async fn start(servers: Vec<String>) -> Self {
        let state = std::sync::Arc::new(VerifierState {
            servers,
            keys: tokio::sync::Mutex::default(),
            refreshes: Default::default(),
            seen: Default::default(),
        });
        state.refresh().await;
        let app = axum::Router::new().fallback(verify_delivery).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { state, url }
    }

    fn seen(&self) -> Vec<(String, bool)> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl VerifierState {
    async fn refresh(&self) {
        let n = self.refreshes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let server = &self.servers[n % self.servers.len()];
        let list: Value =
            http().get(format!("{server}/v1/webhooks/signing-key")).send().await.unwrap().json().await.unwrap();
        let errors: Vec<String> = schema("http/signing-key.json").iter_errors(&list).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{list}: {errors:?}");
        *self.keys.lock().await = list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k["id"].as_str().unwrap().to_owned(), k["public_key"].as_str().unwrap().to_owned()))
            .collect();
    }
}

async fn verify_delivery(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<VerifierState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let ids = h(keel_net::KEY_IDS_HEADER);
    let known = |keys: &[(String, String)]| ids.split(' ').all(|id| keys.iter().any(|(k, _)| k == id));
    if !known(&state.keys.lock().await) {
        state.refresh().await;
    }
    let timestamp: i64 = h("webhook-timestamp").parse().unwrap_or(0);
    let keys = state.keys.lock().await.clone();
    let verified = keys.iter().any(|(_, public)| {
        keel_api::signing::verify(public, &h("webhook-id"), timestamp, &body, &h("webhook-signature"))
    });
    state.seen.lock().unwrap().push((ids, verified));
    if verified { axum::http::StatusCode::OK } else { axum::http::StatusCode::UNAUTHORIZED }
}

/// A rotation in the middle of a stream of deliveries: a key is added through
/// one server, the old one retired through the other once the new one has
/// settled, and a receiver that refreshes its key list on an unknown key id
/// verifies every delivery: before (k1), during (k1 and k2) and after (k2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_during_a_stream_of_deliveries_verifies_every_one() {
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("rotate");
    let a = Keel::spawn("server", &redis, &ns, &[]);
    let b = Keel::spawn("server", &redis, &ns, &[]);
    let _worker = Keel::spawn("worker", &redis, &ns, &[]);
    let http = http();
    wait_for_workflows(&http, &a, None).await;
    let receiver = VerifyingReceiver::start(vec![a.url.clone(), b.url.clone()]).await;
    subscribe(&http, &a, &receiver.url, json!(["run.completed"])).await;

    // A stream of runs through both servers until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let starter = {
        let (http, urls, stop) = (http.clone(), [a.url.clone(), b.url.clone()], stop.clone());
        tokio::spawn(async move {
            let mut started = 0usize;
            while !stop.is_cancelled() {
                let url = format!("{}/v1/workflows/demo/runs", urls[started % 2]);
                let r = http.post(url).json(&json!({"input": {"steps": 1}})).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
                started += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            started
        })
    };
    eventually(WAIT, "deliveries signed with the first key", || {
        (receiver.seen().iter().filter(|(ids, _)| ids == "k1").count() >= 3).then_some(())
    })
    .await;

    let rotated = http.post(format!("{}/v1/signing-keys/rotate", a.url)).send().await.unwrap();
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    assert_eq!(rotated["keys"].as_array().unwrap().len(), 2, "{rotated}");
    assert!(!rotated.to_string().contains("secret"), "only public keys are answered");

    // Retiring the old key is refused until every process has had time to
    // pick the new one up; then it goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut refusals = 0;
    loop {
        let r = http.post(format!("{}/v1/signing-keys/retire", b.url)).send().await.unwrap();
        if r.status() == 200 {
            let ring: Value = r.json().await.unwrap();
            assert_eq!(ring["keys"].as_array().unwrap().iter().map(|k| k["id"].clone()).collect::<Vec<_>>(), ["k2"]);
            break;
        }
        assert_eq!(r.status(), 409);
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["type"], "urn:keel:problem:signing-keys", "{problem}");
        refusals += 1;
        assert!(std::time::Instant::now() < deadline, "the retirement was never allowed: {problem}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(refusals > 0, "a retirement right after the rotation is refused");
    let last = b.url.clone();
    let retired: Value =
        http.post(format!("{last}/v1/signing-keys/retire")).send().await.unwrap().json().await.unwrap();
    assert!(retired["detail"].as_str().unwrap().contains("only signing key"), "{retired}");

    eventually(WAIT, "deliveries signed with the new key only", || {
        (receiver.seen().iter().filter(|(ids, _)| ids == "k2").count() >= 5).then_some(())
    })
    .await;
    stop.cancel();
    let started = starter.await.unwrap();
    let seen = eventually(WAIT, "a delivery for every run", || {
        let seen = receiver.seen();
        (seen.iter().filter(|(_, ok)| *ok).count() >= started).then_some(seen)
    })
    .await;
    let failed: Vec<_> = seen.iter().filter(|(_, ok)| !ok).collect();
    assert!(failed.is_empty(), "deliveries that did not verify: {failed:?}");
    for ids in ["k1", "k1 k2", "k2"] {
        assert!(seen.iter().any(|(seen, _)| seen == ids), "no delivery signed by {ids:?}: {seen:?}");
    }
}

/// A schedule every 2 s with three servers running the scheduler: one run per
/// tick and no more (each run's id names its tick; consecutive ticks 2 s
/// apart, none twice), listed with `?schedule=`; pause stops the ticks,
/// trigger starts one now, delete removes the schedule and keeps its runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_on_three_servers_starts_one_run_per_tick() {
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("sched");
    let servers: Vec<Keel> = (0..3).map(|_| Keel::spawn("server", &redis, &ns, &[])).collect();
    let _worker = Keel::spawn("worker", &redis, &ns, &[]);
    let http = http();
    wait_for_workflows(&http, &servers[0], None).await;
    let url = |i: usize, path: &str| format!("{}{path}", servers[i].url);

    let bad = http
        .post(url(0, "/v1/schedules"))
        .json(&json!({"id": "bad", "workflow": "demo", "cron": "*/2 * * * * *", "timezone": "Mars/Olympus"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    assert!(bad.text().await.unwrap().contains("IANA time zone"));

    let created = http
        .post(url(0, "/v1/schedules"))
        .json(&json!({"id": "every-2s", "workflow": "demo", "cron": "*/2 * * * * *",
            "input": {"steps": 1}, "labels": {"team": "core"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let schedule: Value = created.json().await.unwrap();
    let errors: Vec<String> = schema("http/schedule.json").iter_errors(&schedule).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{schedule}: {errors:?}");
    let ticks = schedule["next_fire_times"].as_array().unwrap();
    assert_eq!(ticks.len(), 3);
    assert_eq!(ticks[1].as_u64().unwrap() - ticks[0].as_u64().unwrap(), 2000);

    let runs_of = |http: reqwest::Client, base: String| async move {
        let page: Value =
            http.get(format!("{base}/v1/runs?schedule=every-2s&limit=100")).send().await.unwrap().json().await.unwrap();
        let mut ticks: Vec<u64> = page["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().strip_prefix("sched-every-2s-").unwrap().parse().unwrap())
            .collect();
        ticks.sort_unstable();
        ticks
    };
    let deadline = std::time::Instant::now() + WAIT;
    let ticks = loop {
        let ticks = runs_of(http.clone(), servers[1].url.clone()).await;
        if ticks.len() >= 4 {
            break ticks;
        }
        assert!(std::time::Instant::now() < deadline, "four ticks never came: {ticks:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 2000, "one run per tick, none missed, none twice: {ticks:?}");
    }
    assert!(ticks.iter().all(|t| t % 2000 == 0), "{ticks:?}");

    // Pause: no new ticks; trigger: one run now; resume; delete keeps the runs.
    let paused: Value = http.post(url(2, "/v1/schedules/every-2s/pause")).send().await.unwrap().json().await.unwrap();
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["next_fire_times"], json!([]));
    let before = runs_of(http.clone(), servers[0].url.clone()).await.len();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let after = runs_of(http.clone(), servers[0].url.clone()).await.len();
    assert!(after <= before + 1, "a paused schedule does not tick ({before} -> {after}; one may have been in flight)");
    let triggered = http.post(url(1, "/v1/schedules/every-2s/trigger")).send().await.unwrap();
    assert_eq!(triggered.status(), 201);
    let triggered: Value = triggered.json().await.unwrap();
    assert!(schema("http/triggered-run.json").is_valid(&triggered), "{triggered}");
    let run_id = triggered["run_id"].as_str().unwrap().to_owned();
    let run: Value = http.get(url(0, &format!("/v1/runs/{run_id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(run["labels"], json!({"schedule": "every-2s", "team": "core"}));
    let resumed: Value = http.post(url(0, "/v1/schedules/every-2s/resume")).send().await.unwrap().json().await.unwrap();
    assert_eq!(resumed["paused"], false);
    let listed: Value = http.get(url(2, "/v1/schedules")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["schedules"][0]["id"], "every-2s");
    assert_eq!(http.delete(url(0, "/v1/schedules/every-2s")).send().await.unwrap().status(), 204);
    assert_eq!(http.get(url(1, "/v1/schedules/every-2s")).send().await.unwrap().status(), 404);
    assert!(runs_of(http.clone(), servers[0].url.clone()).await.len() > after, "the runs stay");
}

/// Flow control over HTTP: runs started under a key, the key paused (its runs
/// wait and say why), its limits set on the server, resumed (they complete);
/// gauges for the configured key; bad keys and limits refused with problems.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_keys_are_set_paused_resumed_and_shown() {
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("flow");
    let keel = Keel::spawn("dev", &redis, &ns, &[]);
    let http = http();
    wait_for_workflows(&http, &keel, None).await;
    let url = |path: &str| format!("{}{path}", keel.url);
    let problem = |r: &Value| r["type"].as_str().unwrap_or_default().to_owned();

    for (body, says) in [
        (json!({"flow_control": {"key": "a b", "parallelism": 1}}), "whitespace"),
        (json!({"flow_control": {"key": "k", "parallelism": 0}}), "parallelism must be"),
        (json!({"flow_control": {"key": "k"}}), "needs a parallelism, a rate, or both"),
        (json!({"flow_control": {"key": "k", "rate": 5, "period": "9d"}}), "period must be"),
        (json!({"priority": 9}), "priority must be 1 to 5"),
    ] {
        let mut body = body;
        body["input"] = json!({"steps": 1});
        let refused = start(&http, &keel, "demo", body.clone()).await;
        assert_eq!(refused.status(), 422, "{body}");
        let text = refused.text().await.unwrap();
        assert!(text.contains(says), "{body}: {text}");
    }
    let bad_put = http.put(url("/v1/flow-control/llm")).json(&json!({"parallelism": 0})).send().await.unwrap();
    assert_eq!(bad_put.status(), 422);
    let missing: Value = http.get(url("/v1/flow-control/nobody-used-me")).send().await.unwrap().json().await.unwrap();
    assert!(problem(&missing).starts_with("urn:keel:problem:"), "{missing}");

    let paused: Value = http.post(url("/v1/flow-control/llm/pause")).send().await.unwrap().json().await.unwrap();
    assert_eq!(paused["paused"], true);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let body = json!({"input": {"steps": 2}, "priority": 4,
            "flow_control": {"key": "llm", "parallelism": 2, "rate": 100, "period": "1m"}});
        let started: Value = start(&http, &keel, "demo", body).await.json().await.unwrap();
        ids.push(started["run_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let deadline = std::time::Instant::now() + WAIT;
        let run = loop {
            let run: Value = http.get(url(&format!("/v1/runs/{id}"))).send().await.unwrap().json().await.unwrap();
            if run["status"] == "waiting" {
                break run;
            }
            assert!(std::time::Instant::now() < deadline, "{id} never waited: {run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(run["blocked"], "waiting for flow-control key \"llm\" (paused)");
        assert_eq!(run["priority"], 4);
        assert_eq!(run["flow_control"]["key"], "llm");
    }
    let shown: Value = http.get(url("/v1/flow-control/llm")).send().await.unwrap().json().await.unwrap();
    let errors: Vec<String> = schema("http/flow-key.json").iter_errors(&shown).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{shown}: {errors:?}");
    assert_eq!((shown["waiting"].as_u64(), shown["in_flight"].as_u64()), (Some(3), Some(0)), "{shown}");
    assert_eq!(shown["requested"]["rate"], 100);
    assert_eq!(shown["requested"]["period"], "1m");

    let set = http.put(url("/v1/flow-control/llm")).json(&json!({"parallelism": 1})).send().await.unwrap();
    assert_eq!(set.status(), 200);
    let set: Value = set.json().await.unwrap();
    assert_eq!(set["limits"], json!({"parallelism": 1}));
    let metrics = http.get(url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keel_flow_waiting{key=\"llm\"} 3"), "{metrics}");
    assert!(metrics.contains("keel_flow_paused{key=\"llm\"} 1"), "{metrics}");

    let resumed: Value = http.post(url("/v1/flow-control/llm/resume")).send().await.unwrap().json().await.unwrap();
    assert_eq!(resumed["paused"], false);
    for id in &ids {
        let result: Value =
            http.get(url(&format!("/v1/runs/{id}/result?wait=30s"))).send().await.unwrap().json().await.unwrap();
        assert_eq!(result["status"], "completed", "{result}");
    }
    // A worker gives a slot back soon after the step, not before the run
    // ends (the release rides on its next ask, or goes within FLUSH_AFTER):
    // the key empties shortly after the last run completed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list: Value = http.get(url("/v1/flow-control")).send().await.unwrap().json().await.unwrap();
        let errors: Vec<String> = schema("http/flow-key-list.json").iter_errors(&list).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{list}: {errors:?}");
        let llm = list["keys"].as_array().unwrap().iter().find(|k| k["key"] == "llm").expect("listed").clone();
        if (llm["in_flight"].as_u64(), llm["waiting"].as_u64()) == (Some(0), Some(0)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the key still holds slots 10 s after its runs ended: {llm}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cleared = http.delete(url("/v1/flow-control/llm")).send().await.unwrap();
    assert_eq!(cleared.status(), 204);
    let after: Value = http.get(url("/v1/flow-control/llm")).send().await.unwrap().json().await.unwrap();
    assert!(after.get("limits").is_none(), "{after}");
}
