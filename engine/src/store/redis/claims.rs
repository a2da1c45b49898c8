//! Claims in the Redis store: reading a partition's queues (new tasks, or
//! tasks whose holder's lease ran out) and turning deliveries into leases.

#[allow(clippy::wildcard_imports)]
use super::*;

impl RedisStore {
    /// XREADGROUP on every queue of the claim in one partition: new entries only.
    pub(super) async fn read_new(&self, keys: &Keys, req: &Claim) -> Result<Vec<Delivery>> {
        let queues: Vec<String> = req.workflows.iter().map(|wf| keys.queue(wf)).collect();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(&req.worker_id).arg("COUNT").arg(req.max.max(1));
        if !req.block.is_zero() {
            cmd.arg("BLOCK").arg(req.block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&queues);
        for _ in &queues {
            cmd.arg(">");
        }
        let reply = self.blocking_query(cmd, req.block).await?;
        let mut out = Vec::new();
        if let Value::Nil = reply {
            return Ok(out);
        }
        for stream in array(&reply)? {
            let stream = array(stream)?;
            let queue = text(stream.first().ok_or_else(|| Error::corrupt("XREADGROUP reply", "empty"))?)?;
            let workflow = req
                .workflows
                .iter()
                .find(|wf| keys.queue(wf) == queue)
                .ok_or_else(|| Error::corrupt("XREADGROUP reply", format!("unasked queue {queue}")))?;
            for entry in array(stream.get(1).unwrap_or(&Value::Nil))? {
                out.push(Delivery::parse(keys.index(), workflow, entry)?);
            }
        }
        Ok(out)
    }

    /// XAUTOCLAIM on every queue of every partition: entries idle longer than the lease.
    pub(super) async fn read_expired(&self, req: &Claim) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        let mut conn = self.conn.clone();
        let min_idle = req.lease.as_millis() as u64;
        let queues: Vec<(&Keys, &String)> =
            self.parts.iter().flat_map(|keys| req.workflows.iter().map(move |wf| (keys, wf))).collect();
        for (keys, workflow) in queues {
            let queue = keys.queue(workflow);
            let mut cursor = "0-0".to_owned();
            // Each call scans at most COUNT*10 pending entries; a few calls cover a
            // large backlog, and the next reclaim goes on from the start again.
            for _ in 0..8 {
                let reply: Value = redis::cmd("XAUTOCLAIM")
                    .arg(&queue)
                    .arg(GROUP)
                    .arg(&req.worker_id)
                    .arg(min_idle)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(req.max.max(1))
                    .query_async(&mut conn)
                    .await?;
                let reply = array(&reply)?;
                cursor = text(reply.first().unwrap_or(&Value::Nil))?;
                for entry in array(reply.get(1).unwrap_or(&Value::Nil))? {
                    if !matches!(entry, Value::Nil) {
                        out.push(Delivery::parse(keys.index(), workflow, entry)?);
                    }
                }
                if let Some(deleted) = reply.get(2)
                    && !array(deleted)?.is_empty()
                {
                    // A pending entry trimmed away is a task lost; the reconciler re-queues its run.
                    tracing::warn!(queue = %queue, "XAUTOCLAIM found pending tasks deleted from the stream");
                }
                if cursor == "0-0" || out.len() >= req.max.max(1) {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The fast path: new tasks of one partition, read without blocking and
    /// claimed.
    pub(super) async fn claim_batch(&self, keys: &Keys, req: &Claim) -> Result<Vec<ClaimedTask>> {
        let deliveries = self.read_new(keys, &Claim { block: Duration::ZERO, ..req.clone() }).await?;
        self.claim_deliveries(req, deliveries).await
    }

    /// Claim deliveries, one script per partition they are in.
    pub(super) async fn claim_deliveries(&self, req: &Claim, deliveries: Vec<Delivery>) -> Result<Vec<ClaimedTask>> {
        let mut by_partition: BTreeMap<u16, Vec<ops::claim::Delivery>> = BTreeMap::new();
        for d in deliveries {
            by_partition.entry(d.partition).or_default().push(ops::claim::Delivery {
                workflow: d.workflow,
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

/// One queue entry handed to this worker.
pub(super) struct Delivery {
    partition: u16,
    workflow: String,
    task_id: String,
    run_id: RunId,
}

impl Delivery {
    pub(super) fn parse(partition: u16, workflow: &str, entry: &Value) -> Result<Self> {
        let entry = array(entry)?;
        let task_id = text(entry.first().unwrap_or(&Value::Nil))?;
        let fields = pairs(entry.get(1).unwrap_or(&Value::Nil))?;
        let run_id =
            fields.get("run_id").ok_or_else(|| Error::corrupt(format!("task {task_id}"), "no run_id field"))?;
        Ok(Self { partition, workflow: workflow.to_owned(), task_id, run_id: RunId::new(run_id.clone())? })
    }
}
