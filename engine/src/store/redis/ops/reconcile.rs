//! reconcile.lua: the repair after Redis lost its last writes. This side
//! picks the batch (up to `limit` runs per status, going on from where the
//! previous pass stopped) and reads what their keys need; the script checks
//! and repairs.

use std::collections::BTreeMap;

use super::*;

/// The statuses whose runs a pass checks.
const CHECKED: [RunStatus; 4] = [RunStatus::Pending, RunStatus::Running, RunStatus::Sleeping, RunStatus::Waiting];

#[derive(Serialize)]
struct Run<'a> {
    /// The status index it was read from.
    st: &'static str,
    #[serde(flatten)]
    run: SeenRun<'a>,
}

#[derive(Serialize)]
struct Args<'a> {
    offsets: BTreeMap<&'static str, usize>,
    runs: Vec<Run<'a>>,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(deserialize_with = "list")]
    fixed: Vec<String>,
}

/// One pass over partition `keys`; the runs repaired.
pub(in crate::store::redis) async fn call(store: &RedisStore, keys: &Keys, limit: usize) -> Result<Vec<RunId>> {
    let limit = limit.max(1);
    let mut conn = store.conn.clone();
    let names: Vec<&str> = CHECKED.iter().map(|s| s.as_str()).collect();
    let offsets: Vec<Option<usize>> =
        redis::cmd("HMGET").arg(keys.reconcile()).arg(&names).query_async(&mut conn).await?;
    let mut pipe = redis::pipe();
    for (st, offset) in CHECKED.iter().zip(&offsets) {
        let offset = offset.unwrap_or(0);
        pipe.cmd("ZRANGE").arg(keys.runs_by_status(*st)).arg(offset).arg(offset + limit - 1);
    }
    let mut batches: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
    let mut next = BTreeMap::new();
    for ((st, offset), batch) in CHECKED.iter().zip(&offsets).zip(batches.iter_mut()) {
        let offset = offset.unwrap_or(0);
        if batch.len() < limit {
            // The end: start over next time (and look at the first ones now,
            // if this batch started past the end because the index shrank).
            next.insert(st.as_str(), 0);
            if batch.is_empty() && offset > 0 {
                *batch = redis::cmd("ZRANGE")
                    .arg(keys.runs_by_status(*st))
                    .arg(0)
                    .arg(limit - 1)
                    .query_async(&mut conn)
                    .await?;
            }
        } else {
            next.insert(st.as_str(), offset + batch.len());
        }
    }
    let mut runs: Vec<(RunId, RunStatus)> = Vec::new();
    for (st, batch) in CHECKED.iter().zip(batches) {
        for id in run_ids(batch)? {
            runs.push((id, *st));
        }
    }
    let ids: Vec<RunId> = runs.iter().map(|(id, _)| id.clone()).collect();
    let facts = read_fields(store, keys, &ids, &SEEN_FIELDS).await?;
    let mut d = Declared::new(keys);
    d.one("reconcile", keys.reconcile()).one("timers", keys.timers());
    for (id, f) in ids.iter().zip(&facts) {
        d.waking(id, &Seen::of(f), &CHECKED);
    }
    let args = Args {
        offsets: next,
        runs: runs
            .iter()
            .zip(&facts)
            .map(|((id, st), f)| Run { st: st.as_str(), run: SeenRun { id: id.as_str(), seen: Seen::of(f) } })
            .collect(),
    };
    let reply: Reply = run_script(store, &store.scripts.reconcile, &d, args, true).await?;
    run_ids(reply.fixed)
}
