//! What crosses partitions. Each partition's keys share one Cluster slot, so a
//! script never spans two; what concerns several partitions is done partition
//! by partition, each step atomic, idempotent and safe to repeat after a crash:
//!
//! - **A run's partition** follows from its id ([`partition_of`]). A run
//!   started with an idempotency key gets an id drawn until it falls in the
//!   key's partition, so the key and the run are checked and written by one
//!   script. (A client-chosen run id decides its partition; an idempotency key
//!   sent with it is checked there.)
//! - **Events** go into every partition (`deliver` in runs.rs): each keeps its
//!   own lookback for its own waiters. With a client's event id every step is
//!   idempotent, so a retry after a partial failure completes the rest.
//! - **A child's outcome for a parent in another partition** is written, in the
//!   child's finishing script, to the child partition's relay stream; the timer
//!   duty forwards it ([`RedisStore::forward_relay`]) as an event delivered
//!   with the relay entry's id as the event id (a repeat is not delivered
//!   again), then deletes the entry. A crash between the two repeats the
//!   delivery, which the id makes harmless.
//! - **Lists** merge the partitions' pages ([`merge_pages`]) under the same
//!   cursor (creation time, run id).
//! - **Claims and the outbox** sweep the partitions (see `SWEEP_BLOCK`).

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::keys::partition_of;

/// One partition's page of a list: its runs (at most limit + 1, newest first)
/// and, when its scan budget ran out, the place it stopped (creation ms, id).
pub(super) struct PartitionPage {
    pub runs: Vec<RunSummary>,
    pub stopped_at: Option<(u64, String)>,
}

/// Merge the partitions' pages into one: newest first by (creation ms, run id);
/// never past a place where some partition stopped scanning (its runs below
/// that point are not known yet), and a cursor while there may be more.
pub(super) fn merge_pages(pages: Vec<PartitionPage>, limit: usize) -> RunPage {
    let order = |run: &RunSummary| (run.created_at_ms, run.run_id.as_str().to_owned());
    // The highest place any partition stopped at: nothing below it is complete.
    let stop = pages.iter().filter_map(|p| p.stopped_at.clone()).max();
    let mut runs: Vec<RunSummary> = pages
        .into_iter()
        .flat_map(|p| p.runs)
        .filter(|run| stop.as_ref().is_none_or(|stop| order(run) > *stop))
        .collect();
    runs.sort_by_key(|run| std::cmp::Reverse(order(run)));
    let next_cursor = if runs.len() > limit {
        runs.truncate(limit);
        runs.last().map(make_cursor)
    } else {
        stop.map(|(ms, id)| crate::store::cursor_at(ms, &id))
    };
    RunPage { runs, next_cursor }
}

impl RedisStore {
    /// A new run id in the partition of `idempotency_key` (any partition without one).
    pub(super) fn new_run_id(&self, idempotency_key: Option<&str>) -> Result<RunId> {
        let partitions = self.partitions();
        let wanted = idempotency_key.map(|key| partition_of(key, partitions));
        loop {
            let id = uuid::Uuid::now_v7().to_string();
            if wanted.is_none_or(|p| partition_of(&id, partitions) == p) {
                return Ok(RunId::new(id)?);
            }
        }
    }

    /// Deliver every partition's relay entries to their target partitions (at
    /// most `limit` per partition), then delete them. Returns the runs woken.
    pub(super) async fn forward_relay(&self, limit: usize) -> Result<Vec<RunId>> {
        let mut woken = Vec::new();
        for keys in &self.parts {
            woken.extend(self.forward_relay_of(keys, limit).await?);
        }
        Ok(woken)
    }

    /// Forward what a script just put in `keys`' relay, now; on failure the
    /// timer duty does it later (the entry stays until delivered).
    pub(super) async fn forward_relay_now(&self, keys: &Keys) {
        if let Err(e) = self.forward_relay_of(keys, 100).await {
            tracing::warn!(error = %e, "forwarding a child's outcome failed; the timer duty will");
        }
    }

    /// [`forward_relay`](Self::forward_relay) for one partition's relay.
    pub(super) async fn forward_relay_of(&self, keys: &Keys, limit: usize) -> Result<Vec<RunId>> {
        let mut conn = self.conn.clone();
        let mut woken = Vec::new();
        {
            let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(keys.relay())
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit.max(1))
                .query_async(&mut conn)
                .await?;
            for (id, fields) in entries {
                let field = |name: &str| {
                    fields.get(name).ok_or_else(|| Error::corrupt(format!("relay entry {id}"), format!("no {name}")))
                };
                let target = self
                    .part_index
                    .get(field("to")?)
                    .map(|&p| &self.parts[usize::from(p)])
                    .ok_or_else(|| Error::corrupt(format!("relay entry {id}"), "unknown partition"))?;
                let key = field("k")?;
                let once = format!("relay:{}:{id}", keys.index());
                woken.extend(ops::deliver::call(self, target, key, field("d")?, Some(&once), None).await?.woken);
                let _: i64 = redis::cmd("XDEL").arg(keys.relay()).arg(&id).query_async(&mut conn).await?;
            }
        }
        Ok(woken)
    }
}
