//! Schedules: when a cron fires in a time zone (`Cadence`), and the duty every
//! server runs that starts each tick's run (`fire_due`).
//!
//! Exactly one run per tick, however many servers run the duty: a tick's run
//! id derives from the schedule and the tick (`sched-<id>-<tick ms>`), so a
//! second start of it is the same run (an idempotent create); and moving the
//! schedule on to its next tick is a compare-and-set on the tick it was due
//! at, so a server that lost the race changes nothing.

use std::collections::BTreeMap;
use std::str::FromStr as _;

use chrono::{TimeZone as _, Utc};
use chrono_tz::Tz;
use keel_proto::{CatchUp, Overlap, ScheduleSpec, scheduled_run_id};

use crate::store::{CreateRun, DueSchedule, Store};
use crate::{Error, Result};

/// A schedule's cron in its time zone.
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: croner::Cron,
    tz: Tz,
}

impl Cadence {
    /// Parse a spec's cron (five fields, or six with seconds first) and time zone.
    pub fn of(spec: &ScheduleSpec) -> Result<Self> {
        Self::parse(&spec.cron, &spec.timezone)
    }

    pub fn parse(cron: &str, timezone: &str) -> Result<Self> {
        let tz = Tz::from_str(timezone)
            .map_err(|_| Error::Invalid(format!("{timezone:?} is not an IANA time zone (e.g. Europe/Lisbon, UTC)")))?;
        let cron = croner::Cron::from_str(cron).map_err(|e| Error::Invalid(format!("cron {cron:?}: {e}")))?;
        let cadence = Self { cron, tz };
        if cadence.next_after(Utc::now().timestamp_millis().max(0) as u64).is_none() {
            return Err(Error::Invalid("this cron never fires again".into()));
        }
        Ok(cadence)
    }

    fn at(&self, ms: u64) -> Option<chrono::DateTime<Tz>> {
        self.tz.timestamp_millis_opt(i64::try_from(ms).ok()?).single()
    }

    /// The first tick strictly after `ms` (ms since the epoch).
    pub fn next_after(&self, ms: u64) -> Option<u64> {
        let next = self.cron.find_next_occurrence(&self.at(ms)?, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }

    /// The last tick at or before `ms`.
    pub fn latest_at_or_before(&self, ms: u64) -> Option<u64> {
        let previous = self.cron.find_previous_occurrence(&self.at(ms)?, true).ok()?;
        u64::try_from(previous.timestamp_millis()).ok()
    }

    /// The next `n` ticks after `ms`.
    pub fn upcoming(&self, ms: u64, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        let mut after = ms;
        while out.len() < n {
            match self.next_after(after) {
                Some(next) => {
                    out.push(next);
                    after = next;
                }
                None => break,
            }
        }
        out
    }
}

/// The newest version of `workflow` that a live worker runs.
async fn live_version(store: &dyn Store, workflow: &str) -> Result<Option<u32>> {
    let workers = store.list_workers().await?;
    Ok(workers.iter().filter_map(|w| w.workflows.get(workflow)).flat_map(|versions| versions.iter().copied()).max())
}

/// What one due tick comes to.
enum Decision {
    /// Start the run of this tick.
    Start(u64),
    /// Start nothing, and say why.
    Skip(String),
    /// Leave the tick due (a buffered tick waiting for the live run).
    Wait,
}

/// Start the runs of every schedule due by `now_ms` (at most `limit`). Safe to
/// run in every server at once. Returns the runs started.
pub async fn fire_due(store: &dyn Store, now_ms: u64, limit: usize) -> Result<Vec<keel_proto::RunId>> {
    let mut started = Vec::new();
    for due in store.due_schedules(now_ms, limit).await? {
        match fire_one(store, &due, now_ms).await {
            Ok(Some(run)) => started.push(run),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(schedule = %due.spec.id, error = %e, "a schedule's tick failed; retried next pass")
            }
        }
    }
    Ok(started)
}

async fn fire_one(store: &dyn Store, due: &DueSchedule, now_ms: u64) -> Result<Option<keel_proto::RunId>> {
    let spec = &due.spec;
    let cadence = Cadence::of(spec)?;
    let tick = due.tick_ms;
    // The tick is missed when the one after it is due too (downtime, or a
    // duty that could not run): catch_up decides. A buffered tick is late by
    // design (it waited for the live run): it runs once, whenever that ends.
    let missed =
        spec.overlap != Overlap::BufferOne && cadence.next_after(tick).is_some_and(|following| following <= now_ms);
    let decision = if missed && spec.catch_up == CatchUp::Skip {
        Decision::Skip(format!("missed tick at {tick} ms (catch_up: skip)"))
    } else {
        let tick = if missed { cadence.latest_at_or_before(now_ms).unwrap_or(tick) } else { tick };
        // A server that died between starting this tick's run and moving the
        // schedule on left the run behind: it is this tick's, whatever the
        // last run is doing (and the overlap check must not skip it).
        let started_before = store.get_run(&scheduled_run_id(&spec.id, tick)?).await?.is_some();
        let live = match &due.state.last_run_id {
            Some(run) if !started_before => store.get_run(run).await?.is_some_and(|r| !r.status.is_final()),
            _ => false,
        };
        match (live, spec.overlap) {
            (true, Overlap::Skip) => Decision::Skip(format!(
                "run {} was still live (overlap: skip)",
                due.state.last_run_id.as_ref().map_or("", |r| r.as_str())
            )),
            (true, Overlap::BufferOne) => Decision::Wait,
            _ => Decision::Start(tick),
        }
    };
    let mut state = due.state.clone();
    let mut started = None;
    match decision {
        Decision::Wait => return Ok(None),
        Decision::Skip(why) => {
            tracing::info!(schedule = %spec.id, tick, why, "schedule tick skipped");
            state.last_tick_ms = Some(tick);
            state.last_skip = Some(why);
        }
        Decision::Start(run_tick) => {
            state.last_tick_ms = Some(run_tick);
            match start_tick(store, spec, run_tick).await? {
                Ok(run_id) => {
                    state.last_run_id = Some(run_id.clone());
                    state.last_skip = None;
                    started = Some(run_id);
                }
                Err(why) => state.last_skip = Some(why),
            }
        }
    }
    // Only the server that moves the schedule on from this tick reports the
    // run; another one that raced it started the same run (same id).
    let next = cadence.next_after(now_ms.max(tick));
    let moved = store.advance_schedule(&spec.id, due.tick_ms, next, &state).await?;
    if moved && let Some(run) = &started {
        tracing::info!(schedule = %spec.id, run_id = %run, "scheduled run started");
    }
    Ok(if moved { started } else { None })
}

/// Start the run of `spec`'s tick at `tick_ms` (again: the same run), with the
/// newest version a live worker runs; `Ok(Err(why))` when none runs it.
pub async fn start_tick(
    store: &dyn Store,
    spec: &ScheduleSpec,
    tick_ms: u64,
) -> Result<std::result::Result<keel_proto::RunId, String>> {
    let Some(version) = live_version(store, &spec.workflow).await? else {
        return Ok(Err(format!("no live worker runs workflow {:?}", spec.workflow)));
    };
    let run_id = scheduled_run_id(&spec.id, tick_ms)?;
    let mut labels: BTreeMap<String, String> = spec.labels.clone();
    labels.insert("schedule".into(), spec.id.clone());
    store
        .create_run(CreateRun {
            workflow: spec.workflow.clone(),
            version,
            input: spec.input.clone(),
            run_id: Some(run_id.clone()),
            idempotency_key: None,
            delay: None,
            labels,
            parent: None,
            callback_url: None,
            priority: None,
            flow_control: None,
        })
        .await?;
    Ok(Ok(run_id))
}

/// At most this many schedules per deployment: every server reads them all
/// (the list, the due set), so a client cannot grow that without bound.
pub const MAX_SCHEDULES: usize = 1000;

/// A schedule's input is kept with it and shown in every list: at most this
/// many bytes of JSON (or the store's value limit, if lower).
pub const MAX_SCHEDULE_INPUT_BYTES: usize = 64 * 1024;

/// Check a spec as a client sent it; its cadence.
pub fn validate(spec: &ScheduleSpec, config: &crate::StoreConfig) -> Result<Cadence> {
    keel_proto::validate_schedule_id(&spec.id)?;
    keel_proto::validate_workflow_name(&spec.workflow)?;
    crate::check_value_size("schedule's input", &spec.input, config.max_value_bytes.min(MAX_SCHEDULE_INPUT_BYTES))?;
    let mut labels = spec.labels.clone();
    labels.insert("schedule".into(), spec.id.clone());
    crate::store::validate_labels(&labels)?;
    Cadence::of(spec)
}
