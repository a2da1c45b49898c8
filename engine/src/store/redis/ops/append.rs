//! append.lua: journal entries and the summary patch, under the lease.

use super::*;
use crate::store::{Appended, Lease, SummaryPatch};

/// The summary fields a lease's entries change.
#[derive(Serialize)]
pub(super) struct Patch {
    delta: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    cur: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u32>,
}

impl Patch {
    pub fn of(events: &[JournalEvent]) -> Self {
        let patch = SummaryPatch::of(events);
        Self { delta: patch.completed_delta, cur: patch.current_step, total: patch.total_steps }
    }
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
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
enum Reply {
    Ok {
        #[serde(deserialize_with = "list")]
        seqs: Vec<String>,
        cancel: bool,
        pause: bool,
    },
    Lost,
}

pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    lease: &Lease,
    events: &[JournalEvent],
) -> Result<Appended> {
    let keys = store.keys_of(&lease.run_id);
    let mut d = Declared::new(keys);
    d.run(&lease.run_id).journal_writes();
    let args = Args {
        id: lease.run_id.as_str(),
        worker: &lease.worker_id,
        epoch: lease.epoch,
        w: write_token(lease),
        patch: Patch::of(events),
        entries: Entry::all(events)?,
    };
    match run_script(store, &store.scripts.append, &d, args, true).await? {
        Reply::Ok { seqs, cancel, pause } => Ok(Appended { cancel_requested: cancel, seqs, pause_requested: pause }),
        Reply::Lost => Err(RedisStore::lost(lease)),
    }
}
