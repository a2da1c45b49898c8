//! unpark.lua: queue again the runs parked for want of a worker with their version.

use super::*;

#[derive(Serialize)]
struct Args<'a> {
    wf: &'a str,
    versions: &'a [u32],
    ids: Vec<&'a str>,
    /// Each run's priority as read (absent: the default).
    prs: HashMap<&'a str, &'a str>,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(deserialize_with = "list")]
    ids: Vec<String>,
}

/// In partition `keys`: the runs of `workflow` parked at one of `versions`.
pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    keys: &Keys,
    workflow: &str,
    versions: &[u32],
) -> Result<Vec<RunId>> {
    let mut pipe = redis::pipe();
    for v in versions {
        pipe.cmd("ZRANGEBYSCORE").arg(keys.parked(workflow)).arg(v).arg(v);
    }
    let found: Vec<Vec<String>> =
        if versions.is_empty() { Vec::new() } else { pipe.query_async(&mut store.conn.clone()).await? };
    let ids = run_ids(found.into_iter().flatten().collect())?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let priorities = read_fields(store, keys, &ids, &["pr"]).await?;
    let statuses = [RunStatus::Pending, RunStatus::Running, RunStatus::Paused];
    let mut d = Declared::new(keys);
    d.named("parked", workflow, keys.parked(workflow)).journal_writes();
    let mut prs = HashMap::new();
    for (id, pr) in ids.iter().zip(&priorities) {
        let pr = pr[0].as_deref();
        d.run(id).workflow(workflow, priority_of(pr), &statuses);
        if let Some(pr) = pr {
            prs.insert(id.as_str(), pr);
        }
    }
    let args = Args { wf: workflow, versions, ids: ids.iter().map(RunId::as_str).collect(), prs };
    let reply: Reply = run_script(store, &store.scripts.unpark, &d, args, true).await?;
    run_ids(reply.ids)
}
