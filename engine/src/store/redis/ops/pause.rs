//! pause.lua: hold a run between steps.

use super::*;
use crate::store::PauseOutcome;

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
enum Reply {
    Paused,
    Requested,
    NotFound,
    Final { status: RunStatus },
    Retry,
}

pub(in crate::store::redis) async fn call(store: &RedisStore, run_id: &RunId) -> Result<PauseOutcome> {
    let statuses = [RunStatus::Pending, RunStatus::Running, RunStatus::Paused];
    match on_run(store, run_id, &store.scripts.pause, &statuses, "pause a run", |r| matches!(r, Reply::Retry)).await? {
        Reply::Paused => Ok(PauseOutcome::Paused),
        Reply::Requested => Ok(PauseOutcome::Requested),
        Reply::NotFound => Err(Error::RunNotFound(run_id.clone())),
        Reply::Final { status } => Err(Error::RunFinal { run_id: run_id.clone(), status }),
        Reply::Retry => Err(Error::Contended("retried too often".into())),
    }
}

#[derive(Serialize)]
struct Args<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    wf: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pr: Option<&'a str>,
}

/// pause, resume, retry: read the run's workflow and priority, declare its run, queue,
/// the status indexes it may move between and the journal's keys, call.
pub(super) async fn on_run<R: DeserializeOwned>(
    store: &RedisStore,
    run_id: &RunId,
    script: &super::super::scripts::Op,
    statuses: &[RunStatus],
    what: &str,
    is_retry: impl Fn(&R) -> bool,
) -> Result<R> {
    let keys = store.keys_of(run_id);
    let is_retry = &is_retry;
    retrying(what, || async move {
        let facts = read_fields(store, keys, std::slice::from_ref(run_id), &["wf", "pr"]).await?;
        let (wf, pr) = (facts[0][0].as_deref(), facts[0][1].as_deref());
        let mut d = Declared::new(keys);
        d.run(run_id).journal_writes().one("retention", keys.retention());
        if let Some(wf) = wf {
            d.workflow(wf, priority_of(pr), statuses);
        }
        let reply: R = run_script(store, script, &d, Args { id: run_id.as_str(), wf, pr }, true).await?;
        Ok((!is_retry(&reply)).then_some(reply))
    })
    .await
}
