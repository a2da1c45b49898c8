//! The dashboard in a real browser: `keel dev` with a full and a read token,
//! and ui-tests/dashboard.mjs driving headless Chromium through it as an
//! operator would (runs appearing live, a run's timeline, cancel, retry, label
//! filters, the overview and system pages, a narrow dark screen, a read token
//! that cannot act). Screenshots go to target/ui-screenshots/ (not committed).
//! Also, without a browser: what the dashboard's HTTP surface gives whom, on a
//! single Redis and on a cluster.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Keel, wait_for_workflows};
use keel_engine::testing::{RedisServer, TestRedis};
use serde_json::json;

const FULL: &str = "ui-full-token-0123456789abcdef";
const READ: &str = "ui-read-token-fedcba9876543210";

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the browser test needs, or a loud failure saying how to get it.
fn require_browser_tools() -> PathBuf {
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        chromium.exists(),
        "{} is missing: the dashboard's browser test needs Debian's chromium (scripts/test installs it: apt-get install chromium chromium-driver)",
        chromium.display()
    );
    assert!(
        Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()),
        "node is missing: the dashboard's browser test runs ui-tests/dashboard.mjs (apt-get install nodejs npm)"
    );
    assert!(
        root().join("ui-tests/node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in ui-tests/: run `npm ci` there (scripts/test does)"
    );
    chromium
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_and_acts_on_runs_in_a_real_browser() {
    let chromium = require_browser_tools();
    let redis = RedisServer::start();
    let ns = RedisServer::unique_namespace("ui");
    let keel = Keel::spawn("dev", &redis, &ns, &[("KEEL_API_TOKENS", FULL), ("KEEL_READ_TOKENS", READ)]);
    wait_for_workflows(&http(), &keel, Some(FULL)).await;
    let shots = root().join("target/ui-screenshots");
    let mut child = Command::new("node")
        .arg("dashboard.mjs")
        .current_dir(root().join("ui-tests"))
        .env("KEEL_URL", &keel.url)
        .env("KEEL_BIN", env!("CARGO_BIN_EXE_keel"))
        .env("FULL_TOKEN", FULL)
        .env("READ_TOKEN", READ)
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node dashboard.mjs");
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed (or ran past 240 s):\n{text}");
    assert!(text.contains("dashboard: all checks passed"), "{text}");
    for shot in ["runs", "run", "failed", "overview", "system", "run-narrow-dark", "read-only"] {
        assert!(shots.join(format!("{shot}.png")).is_file(), "screenshot {shot}.png");
    }
    let log = keel.log_text();
    for token in [FULL, READ] {
        assert!(!log.contains(token), "a token reached the log");
    }
}

on_both!(the_shell_is_public_and_the_views_are_behind_the_token);

async fn the_shell_is_public_and_the_views_are_behind_the_token(redis: &dyn TestRedis) {
    let ns = RedisServer::unique_namespace("ui-auth");
    let keel = Keel::spawn("dev", redis, &ns, &[("KEEL_API_TOKENS", FULL), ("KEEL_READ_TOKENS", READ)]);
    let http = http();
    wait_for_workflows(&http, &keel, Some(FULL)).await;
    let url = |path: &str| format!("{}{path}", keel.url);
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let root = no_redirects.get(url("/")).send().await.unwrap();
    assert_eq!(root.status(), 307);
    assert_eq!(root.headers()["location"], "/ui/");
    for path in ["/ui/", "/ui/assets/ui.js", "/ui/assets/ui.css"] {
        let r = http.get(url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} needs no token: it holds no data");
    }
    let shell = http.get(url("/ui/")).send().await.unwrap();
    assert!(shell.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    for path in ["/ui/f/runs", "/ui/f/overview", "/ui/f/system", "/ui/f/whoami"] {
        let r = http.get(url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    // What the system page shows: a webhook whose receiver is down (so its
    // log says when it tries again), a schedule (paused, so it starts
    // nothing), a flow-control key with limits.
    let closed = common::free_port();
    let hook = http
        .post(url("/v1/webhooks"))
        .bearer_auth(FULL)
        .json(&json!({"url": format!("http://127.0.0.1:{closed}/hook"), "event_types": ["run.completed"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 201);
    let schedule = http
        .post(url("/v1/schedules"))
        .bearer_auth(FULL)
        .json(&json!({"id": "nightly", "workflow": "demo", "cron": "0 3 * * *", "timezone": "Europe/Paris"}))
        .send()
        .await
        .unwrap();
    assert_eq!(schedule.status(), 201);
    let paused = http.post(url("/v1/schedules/nightly/pause")).bearer_auth(FULL).send().await.unwrap();
    assert_eq!(paused.status(), 200);
    let flow = http
        .put(url("/v1/flow-control/search-api"))
        .bearer_auth(FULL)
        .json(&json!({"parallelism": 3, "rate": 10, "period": "1m"}))
        .send()
        .await
        .unwrap();
    assert!(flow.status().is_success(), "{}", flow.status());
    let run: serde_json::Value = http
        .post(url("/v1/workflows/demo/runs?wait=20s"))
        .bearer_auth(FULL)
        .json(&json!({"input": {"steps": 2}, "labels": {"team": "<b>ui</b>"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = run["run_id"].as_str().unwrap();
    let page = |token: &'static str, path: String| {
        let http = http.clone();
        async move { http.get(path).bearer_auth(token).send().await.unwrap().text().await.unwrap() }
    };
    let as_read = page(READ, url(&format!("/ui/f/runs/{id}"))).await;
    assert!(as_read.contains(r#"data-action="cancel""#) && as_read.contains("a read token cannot act"), "{as_read}");
    assert!(as_read.contains("&lt;b&gt;ui&lt;/b&gt;") && !as_read.contains("<b>ui</b>"), "labels are escaped");
    let as_full = page(FULL, url(&format!("/ui/f/runs/{id}"))).await;
    assert!(!as_full.contains("a read token cannot act"));
    assert_eq!(page(READ, url("/ui/f/whoami")).await, "read");
    assert_eq!(page(FULL, url("/ui/f/whoami")).await, "full");
    let listed = page(READ, url("/ui/f/runs?label=team%3D%3Cb%3Eui%3C%2Fb%3E")).await;
    assert!(listed.contains(&format!(r#"data-run="{id}""#)), "{listed}");
    // A creation-time range: the run is in [created, …) and not in [0, created).
    let json =
        |path: String| async move { serde_json::from_str::<serde_json::Value>(&page(READ, path).await).unwrap() };
    let detail = json(url(&format!("/v1/runs/{id}"))).await;
    let created = detail["created_at_ms"].as_u64().expect("created_at_ms");
    let since = page(READ, url(&format!("/ui/f/runs?created_after={created}"))).await;
    assert!(since.contains(&format!(r#"data-run="{id}""#)), "{since}");
    assert!(since.contains(&format!(r#"data-ms="{created}""#)), "the form keeps the range: {since}");
    let until = page(READ, url(&format!("/ui/f/runs?created_before={created}"))).await;
    assert!(!until.contains(&format!(r#"data-run="{id}""#)) && until.contains("No runs."), "{until}");
    let api = json(url(&format!("/v1/runs?created_after={created}&created_before={}", created + 1))).await;
    assert_eq!(api["runs"][0]["run_id"], id, "{api}");
    let backwards = http.get(url("/v1/runs?created_after=10&created_before=5")).bearer_auth(READ).send().await.unwrap();
    assert_eq!(backwards.status(), 422);
    let backwards =
        http.get(url("/ui/f/runs?created_after=10&created_before=5")).bearer_auth(READ).send().await.unwrap();
    assert_eq!(backwards.status(), 400);
    let bad = http.get(url("/ui/f/runs?status=sideways")).bearer_auth(READ).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("sideways"));
    let missing =
        http.get(url("/ui/f/runs/01a23a00-0000-7000-8000-000000000000")).bearer_auth(READ).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let deadline = Instant::now() + Duration::from_secs(30);
    let system = loop {
        let system = page(READ, url("/ui/f/system")).await;
        if system.contains("o-retrying") {
            break system;
        }
        assert!(Instant::now() < deadline, "no failed delivery shown within 30 s:\n{system}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for shown in [
        format!("http://127.0.0.1:{closed}/hook"),
        "run.completed".into(),
        "nightly".into(),
        "Europe/Paris".into(),
        "search-api".into(),
        "3 at once".into(),
        "10 per 1m".into(),
        ">demo<".into(),
        "Last heartbeat".into(),
    ] {
        assert!(system.contains(&shown), "the system page shows {shown}:\n{system}");
    }
    let log = keel.log_text();
    assert!(!log.contains(FULL) && !log.contains(READ), "a token reached the log");
}
