//! job_update.lua: a delivery job done, or moved to its next attempt.

use std::time::Duration;

use keel_proto::DeliveryJob;

use super::*;

#[derive(Serialize)]
struct Args {
    old: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    delay_ms: u64,
}

pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    job: &DeliveryJob,
    next: Option<(&DeliveryJob, Duration)>,
) -> Result<()> {
    let keys = store.keys_of(&job.run_id);
    let mut d = Declared::new(keys);
    d.one("jobs", keys.webhook_jobs());
    let args = Args {
        old: super::super::to_json(job)?,
        next: next.map(|(n, _)| super::super::to_json(n)).transpose()?,
        delay_ms: next.map_or(0, |(_, d)| d.as_millis() as u64),
    };
    let _: serde::de::IgnoredAny = run_script(store, &store.scripts.job_update, &d, args, true).await?;
    Ok(())
}
