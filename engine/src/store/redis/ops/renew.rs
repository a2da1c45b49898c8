//! renew.lua: extend a lease and keep its queue entry claimed.

use std::time::Duration;

use super::*;
use crate::store::Lease;

#[derive(Serialize)]
struct Args<'a> {
    id: &'a str,
    worker: &'a str,
    epoch: u64,
    ttl_ms: u64,
    wf: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pr: Option<u8>,
    tid: &'a str,
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
enum Reply {
    Ok,
    Lost,
}

pub(in crate::store::redis) async fn call(store: &RedisStore, lease: &Lease, ttl: Duration) -> Result<()> {
    let keys = store.keys_of(&lease.run_id);
    let mut d = Declared::new(keys);
    d.named("run", lease.run_id.as_str(), keys.run(&lease.run_id))
        .named("lease", lease.run_id.as_str(), keys.lease(&lease.run_id))
        .queue(&lease.workflow, lease.priority);
    let args = Args {
        id: lease.run_id.as_str(),
        worker: &lease.worker_id,
        epoch: lease.epoch,
        ttl_ms: ttl.as_millis().max(1) as u64,
        wf: &lease.workflow,
        pr: (lease.priority != keel_proto::DEFAULT_PRIORITY).then_some(lease.priority),
        tid: &lease.task_id,
    };
    match run_script(store, &store.scripts.renew, &d, args, true).await? {
        Reply::Ok => Ok(()),
        Reply::Lost => Err(RedisStore::lost(lease)),
    }
}
