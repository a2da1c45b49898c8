//! create.lua: a run with its first entry, indexes, idempotency key and first task.

use super::*;
use crate::store::{CreateRun, Created};

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
    started: Entry,
    client_id: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cb: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    existing: Option<&'a str>,
    retention_ms: u64,
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
enum Reply {
    Created { id: String },
    Exists { id: String },
    Conflict { id: String, what: String },
    Retry,
}

pub(in crate::store::redis) async fn call(store: &RedisStore, req: &CreateRun, run_id: RunId) -> Result<Created> {
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
        d.run(run_id).journal_writes().workflow(&req.workflow, &[RunStatus::Pending, RunStatus::Sleeping]);
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
            started: Entry::of(started)?,
            client_id: req.run_id.is_some(),
            cb: req.callback_url.as_deref(),
            pp: req.parent.as_ref().map(|p| store.keys_of(&p.run_id).prefix()),
            existing: existing.as_ref().map(RunId::as_str),
            retention_ms: config.retention.as_millis() as u64,
        };
        Ok(match run_script::<Reply>(store, &store.scripts.create, &d, args, true).await? {
            Reply::Created { id } => Some(Created { run_id: RunId::new(id)?, created: true }),
            Reply::Exists { id } => Some(Created { run_id: RunId::new(id)?, created: false }),
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
