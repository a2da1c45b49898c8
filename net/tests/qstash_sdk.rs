//! Keel's `Upstash-Signature` held against the real `@upstash/qstash`
//! `Receiver` (pinned in sdk-tests/, installed by scripts/test): what an
//! unmodified @upstash/workflow app accepts, and what it refuses.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use keel_net::qstash::{generate_key, sign};
use serde_json::json;

fn sdk_tests() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdk-tests");
    assert!(
        dir.join("node_modules/@upstash/qstash").is_dir(),
        "the pinned Upstash SDKs are not installed: run scripts/test (or `npm ci` in sdk-tests/)"
    );
    dir
}

/// What the SDK's Receiver says of `signature` for `body` sent to `url`.
fn receiver_says(current: &str, next: &str, signature: &str, body: &str, url: &str) -> String {
    let mut child = Command::new("node")
        .arg("verify-signature.mjs")
        .current_dir(sdk_tests())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is needed for the SDK tests (scripts/test installs it)");
    let input = json!({"current": current, "next": next, "signature": signature, "body": body, "url": url});
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "node failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_sdks_receiver_verifies_keels_signatures_and_refuses_tampering() {
    let (current, next) = (generate_key().unwrap(), generate_key().unwrap());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let url = "http://127.0.0.1:3000/api/workflow";
    let body = r#"{"hello":"world","n":1}"#;
    let by_current = sign(&current, url, body.as_bytes(), now, "msg-1");
    assert_eq!(receiver_says(&current, &next, &by_current, body, url), "verified");
    // Signed with the next key (after a rotation): still verified.
    let by_next = sign(&next, url, body.as_bytes(), now, "msg-2");
    assert_eq!(receiver_says(&current, &next, &by_next, body, url), "verified");
    // An empty body (the SDK's calls without one).
    let empty = sign(&current, url, b"", now, "msg-3");
    assert_eq!(receiver_says(&current, &next, &empty, "", url), "verified");

    let refused = |said: String| assert!(said.starts_with("refused"), "{said}");
    refused(receiver_says(&current, &next, &by_current, r#"{"hello":"there","n":1}"#, url));
    refused(receiver_says(&current, &next, &by_current, body, "http://127.0.0.1:3000/api/other"));
    let (other, other_next) = (generate_key().unwrap(), generate_key().unwrap());
    refused(receiver_says(&other, &other_next, &by_current, body, url));
    let expired = sign(&current, url, body.as_bytes(), now - 3600, "msg-4");
    refused(receiver_says(&current, &next, &expired, body, url));
}
