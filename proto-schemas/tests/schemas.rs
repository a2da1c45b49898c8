//! The committed JSON Schemas must match the types. Regenerate with
//! `KEEL_BLESS=1 cargo test -p keel-proto --test schemas`.

use std::path::PathBuf;

#[test]
fn committed_json_schemas_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json-schema");
    let bless = std::env::var_os("KEEL_BLESS").is_some();
    let mut drifted = Vec::new();
    for (name, schema) in keel_proto::schemas() {
        let path = dir.join(name);
        let fresh = serde_json::to_string_pretty(&schema).expect("schemas serialize") + "\n";
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != fresh {
            if bless {
                std::fs::write(&path, &fresh).expect("write schema");
            } else {
                drifted.push(name);
            }
        }
    }
    assert!(
        drifted.is_empty(),
        "json-schema/ is out of date for {drifted:?}: the wire types changed. If that was deliberate \
         (and versioned), run `KEEL_BLESS=1 cargo test -p keel-proto --test schemas` and commit the result."
    );
}

#[test]
fn real_messages_validate_against_the_committed_schemas() {
    // The schema must accept what the types produce: a round trip through a
    // validator is in the engine's conformance tests; here we check the schema
    // names every event type the enum has.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json-schema");
    let text = std::fs::read_to_string(dir.join("journal-entry.json")).expect("journal-entry.json is committed");
    for kind in [
        "run_started",
        "step_started",
        "step_completed",
        "step_failed",
        "timer_scheduled",
        "timer_fired",
        "wait_started",
        "event_received",
        "wait_timed_out",
        "child_started",
        "child_completed",
        "progress_declared",
        "cancel_requested",
        "run_completed",
        "run_failed",
        "run_cancelled",
    ] {
        assert!(text.contains(&format!("\"{kind}\"")), "journal-entry.json lacks {kind}");
    }
}
