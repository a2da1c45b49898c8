//! The committed JSON Schemas must match the types. Regenerate with
//! `KEEL_BLESS=1 cargo test -p keel-proto --test schemas`.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use keel_proto::{ChildOutcome, ErrorInfo, JournalEntry, JournalEvent, JournalRecord, ParentRef, RunId};
use serde_json::json;

#[test]
fn committed_json_schemas_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json-schema");
    let bless = std::env::var_os("KEEL_BLESS").is_some();
    let mut drifted = Vec::new();
    for (name, schema) in keel_proto::schemas() {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("schema folder");
        }
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

fn validator(name: &str) -> jsonschema::Validator {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json-schema");
    let text = std::fs::read_to_string(dir.join(name)).expect("schema is committed");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// One entry of every event type, as the worker and the store write them.
fn every_event() -> Vec<JournalEvent> {
    let error = ErrorInfo::new("step_failed", "503 from upstream").in_step("fetch-1");
    let child = RunId::new("child-1").unwrap();
    vec![
        JournalEvent::RunStarted {
            workflow: "agent".into(),
            version: 2,
            input: json!({"goal": "x"}),
            parent: Some(ParentRef { run_id: RunId::new("parent").unwrap(), step_id: "sub".into() }),
            labels: [("tenant".to_owned(), "acme".to_owned())].into(),
        },
        JournalEvent::StepStarted { step_id: "plan".into(), attempt: 1, pos: Some(":0".into()) },
        JournalEvent::StepCompleted {
            step_id: "plan".into(),
            attempt: 1,
            output: json!([1, 2]),
            pos: None,
            duration_ms: Some(12),
        },
        JournalEvent::StepFailed {
            step_id: "fetch-1".into(),
            attempt: 1,
            error: error.clone(),
            retry_at_ms: Some(5),
            pos: None,
        },
        JournalEvent::TimerScheduled { step_id: "nap".into(), fire_at_ms: 1_700_000_000_000, pos: None },
        JournalEvent::TimerFired { step_id: "nap".into() },
        JournalEvent::WaitStarted {
            step_id: "ok".into(),
            event_keys: vec!["k".into()],
            timeout_at_ms: None,
            pos: None,
        },
        JournalEvent::EventReceived {
            step_id: "ok".into(),
            event_key: "k".into(),
            event_id: "1-0".into(),
            data: json!(null),
        },
        JournalEvent::WaitTimedOut { step_id: "ok".into() },
        JournalEvent::ChildStarted {
            step_id: "sub".into(),
            child_run_id: child.clone(),
            workflow: "agent".into(),
            pos: Some("0/1:2".into()),
        },
        JournalEvent::ChildCompleted {
            step_id: "sub".into(),
            child_run_id: child,
            outcome: ChildOutcome::Failed { error: error.clone() },
        },
        JournalEvent::ProgressDeclared { total_steps: 4 },
        JournalEvent::CancelRequested { reason: Some("user".into()) },
        JournalEvent::RunCompleted { output: json!({"ok": true}) },
        JournalEvent::RunFailed { error },
        JournalEvent::RunCancelled { reason: None },
        JournalEvent::RunPaused {},
        JournalEvent::RunResumed {},
        JournalEvent::RunRetried {},
    ]
}

/// Every `type` the committed journal-entry schema declares (its `const`s).
fn declared_types(schema: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match schema {
        serde_json::Value::Object(map) => {
            if let Some(kind) = map.get("properties").and_then(|p| p.get("type")).and_then(|t| t.get("const")) {
                out.insert(kind.as_str().unwrap_or_default().to_owned());
            }
            map.values().for_each(|v| declared_types(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| declared_types(v, out)),
        _ => {}
    }
}

#[test]
fn every_journal_event_validates_against_the_committed_schema() {
    let entries = validator("journal-entry.json");
    let records = validator("journal-record.json");
    let mut types = std::collections::BTreeSet::new();
    for event in every_event() {
        let entry = JournalEntry::new(event);
        let value = serde_json::to_value(&entry).unwrap();
        types.insert(value["type"].as_str().unwrap().to_owned());
        if let Err(e) = entries.validate(&value) {
            panic!("{value} does not match journal-entry.json: {e}");
        }
        let record = serde_json::to_value(JournalRecord { seq: "1-0".into(), at_ms: 1, entry }).unwrap();
        assert!(records.is_valid(&record), "{record}");
    }
    // One sample of every type the schema declares: a new event type without a
    // sample here fails this test.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json-schema");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("journal-entry.json")).unwrap()).unwrap();
    let mut declared = std::collections::BTreeSet::new();
    declared_types(&schema, &mut declared);
    assert!(declared.len() >= 19, "the schema declares the event types: {declared:?}");
    assert_eq!(types, declared, "one sample per event type");
    // And the schema is not a yes-man.
    assert!(!entries.is_valid(&json!({"v": 1, "type": "step_exploded"})));
    assert!(!entries.is_valid(&json!({"v": 1, "type": "step_completed", "step_id": "a"})));
}
