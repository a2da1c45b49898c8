//! jobs_due.lua: take due webhook delivery jobs for a while.

use std::time::Duration;

use keel_proto::DeliveryJob;

use super::*;

#[derive(Serialize)]
struct Args {
    max: usize,
    visibility_ms: u64,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(deserialize_with = "list")]
    jobs: Vec<String>,
}

pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    keys: &Keys,
    max: usize,
    visibility: Duration,
) -> Result<Vec<DeliveryJob>> {
    let mut d = Declared::new(keys);
    d.one("jobs", keys.webhook_jobs());
    let args = Args { max: max.max(1), visibility_ms: visibility.as_millis() as u64 };
    let reply: Reply = run_script(store, &store.scripts.jobs_due, &d, args, true).await?;
    reply.jobs.iter().map(|text| super::super::from_json("delivery job", text)).collect()
}
