//! The Redis store's runs and their transitions: each one script, fenced by the lease epoch.

#[allow(clippy::wildcard_imports)]
use super::*;
use ops::watch::Watched;

#[async_trait]
impl RunStore for RedisStore {
    async fn create_run(&self, req: CreateRun) -> Result<Created> {
        validate_create(&req, &self.config)?;
        let run_id = match req.run_id.clone() {
            Some(id) => id,
            None => self.new_run_id(req.idempotency_key.as_deref())?,
        };
        Ok(ops::create::call(self, &req, run_id, None).await?.0)
    }

    async fn create_claimed(&self, req: CreateRun, claim: &ClaimOnCreate) -> Result<(Created, Option<ClaimedTask>)> {
        validate_create(&req, &self.config)?;
        if claim.lease.is_zero() {
            return Err(Error::Invalid("a lease must be longer than zero".into()));
        }
        let run_id = match req.run_id.clone() {
            Some(id) => id,
            None => self.new_run_id(req.idempotency_key.as_deref())?,
        };
        ops::create::call(self, &req, run_id, Some(claim)).await
    }

    /// Each partition in turn (one script each: under load the queues are never
    /// empty); when all are empty, a blocking read on one partition (see
    /// [`SWEEP_BLOCK`]).
    async fn claim(&self, req: &Claim) -> Result<Vec<ClaimedTask>> {
        validate_claim(req)?;
        let queues = self.queue_order(&req.workflows);
        let queues = &queues;
        let mut claimed = Vec::new();
        let order: Vec<&Keys> = self.sweep_order().collect();
        for keys in &order {
            let left = Claim { max: req.max.max(1) - claimed.len(), ..req.clone() };
            claimed.extend(self.with_groups(&req.workflows, || self.claim_batch(keys, &left, queues)).await?);
            if claimed.len() >= req.max.max(1) {
                break;
            }
        }
        if !claimed.is_empty() || req.block.is_zero() {
            return Ok(claimed);
        }
        // Block on one partition at a time, sweeping all of them between
        // (each sweep's first partition is the next one), until the deadline.
        let deadline = tokio::time::Instant::now() + req.block;
        let mut order = order;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let block = self.sweep_block(left).max(Duration::from_millis(1));
            let found = self.with_groups(&req.workflows, || self.read_new(order[0], req, queues, true)).await?;
            let claimed = self.claim_deliveries(req, found.deliveries).await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
            self.wait_for_new(&found.last, block).await?;
            order = self.sweep_order().collect();
            for keys in &order {
                let claimed = self.with_groups(&req.workflows, || self.claim_batch(keys, req, queues)).await?;
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
            }
            if left <= block {
                return Ok(Vec::new());
            }
        }
    }

    async fn reclaim_expired(&self, req: &Claim) -> Result<Vec<ClaimedTask>> {
        validate_claim(req)?;
        let deliveries = self.with_groups(&req.workflows, || self.read_expired(req)).await?;
        self.claim_deliveries(req, deliveries).await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<()> {
        ops::renew::call(self, lease, ttl).await
    }

    async fn append(&self, lease: &Lease, events: &[JournalEvent]) -> Result<Appended> {
        crate::store::validate_values(events, None, &self.config)?;
        ops::append::call(self, lease, events).await
    }

    async fn finish(&self, lease: &Lease, events: &[JournalEvent], how: Finish) -> Result<Finished> {
        crate::store::validate_values(events, Some(&how), &self.config)?;
        ops::finish::call(self, lease, events, &how).await
    }

    /// Every partition's due timers, and the relay (children's outcomes for
    /// their parents) that a crash left behind.
    async fn fire_due_timers(&self, limit: usize) -> Result<Vec<RunId>> {
        let mut woken = Vec::new();
        for keys in &self.parts {
            woken.extend(ops::timers::call(self, keys, limit).await?);
        }
        woken.extend(self.forward_relay(limit).await?);
        Ok(woken)
    }

    /// Into every partition (each keeps the event for its own late waiters),
    /// the event key's home partition first: its event id is the answer. A
    /// client's id makes each partition's delivery idempotent, so a repeat
    /// after a partial failure completes the rest and delivers nothing twice.
    async fn deliver(&self, key: &str, data: &Json, client_id: Option<&str>) -> Result<Delivered> {
        crate::store::validate_delivery(key, data, client_id, &self.config)?;
        let data = to_json(data)?;
        let home = usize::from(crate::keys::partition_of(key, self.partitions()));
        let home_keys = &self.parts[home];
        let mut answer = ops::deliver::call(self, home_keys, key, &data, client_id, None).await?;
        // The other partitions at once (one round trip's wait, not P).
        let others = self.parts.iter().filter(|keys| keys.index() != home_keys.index()).map(|keys| {
            let (data, answer_id) = (&data, answer.event_id.clone());
            async move { ops::deliver::call(self, keys, key, data, client_id, Some(&answer_id)).await }
        });
        for delivered in futures::future::try_join_all(others).await? {
            answer.woken.extend(delivered.woken);
        }
        Ok(answer)
    }

    async fn request_cancel(&self, run_id: &RunId, reason: Option<&str>) -> Result<CancelOutcome> {
        ops::cancel::call(self, run_id, reason).await
    }

    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunSummary>> {
        let mut conn = self.conn.clone();
        let hash: HashMap<String, String> =
            redis::cmd("HGETALL").arg(self.keys_of(run_id).run(run_id)).query_async(&mut conn).await?;
        if hash.is_empty() { Ok(None) } else { summary_from_hash(run_id, hash).map(Some) }
    }

    async fn read_journal(&self, run_id: &RunId, after: Option<&str>, limit: usize) -> Result<Vec<JournalRecord>> {
        let start = match after {
            Some(seq) => format!("({}", stream_id(seq)?),
            None => "-".to_owned(),
        };
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.keys_of(run_id).journal(run_id))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await?;
        journal_from_stream(&reply)
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        if let Some(workflow) = &query.workflow {
            keel_proto::validate_workflow_name(workflow)?;
        }
        let limit = page_limit(query.limit);
        let cursor = query.cursor.as_deref().map(parse_cursor).transpose()?;
        let pages = futures::future::try_join_all(
            self.parts.iter().map(|keys| self.list_in(keys, query, limit, cursor.as_ref())),
        )
        .await?;
        Ok(partitions::merge_pages(pages, limit))
    }

    async fn expire_finished(&self, limit: usize) -> Result<usize> {
        let mut expired = 0;
        for keys in &self.parts {
            expired += ops::expire::call(self, keys, limit).await?;
        }
        Ok(expired)
    }

    async fn reconcile(&self, limit: usize) -> Result<Vec<RunId>> {
        let mut fixed = Vec::new();
        for keys in &self.parts {
            fixed.extend(ops::reconcile::call(self, keys, limit).await?);
        }
        Ok(fixed)
    }

    async fn pause(&self, run_id: &RunId) -> Result<PauseOutcome> {
        ops::pause::call(self, run_id).await
    }

    async fn resume(&self, run_id: &RunId) -> Result<ResumeOutcome> {
        ops::resume::call(self, run_id).await
    }

    async fn retry(&self, run_id: &RunId) -> Result<()> {
        ops::retry::call(self, run_id).await
    }

    async fn watch_journal(&self, run_id: &RunId, after: Option<&str>, block: Duration) -> Result<Vec<JournalRecord>> {
        if block.is_zero() {
            return self.read_journal(run_id, after, 1000).await;
        }
        let deadline = tokio::time::Instant::now() + block;
        // Registered before the first read: an entry appended after it wakes us.
        let mut waiter = self.notifier.wait_on(run_id.as_str(), notify::Wake::Entry);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.watch(run_id, left.min(RECHECK) + BLOCK_MARGIN).await? == Watched::None {
                return Ok(Vec::new());
            }
            let records = self.read_journal(run_id, after, 1000).await?;
            if !records.is_empty() || left.is_zero() {
                return Ok(records);
            }
            waiter.changed(left.min(RECHECK)).await;
        }
    }

    async fn wait_finished(&self, run_id: &RunId, timeout: Duration) -> Result<Option<RunSummary>> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Woken by the end only, not by every step of the run.
        let mut waiter = self.notifier.wait_on(run_id.as_str(), notify::Wake::End);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.watch(run_id, left.min(RECHECK) + BLOCK_MARGIN).await? {
                Watched::None => return Ok(None),
                Watched::Final => return self.get_run(run_id).await,
                _ if left.is_zero() => return self.get_run(run_id).await,
                _ => {}
            }
            waiter.changed(left.min(RECHECK)).await;
        }
    }

    async fn unpark(&self, workflow: &str, versions: &[u32]) -> Result<Vec<RunId>> {
        keel_proto::validate_workflow_name(workflow)?;
        let mut out = Vec::new();
        for keys in &self.parts {
            out.extend(ops::unpark::call(self, keys, workflow, versions).await?);
        }
        Ok(out)
    }
}
