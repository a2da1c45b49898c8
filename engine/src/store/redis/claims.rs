//! Claims in the Redis store: reading a partition's queues (new tasks, or
//! tasks whose holder's lease ran out) and turning deliveries into leases.

#[allow(clippy::wildcard_imports)]
use super::*;

impl RedisStore {
    /// The queues a claim reads, in order: every workflow's queue of the
    /// highest priority, then the next priority, and so on. One claim in
    /// [`LOWEST_FIRST_EVERY`] goes lowest priority first, so a steady flood of
    /// high-priority runs cannot starve the low ones for ever. (Per partition:
    /// a claim takes from the partitions in turn, each in this order.)
    pub(super) fn queue_order<'a>(&self, workflows: &'a [String]) -> Vec<ops::read::Queue<'a>> {
        let n = self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lowest_first = n % LOWEST_FIRST_EVERY == LOWEST_FIRST_EVERY - 1;
        let mut levels: Vec<u8> = keel_proto::PRIORITIES.rev().collect();
        if lowest_first {
            levels.reverse();
        }
        levels.into_iter().flat_map(|pr| workflows.iter().map(move |wf| ops::read::Queue::new(wf, pr))).collect()
    }

    /// New entries of one partition's queues, at most `req.max`, highest
    /// priority first; with `wait`, also where to block from when none.
    pub(super) async fn read_new(
        &self,
        keys: &Keys,
        req: &Claim,
        queues: &[ops::read::Queue<'_>],
        wait: bool,
    ) -> Result<ops::read::Found> {
        ops::read::call(self, keys, &req.worker_id, req.max, queues, ops::read::Read::New { wait }).await
    }

    /// Block up to `block` until any of one partition's queues gets an entry
    /// newer than its `last` id (what [`read_new`](Self::read_new) saw: queue
    /// key, id). A plain XREAD, not XREADGROUP: it takes nothing, so the read
    /// that follows takes entries in priority order and no more than the
    /// worker has room for.
    pub(super) async fn wait_for_new(&self, last: &[(String, String)], block: Duration) -> Result<()> {
        if last.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(1).arg("BLOCK").arg(block.as_millis().max(1) as u64).arg("STREAMS");
        for (key, _) in last {
            cmd.arg(key);
        }
        for (_, id) in last {
            cmd.arg(id);
        }
        self.blocking_query(cmd, block).await?;
        Ok(())
    }

    /// Entries idle longer than the lease, every partition's, at most `req.max`.
    pub(super) async fn read_expired(&self, req: &Claim) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        let idle_ms = req.lease.as_millis() as u64;
        let queues = self.queue_order(&req.workflows);
        for keys in &self.parts {
            let left = req.max.max(1).saturating_sub(out.len());
            if left == 0 {
                break;
            }
            let read = ops::read::Read::Expired { idle_ms };
            out.extend(ops::read::call(self, keys, &req.worker_id, left, &queues, read).await?.deliveries);
        }
        Ok(out)
    }

    /// The fast path: new tasks of one partition, read without blocking and
    /// claimed.
    pub(super) async fn claim_batch(
        &self,
        keys: &Keys,
        req: &Claim,
        queues: &[ops::read::Queue<'_>],
    ) -> Result<Vec<ClaimedTask>> {
        let found = self.read_new(keys, req, queues, false).await?;
        self.claim_deliveries(req, found.deliveries).await
    }

    /// Claim deliveries, one script per partition they are in.
    pub(super) async fn claim_deliveries(&self, req: &Claim, deliveries: Vec<Delivery>) -> Result<Vec<ClaimedTask>> {
        let mut by_partition: BTreeMap<u16, Vec<ops::claim::Delivery>> = BTreeMap::new();
        for d in deliveries {
            by_partition.entry(d.partition).or_default().push(ops::claim::Delivery {
                workflow: d.workflow,
                priority: d.priority,
                task_id: d.task_id,
                run_id: d.run_id,
            });
        }
        let mut claimed = Vec::new();
        for (p, deliveries) in by_partition {
            claimed.extend(ops::claim::call(self, &self.parts[usize::from(p)], req, &deliveries).await?);
        }
        Ok(claimed)
    }
}

/// How often a claim's read goes lowest priority first (one in this many).
const LOWEST_FIRST_EVERY: usize = 10;

/// One queue entry handed to this worker.
pub(super) struct Delivery {
    pub partition: u16,
    pub workflow: String,
    /// Which of the workflow's queues it is in.
    pub priority: u8,
    pub task_id: String,
    pub run_id: RunId,
}
