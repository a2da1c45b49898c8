//! retry.lua: run a failed run again from its failed step.

use super::*;

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
enum Reply {
    Retried,
    NotFound,
    NotFailed { status: RunStatus },
    Retry,
}

pub(in crate::store::redis) async fn call(store: &RedisStore, run_id: &RunId) -> Result<()> {
    let statuses = [RunStatus::Failed, RunStatus::Pending];
    let script = &store.scripts.retry;
    match pause::on_run(store, run_id, script, &statuses, "retry a run", |r| matches!(r, Reply::Retry)).await? {
        Reply::Retried => Ok(()),
        Reply::NotFound => Err(Error::RunNotFound(run_id.clone())),
        Reply::NotFailed { status } => Err(Error::NotFailed { run_id: run_id.clone(), status }),
        Reply::Retry => Err(Error::Contended("retried too often".into())),
    }
}
