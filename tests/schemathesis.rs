//! The API against its own OpenAPI document: schemathesis (PyPI; `.ci/run`
//! installs it) generates requests for every operation from /openapi.json and
//! checks that the server never answers 5xx, and answers only documented status
//! codes and content types. Everything stays on 127.0.0.1.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

mod common;

use common::Keel;
use keel_engine::testing::RedisServer;

#[test]
fn generated_requests_get_documented_answers_and_never_a_server_error() {
    let redis = RedisServer::start();
    let keel = Keel::spawn("dev", &redis, &RedisServer::unique_namespace("st"), &[]);
    // The SSE stream (/events) never ends by itself; long-polls are bounded by a
    // `wait` the generator may set high: both are left out.
    let output = std::process::Command::new("st")
        .args(["run", &format!("{}/openapi.json", keel.url)])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance"])
        .args(["--max-examples", "10", "--request-timeout", "15", "--seed", "1"])
        .args(["--exclude-path-regex", "/events$|/result$"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        // Its cache goes to a temporary folder, not into the checkout.
        .current_dir(std::env::temp_dir())
        .output()
        .expect("schemathesis (`st`) is missing: `pip install schemathesis==4.32.5` (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let health = std::process::Command::new("curl").args(["-fs", &format!("{}/healthz", keel.url)]).status().unwrap();
    assert!(health.success(), "keel is unhealthy after the run");
}
