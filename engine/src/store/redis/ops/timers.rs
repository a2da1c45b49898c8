//! timers.lua: due timers wake their runs, each exactly once.

use super::*;

#[derive(Serialize)]
struct Run<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    wf: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wk: Option<&'a str>,
}

#[derive(Serialize)]
struct Args<'a> {
    runs: Vec<Run<'a>>,
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
    let facts = read_fields(store, keys, &ids, &["wf", "wk"]).await?;
    let mut d = Declared::new(keys);
    d.one("timers", keys.timers()).journal_writes();
    for (id, f) in ids.iter().zip(&facts) {
        d.named("run", id.as_str(), keys.run(id));
        if let Some(wf) = &f[0] {
            d.run(id)
                .workflow(wf, &[RunStatus::Sleeping, RunStatus::Waiting, RunStatus::Pending, RunStatus::Paused])
                .waiters_of(f[1].as_deref());
        }
    }
    let runs = ids
        .iter()
        .zip(&facts)
        .map(|(id, f)| Run { id: id.as_str(), wf: f[0].as_deref(), wk: f[1].as_deref() })
        .collect();
    let reply: Reply = run_script(store, &store.scripts.timers, &d, Args { runs }, true).await?;
    run_ids(reply.woken)
}
