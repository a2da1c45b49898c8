//! claim.lua: queue entries delivered to this worker become leases.

use std::collections::BTreeMap;

use keel_proto::{ChildOutcome, ErrorInfo};

use super::*;
use crate::store::{Claim, ClaimedTask, Lease};

/// One queue entry handed to this worker.
pub(in crate::store::redis) struct Delivery {
    pub workflow: String,
    /// Which of the workflow's queues it came from.
    pub priority: u8,
    pub task_id: String,
    pub run_id: RunId,
}

#[derive(Serialize)]
struct Task<'a> {
    wf: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pr: Option<u8>,
    tid: &'a str,
    id: &'a str,
}

#[derive(Serialize)]
struct Args<'a> {
    tasks: Vec<Task<'a>>,
    worker: &'a str,
    lease_ms: u64,
    max_deliveries: u32,
    reason: String,
    failed: Entry,
    error: String,
    retention_ms: u64,
    child_outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    versions: Option<&'a BTreeMap<String, Vec<u32>>>,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(deserialize_with = "list")]
    tasks: Vec<Outcome>,
    #[serde(default)]
    relayed: bool,
}

/// One task's outcome: `r` is CLAIMED (with the rest), SKIP or BUSY (with
/// `why`), PARKED (with `version`) or DEAD. A plain struct, not a tagged enum:
/// serde would buffer a claimed run's summary and journal to find the tag.
#[derive(Deserialize)]
struct Outcome {
    r: String,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    deliveries: u32,
    #[serde(default)]
    now: String,
    #[serde(default, deserialize_with = "list")]
    hash: Vec<String>,
    #[serde(default)]
    id: String,
    #[serde(default)]
    tid: String,
    #[serde(default)]
    wf: String,
    #[serde(default)]
    pr: Option<u8>,
    #[serde(default)]
    why: String,
    #[serde(default)]
    version: String,
}

/// Claim `deliveries` (all of partition `keys`) in one script.
pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    keys: &Keys,
    req: &Claim,
    deliveries: &[Delivery],
) -> Result<Vec<ClaimedTask>> {
    if deliveries.is_empty() {
        return Ok(Vec::new());
    }
    let config = &store.config;
    let reason = crate::store::dead_letter_reason(config.max_deliveries);
    let error = ErrorInfo::new("dead_lettered", reason.clone());
    let mut d = Declared::new(keys);
    d.journal_writes().one("dead", keys.dead_letters()).one("retention", keys.retention()).one("relay", keys.relay());
    for delivery in deliveries {
        d.run(&delivery.run_id)
            .workflow(
                &delivery.workflow,
                delivery.priority,
                &[RunStatus::Pending, RunStatus::Running, RunStatus::Failed],
            )
            .named("parked", &delivery.workflow, keys.parked(&delivery.workflow));
    }
    let args = Args {
        tasks: deliveries
            .iter()
            .map(|t| Task {
                wf: &t.workflow,
                pr: (t.priority != keel_proto::DEFAULT_PRIORITY).then_some(t.priority),
                tid: &t.task_id,
                id: t.run_id.as_str(),
            })
            .collect(),
        worker: &req.worker_id,
        lease_ms: req.lease.as_millis() as u64,
        max_deliveries: config.max_deliveries,
        reason: reason.clone(),
        failed: Entry::of(&JournalEvent::RunFailed { error: error.clone() })?,
        error: super::super::to_json(&error)?,
        retention_ms: config.retention.as_millis() as u64,
        child_outcome: super::super::to_json(&ChildOutcome::Failed { error })?,
        versions: (!req.versions.is_empty()).then_some(&req.versions),
    };
    let reply: Reply = run_script(store, &store.scripts.claim, &d, args, true).await?;
    let mut leased = Vec::new();
    for (outcome, delivery) in reply.tasks.into_iter().zip(deliveries) {
        let run_id = &delivery.run_id;
        match outcome.r.as_str() {
            "CLAIMED" => leased.push(outcome),
            "DEAD" => tracing::warn!(run_id = %run_id, "task dead-lettered: {reason}"),
            "PARKED" => {
                tracing::warn!(run_id = %run_id, version = outcome.version, "run parked: no version of it here")
            }
            other => tracing::debug!(run_id = %run_id, outcome = other, why = outcome.why, "delivery not claimed"),
        }
    }
    let journals = read_journals(store, keys, &leased).await?;
    let mut claimed = Vec::with_capacity(leased.len());
    for (outcome, journal) in leased.into_iter().zip(journals) {
        // One undecodable task must not strand the others this script leased:
        // it is logged and left to lapse (replayed later).
        let run_id = outcome.id.clone();
        match claimed_task(&req.worker_id, outcome, &journal) {
            Ok(task) => claimed.push(task),
            Err(e) => {
                tracing::error!(run_id = %run_id, error = %e, "a claimed task does not decode; its lease will lapse")
            }
        }
    }
    if reply.relayed {
        store.forward_relay_now(keys).await;
    }
    Ok(claimed)
}

/// The journals of the runs just leased, in one pipeline after the claim
/// (claim.lua says why there and not inside it).
async fn read_journals(store: &RedisStore, keys: &Keys, leased: &[Outcome]) -> Result<Vec<redis::Value>> {
    if leased.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for outcome in leased {
        pipe.cmd("XRANGE").arg(keys.journal(&RunId::new(outcome.id.clone())?)).arg("-").arg("+");
    }
    Ok(pipe.query_async(&mut store.conn.clone()).await?)
}

fn claimed_task(worker_id: &str, o: Outcome, journal: &redis::Value) -> Result<ClaimedTask> {
    let run_id = RunId::new(o.id)?;
    let hash = hash_of(&o.hash);
    let journal = super::super::journal_from_stream(journal)?;
    Ok(ClaimedTask {
        run: super::super::summary_from_hash(&run_id, hash)?,
        journal,
        deliveries: o.deliveries,
        now_ms: o.now.parse().map_err(|e| Error::corrupt("claim time", e))?,
        lease: Lease {
            run_id,
            workflow: o.wf,
            worker_id: worker_id.to_owned(),
            epoch: o.epoch,
            task_id: o.tid,
            priority: o.pr.unwrap_or(keel_proto::DEFAULT_PRIORITY),
        },
    })
}
