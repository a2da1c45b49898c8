//! fanout.lua: an outbox entry becomes its delivery jobs, once.

use keel_proto::DeliveryJob;

use super::*;

#[derive(Serialize)]
struct Args<'a> {
    entry: &'a str,
    jobs: Vec<String>,
}

pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    keys: &Keys,
    entry: &str,
    jobs: &[DeliveryJob],
) -> Result<()> {
    let mut d = Declared::new(keys);
    d.one("outbox", keys.outbox()).one("jobs", keys.webhook_jobs());
    let jobs = jobs.iter().map(super::super::to_json).collect::<Result<_>>()?;
    let _: serde::de::IgnoredAny = run_script(store, &store.scripts.fanout, &d, Args { entry, jobs }, true).await?;
    Ok(())
}
