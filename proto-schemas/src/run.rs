//! The run summary: what a dashboard or a worker sees of a run at a glance.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::RunId;

/// A run's priority when none is given: the middle of [`PRIORITIES`].
pub const DEFAULT_PRIORITY: u8 = 3;
/// The priorities a run may have: 5 is claimed first, 1 last.
pub const PRIORITIES: std::ops::RangeInclusive<u8> = 1..=5;

/// Whether `priority` is one of [`PRIORITIES`]; the message says what is.
pub fn validate_priority(priority: u8) -> Result<(), String> {
    if PRIORITIES.contains(&priority) {
        Ok(())
    } else {
        Err(format!(
            "priority must be {} to {} (higher is claimed first; {DEFAULT_PRIORITY} unless given), got {priority}",
            PRIORITIES.start(),
            PRIORITIES.end()
        ))
    }
}

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

/// Where a run stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A task for the run is queued; no worker holds it yet.
    Pending,
    /// A worker holds the run's lease.
    Running,
    /// Suspended until a timer (a sleep, a retry back-off, a delayed start).
    Sleeping,
    /// Suspended until an event (or a child run, or the wait's timeout).
    Waiting,
    /// Held between steps by an operator until resumed.
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 8] = [
        Self::Pending,
        Self::Running,
        Self::Sleeping,
        Self::Waiting,
        Self::Paused,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Sleeping => "sleeping",
            Self::Waiting => "waiting",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Completed, failed and cancelled runs never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| format!("unknown run status {s:?}"))
    }
}

/// An error as recorded in a journal or a run summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ErrorInfo {
    /// A stable, machine-readable class: `step_failed`, `timeout`, `non_determinism`,
    /// `dead_lettered`, `terminal`, …
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
}

impl ErrorInfo {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: kind.into(), message: message.into(), step_id: None }
    }

    pub fn in_step(mut self, step_id: impl Into<String>) -> Self {
        self.step_id = Some(step_id.into());
        self
    }
}

/// The run (and its step) that started a child run and waits for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ParentRef {
    pub run_id: RunId,
    pub step_id: String,
}

/// A run at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct RunSummary {
    pub run_id: RunId,
    pub workflow: String,
    pub version: u32,
    pub status: RunStatus,
    /// 1 to 5: among queued runs of a workflow, higher is claimed first.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 1, max = 5))]
    #[schema(minimum = 1, maximum = 5)]
    pub priority: u8,
    /// Unix milliseconds, server time.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// How many times a worker has claimed the run (the lease epoch).
    pub epoch: u64,
    pub completed_steps: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<String>,
    /// When a suspended run will be woken by its timer (Unix ms), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at_ms: Option<u64>,
    /// The event keys a waiting run waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    pub cancel_requested: bool,
    /// A pause was asked for: the run stops at its next step boundary (or when woken).
    #[serde(default)]
    pub pause_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Where this run's webhook events are also sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The flow-control key every step of the run executes under, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_control: Option<crate::FlowControl>,
    /// Why the run waits without being worked on (e.g. `no live worker has demo
    /// v1`); it goes on by itself once that changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

/// One page of a run listing, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Pass it back as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
