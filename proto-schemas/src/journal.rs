//! The journal: a run's append-only event log (a Redis stream per run).
//!
//! One stream entry holds one [`JournalEntry`] as JSON in the field `e`. Its stream
//! id is the entry's sequence number and carries the server time it was written.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ErrorInfo, ParentRef, RunId};

/// The journal entry format version written by this build. Readers refuse newer ones.
pub const JOURNAL_VERSION: u32 = 1;

/// One versioned journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct JournalEntry {
    /// Format version; see [`JOURNAL_VERSION`].
    pub v: u32,
    #[serde(flatten)]
    pub event: JournalEvent,
}

impl JournalEntry {
    pub fn new(event: JournalEvent) -> Self {
        Self { v: JOURNAL_VERSION, event }
    }
}

/// What happened to a run. Past tense: the journal records facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JournalEvent {
    /// The run was created; always the first entry.
    RunStarted {
        workflow: String,
        version: u32,
        input: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentRef>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
    },
    /// An attempt of a step began (its side effects may happen from here on).
    /// Written only for attempts that take a while: a fast step goes straight to
    /// `step_completed` (one journal write per step).
    StepStarted {
        step_id: String,
        attempt: u32,
        /// Where the workflow reached this step: `<branch>:<index>`, for the
        /// determinism guard. Written on a step's first entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<String>,
    },
    /// A step's result. Recorded at most once per step: the store fences it.
    StepCompleted {
        step_id: String,
        attempt: u32,
        output: Value,
        /// Where the workflow reached the step, when this is its first entry (a
        /// fast step has no `step_started`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<String>,
        /// How long the successful attempt took, as the worker measured it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// An attempt failed; `retry_at_ms` is set when another attempt will follow.
    StepFailed {
        step_id: String,
        attempt: u32,
        error: ErrorInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at_ms: Option<u64>,
        /// As for `step_completed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<String>,
    },
    /// A durable sleep began; the run wakes at `fire_at_ms` (server time).
    TimerScheduled {
        step_id: String,
        fire_at_ms: u64,
        /// Where the workflow reached this step: `<branch>:<index>`, for the
        /// determinism guard. Written on a step's first entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<String>,
    },
    /// A durable sleep ended.
    TimerFired { step_id: String },
    /// The run began waiting for the first event on any of `event_keys`.
    WaitStarted {
        step_id: String,
        event_keys: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_at_ms: Option<u64>,
        /// Where the workflow reached this step: `<branch>:<index>`, for the
        /// determinism guard. Written on a step's first entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<String>,
    },
    /// An event satisfied a wait.
    EventReceived { step_id: String, event_key: String, event_id: String, data: Value },
    /// A wait ended without an event.
    WaitTimedOut { step_id: String },
    /// A child run was started on behalf of a step.
    ChildStarted {
        step_id: String,
        child_run_id: RunId,
        workflow: String,
        /// Where the workflow reached this step: `<branch>:<index>`, for the
        /// determinism guard. Written on a step's first entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<String>,
    },
    /// A child run finished, and this is how.
    ChildCompleted { step_id: String, child_run_id: RunId, outcome: ChildOutcome },
    /// The workflow declared how many steps it expects in all.
    ProgressDeclared { total_steps: u32 },
    /// Somebody asked for the run to stop at its next step boundary.
    CancelRequested {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An operator paused the run; it waits between steps until resumed.
    RunPaused {},
    /// An operator resumed a paused run.
    RunResumed {},
    /// An operator retried a failed run: steps that failed for good get another
    /// attempt; recorded results stay.
    RunRetried {},
    /// Final: the workflow returned this output.
    RunCompleted { output: Value },
    /// Final: the workflow failed for good.
    RunFailed { error: ErrorInfo },
    /// Final: the run was cancelled.
    RunCancelled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl JournalEvent {
    /// The step this event is about, if any.
    pub fn step_id(&self) -> Option<&str> {
        match self {
            Self::StepStarted { step_id, .. }
            | Self::StepCompleted { step_id, .. }
            | Self::StepFailed { step_id, .. }
            | Self::TimerScheduled { step_id, .. }
            | Self::TimerFired { step_id }
            | Self::WaitStarted { step_id, .. }
            | Self::EventReceived { step_id, .. }
            | Self::WaitTimedOut { step_id }
            | Self::ChildStarted { step_id, .. }
            | Self::ChildCompleted { step_id, .. } => Some(step_id),
            _ => None,
        }
    }

    /// The position recorded with a step's first entry, if any.
    pub fn pos(&self) -> Option<&str> {
        match self {
            Self::StepStarted { pos, .. }
            | Self::StepCompleted { pos, .. }
            | Self::StepFailed { pos, .. }
            | Self::TimerScheduled { pos, .. }
            | Self::WaitStarted { pos, .. }
            | Self::ChildStarted { pos, .. } => pos.as_deref(),
            _ => None,
        }
    }

    /// The entry's `type`, as serde writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RunStarted { .. } => "run_started",
            Self::StepStarted { .. } => "step_started",
            Self::StepCompleted { .. } => "step_completed",
            Self::StepFailed { .. } => "step_failed",
            Self::TimerScheduled { .. } => "timer_scheduled",
            Self::TimerFired { .. } => "timer_fired",
            Self::WaitStarted { .. } => "wait_started",
            Self::EventReceived { .. } => "event_received",
            Self::WaitTimedOut { .. } => "wait_timed_out",
            Self::ChildStarted { .. } => "child_started",
            Self::ChildCompleted { .. } => "child_completed",
            Self::ProgressDeclared { .. } => "progress_declared",
            Self::CancelRequested { .. } => "cancel_requested",
            Self::RunPaused {} => "run_paused",
            Self::RunResumed {} => "run_resumed",
            Self::RunRetried {} => "run_retried",
            Self::RunCompleted { .. } => "run_completed",
            Self::RunFailed { .. } => "run_failed",
            Self::RunCancelled { .. } => "run_cancelled",
        }
    }

    /// Whether this event ends the run.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::RunCompleted { .. } | Self::RunFailed { .. } | Self::RunCancelled { .. })
    }
}

/// How a child run ended, as its parent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChildOutcome {
    Completed { output: Value },
    Failed { error: ErrorInfo },
    Cancelled,
}

/// A journal entry as read back, with its place in the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct JournalRecord {
    /// The entry's stream id (`<ms>-<n>`): its sequence number, usable as an SSE id.
    pub seq: String,
    /// Server time at which the entry was written, in Unix milliseconds.
    pub at_ms: u64,
    pub entry: JournalEntry,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_serialize_flat_with_version_and_type() {
        let entry = JournalEntry::new(JournalEvent::StepCompleted {
            step_id: "plan".into(),
            attempt: 2,
            output: json!({"items": [1, 2]}),
            pos: None,
            duration_ms: None,
        });
        let text = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            text,
            json!({"v": 1, "type": "step_completed", "step_id": "plan", "attempt": 2, "output": {"items": [1, 2]}})
        );
        let back: JournalEntry = serde_json::from_value(text).unwrap();
        assert_eq!(back, entry);
    }

    #[test]
    fn kind_is_the_type_serde_writes() {
        let error = ErrorInfo::new("boom", "it broke");
        let id = RunId::new("child-1").unwrap();
        let events = vec![
            JournalEvent::RunStarted {
                workflow: "w".into(),
                version: 1,
                input: json!(1),
                parent: None,
                labels: BTreeMap::new(),
            },
            JournalEvent::StepStarted { step_id: "s".into(), attempt: 1, pos: None },
            JournalEvent::StepCompleted {
                step_id: "s".into(),
                attempt: 1,
                output: json!(1),
                pos: None,
                duration_ms: Some(3),
            },
            JournalEvent::StepFailed {
                step_id: "s".into(),
                attempt: 1,
                error: error.clone(),
                retry_at_ms: None,
                pos: None,
            },
            JournalEvent::TimerScheduled { step_id: "s".into(), fire_at_ms: 1, pos: None },
            JournalEvent::TimerFired { step_id: "s".into() },
            JournalEvent::WaitStarted {
                step_id: "s".into(),
                event_keys: vec!["k".into()],
                timeout_at_ms: None,
                pos: None,
            },
            JournalEvent::EventReceived {
                step_id: "s".into(),
                event_key: "k".into(),
                event_id: "1-0".into(),
                data: json!(null),
            },
            JournalEvent::WaitTimedOut { step_id: "s".into() },
            JournalEvent::ChildStarted {
                step_id: "s".into(),
                child_run_id: id.clone(),
                workflow: "w".into(),
                pos: None,
            },
            JournalEvent::ChildCompleted { step_id: "s".into(), child_run_id: id, outcome: ChildOutcome::Cancelled },
            JournalEvent::ProgressDeclared { total_steps: 3 },
            JournalEvent::CancelRequested { reason: None },
            JournalEvent::RunPaused {},
            JournalEvent::RunResumed {},
            JournalEvent::RunRetried {},
            JournalEvent::RunCompleted { output: json!(1) },
            JournalEvent::RunFailed { error },
            JournalEvent::RunCancelled { reason: None },
        ];
        for event in events {
            let text = serde_json::to_value(JournalEntry::new(event.clone())).unwrap();
            assert_eq!(text["type"], event.kind(), "{event:?}");
        }
    }

    #[test]
    fn unknown_event_types_are_refused() {
        let err = serde_json::from_value::<JournalEntry>(json!({"v": 1, "type": "step_exploded"}));
        assert!(err.is_err());
    }
}
