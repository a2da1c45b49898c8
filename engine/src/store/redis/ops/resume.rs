//! resume.lua: let a paused run go on.

use super::*;
use crate::store::ResumeOutcome;

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
enum Reply {
    Resumed,
    NotPaused,
    NotFound,
    Final { status: RunStatus },
    Retry,
}

pub(in crate::store::redis) async fn call(store: &RedisStore, run_id: &RunId) -> Result<ResumeOutcome> {
    let statuses = [RunStatus::Paused, RunStatus::Pending];
    let script = &store.scripts.resume;
    match pause::on_run(store, run_id, script, &statuses, "resume a run", |r| matches!(r, Reply::Retry)).await? {
        Reply::Resumed => Ok(ResumeOutcome::Resumed),
        Reply::NotPaused => Ok(ResumeOutcome::NotPaused),
        Reply::NotFound => Err(Error::RunNotFound(run_id.clone())),
        Reply::Final { status } => Err(Error::RunFinal { run_id: run_id.clone(), status }),
        Reply::Retry => Err(Error::Contended("retried too often".into())),
    }
}
