//! A short `keel chaos` run (CI's version; the long one is in the README): a
//! mixed workload under worker, server and Redis kills, stops and pauses, with
//! `appendfsync always`, must lose nothing, record nothing twice and leave
//! nothing stuck; steps that panic or block their thread past the lease, and
//! bodies that panic, end as they should; runs pinned to a missing version wait
//! and say why. An app on the unmodified Upstash SDK (sdk-tests/app.mjs, node)
//! runs 10 runs alongside, through the QStash protocol: all must complete right.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

#[test]
fn a_short_chaos_run_loses_nothing() {
    chaos(&["--runs", "40", "--faults", "6"], "redis=single");
}

/// On a private cluster (3 masters, a replica each, 16 partitions, writes
/// acknowledged by a replica): the first fault is a master's failover.
#[test]
fn a_short_chaos_run_with_a_master_failover_loses_nothing() {
    chaos(&["--runs", "40", "--faults", "4", "--redis-cluster"], "redis=cluster");
}

fn chaos(extra: &[&str], kind: &str) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["chaos", "--rate", "8", "--fsync", "always", "--settle-s", "150"])
        .args(extra)
        .output()
        .expect("run keel chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("keel-chaos "))
        .unwrap_or_else(|| panic!("no keel-chaos line:\n{stdout}\n{stderr}"));
    for healthy in [
        "lost=0",
        "duplicated_results=0",
        "stuck=0",
        "webhooks_missing=0",
        "effects_missing=0",
        "failed=0",
        "over_attempts=0",
        "blocked=2/2",
        "sdk_completed=10/10/10",
    ] {
        // What chaos printed of runs left unfinished goes with the failure.
        let tail: String =
            stderr.lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        assert!(line.contains(&format!(" {healthy} ")), "{healthy} expected in: {line}\n{tail}");
    }
    assert!(line.contains(kind), "{line}");
    let faults = extra[extra.iter().position(|a| *a == "--faults").unwrap() + 1];
    assert!(line.contains(&format!("faults={faults} ")), "{line}");
    assert!(output.status.success(), "{line}\n{stderr}");
}
