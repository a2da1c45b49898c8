//! timers.lua: due timers wake their runs, each exactly once.

use super::*;

#[derive(Serialize)]
struct Args<'a> {
    runs: Vec<SeenRun<'a>>,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(deserialize_with = "list")]
    woken: Vec<String>,
}

/// Fire up to `limit` due timers of partition `keys`; the runs woken.
pub(in crate::store::redis) async fn call(store: &RedisStore, keys: &Keys, limit: usize) -> Result<Vec<RunId>> {
    let ids = due::call(store, keys, keys.timers(), limit).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let facts = read_fields(store, keys, &ids, &SEEN_FIELDS).await?;
    let mut d = Declared::new(keys);
    d.one("timers", keys.timers()).journal_writes();
    let statuses = [RunStatus::Sleeping, RunStatus::Waiting, RunStatus::Pending, RunStatus::Paused];
    for (id, f) in ids.iter().zip(&facts) {
        d.waking(id, &Seen::of(f), &statuses);
    }
    let runs = ids.iter().zip(&facts).map(|(id, f)| SeenRun { id: id.as_str(), seen: Seen::of(f) }).collect();
    let reply: Reply = run_script(store, &store.scripts.timers, &d, Args { runs }, true).await?;
    run_ids(reply.woken)
}
