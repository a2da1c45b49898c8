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

    /// The settings every claim script takes: what to write if a task is dead-lettered.
    pub(super) fn claim_settings(&self, req: &Claim) -> Result<[String; 11]> {
        let reason = crate::store::dead_letter_reason(self.config.max_deliveries);
        let error = ErrorInfo::new("dead_lettered", reason.clone());
        Ok([
            req.worker_id.clone(),
            (req.lease.as_millis() as u64).to_string(),
            self.config.max_deliveries.to_string(),
            reason,
            encode_event(&JournalEvent::RunFailed { error: error.clone() })?,
            to_json(&error)?,
            (self.config.retention.as_millis() as u64).to_string(),
            to_json(&ChildOutcome::Failed { error })?,
            (self.config.event_lookback.as_millis().max(1) as u64).to_string(),
            self.config.event_lookback_max.max(1).to_string(),
            req.versions
                .iter()
                .map(|(wf, versions)| {
                    format!("{wf}={}", versions.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ])
    }

    /// A `CLAIMED` reply: `[CLAIMED, epoch, deliveries, now, hash, journal, run id, task id, workflow]`.
    pub(super) fn claimed_from(reply: &[Value], worker_id: &str) -> Result<ClaimedTask> {
        let run_id = RunId::new(text(&reply[6])?)?;
        Ok(ClaimedTask {
            run: summary_from_hash(&run_id, pairs(&reply[4])?)?,
            journal: journal_from_stream(&reply[5])?,
            deliveries: int(&reply[2])? as u32,
            now_ms: text(&reply[3])?.parse().map_err(|e| Error::corrupt("claim time", e))?,
            lease: Lease {
                run_id,
                workflow: text(&reply[8])?,
                worker_id: worker_id.to_owned(),
                epoch: int(&reply[1])? as u64,
                task_id: text(&reply[7])?,
            },
        })
    }

    /// The fast path: read and claim new tasks of one partition in one script,
    /// without blocking.
    pub(super) async fn claim_batch(&self, keys: &Keys, req: &Claim) -> Result<Vec<ClaimedTask>> {
        let mut invocation = self.scripts.claim_batch.prepare_invoke();
        invocation.key(keys.prefix());
        for setting in self.claim_settings(req)? {
            invocation.arg(setting);
        }
        invocation.arg(req.max.max(1)).arg(req.workflows.len());
        for workflow in &req.workflows {
            invocation.arg(workflow);
        }
        let reply: Value = invocation.invoke_on(self).await?;
        let reply = array(&reply)?;
        if text(&reply[0])? == "NOGROUP" {
            return Err(Error::NoGroup);
        }
        // One undecodable task must not strand the others this script leased:
        // it is logged and left to lapse (its run is replayed later), the rest run.
        let mut claimed = Vec::new();
        for item in array(reply.get(1).unwrap_or(&Value::Nil))? {
            match array(item).and_then(|item| Self::claimed_from(item, &req.worker_id)) {
                Ok(task) => claimed.push(task),
                Err(e) => tracing::error!(error = %e, "a claimed task does not decode; its lease will lapse"),
            }
        }
        Ok(claimed)
    }

    pub(super) async fn claim_deliveries(&self, req: &Claim, deliveries: Vec<Delivery>) -> Result<Vec<ClaimedTask>> {
        let mut claimed = Vec::with_capacity(deliveries.len());
        let settings = self.claim_settings(req)?;
        for delivery in deliveries {
            let mut invocation = self.scripts.claim.prepare_invoke();
            invocation
                .key(self.parts[usize::from(delivery.partition)].prefix())
                .arg(&delivery.workflow)
                .arg(&delivery.task_id)
                .arg(delivery.run_id.as_str());
            for setting in &settings {
                invocation.arg(setting);
            }
            let reply: Value = invocation.invoke_on(self).await?;
            let reply = array(&reply)?;
            match text(&reply[0])?.as_str() {
                "CLAIMED" => match Self::claimed_from(reply, &req.worker_id) {
                    Ok(task) => claimed.push(task),
                    Err(e) => {
                        tracing::error!(run_id = %delivery.run_id, error = %e, "a claimed task does not decode; its lease will lapse")
                    }
                },
                "DEAD" => tracing::warn!(run_id = %delivery.run_id, "task dead-lettered: {}", settings[3]),
                "PARKED" => {
                    tracing::warn!(run_id = %delivery.run_id, version = ?reply.get(1), "run parked: no version of it here")
                }
                other => tracing::debug!(
                    run_id = %delivery.run_id, outcome = other, detail = ?reply.get(1),
                    "delivery not claimed"
                ),
            }
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
