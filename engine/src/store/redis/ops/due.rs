//! due.lua: the members of a time-scored set (timers, retention) due by the
//! server's clock. Read-only: the first phase of timers.rs and expire.rs.

use super::*;

#[derive(Serialize)]
struct Args {
    limit: usize,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(deserialize_with = "list")]
    ids: Vec<String>,
}

/// Up to `limit` run ids due in the set `set` of partition `keys`.
pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    keys: &Keys,
    set: String,
    limit: usize,
) -> Result<Vec<RunId>> {
    let mut d = Declared::new(keys);
    d.one("set", set);
    let reply: Reply = run_script(store, &store.scripts.due, &d, Args { limit: limit.max(1) }, false).await?;
    run_ids(reply.ids)
}
