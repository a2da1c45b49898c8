//! create.lua: a run with its first entry, indexes, idempotency key and first task.

use super::*;
use crate::store::{ClaimOnCreate, ClaimedTask, CreateRun, Created, Lease};

#[derive(Serialize)]
struct Args<'a> {
    id: &'a str,
    wf: &'a str,
    ver: u32,
    fp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    idem: Option<&'a str>,
    idem_ttl_ms: u64,
    delay_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    started: &'a Entry,
    client_id: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cb: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    existing: Option<&'a str>,
    /// The run's flow control, as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    fc: Option<String>,
    /// A priority other than the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pr: Option<u8>,
    retention_ms: u64,
    /// Create it leased to this worker instead of queueing a task.
    #[serde(skip_serializing_if = "Option::is_none")]
    claim: Option<ClaimArgs<'a>>,
}

#[derive(Serialize)]
struct ClaimArgs<'a> {
    worker: &'a str,
    lease_ms: u64,
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
enum Reply {
    Created {
        id: String,
    },
    /// Created leased to the claimer: the run's hash and its first entry's id.
    Claimed {
        id: String,
        now: String,
        #[serde(deserialize_with = "list")]
        hash: Vec<String>,
        seq: String,
    },
    Exists {
        id: String,
    },
    Conflict {
        id: String,
        what: String,
    },
    Retry,
}

pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    req: &CreateRun,
    run_id: RunId,
    claim: Option<&ClaimOnCreate>,
) -> Result<(Created, Option<ClaimedTask>)> {
    let keys = store.keys_of(&run_id);
    let labels = if req.labels.is_empty() { None } else { Some(super::super::to_json(&req.labels)?) };
    let parent = req.parent.as_ref().map(super::super::to_json).transpose()?;
    let started = JournalEvent::RunStarted {
        workflow: req.workflow.clone(),
        version: req.version,
        input: req.input.clone(),
        parent: req.parent.clone(),
        labels: req.labels.clone(),
    };
    let config = &store.config;
    let (labels, parent, started, run_id) = (&labels, &parent, &started, &run_id);
    retrying("start a run", || async move {
        // The run the idempotency key names now: the script checks it still does.
        let existing: Option<String> = match &req.idempotency_key {
            Some(idem) => redis::cmd("GET").arg(keys.idempotency(idem)).query_async(&mut store.conn.clone()).await?,
            None => None,
        };
        let existing = existing.map(RunId::new).transpose()?;
        let mut d = Declared::new(keys);
        d.run(run_id).journal_writes().workflow(
            &req.workflow,
            req.priority(),
            &[RunStatus::Pending, RunStatus::Sleeping, RunStatus::Running],
        );
        d.named("runs_wf", &req.workflow, keys.runs_by_workflow(&req.workflow));
        d.one("runs", keys.runs()).one("timers", keys.timers());
        for (name, value) in &req.labels {
            d.named("label", format!("{name}={value}"), keys.runs_by_label(name, value));
        }
        if let Some(idem) = &req.idempotency_key {
            d.named("idem", idem, keys.idempotency(idem));
        }
        if let Some(existing) = &existing {
            d.named("run", existing.as_str(), keys.run(existing));
        }
        let started_entry = Entry::of(started)?;
        let args = Args {
            id: run_id.as_str(),
            wf: &req.workflow,
            ver: req.version,
            fp: crate::store::fingerprint(req),
            idem: req.idempotency_key.as_deref(),
            idem_ttl_ms: config.idempotency_ttl.as_millis() as u64,
            delay_ms: req.delay.map_or(0, |d| d.as_millis() as u64),
            labels: labels.clone(),
            parent: parent.clone(),
            started: &started_entry,
            client_id: req.run_id.is_some(),
            cb: req.callback_url.as_deref(),
            pp: req.parent.as_ref().map(|p| store.keys_of(&p.run_id).prefix()),
            existing: existing.as_ref().map(RunId::as_str),
            fc: req.flow_control.as_ref().map(super::super::to_json).transpose()?,
            pr: (req.priority() != keel_proto::DEFAULT_PRIORITY).then_some(req.priority()),
            retention_ms: config.retention.as_millis() as u64,
            claim: claim.map(|c| ClaimArgs { worker: &c.worker_id, lease_ms: c.lease.as_millis().max(1) as u64 }),
        };
        Ok(match run_script::<Reply>(store, &store.scripts.create, &d, args, true).await? {
            Reply::Created { id } => Some((Created { run_id: RunId::new(id)?, created: true }, None)),
            Reply::Claimed { id, now, hash, seq } => {
                let run_id = RunId::new(id)?;
                let hash = hash_of(&hash);
                let task = ClaimedTask {
                    run: super::super::summary_from_hash(&run_id, hash)?,
                    journal: vec![crate::store::decode_record(&seq, started_entry.text())?],
                    deliveries: 1,
                    now_ms: now.parse().map_err(|e| Error::corrupt("create time", e))?,
                    lease: Lease {
                        run_id: run_id.clone(),
                        workflow: req.workflow.clone(),
                        worker_id: claim.map(|c| c.worker_id.clone()).unwrap_or_default(),
                        epoch: 1,
                        task_id: String::new(),
                        priority: req.priority(),
                    },
                };
                Some((Created { run_id, created: true }, Some(task)))
            }
            Reply::Exists { id } => Some((Created { run_id: RunId::new(id)?, created: false }, None)),
            Reply::Conflict { id, what } => {
                return Err(Error::IdempotencyConflict {
                    run_id: RunId::new(id)?,
                    what: if what == "run id" { "run id" } else { "idempotency key" },
                });
            }
            Reply::Retry => None,
        })
    })
    .await
}
