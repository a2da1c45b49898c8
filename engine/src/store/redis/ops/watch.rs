//! watch.lua: mark a run watched while somebody waits on it.

use std::time::Duration;

use super::*;

#[derive(Serialize)]
struct Args<'a> {
    id: &'a str,
    ttl_ms: u64,
}

/// Whether the run exists and is over.
#[derive(Deserialize, PartialEq, Eq)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
pub(in crate::store::redis) enum Watched {
    None,
    Final,
    Wait,
}

pub(in crate::store::redis) async fn call(store: &RedisStore, run_id: &RunId, ttl: Duration) -> Result<Watched> {
    let keys = store.keys_of(run_id);
    let mut d = Declared::new(keys);
    d.named("run", run_id.as_str(), keys.run(run_id)).named("watch", run_id.as_str(), keys.watch(run_id));
    // Not a result of the run's: no replica need acknowledge it.
    run_script(store, &store.scripts.watch, &d, Args { id: run_id.as_str(), ttl_ms: ttl.as_millis() as u64 }, false)
        .await
}
