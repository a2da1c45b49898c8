//! cancel.lua: cancel a run now, or flag it to stop at its next step boundary.

use super::*;
use crate::store::CancelOutcome;

#[derive(Serialize)]
struct Args<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    wf: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wk: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pr: Option<&'a str>,
    requested: Entry,
    cancelled: Entry,
    retention_ms: u64,
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
enum Reply {
    Cancelled {
        #[serde(default)]
        relayed: bool,
    },
    Requested,
    NotFound,
    Final {
        status: RunStatus,
    },
    Retry,
}

pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    run_id: &RunId,
    reason: Option<&str>,
) -> Result<CancelOutcome> {
    let keys = store.keys_of(run_id);
    let reason = reason.map(str::to_owned);
    let requested = JournalEvent::CancelRequested { reason: reason.clone() };
    let cancelled = JournalEvent::RunCancelled { reason };
    let (requested, cancelled) = (&requested, &cancelled);
    let retention_ms = store.config.retention.as_millis() as u64;
    let reply = retrying("cancel a run", || async move {
        let facts = read_fields(store, keys, std::slice::from_ref(run_id), &SEEN_FIELDS).await?;
        let seen = Seen::of(&facts[0]);
        let (wf, wk, pr) = (seen.wf, seen.wk, seen.pr);
        let mut d = Declared::new(keys);
        d.run(run_id).journal_writes().one("timers", keys.timers()).one("retention", keys.retention());
        d.one("relay", keys.relay());
        if let Some(wf) = wf {
            d.workflow(wf, seen.priority(), &RunStatus::ALL).waiters_of(wk);
        }
        let args = Args {
            id: run_id.as_str(),
            wf,
            wk,
            pr,
            requested: Entry::of(requested)?,
            cancelled: Entry::of(cancelled)?,
            retention_ms,
        };
        let reply: Reply = run_script(store, &store.scripts.cancel, &d, args, true).await?;
        Ok((!matches!(reply, Reply::Retry)).then_some(reply))
    })
    .await?;
    match reply {
        Reply::Cancelled { relayed } => {
            if relayed {
                store.forward_relay_now(keys).await;
            }
            Ok(CancelOutcome::Cancelled)
        }
        Reply::Requested => Ok(CancelOutcome::Requested),
        Reply::NotFound => Err(Error::RunNotFound(run_id.clone())),
        Reply::Final { status } => Err(Error::RunFinal { run_id: run_id.clone(), status }),
        Reply::Retry => Err(Error::Contended("retried too often".into())),
    }
}
