//! `keel bench` works (with a tiny N: a benchmark, not a timed test). It starts
//! its own redis-server, server and worker, and prints its one line.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

#[test]
fn keel_bench_runs_and_reports_one_line() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "--runs", "20", "--steps", "2", "--concurrency", "4", "--workers", "1"])
        .output()
        .expect("run keel bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "keel bench failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let line = stdout.lines().find(|l| l.starts_with("keel-bench ")).expect("the keel-bench line");
    for field in [
        "runs=20",
        "steps=2",
        "concurrency=4",
        "workers=1",
        "wall_s=",
        "runs_per_s=",
        "steps_per_s=",
        "p50_ms=",
        "p99_ms=",
        "cpu_ms_per_run=",
        "redis_cmds_per_step=",
        "bytes_per_run=",
        "redis_cpu_ms_per_run=",
        "keel_cpu_ms_per_run=",
        "redis_cpu_us_per_step=",
        "round_trips_per_step=",
        "scripts_per_step=",
    ] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
    assert!(!line.contains("n/a"), "every figure is measured when the bench starts Keel itself: {line}");

    let json = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "--overhead", "--json"])
        .output()
        .expect("run keel bench --overhead");
    assert!(json.status.success());
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(report["steps"], 100);
    assert!(report["overhead_ms_per_step"].is_number());
}
