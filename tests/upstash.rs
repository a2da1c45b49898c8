//! Apps written with the unmodified `@upstash/workflow` SDK (sdk-tests/app.mjs,
//! node, the pinned SDK) against the real `keel server` as their QSTASH_URL:
//! every feature is one test whose outcome is asserted from the app's side
//! (what its workflow code saw) and from Keel's API (the run, its status, its
//! output). Each test has its own Redis, server and app.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Keel, free_port};
use keel_engine::testing::RedisServer;
use serde_json::{Value, json};

/// A Keel API token that is also what `context.createWebhook` needs of a
/// QSTASH_TOKEN: base64 of JSON with a `UserID` (`{"UserID":"keel-test"}`).
const TOKEN: &str = "eyJVc2VySUQiOiJrZWVsLXRlc3QifQ==";

fn sdk_tests() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sdk-tests");
    assert!(
        dir.join("node_modules/@upstash/workflow").is_dir() && dir.join("node_modules/express").is_dir(),
        "the pinned Upstash SDKs are not installed: run scripts/test (or `npm ci` in sdk-tests/)"
    );
    dir
}

/// The Node app (sdk-tests/app.mjs), killed when dropped.
struct App {
    child: Child,
    url: String,
    log: PathBuf,
}

impl App {
    /// The app with `QSTASH_URL` = `keel`; with `keys`, it verifies every request's signature.
    fn start(keel: &Keel, keys: Option<(&str, &str)>) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("keel-upstash-app-{}-{port}.log", std::process::id()));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("node");
        cmd.arg("app.mjs")
            .current_dir(sdk_tests())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("QSTASH_URL", &keel.url)
            .env("QSTASH_TOKEN", TOKEN)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null());
        if let Some((current, next)) = keys {
            cmd.env("QSTASH_CURRENT_SIGNING_KEY", current).env("QSTASH_NEXT_SIGNING_KEY", next);
        }
        let child = cmd.spawn().expect("node is needed for the SDK tests (scripts/test installs it)");
        let app = Self { child, url: format!("http://127.0.0.1:{port}"), log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the app did not listen within 30 s:\n{}", app.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        app
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A Redis, a `keel server` on it (with a token) and the app.
struct Setup {
    keel: Keel,
    app: App,
    http: reqwest::Client,
    _redis: RedisServer,
}

impl Setup {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(env: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start();
        let mut all = vec![("KEEL_API_TOKENS", TOKEN)];
        all.extend_from_slice(env);
        let keel = Keel::spawn("server", &redis, &RedisServer::unique_namespace("upstash"), &all);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let keys = keys_of(&http, &keel).await;
        let app = App::start(&keel, Some((&keys.0, &keys.1)));
        Self { keel, app, http, _redis: redis }
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        let response = self.http.post(format!("{}/control/{path}", self.app.url)).json(&body).send().await.unwrap();
        let status = response.status();
        let value: Value = response.json().await.unwrap();
        assert!(status.is_success(), "control/{path}: {status} {value}\napp log:\n{}", self.app.log_text());
        value
    }

    /// `client.trigger` in the app; the run id.
    async fn trigger(&self, path: &str, body: Value, options: Value) -> String {
        let started = self.control("trigger", json!({"path": path, "body": body, "options": options})).await;
        started["workflowRunId"].as_str().unwrap_or_else(|| panic!("no run id: {started}")).to_owned()
    }

    async fn get(&self, url: String) -> Value {
        let response = self.http.get(url).bearer_auth(TOKEN).send().await.unwrap();
        response.json().await.unwrap()
    }

    async fn run(&self, id: &str) -> Value {
        self.get(format!("{}/v1/runs/{id}", self.keel.url)).await
    }

    /// The run once it is final (bounded).
    async fn finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let run = self.run(id).await;
            if matches!(run["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not finish within 40 s: {run}\nkeel log:\n{}\napp log:\n{}",
                tail(&self.keel.log_text()),
                self.app.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A GET of the app's control endpoints (`seen/…`, `traffic/…`, `logs?…`).
    async fn app_get(&self, path: &str) -> Value {
        self.http.get(format!("{}/control/{path}", self.app.url)).send().await.unwrap().json().await.unwrap()
    }

    /// What the app's workflow code saw of a run.
    async fn seen(&self, id: &str) -> Value {
        self.app_get(&format!("seen/{id}")).await
    }

    /// Until the run shows `status` (bounded).
    async fn until_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let run = self.run(id).await;
            if run["status"] == status {
                return;
            }
            assert!(Instant::now() < deadline, "run {id} never was {status}: {run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The app's result event for a run.
    async fn app_result(&self, id: &str) -> Value {
        let seen = self.seen(id).await;
        seen["events"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["what"] == "result"))
            .map_or(Value::Null, |e| e["value"].clone())
    }
}

/// Every message of a run's recorded traffic fits its schema in
/// proto-schemas/json-schema/qstash/: what the SDK sent Keel and what Keel
/// delivered to the app. Returns how many were checked.
async fn assert_traffic_fits_the_schemas(s: &Setup, id: &str) -> usize {
    let traffic: Value = s.app_get(&format!("traffic/{id}")).await;
    let mut checked = 0;
    for entry in traffic.as_array().unwrap() {
        let path = entry["path"].as_str().unwrap_or_default();
        let Some(body) = entry["body"].as_str().and_then(|b| serde_json::from_str::<Value>(b).ok()) else { continue };
        let schema = match (entry["direction"].as_str(), path) {
            (Some("to-keel"), "/v2/batch") => "qstash/batch.json",
            (Some("to-keel"), p) if p.starts_with("/v2/wait/") => "qstash/wait-request.json",
            (Some("to-keel"), p)
                if p.starts_with("/v2/publish/") && entry["headers"]["upstash-workflow-invoke"] == "true" =>
            {
                "qstash/invoke-request.json"
            }
            (Some("to-app"), _) if body.is_array() => "qstash/delivery.json",
            (Some("to-app"), _) if body.get("sourceMessageId").is_some() => "qstash/callback-body.json",
            _ => continue,
        };
        let validator = common::schema(schema);
        let errors: Vec<String> = validator.iter_errors(&body).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{path} does not fit {schema}: {errors:?}\n{body}");
        checked += 1;
    }
    // And what Keel keeps: the run's input and its inbox entries.
    let journal = s.get(format!("{}/v1/runs/{id}/journal", s.keel.url)).await;
    let (input, submission) = (common::schema("qstash/upstash-run.json"), common::schema("qstash/submission.json"));
    for record in journal["entries"].as_array().into_iter().flatten() {
        let entry = &record["entry"];
        if entry["type"] == "run_started" {
            assert!(input.is_valid(&entry["input"]), "{entry}");
            checked += 1;
        }
        for message in entry["output"]["inbox"].as_array().into_iter().flatten() {
            let message: Value = serde_json::from_str(message.as_str().unwrap()).unwrap();
            assert!(submission.is_valid(&message), "{message}");
            checked += 1;
        }
    }
    checked
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

async fn keys_of(http: &reqwest::Client, keel: &Keel) -> (String, String) {
    let keys: Value =
        http.get(format!("{}/v2/keys", keel.url)).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    (keys["current"].as_str().unwrap().to_owned(), keys["next"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_run_completes_on_the_plain_express_and_hono_adapters() {
    let s = Setup::start().await;
    for (i, adapter) in ["plain", "express", "hono"].iter().enumerate() {
        let id = s
            .trigger(&format!("/{adapter}/sequential"), json!({"n": i}), json!({"headers": {"x-tenant": "acme"}}))
            .await;
        assert!(id.starts_with("wfr_"), "{id}");
        let run = s.finished(&id).await;
        let expected = format!("c(b(a({i})))");
        assert_eq!(run["status"], "completed", "{adapter}: {run}");
        assert_eq!(run["output"], json!(expected), "{adapter}");
        assert_eq!(run["workflow"], "upstash");
        assert_eq!(run["labels"]["upstash.url"], json!(format!("{}/{adapter}/sequential", s.app.url)));
        // Four deliveries (the log of 1, 2, 3 and 4 entries), each a step.
        assert_eq!(run["completed_steps"], 4, "{run}");
        let seen = s.seen(&id).await;
        assert_eq!(seen["runs"], json!({"step-1": 1, "step-2": 1, "step-3": 1}), "each step ran once: {seen}");
        assert_eq!(s.app_result(&id).await, json!(expected));
        let headers = seen["events"].as_array().unwrap().iter().find(|e| e["what"] == "headers").unwrap();
        assert_eq!(headers["value"]["tenant"], "acme", "the trigger's headers reach every delivery: {seen}");
    }
    // The runs are Keel runs: listed under the `upstash` workflow.
    let page = s.get(format!("{}/v1/runs?workflow=upstash", s.keel.url)).await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 3, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_post_to_the_endpoint_starts_a_run() {
    // The SDK's "first invocation": a request without workflow headers makes
    // the app publish the run's Init message itself. Signed deliveries only
    // work for requests that came through Keel, so this app has no keys.
    let s = Setup::start().await;
    let unsigned = App::start(&s.keel, None);
    let response =
        s.http.post(format!("{}/plain/sequential", unsigned.url)).json(&json!({"n": 5})).send().await.unwrap();
    assert!(response.status().is_success());
    let answer: Value = response.json().await.unwrap();
    let id = answer["workflowRunId"].as_str().unwrap().to_owned();
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "c(b(a(5)))");
    // And a plain QStash publish to the endpoint (no workflow headers) is such a request too.
    let published = s
        .http
        .post(format!("{}/v2/publish/{}/plain/sequential", s.keel.url, unsigned.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"n":6}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let message: Value = published.json().await.unwrap();
    let delivery = s.finished(message["messageId"].as_str().unwrap()).await;
    assert_eq!(delivery["status"], "completed", "the message was delivered: {delivery}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = s.get(format!("{}/v1/runs?workflow=upstash&status=completed", s.keel.url)).await;
        if page["runs"].as_array().unwrap().iter().any(|r| r["output"] == "c(b(a(6)))") {
            break;
        }
        assert!(Instant::now() < deadline, "the published message started no run: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_steps_follow_the_sdks_plan_and_result_protocol() {
    let s = Setup::start().await;
    let id = s.trigger("/plain/parallel", Value::Null, json!({})).await;
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"results": [10, 20, 30], "total": 60}));
    let seen = s.seen(&id).await;
    assert_eq!(seen["runs"], json!({"branch-1": 1, "branch-2": 1, "branch-3": 1}), "each branch ran once: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_and_sleep_until_hold_the_run_on_keels_timers() {
    let s = Setup::start().await;
    let id = s.trigger("/plain/sleep", Value::Null, json!({})).await;
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "completed", "{run}");
    let elapsed = run["output"]["elapsed"].as_u64().unwrap();
    assert!(elapsed >= 2000, "two sleeps of a second and a parallel one: {elapsed} ms");
    assert_eq!(s.app_result(&id).await["x"], "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_call_is_made_by_keel_with_retries_and_its_answer_comes_back() {
    let s = Setup::start().await;
    let id = s.trigger("/plain/call", Value::Null, json!({})).await;
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "completed", "{run}");
    let result = s.app_result(&id).await;
    assert_eq!(result["ok"]["status"], 200, "{result}");
    assert_eq!(result["ok"]["body"]["got"], r#"{"ping":1}"#, "the body and method reach the service: {result}");
    assert_eq!(result["ok"]["body"]["method"], "POST");
    assert_eq!(result["ok"]["body"]["header"], "yes", "the call's headers too");
    assert_eq!(result["retried"], 200, "a 503 then 200 with retries: 2: {result}");
    assert_eq!(result["notFound"], 404, "a failing call's status goes back to the app, the run goes on");
    assert_traffic_fits_the_schemas(&s, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_event_is_notified_times_out_and_notify_works_from_a_workflow() {
    let s = Setup::start().await;
    let notified = s.trigger("/plain/wait", json!({"eventId": "order-1"}), json!({})).await;
    let timed_out = s.trigger("/plain/wait", json!({"eventId": "never", "timeout": "1s"}), json!({})).await;
    let by_workflow = s.trigger("/plain/wait", json!({"eventId": "from-wf"}), json!({})).await;
    let lookback = s.trigger("/plain/wait", json!({"eventId": "early"}), json!({"delay": "2s"})).await;
    // The run waits (its step waits for the event), then the event comes.
    s.until_status(&notified, "waiting").await;
    // The SDK's LazyFetch: a live run's log, as a delivery would carry it.
    let log = s.get(format!("{}/v2/workflows/runs/{notified}", s.keel.url)).await;
    let entries = log.as_array().unwrap_or_else(|| panic!("{log}"));
    assert!(!entries.is_empty() && entries.iter().all(|e| e["callType"] == "step"), "{log}");
    let answer = s.control("notify", json!({"eventId": "order-1", "data": {"paid": true}})).await;
    assert_eq!(answer.as_array().map(Vec::len), Some(1), "one waiter reached: {answer}");
    assert_eq!(answer[0]["workflowRunId"], json!(notified));
    // client.notify with the run id before the run waits: kept for it (lookback).
    s.control("notify", json!({"eventId": "early", "data": "first", "runId": lookback})).await;
    let notifier = s.trigger("/plain/notifier", json!({"eventId": "from-wf", "data": 7}), json!({})).await;

    let run = s.finished(&notified).await;
    assert_eq!(run["output"], json!({"eventData": {"paid": true}, "timedOut": false}), "{run}");
    let ended =
        s.http.get(format!("{}/v2/workflows/runs/{notified}", s.keel.url)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(ended.status(), 404, "an ended run's log is gone for the SDK");
    // client.logs shows the step Keel made itself (the event's arrival).
    let logs = s.app_get(&format!("logs?workflowRunId={notified}")).await;
    let steps: Vec<&Value> =
        logs["runs"][0]["steps"].as_array().unwrap().iter().flat_map(|g| g["steps"].as_array().unwrap()).collect();
    let wait = steps.iter().find(|st| st["stepType"] == "Wait").unwrap_or_else(|| panic!("{logs}"));
    assert_eq!(wait["stepName"], "wait-evt");
    assert_eq!(wait["waitTimeout"], false);
    assert_eq!(s.app_result(&notified).await["eventData"], json!({"paid": true}));
    let run = s.finished(&timed_out).await;
    assert_eq!(run["output"], json!({"timedOut": true}), "{run}");
    let run = s.finished(&by_workflow).await;
    assert_eq!(run["output"]["eventData"], 7, "{run}");
    assert_eq!(s.finished(&notifier).await["output"], 1, "context.notify reached one waiter");
    let run = s.finished(&lookback).await;
    assert_eq!(run["output"]["eventData"], "first", "{run}");
    assert_traffic_fits_the_schemas(&s, &notified).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_through_serve_many_returns_the_childs_result_or_failure() {
    let s = Setup::start().await;
    let id = s.trigger("/many/parent", json!({}), json!({})).await;
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"body": {"doubled": 42}, "isFailed": false}));
    assert_eq!(s.app_result(&id).await["isCanceled"], false);
    // The child is a Keel run with the parent as its parent.
    let page = s.get(format!("{}/v1/runs?workflow=upstash", s.keel.url)).await;
    let child = page["runs"].as_array().unwrap().iter().find(|r| r["parent"]["run_id"] == json!(id)).cloned();
    let child = child.unwrap_or_else(|| panic!("no child run of {id}: {page}"));
    assert_eq!(child["status"], "completed");
    assert_eq!(child["labels"]["upstash.url"], json!(format!("{}/many/child", s.app.url)));
    assert_traffic_fits_the_schemas(&s, &id).await;

    let id = s.trigger("/many/parent", json!({"fail": true}), json!({})).await;
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "completed", "the parent goes on: {run}");
    assert_eq!(run["output"]["isFailed"], true, "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_webhook_and_wait_for_webhook_take_a_third_partys_request() {
    let s = Setup::start().await;
    let id = s.trigger("/plain/webhook", Value::Null, json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = loop {
        let seen = s.seen(&id).await;
        let made = seen["events"].as_array().and_then(|e| e.iter().find(|e| e["what"] == "webhook").cloned());
        if let Some(made) = made {
            break made["value"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no webhook made: {seen}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(url.starts_with(&format!("{}/v2/workflows/hooks/keel-test/{id}/", s.keel.url)), "{url}");
    // A stranger's event id, or another run's, is refused (nothing is stored).
    let wrong = s
        .http
        .post(format!("{}/v2/workflows/hooks/keel-test/{id}/evt_guess", s.keel.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404);
    // The third party needs no token.
    let called = s.http.put(&url).header("x-hook", "yes").body("payload-7").send().await.unwrap();
    assert!(called.status().is_success(), "{}", called.status());
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"method": "PUT", "body": "payload-7", "header": "yes"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_the_workflow_and_from_the_client() {
    let s = Setup::start().await;
    let id = s.trigger("/plain/cancel", Value::Null, json!({})).await;
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(s.seen(&id).await["runs"]["after"], Value::Null, "no step after the cancel ran");
    // A publish for a cancelled run is a 400 (the SDK takes it as "ended").
    let late = s
        .http
        .post(format!("{}/v2/publish/{}/plain/cancel", s.keel.url, s.app.url))
        .bearer_auth(TOKEN)
        .header("upstash-workflow-runid", &id)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 400);

    let waiting = s.trigger("/plain/wait", json!({"eventId": "forever"}), json!({})).await;
    s.until_status(&waiting, "waiting").await;
    let answer = s.control("cancel", json!({"ids": [waiting]})).await;
    assert_eq!(answer["cancelled"], 1, "{answer}");
    assert_eq!(s.finished(&waiting).await["status"], "cancelled");

    // By filter: only the runs it names; a filter Keel cannot apply cancels nothing.
    let mut batch = Vec::new();
    for label in ["batch-a", "batch-a", "batch-b"] {
        batch.push(s.trigger("/plain/wait", json!({"eventId": "never-1"}), json!({"label": label})).await);
    }
    for id in &batch {
        s.until_status(id, "waiting").await;
    }
    let refused = s
        .http
        .post(format!("{}/control/cancel", s.app.url))
        .json(&json!({"request": {"filter": {"callerIp": "10.0.0.1"}}}))
        .send()
        .await
        .unwrap();
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["status"], 422, "a problem, not a wider cancel: {refused}");
    let answer = s.control("cancel", json!({"request": {"filter": {"label": "batch-a"}}})).await;
    assert_eq!(answer["cancelled"], 2, "{answer}");
    assert_eq!(s.finished(&batch[0]).await["status"], "cancelled");
    assert_eq!(s.finished(&batch[1]).await["status"], "cancelled");
    assert_eq!(s.run(&batch[2]).await["status"], "waiting", "the other label's run goes on");
    let answer = s.control("cancel", json!({"request": {"all": true}})).await;
    assert_eq!(answer["cancelled"], 1, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_a_retry_delay_expression_and_retry_after() {
    let s = Setup::start().await;
    let id = s.trigger("/plain/retry", Value::Null, json!({"retries": 3, "retryDelay": "100 * (1 + retried)"})).await;
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], 3, "the third delivery succeeded");
    let steps = run["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s["attempts"] == 3), "one delivery took three attempts: {run}");

    let id = s.trigger("/plain/retryafter", Value::Null, json!({})).await;
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_calls_the_failure_function_and_fails() {
    let s = Setup::start().await;
    // WorkflowNonRetryableError: 489, no retries.
    let id = s.trigger("/plain/nonretryable", json!({"order": 1}), json!({"retries": 3})).await;
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["kind"], "delivery_failed");
    assert!(run["error"]["message"].as_str().unwrap().contains("489"), "{run}");
    let seen = s.seen(&id).await;
    let failure = seen["events"].as_array().unwrap().iter().find(|e| e["what"] == "failure").cloned();
    let failure = failure.unwrap_or_else(|| panic!("no failure function call: {seen}"));
    assert_eq!(failure["value"]["failStatus"], 489);
    assert_eq!(failure["value"]["failResponse"], "not worth retrying");
    assert_eq!(failure["value"]["payload"], json!({"order": 1}), "the failure function sees the initial payload");

    // A step that always throws: its retries run out (1 retry), then the same.
    let id = s.trigger("/plain/failing", Value::Null, json!({"retries": 1, "retryDelay": "50"})).await;
    let run = s.finished(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    let seen = s.seen(&id).await;
    let failure = seen["events"].as_array().unwrap().iter().find(|e| e["what"] == "failure").cloned().unwrap();
    assert_eq!(failure["value"]["failStatus"], 500);
    assert_eq!(failure["value"]["failResponse"], "my-error");

    // A failureUrl elsewhere gets QStash's failure callback body.
    let sink = format!("{}/failure-sink", s.app.url);
    let id = s.trigger("/plain/failing", json!({"x": 1}), json!({"retries": 0, "failureUrl": sink})).await;
    assert_eq!(s.finished(&id).await["status"], "failed");
    let seen = s.seen(&id).await;
    let called = seen["events"].as_array().unwrap().iter().find(|e| e["what"] == "failure-url").cloned();
    let called = called.unwrap_or_else(|| panic!("the failure URL was not called: {seen}"));
    assert_eq!(called["value"]["status"], 500);
    assert_eq!(called["value"]["isFailure"], "true");
    use base64::Engine;
    let source =
        base64::engine::general_purpose::STANDARD.decode(called["value"]["sourceBody"].as_str().unwrap()).unwrap();
    assert_eq!(source, br#"{"x":1}"#, "the initial payload");
}

/// Upstash runs are Keel runs: Keel's webhooks and metrics cover them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_webhooks_and_metrics_cover_upstash_runs() {
    let s = Setup::start().await;
    let receiver = common::Receiver::start(vec![]).await;
    let subscribe = json!({"url": receiver.url, "event_types": ["run.completed", "run.failed"], "workflow": "upstash"});
    let created =
        s.http.post(format!("{}/v1/webhooks", s.keel.url)).bearer_auth(TOKEN).json(&subscribe).send().await.unwrap();
    assert!(created.status().is_success(), "{}", created.text().await.unwrap());
    let ok = s.trigger("/plain/sequential", json!({"n": 1}), json!({})).await;
    let failed = s.trigger("/plain/nonretryable", Value::Null, json!({})).await;
    s.finished(&ok).await;
    s.finished(&failed).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bodies: Vec<Value> = receiver.received().iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
        let has = |kind: &str, id: &str| bodies.iter().any(|b| b["type"] == kind && b["run_id"] == id);
        if has("run.completed", &ok) && has("run.failed", &failed) {
            break;
        }
        assert!(Instant::now() < deadline, "webhooks: {bodies:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics =
        s.http.get(format!("{}/metrics", s.keel.url)).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("workflow=\"upstash\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_are_the_dlq_and_resume_or_restart_from_it() {
    let s = Setup::start().await;
    let resumed = s.trigger("/plain/dlq", json!({"key": "k-resume"}), json!({"retries": 0, "label": "dlq-test"})).await;
    let restarted = s.trigger("/plain/dlq", json!({"key": "k-restart"}), json!({"retries": 0})).await;
    for id in [&resumed, &restarted] {
        let run = s.finished(id).await;
        assert_eq!(run["status"], "failed", "{run}");
    }
    let listed = s.control("dlq/list", json!({})).await;
    let messages = listed["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{listed}");
    let entry = messages.iter().find(|m| m["workflowRunId"] == json!(resumed)).unwrap();
    assert_eq!(entry["dlqId"], json!(resumed));
    assert_eq!(entry["responseStatus"], 500, "{entry}");
    assert!(entry["responseBody"].as_str().unwrap().contains("the service answered 503"), "{entry}");
    assert_eq!(entry["label"], "dlq-test");
    let filtered = s.control("dlq/list", json!({"filter": {"label": "dlq-test"}})).await;
    assert_eq!(filtered["messages"].as_array().unwrap().len(), 1, "{filtered}");

    // Resume: the same run goes on from the delivery that failed.
    let answer = s.control("dlq/resume", json!({"dlqId": resumed})).await;
    assert_eq!(answer["workflowRunId"], json!(resumed), "{answer}");
    let run = s.finished(&resumed).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], 200);
    // Restart: a new run with the same payload.
    let answer = s.control("dlq/restart", json!({"dlqId": restarted})).await;
    let new_id = answer["workflowRunId"].as_str().unwrap().to_owned();
    assert_ne!(new_id, restarted);
    let run = s.finished(&new_id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(s.app_result(&new_id).await, 200);
    assert_eq!(s.run(&restarted).await["status"], "failed", "the old run stays as it was");
    // Delete takes it off the DLQ; it stays failed.
    let answer = s.control("dlq/delete", json!({"dlqIds": [restarted]})).await;
    assert_eq!(answer["deleted"], 1, "{answer}");
    let listed = s.control("dlq/list", json!({})).await;
    assert_eq!(listed["messages"], json!([]), "{listed}");
    assert_eq!(s.run(&restarted).await["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_label_and_a_deduplicated_trigger() {
    let s = Setup::start().await;
    let fixed = "wfr_my-order-77";
    let id = s
        .trigger(
            "/plain/sequential",
            json!({"n": 1}),
            json!({"delay": "2s", "label": "nightly", "workflowRunId": "my-order-77"}),
        )
        .await;
    assert_eq!(id, fixed, "the SDK's own id format");
    let again = s.trigger("/plain/sequential", json!({"n": 2}), json!({"workflowRunId": "my-order-77"})).await;
    assert_eq!(again, fixed);
    let run = s.finished(&id).await;
    assert_eq!(run["output"], "c(b(a(1)))", "the second trigger changed nothing: {run}");
    let first_step = run["steps"][0]["started_at_ms"].as_u64().unwrap();
    let created = run["created_at_ms"].as_u64().unwrap();
    assert!(first_step >= created + 1900, "the delay held the start: {created} -> {first_step}");
    assert_eq!(run["labels"]["upstash.label"], "nightly");
    let seen = s.seen(&id).await;
    let headers = seen["events"].as_array().unwrap().iter().find(|e| e["what"] == "headers").unwrap().clone();
    assert_eq!(headers["value"]["labels"], json!(["nightly"]), "context.labels: {seen}");
    let page = s.get(format!("{}/v1/runs?workflow=upstash", s.keel.url)).await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 1, "one run: {page}");
    // notBefore: a Unix time to start at.
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 2;
    let later = s.trigger("/plain/sequential", json!({"n": 3}), json!({"notBefore": at})).await;
    let run = s.finished(&later).await;
    let first_step = run["steps"][0]["started_at_ms"].as_u64().unwrap();
    assert!(first_step >= (at - 1) * 1000 + 900, "not before {at}: {first_step}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_limits_the_runs_deliveries_on_a_keel_key() {
    let s = Setup::start().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let options = json!({"flowControl": {"key": "app-slow", "parallelism": 1}});
        ids.push(s.trigger("/plain/slow", Value::Null, options).await);
    }
    let mut spans = Vec::new();
    for id in &ids {
        assert_eq!(s.finished(id).await["status"], "completed");
        let seen = s.seen(id).await;
        let span = seen["events"].as_array().unwrap().iter().find(|e| e["what"] == "span").unwrap()["value"].clone();
        spans.push((span["start"].as_u64().unwrap(), span["end"].as_u64().unwrap()));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "two slow steps overlapped under parallelism 1: {spans:?}");
    }
    let key = s.get(format!("{}/v1/flow-control/app-slow", s.keel.url)).await;
    assert_eq!(key["requested"]["parallelism"], 1, "the key is Keel's: {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_logs_shows_runs_as_upstash_would() {
    let s = Setup::start().await;
    let ok = s.trigger("/plain/sequential", json!({"n": 3}), json!({"label": "ok-runs"})).await;
    let cancelled = s.trigger("/plain/cancel", Value::Null, json!({})).await;
    let failed = s.trigger("/plain/nonretryable", Value::Null, json!({})).await;
    for id in [&ok, &cancelled, &failed] {
        s.finished(id).await;
    }
    let logs = |q: String| {
        let s = &s;
        async move { s.app_get(&format!("logs?{q}")).await }
    };
    let one = logs(format!("workflowRunId={ok}")).await;
    let run = &one["runs"][0];
    assert_eq!(run["workflowState"], "RUN_SUCCESS", "{one}");
    assert_eq!(run["workflowRunResponse"], r#""c(b(a(3)))""#);
    assert_eq!(run["workflowUrl"], json!(format!("{}/plain/sequential", s.app.url)));
    assert_eq!(run["label"], "ok-runs");
    let names: Vec<&str> =
        run["steps"].as_array().unwrap().iter().filter_map(|g| g["steps"][0]["stepName"].as_str()).collect();
    assert_eq!(names, ["init", "step-1", "step-2", "step-3"], "{run}");
    assert_eq!(logs(format!("workflowRunId={cancelled}")).await["runs"][0]["workflowState"], "RUN_CANCELED");
    assert_eq!(logs(format!("workflowRunId={failed}")).await["runs"][0]["workflowState"], "RUN_FAILED");
    let failed_only = logs("state=RUN_FAILED".into()).await;
    assert_eq!(failed_only["runs"].as_array().unwrap().len(), 1, "{failed_only}");
    let by_label = logs("label=ok-runs".into()).await;
    assert_eq!(by_label["runs"][0]["workflowRunId"], json!(ok), "{by_label}");
    // Paging a filtered list never skips a run: five more labelled runs among
    // others, read two at a time.
    let mut labelled = vec![ok.clone()];
    for i in 0..10 {
        let options = if i % 2 == 0 { json!({"label": "ok-runs"}) } else { json!({}) };
        let id = s.trigger("/plain/sequential", json!({"n": i}), options).await;
        s.finished(&id).await;
        if i % 2 == 0 {
            labelled.push(id);
        }
    }
    let mut seen_ids = Vec::new();
    let mut cursor = String::new();
    for _ in 0..20 {
        let page = logs(format!("label=ok-runs&count=2&cursor={cursor}")).await;
        seen_ids
            .extend(page["runs"].as_array().unwrap().iter().map(|r| r["workflowRunId"].as_str().unwrap().to_owned()));
        match page["cursor"].as_str() {
            Some(next) if !next.is_empty() => cursor = next.to_owned(),
            _ => break,
        }
    }
    seen_ids.sort();
    labelled.sort();
    assert_eq!(seen_ids, labelled, "every labelled run exactly once");
}

/// The traffic of one run both ways, with what changes from run to run
/// (ids, times, signatures, ports) replaced: protocol drift shows up as a
/// diff of tests/fixtures/upstash-sequential.json (`KEEL_BLESS=1` rewrites it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traffic_of_one_run_matches_the_recorded_fixture() {
    let s = Setup::start().await;
    let id = s.trigger("/plain/sequential", json!({"n": 7}), json!({})).await;
    assert_eq!(s.finished(&id).await["status"], "completed");
    let traffic: Value = s.app_get(&format!("traffic/{id}")).await;
    let names = [(id.as_str(), "<run>"), (s.app.url.as_str(), "<app>"), (s.keel.url.as_str(), "<keel>")];
    let normalized: Vec<Value> = traffic
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let mut entry = entry.clone();
            let body = entry["body"].as_str().unwrap_or_default().to_owned();
            entry["body"] = if entry["direction"] == "to-app" {
                raw_steps(&body, &names)
            } else {
                // What the SDK sent: JSON (a batch, a wait) or text (a result).
                serde_json::from_str::<Value>(&body).map(|v| normalize(&v, &names)).unwrap_or(Value::String(body))
            };
            let body = entry["body"].take();
            let mut entry = normalize(&entry, &names);
            entry["body"] = body;
            entry
        })
        .collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstash-sequential.json");
    let fresh = serde_json::to_string_pretty(&normalized).unwrap() + "\n";
    if std::env::var_os("KEEL_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        committed, fresh,
        "the protocol traffic changed; if on purpose, rerun with KEEL_BLESS=1 and commit the diff"
    );
}

/// Replace what differs between runs; drop headers that only describe transport.
fn normalize(value: &Value, names: &[(&str, &str)]) -> Value {
    match value {
        Value::String(text) => {
            let mut text = text.clone();
            for (from, to) in names {
                text = text.replace(from, to);
            }
            Value::String(volatile(&text))
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| normalize(v, names)).collect()),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = k.to_ascii_lowercase();
                if [
                    "host",
                    "content-length",
                    "connection",
                    "user-agent",
                    "accept",
                    "accept-encoding",
                    "accept-language",
                    "sec-fetch-mode",
                ]
                .contains(&key.as_str())
                    || key.starts_with("upstash-telemetry")
                {
                    continue;
                }
                let v = match key.as_str() {
                    "upstash-signature" => Value::String("<signature>".into()),
                    "authorization" => Value::String("Bearer <token>".into()),
                    "upstash-message-id" | "messageid" => Value::String("<message>".into()),
                    "upstash-workflow-createdat" => Value::String("<time>".into()),
                    _ => normalize(v, names),
                };
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// A delivery's body: its base64 steps decoded, so the fixture reads.
fn raw_steps(body: &str, names: &[(&str, &str)]) -> Value {
    use base64::Engine;
    let steps: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let decoded: Vec<Value> = steps
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|step| {
                    let raw = base64::engine::general_purpose::STANDARD.decode(step["body"].as_str().unwrap_or_default()).unwrap_or_default();
                    json!({"messageId": "<message>", "callType": step["callType"], "body": normalize(&Value::String(String::from_utf8_lossy(&raw).into_owned()), names)})
                })
                .collect()
        })
        .unwrap_or_default();
    Value::Array(decoded)
}

/// Message ids and ms timestamps inside text.
fn volatile(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("msg_") {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(rest.len(), |e| i + e);
        out.push_str("<message>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_loses_nothing() {
    // The server is killed while runs sleep and wait; a new one on the same
    // Redis (same keys) finishes them.
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("upstash-kill");
    let env = [("KEEL_API_TOKENS", TOKEN), ("KEEL_LEASE", "2s")];
    let keel = Keel::spawn("server", &redis, &ns, &env);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let keys = keys_of(&http, &keel).await;
    let mut s = Setup { app: App::start(&keel, Some((&keys.0, &keys.1))), keel, http, _redis: redis };
    let sleeper = s.trigger("/plain/sleep", Value::Null, json!({})).await;
    let waiter = s.trigger("/plain/wait", json!({"eventId": "after-restart"}), json!({})).await;
    s.until_status(&waiter, "waiting").await;
    let pid = s.keel.pid();
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    // The app's QSTASH_URL must stay the same: the new server takes the old port.
    let port = s.keel.url.rsplit(':').next().unwrap().to_owned();
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(Instant::now() < deadline, "the killed server still listens");
        std::thread::sleep(Duration::from_millis(20));
    }
    let restarted = Keel::spawn("server", &s._redis, &ns, &[env[0], env[1], ("KEEL_ADDR", addr.as_str())]);
    s.keel = restarted;
    assert_eq!(keys_of(&s.http, &s.keel).await, keys, "the signing keys are the deployment's, kept in Redis");
    let answer = s.control("notify", json!({"eventId": "after-restart", "data": "back"})).await;
    assert_eq!(answer.as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(s.finished(&waiter).await["output"]["eventData"], "back");
    let run = s.finished(&sleeper).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert!(run["output"]["elapsed"].as_u64().unwrap() >= 2000, "{run}");
}

/// A careless or hostile client of the `/v2` API gets a problem and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_protocol_input_is_refused_and_starts_nothing() {
    let s = Setup::start().await;
    let post = |path: &str, body: String| {
        s.http
            .post(format!("{}{path}", s.keel.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(post("/v2/batch", "not json".into()).send().await.unwrap()), 400);
    assert_eq!(status(post("/v2/batch", r#"[{"nope": 1}]"#.into()).send().await.unwrap()), 422);
    let one =
        json!({"destination": format!("{}/plain/sequential", s.app.url), "headers": {"upstash-workflow-init": "true"}});
    let too_many: Vec<Value> = (0..101).map(|_| one.clone()).collect();
    assert_eq!(status(post("/v2/batch", Value::Array(too_many).to_string()).send().await.unwrap()), 422);
    let not_http = json!([{"destination": "file:///etc/passwd", "headers": {"upstash-workflow-init": "true"}}]);
    assert_eq!(status(post("/v2/batch", not_http.to_string()).send().await.unwrap()), 422);
    let bad_id = json!([{"destination": format!("{}/plain/x", s.app.url),
        "headers": {"upstash-workflow-init": "true", "upstash-workflow-runid": "wfr_{bad id}"}}]);
    assert_eq!(status(post("/v2/batch", bad_id.to_string()).send().await.unwrap()), 422);
    let bad_delay = json!([{"destination": format!("{}/plain/x", s.app.url),
        "headers": {"upstash-workflow-init": "true", "upstash-retry-delay": "pow("}}]);
    assert_eq!(status(post("/v2/batch", bad_delay.to_string()).send().await.unwrap()), 422);
    // A step for a run that does not exist: the 400 the SDK reads as "ended".
    let orphan = json!([{"destination": format!("{}/plain/x", s.app.url),
        "headers": {"upstash-workflow-runid": "wfr_nobody", "upstash-workflow-init": "false"}, "body": "{}"}]);
    assert_eq!(status(post("/v2/batch", orphan.to_string()).send().await.unwrap()), 400);
    assert_eq!(status(post("/v2/wait/evt", "{}".into()).send().await.unwrap()), 422, "a wait names its run");
    let anonymous = s.http.post(format!("{}/v2/batch", s.keel.url)).body(one.to_string()).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let page = s.get(format!("{}/v1/runs?workflow=upstash", s.keel.url)).await;
    assert_eq!(page["runs"], json!([]), "nothing was started: {page}");
}
