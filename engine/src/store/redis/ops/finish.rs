//! finish.lua: a lease's last entries, and the run completed, failed,
//! cancelled, suspended or released.

use super::append::Patch;
use super::*;
use crate::store::{Finish, Finished, Lease};

#[derive(Serialize)]
struct Wait<'a> {
    step: &'a str,
    key: &'a str,
    since: u64,
}

#[derive(Serialize)]
struct Args<'a> {
    id: &'a str,
    worker: &'a str,
    epoch: u64,
    /// This write's token: a re-sent copy changes nothing.
    w: String,
    patch: Patch,
    entries: Vec<Entry>,
    how: &'static str,
    retention_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    r#final: Option<Entry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    cancelled: Entry,
    /// Text, not a JSON number: Lua's numbers are doubles, and a wake-up
    /// time saturated at u64::MAX must be stored exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    wake_at: Option<String>,
    waits: Vec<Wait<'a>>,
    /// Why the run waits (a flow-control key): its `blk`.
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked: Option<&'a str>,
    lookback_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    child_outcome: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
enum Reply {
    Done {
        #[serde(default)]
        relayed: bool,
    },
    Cancelled {
        #[serde(default)]
        relayed: bool,
    },
    Event {
        seq: String,
        entry: String,
    },
    Lost,
}

pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    lease: &Lease,
    events: &[JournalEvent],
    how: &Finish,
) -> Result<Finished> {
    let (kind, final_event, payload) = match how {
        Finish::Complete { output } => (
            "complete",
            Some(JournalEvent::RunCompleted { output: output.clone() }),
            Some(super::super::to_json(output)?),
        ),
        Finish::Fail { error } => {
            ("fail", Some(JournalEvent::RunFailed { error: error.clone() }), Some(super::super::to_json(error)?))
        }
        Finish::Cancel { reason } => ("cancel", Some(JournalEvent::RunCancelled { reason: reason.clone() }), None),
        Finish::Suspend(s) => {
            crate::store::validate_suspension(s)?;
            ("suspend", None, None)
        }
        Finish::Release => ("release", None, None),
    };
    let (wake_at, waits, blocked) = match how {
        Finish::Suspend(s) => (s.wake_at_ms, crate::store::flatten_waits(s), s.blocked.as_deref()),
        _ => (None, Vec::new(), None),
    };
    let config = &store.config;
    let keys = store.keys_of(&lease.run_id);
    let mut d = Declared::new(keys);
    d.run(&lease.run_id).journal_writes();
    let statuses: &[RunStatus] = match how {
        Finish::Complete { .. } => &[RunStatus::Running, RunStatus::Completed],
        Finish::Fail { .. } => &[RunStatus::Running, RunStatus::Failed],
        Finish::Cancel { .. } => &[RunStatus::Running, RunStatus::Cancelled],
        Finish::Release => &[RunStatus::Running, RunStatus::Pending, RunStatus::Paused],
        Finish::Suspend(_) => &[RunStatus::Running, RunStatus::Cancelled, RunStatus::Waiting, RunStatus::Sleeping],
    };
    d.workflow(&lease.workflow, lease.priority, statuses).one("retention", keys.retention()).one("relay", keys.relay());
    if wake_at.is_some() {
        d.one("timers", keys.timers());
    }
    for (_, key, _) in &waits {
        d.named("waiters", *key, keys.waiters(key)).named("events", *key, keys.events(key));
    }
    let args = Args {
        id: lease.run_id.as_str(),
        worker: &lease.worker_id,
        epoch: lease.epoch,
        w: write_token(lease),
        patch: Patch::of(events),
        entries: Entry::all(events)?,
        how: kind,
        retention_ms: config.retention.as_millis() as u64,
        r#final: final_event.as_ref().map(Entry::of).transpose()?,
        payload,
        cancelled: Entry::of(&JournalEvent::RunCancelled { reason: None })?,
        wake_at: wake_at.map(|ms| ms.to_string()),
        waits: waits.iter().map(|&(step, key, since)| Wait { step, key, since }).collect(),
        blocked,
        lookback_ms: config.event_lookback.as_millis().max(1) as u64,
        child_outcome: crate::store::child_outcome_of(how)?,
    };
    let reply = run_script(store, &store.scripts.finish, &d, args, true).await?;
    if let Reply::Done { relayed: true } | Reply::Cancelled { relayed: true } = reply {
        // A child's outcome for its parent goes at once; the timer duty
        // forwards whatever this misses (a crash right here).
        store.forward_relay_now(keys).await;
    }
    match reply {
        Reply::Done { .. } => Ok(Finished::Done),
        Reply::Cancelled { .. } => Ok(Finished::Cancelled),
        Reply::Event { seq, entry } => Ok(Finished::EventArrived(crate::store::decode_record(&seq, &entry)?)),
        Reply::Lost => Err(RedisStore::lost(lease)),
    }
}
