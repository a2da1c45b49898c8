//! A hostile or careless client against the real binary: invented methods,
//! half-sent request heads, too many connections, malformed queries and paths,
//! a bad Last-Event-ID, token spellings. Each answer is a problem, nothing grows.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Keel, wait_for_workflows};
use keel_engine::testing::RedisServer;
use serde_json::{Value, json};

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn metrics_size(http: &reqwest::Client, keel: &Keel) -> usize {
    http.get(format!("{}/metrics", keel.url)).send().await.unwrap().text().await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_http_methods_do_not_grow_metrics() {
    let redis = RedisServer::start();
    let keel = Keel::spawn("server", &redis, &RedisServer::unique_namespace("metrics"), &[]);
    let http = http();
    for _ in 0..3 {
        http.get(format!("{}/healthz", keel.url)).send().await.unwrap();
    }
    let before = metrics_size(&http, &keel).await;
    for i in 0..1000 {
        let method = reqwest::Method::from_bytes(format!("X{i:05}ZZ").as_bytes()).unwrap();
        let response = http.request(method, format!("{}/v1/runs/nope{i}", keel.url)).send().await.unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let after = metrics_size(&http, &keel).await;
    let text = http.get(format!("{}/metrics", keel.url)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("method=\"other\""), "invented methods are counted as other:\n{text}");
    assert!(!text.contains("X00001ZZ"), "an invented method became a label");
    assert!(!text.contains("nope1"), "a raw path became a label");
    assert!(after < before + 2048, "/metrics grew from {before} to {after} bytes");
}

/// Read until the server closes the connection: what it sent before, or `None`
/// if it was still open after `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
        if Instant::now() > deadline {
            return None;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_heads_time_out_and_connections_are_capped() {
    let redis = RedisServer::start();
    let keel = Keel::spawn(
        "server",
        &redis,
        &RedisServer::unique_namespace("slow"),
        &[("KEEL_HEADER_TIMEOUT", "1s"), ("KEEL_MAX_CONNECTIONS", "8")],
    );
    let addr = keel.url.trim_start_matches("http://").to_owned();
    let http = http();

    // Slowloris: half a request head, then silence. The server closes it.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: keel\r\nX-Slow: ").unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(10)).is_some(), "a half-sent head was held open");

    // Fill the cap with silent connections: one more is closed at once, while
    // the silent ones are closed by the head timeout and the server answers again.
    let silent: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(&addr).unwrap();
    over.write_all(b"GET /healthz HTTP/1.1\r\nHost: keel\r\n\r\n").unwrap();
    // Closed at once, unanswered (a hang or an answer both fail here).
    let answered = closed_within(&mut over, Duration::from_secs(5)).expect("a connection over the cap was held open");
    assert!(answered.is_empty(), "a connection over the cap was served: {}", String::from_utf8_lossy(&answered));
    for mut conn in silent {
        assert!(closed_within(&mut conn, Duration::from_secs(10)).is_some(), "an idle connection was held open");
    }
    let ok = http.get(format!("{}/healthz", keel.url)).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

async fn problem(response: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "{response:?}");
    assert_eq!(response.headers()["content-type"], "application/problem+json", "{response:?}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], format!("urn:keel:problem:{kind}"), "{body}");
    assert_eq!(body["status"], status);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_a_problem_and_tokens_are_read_as_rfc_9110_says() {
    let redis = RedisServer::start();
    let keel = Keel::spawn(
        "dev",
        &redis,
        &RedisServer::unique_namespace("problems"),
        &[("KEEL_API_TOKENS", "s3cret"), ("KEEL_MAX_VALUE_BYTES", "4096")],
    );
    let http = http();
    wait_for_workflows(&http, &keel, Some("s3cret")).await;
    let url = |path: &str| format!("{}{path}", keel.url);
    let get = |path: &str| http.get(url(path)).bearer_auth("s3cret");

    problem(get("/v1/runs?limit=-1").send().await.unwrap(), 400, "invalid-query").await;
    problem(get("/v1/runs?limit=99999999999999999999999").send().await.unwrap(), 400, "invalid-query").await;
    problem(get("/v1/runs/%ff").send().await.unwrap(), 400, "invalid-path").await;
    problem(get("/v1/runs/%ff/result").send().await.unwrap(), 400, "invalid-path").await;
    let not_allowed = http.delete(url("/v1/runs")).bearer_auth("s3cret").send().await.unwrap();
    assert!(not_allowed.headers().contains_key("allow"), "405 says what is allowed");
    problem(not_allowed, 405, "method-not-allowed").await;

    // A Last-Event-ID this stream never sent is a 400, not an empty 200 stream.
    let run: Value = http
        .post(url("/v1/workflows/demo/runs?wait=20s"))
        .bearer_auth("s3cret")
        .json(&json!({"input": {"steps": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = run["run_id"].as_str().unwrap();
    for bad in ["garbage", "12-x", "-1", ""] {
        let response = get(&format!("/v1/runs/{id}/events")).header("last-event-id", bad).send().await.unwrap();
        problem(response, 400, "bad-request").await;
    }
    let resumed = get(&format!("/v1/runs/{id}/events")).header("last-event-id", "0-0").send().await.unwrap();
    assert_eq!(resumed.status(), 200);
    assert!(resumed.text().await.unwrap().contains("run_completed"), "a valid id resumes the stream");

    // Input the worker could not read is refused: 1e2 is a float to serde, and a
    // u32 cannot hold 2^32.
    for steps in [json!(1e2), json!(4_294_967_296u64)] {
        let response = http
            .post(url("/v1/workflows/demo/runs"))
            .bearer_auth("s3cret")
            .json(&json!({"input": {"steps": steps}}))
            .send()
            .await
            .unwrap();
        problem(response, 422, "invalid-input").await;
    }

    // Values over KEEL_MAX_VALUE_BYTES are refused whole.
    let big = json!({"blob": "b".repeat(5000)});
    let response = http.post(url("/v1/events/big")).bearer_auth("s3cret").json(&big).send().await.unwrap();
    let refused = problem(response, 413, "payload-too-large").await;
    assert!(refused["detail"].as_str().unwrap().contains("4096"), "{refused}");

    // The detail leaves step outputs out unless asked; the journal pages.
    let detail: Value = get(&format!("/v1/runs/{id}")).send().await.unwrap().json().await.unwrap();
    assert!(detail["steps"][0].get("output").is_none(), "{detail}");
    let detail: Value = get(&format!("/v1/runs/{id}?include=outputs")).send().await.unwrap().json().await.unwrap();
    assert!(detail["steps"][0].get("output").is_some(), "{detail}");
    problem(get(&format!("/v1/runs/{id}?include=everything")).send().await.unwrap(), 400, "invalid-query").await;
    let mut after: Option<String> = None;
    let mut kinds = Vec::new();
    loop {
        let page_url = match &after {
            Some(a) => format!("/v1/runs/{id}/journal?limit=1&after={a}"),
            None => format!("/v1/runs/{id}/journal?limit=1"),
        };
        let page: Value = get(&page_url).send().await.unwrap().json().await.unwrap();
        kinds.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["entry"]["type"].as_str().unwrap_or_default().to_owned()),
        );
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
        assert!(kinds.len() < 50, "the journal pages never ended");
    }
    assert_eq!(kinds.first().map(String::as_str), Some("run_started"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("run_completed"), "{kinds:?}");

    // The scheme is case-insensitive; a wrong token is told apart from none.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = http.get(url("/v1/runs")).header("authorization", format!("{scheme} s3cret")).send().await;
        assert_eq!(response.unwrap().status(), 200, "{scheme}");
    }
    let wrong =
        problem(http.get(url("/v1/runs")).bearer_auth("nope").send().await.unwrap(), 401, "invalid-token").await;
    assert!(wrong["detail"].as_str().unwrap().contains("invalid token"), "{wrong}");
    let none = problem(http.get(url("/v1/runs")).send().await.unwrap(), 401, "unauthorized").await;
    assert!(none["detail"].as_str().unwrap().contains("required"), "{none}");
}

async fn redis_clients(redis: &RedisServer) -> usize {
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
    // Not counting this connection.
    list.lines().count() - 1
}

/// Regression: each long-poll and SSE stream held a Redis connection of its own
/// for good; 500 of them exhausted `maxclients`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_long_polls_and_streams_share_a_few_redis_connections() {
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("polls");
    let server = Keel::spawn("server", &redis, &ns, &[]);
    let worker = Keel::spawn("worker", &redis, &ns, &[]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(0).build().unwrap();
    wait_for_workflows(&http, &server, None).await;
    let before = redis_clients(&redis).await;
    // One run that waits for an event: everybody long-polls it or streams it.
    let run: Value = http
        .post(format!("{}/v1/workflows/demo/runs", server.url))
        .json(&json!({"input": {"steps": 1, "wait_for": "polls:go"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = run["run_id"].as_str().unwrap().to_owned();
    let mut polls = tokio::task::JoinSet::new();
    for _ in 0..1500 {
        let (http, url) = (http.clone(), format!("{}/v1/runs/{id}/result?wait=50s", server.url));
        polls.spawn(async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() });
    }
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..150 {
        let (http, url) = (http.clone(), format!("{}/v1/runs/{id}/events", server.url));
        streams.spawn(async move { http.get(url).send().await.unwrap().text().await.unwrap() });
    }
    // Everybody waits: the server answers other requests, on a few connections.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let other: Value = http
        .post(format!("{}/v1/workflows/demo/runs?wait=20s", server.url))
        .json(&json!({"input": {"steps": 2}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other["status"], "completed", "{other}");
    let during = redis_clients(&redis).await;
    assert!(during <= before + 32, "1,650 waiters took {} Redis connections", during - before);
    assert_eq!(polls.len() + streams.len(), 1650, "every waiter is still waiting");

    let sent = http.post(format!("{}/v1/events/polls:go", server.url)).json(&json!({"ok": true})).send().await;
    assert!(sent.unwrap().status().is_success());
    while let Some(result) = tokio::time::timeout(Duration::from_secs(30), polls.join_next()).await.expect("polls end")
    {
        assert_eq!(result.unwrap()["status"], "completed");
    }
    while let Some(text) =
        tokio::time::timeout(Duration::from_secs(30), streams.join_next()).await.expect("streams end")
    {
        assert!(text.unwrap().contains("run_completed"));
    }
    drop(worker);
}

/// The Rust client a service uses: start, await, notify, cancel, problems.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_starts_awaits_notifies_and_cancels() {
    use keel_worker::{Client, ClientError, RunStatus, StartOptions};
    let redis = RedisServer::start();
    let keel = Keel::spawn("dev", &redis, &RedisServer::unique_namespace("client"), &[]);
    wait_for_workflows(&http(), &keel, None).await;
    let client = Client::new(&keel.url);

    let options = StartOptions { idempotency_key: Some("client-1".into()), ..Default::default() };
    let started =
        client.start_with("demo", &json!({"steps": 2, "wait_for": "client:go"}), options.clone()).await.unwrap();
    assert!(started.created);
    let again = client.start_with("demo", &json!({"steps": 2, "wait_for": "client:go"}), options).await.unwrap();
    assert_eq!((again.run_id.clone(), again.created), (started.run_id.clone(), false));
    let waiting = client.result::<Value>(&started.run_id, Duration::from_millis(300)).await;
    assert!(matches!(waiting, Err(ClientError::NotFinished(_))), "{waiting:?}");
    client.notify("client:go", &json!({"ok": 1})).await.unwrap();
    let output: Value = client.result(&started.run_id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(output["steps"], json!([1, 2]));
    assert_eq!(output["event"], json!({"ok": 1}));

    let doomed = client.start("demo", &json!({"steps": 1, "wait_for": "client:never"})).await.unwrap();
    client.cancel(&doomed.run_id).await.unwrap();
    match client.result::<Value>(&doomed.run_id, Duration::from_secs(30)).await {
        Err(ClientError::RunFailed { status, .. }) => assert_eq!(status, RunStatus::Cancelled),
        other => panic!("a cancelled run is an error: {other:?}"),
    }
    match client.start("no-such-workflow", &json!({})).await {
        Err(ClientError::Problem { status, problem_type, .. }) => {
            assert_eq!((status, problem_type.as_str()), (404, "urn:keel:problem:unknown-workflow"))
        }
        other => panic!("{other:?}"),
    }
}

/// `keel server` refuses settings it would ignore; booleans read as people write them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_server_refuses_worker_flags_and_reads_booleans_loosely() {
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["server", "--chaos-workflow", "true"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("keel worker"), "{refused:?}");
    let redis = RedisServer::start();
    for yes in ["1", "yes", "TRUE"] {
        let keel = Keel::spawn(
            "server",
            &redis,
            &RedisServer::unique_namespace("bools"),
            &[("KEEL_ALLOW_PRIVATE_TARGETS", yes)],
        );
        let ok = http().get(format!("{}/healthz", keel.url)).send().await.unwrap();
        assert_eq!(ok.status(), 200, "KEEL_ALLOW_PRIVATE_TARGETS={yes}");
    }
}
