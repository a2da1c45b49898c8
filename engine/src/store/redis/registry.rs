//! The Redis store's worker registry, dead letters and the counters /metrics reads.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::StoredSigningKey;

#[async_trait]
impl RegistryStore for RedisStore {
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut conn = self.conn.clone();
        let mut all = Vec::new();
        for keys in &self.parts {
            let reply: Value = redis::cmd("XREVRANGE")
                .arg(keys.dead_letters())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(limit.max(1))
                .query_async(&mut conn)
                .await?;
            all.extend(array(&reply)?.iter().cloned());
        }
        // Newest first across partitions.
        let mut letters: Vec<DeadLetter> = all
            .iter()
            .map(|entry| {
                let entry = array(entry)?;
                let id = text(&entry[0])?;
                let f = pairs(&entry[1])?;
                let get = |name: &str| f.get(name).cloned().unwrap_or_default();
                Ok(DeadLetter {
                    run_id: RunId::new(get("run_id"))?,
                    workflow: get("workflow"),
                    task_id: get("task_id"),
                    deliveries: get("deliveries").parse().unwrap_or(0),
                    reason: get("reason"),
                    at_ms: crate::store::seq_millis(&id)?,
                })
            })
            .collect::<Result<_>>()?;
        letters.sort_by_key(|letter| std::cmp::Reverse(letter.at_ms));
        letters.truncate(limit.max(1));
        Ok(letters)
    }

    /// The sum over partitions: one pipeline each (its keys share a slot).
    async fn stats(&self, workflows: &[String]) -> Result<Stats> {
        self.flush_counters().await?;
        // XPENDING needs the group: make sure it exists (cached after the first time).
        self.ensure_groups(workflows).await?;
        // One pipeline per partition, all at once.
        let replies = futures::future::try_join_all(self.parts.iter().map(|keys| {
            let mut pipe = redis::pipe();
            pipe.cmd("HGETALL").arg(keys.stats()).cmd("XLEN").arg(keys.dead_letters());
            for status in RunStatus::ALL {
                pipe.cmd("ZCARD").arg(keys.runs_by_status(status));
            }
            for workflow in workflows {
                for priority in keel_proto::PRIORITIES {
                    pipe.cmd("XLEN").arg(keys.queue_at(workflow, priority));
                    pipe.cmd("XPENDING").arg(keys.queue_at(workflow, priority)).arg(GROUP);
                }
            }
            let mut conn = self.conn.clone();
            async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
        }))
        .await?;
        let mut stats = Stats::default();
        for replies in &replies {
            add_partition_stats(&mut stats, workflows, replies)?;
        }
        Ok(stats)
    }

    async fn register_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<()> {
        let mut info = info.clone();
        info.heartbeat_at_ms = now_wall_ms();
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.keys().worker(&info.worker_id))
            .arg(to_json(&info)?)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys().workers())
            .arg(info.heartbeat_at_ms + ttl.as_millis() as u64)
            .arg(&info.worker_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn flush_counters(&self) -> Result<()> {
        self.counters.flush(&self.conn, &self.parts).await
    }

    async fn unregister_worker(&self, worker_id: &str) -> Result<()> {
        self.flush_counters().await?;
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(self.keys().worker(worker_id))
            .ignore()
            .cmd("ZREM")
            .arg(self.keys().workers())
            .arg(worker_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        let mut conn = self.conn.clone();
        let (ids,): (Vec<String>,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.keys().workers())
            .arg("-inf")
            .arg(now_wall_ms())
            .ignore()
            .cmd("ZRANGE")
            .arg(self.keys().workers())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys().worker(id)).collect();
        let found: Vec<Option<String>> = redis::cmd("MGET").arg(keys).query_async(&mut conn).await?;
        let mut workers: Vec<WorkerInfo> =
            found.into_iter().flatten().map(|text| from_json("worker registration", &text)).collect::<Result<_>>()?;
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(workers)
    }

    async fn signing_keys(&self, offer: Option<&str>) -> Result<Vec<StoredSigningKey>> {
        self.read_signing_keys(offer).await
    }

    async fn add_signing_key(&self, secret: &str) -> Result<Vec<StoredSigningKey>> {
        self.add_signing_key_to_ring(secret).await
    }

    async fn retire_signing_key(&self, id: Option<&str>, settle: Duration) -> Result<Vec<StoredSigningKey>> {
        self.retire_signing_key_from_ring(id, settle).await
    }
}

/// Add one partition's pipeline replies (see `stats`) to the totals.
fn add_partition_stats(stats: &mut Stats, workflows: &[String], replies: &[Value]) -> Result<()> {
    for (field, value) in pairs(&replies[0])? {
        let n: u64 = value.parse().unwrap_or(0);
        if field == super::counters::ROUND_TRIPS_FIELD {
            stats.redis_round_trips += n;
            continue;
        }
        match field.split_once('|') {
            Some(("step_ms", "sum")) => stats.step_ms_sum += n,
            Some(("step_ms", bound)) => *stats.step_ms_buckets.entry(bound.parse().ok()).or_default() += n,
            Some((workflow, stat)) => *stats.counters.entry((workflow.to_owned(), stat.to_owned())).or_default() += n,
            None => {}
        }
    }
    stats.dead_letters += int(&replies[1])? as u64;
    for (i, status) in RunStatus::ALL.into_iter().enumerate() {
        *stats.runs_by_status.entry(status).or_default() += int(&replies[2 + i])? as u64;
    }
    let base = 2 + RunStatus::ALL.len();
    let levels = keel_proto::PRIORITIES.count();
    for (i, workflow) in workflows.iter().flat_map(|wf| std::iter::repeat_n(wf, levels)).enumerate() {
        let length = int(&replies[base + 2 * i])? as u64;
        let pending = array(&replies[base + 2 * i + 1])?.first().map(int).transpose()?.unwrap_or(0) as u64;
        *stats.in_flight.entry(workflow.clone()).or_default() += pending;
        *stats.queued.entry(workflow.clone()).or_default() += length.saturating_sub(pending);
    }
    Ok(())
}
