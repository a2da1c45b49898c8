//! Schedules: a workflow started on a cron, in a time zone. The spec is what a
//! client sends (`POST /v1/schedules`); a [`Schedule`] is the spec with its
//! state, as `GET /v1/schedules[/{id}]` answers it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::RunId;
use crate::ids::IdError;

const SCHEDULE_ID_MAX: usize = 64;

/// A schedule's id: 1–64 characters of `A-Za-z0-9_.-` (its runs' ids are
/// `sched-<id>-<tick ms>`).
pub fn validate_schedule_id(id: &str) -> Result<(), IdError> {
    crate::ids::check_name("schedule id", id, SCHEDULE_ID_MAX)
}

/// The run id a schedule's tick gets: the same on every server, so a tick
/// started twice is one run.
pub fn scheduled_run_id(schedule_id: &str, tick_ms: u64) -> Result<RunId, IdError> {
    RunId::new(format!("sched-{schedule_id}-{tick_ms}"))
}

/// What happens to a tick while the schedule's previous run is still live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The tick starts nothing.
    #[default]
    Skip,
    /// The tick waits for the live run to end (at most one waits; later ticks
    /// in the meantime are dropped).
    BufferOne,
    /// The tick starts a run regardless.
    AllowAll,
}

/// What happens to ticks missed while no server ran (downtime, or a pause
/// longer than a tick is not one: a resumed schedule goes on from now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed ticks start nothing; the next tick after now does.
    #[default]
    Skip,
    /// One run for the latest missed tick, then on as usual.
    RunOnce,
}

/// `POST /v1/schedules`: create or replace a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// 1–64 characters of `A-Za-z0-9_.-`.
    pub id: String,
    /// The workflow each tick starts (its newest live version).
    pub workflow: String,
    /// Five fields (minute hour day-of-month month day-of-week), or six with
    /// seconds first; names (`MON`, `JAN`), ranges, steps, `L`, `#`, `W` and
    /// `@hourly`-style aliases.
    pub cron: String,
    /// An IANA time zone (`Europe/Lisbon`); ticks follow its daylight-saving
    /// rules. Default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Every run's input.
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Every run's labels; `schedule` is set to the schedule's id.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn utc() -> String {
    "UTC".into()
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Schedule {
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    pub paused: bool,
    /// The next ticks (ms since the Unix epoch), soonest first; empty while paused.
    pub next_fire_times: Vec<u64>,
    #[serde(flatten)]
    pub state: ScheduleState,
}

/// What the scheduler keeps between ticks (shown with the schedule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ScheduleState {
    /// The last tick handled (started, skipped or failed to start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick_ms: Option<u64>,
    /// The run the last started tick made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_id: Option<RunId>,
    /// Why the last tick started nothing, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skip: Option<String>,
}

/// `POST /v1/schedules/{id}/trigger`: the run it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct TriggeredRun {
    pub run_id: RunId,
}

/// `GET /v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}
