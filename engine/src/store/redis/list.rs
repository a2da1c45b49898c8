//! One partition's page of a list of runs: newest first from the index that
//! matches the filters exactly (label, workflow + status, status, workflow,
//! all). Only a label filter combined with another leaves filtering to do
//! here; such a scan stops after a budget of entries and says where it
//! stopped, so the caller pages on with a cursor instead of getting a silently
//! short list. Read-only, and not atomic: a page is a snapshot of each run as
//! it is read (partitions.rs merges the partitions' pages).

#[allow(clippy::wildcard_imports)]
use super::*;
use partitions::PartitionPage;

/// Index entries one page reads at most before answering with where it stopped.
const SCAN_BUDGET: usize = 2000;

impl RedisStore {
    pub(super) async fn list_in(
        &self,
        keys: &Keys,
        query: &RunQuery,
        limit: usize,
        cursor: Option<&(u64, RunId)>,
    ) -> Result<PartitionPage> {
        let (wf, st) = (query.workflow.as_deref(), query.status);
        let index = match (&query.label, wf, st) {
            (Some((name, value)), _, _) => keys.runs_by_label(name, value),
            (None, Some(wf), Some(st)) => keys.runs_by_workflow_status(wf, st),
            (None, None, Some(st)) => keys.runs_by_status(st),
            (None, Some(wf), None) => keys.runs_by_workflow(wf),
            (None, None, None) => keys.runs(),
        };
        let filtered = query.label.is_some() && (wf.is_some() || st.is_some());
        let mut conn = self.conn.clone();

        // Where to resume: just after the cursor's run if it is still in the
        // index, else just after its place in the order (score, then id, both
        // descending): a run that left the index meanwhile, or the cursor of
        // another partition.
        // A creation-time range reads by score from its upper end (every
        // index is scored by creation time); `before` is exclusive, hence the
        // empty id there (no id sorts below it).
        let mut pos = 0usize;
        let mut below: Option<(u64, &str)> = None;
        let bounded = query.created_after_ms.is_some() || query.created_before_ms.is_some();
        let before = query.created_before_ms.unwrap_or(u64::MAX);
        match cursor {
            Some((score, id)) if bounded => {
                below = Some(if *score < before { (*score, id.as_str()) } else { (before, "") })
            }
            Some((score, id)) => {
                let rank: Option<usize> =
                    redis::cmd("ZREVRANK").arg(&index).arg(id.as_str()).query_async(&mut conn).await?;
                match rank {
                    Some(rank) => pos = rank + 1,
                    None => below = Some((*score, id.as_str())),
                }
            }
            None if bounded => below = Some((before, "")),
            None => {}
        }
        let floor = query.created_after_ms.map_or_else(|| "-inf".to_owned(), |after| after.to_string());

        let batch = (limit + 1).clamp(100, SCAN_BUDGET);
        let mut runs = Vec::new();
        let (mut scanned, mut last, mut more) = (0usize, None::<(u64, String)>, false);
        while runs.len() <= limit {
            if scanned >= SCAN_BUDGET {
                more = true;
                break;
            }
            let cmd = match below {
                Some((score, _)) => {
                    let mut cmd = redis::cmd("ZREVRANGEBYSCORE");
                    cmd.arg(&index).arg(score).arg(&floor).arg("WITHSCORES").arg("LIMIT").arg(pos).arg(batch);
                    cmd
                }
                None => {
                    let mut cmd = redis::cmd("ZREVRANGE");
                    cmd.arg(&index).arg(pos).arg(pos + batch - 1).arg("WITHSCORES");
                    cmd
                }
            };
            let page: Vec<(String, u64)> = cmd.query_async(&mut conn).await?;
            if page.is_empty() {
                break;
            }
            let fetched = page.len();
            // Same score as the cursor: only ids after it (descending) come next.
            let mut candidates = Vec::new();
            for (id, score) in page {
                scanned += 1;
                let after_cursor = below.is_none_or(|(s, cursor_id)| score != s || id.as_str() < cursor_id);
                last = Some((score, id.clone()));
                if after_cursor {
                    candidates.push(RunId::new(id)?);
                }
            }
            if filtered {
                let facts = ops::read_fields(self, keys, &candidates, &["wf", "st"]).await?;
                let keep = |f: &Vec<Option<String>>| {
                    wf.is_none_or(|wf| f[0].as_deref() == Some(wf))
                        && st.is_none_or(|st| f[1].as_deref() == Some(st.as_str()))
                };
                candidates = candidates.into_iter().zip(&facts).filter(|(_, f)| keep(f)).map(|(id, _)| id).collect();
            }
            // Read the runs a page still needs, a few at a time (a run expired
            // since the index was read is skipped).
            let mut rest = candidates.as_slice();
            while runs.len() <= limit && !rest.is_empty() {
                let (now, later) = rest.split_at((limit + 1 - runs.len()).min(rest.len()));
                let mut pipe = redis::pipe();
                for id in now {
                    pipe.cmd("HGETALL").arg(keys.run(id));
                }
                let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
                for (id, hash) in now.iter().zip(hashes) {
                    if !hash.is_empty() {
                        runs.push(summary_from_hash(id, hash)?);
                    }
                }
                rest = later;
            }
            pos += fetched;
            if fetched < batch {
                break;
            }
        }
        // The scan budget ran out before the page filled: it stopped there.
        let stopped_at = if runs.len() <= limit && more { last } else { None };
        Ok(PartitionPage { runs, stopped_at })
    }
}
