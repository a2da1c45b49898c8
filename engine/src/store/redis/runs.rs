//! The Redis store's runs and their transitions: each one script, fenced by the lease epoch.

#[allow(clippy::wildcard_imports)]
use super::*;

#[async_trait]
impl RunStore for RedisStore {
    async fn create_run(&self, req: CreateRun) -> Result<Created> {
        validate_create(&req, &self.config)?;
        let client_chose = req.run_id.is_some();
        let run_id = match req.run_id.clone() {
            Some(id) => id,
            None => self.new_run_id(req.idempotency_key.as_deref())?,
        };
        let keys = self.keys_of(&run_id);
        let started = encode_event(&JournalEvent::RunStarted {
            workflow: req.workflow.clone(),
            version: req.version,
            input: req.input.clone(),
            parent: req.parent.clone(),
            labels: req.labels.clone(),
        })?;
        let labels = if req.labels.is_empty() { String::new() } else { to_json(&req.labels)? };
        let parent = req.parent.as_ref().map(to_json).transpose()?.unwrap_or_default();
        let parent_partition = req.parent.as_ref().map(|p| self.keys_of(&p.run_id).prefix()).unwrap_or("");
        let reply: Vec<String> = self
            .scripts
            .create
            .prepare_invoke()
            .key(keys.prefix())
            .arg(run_id.as_str())
            .arg(&req.workflow)
            .arg(req.version)
            .arg(fingerprint(&req))
            .arg(req.idempotency_key.as_deref().unwrap_or(""))
            .arg(self.config.idempotency_ttl.as_millis() as u64)
            .arg(req.delay.map_or(0, |d| d.as_millis() as u64))
            .arg(labels)
            .arg(parent)
            .arg(started)
            .arg(if client_chose { "1" } else { "0" })
            .arg(req.callback_url.as_deref().unwrap_or(""))
            .arg(parent_partition)
            .invoke_on(self)
            .await?;
        let id = || RunId::new(reply.get(1).cloned().unwrap_or_default());
        match reply.first().map(String::as_str) {
            Some("CREATED") => Ok(Created { run_id: id()?, created: true }),
            Some("EXISTS") => Ok(Created { run_id: id()?, created: false }),
            Some("CONFLICT") => Err(Error::IdempotencyConflict {
                run_id: id()?,
                what: if reply.get(2).map(String::as_str) == Some("run id") { "run id" } else { "idempotency key" },
            }),
            _ => Err(Error::corrupt("create reply", format!("{reply:?}"))),
        }
    }

    /// Each partition in turn (one script each: under load the queues are never
    /// empty); when all are empty, a blocking read on one partition (see
    /// [`SWEEP_BLOCK`]).
    async fn claim(&self, req: &Claim) -> Result<Vec<ClaimedTask>> {
        validate_claim(req)?;
        let mut claimed = Vec::new();
        let order: Vec<&Keys> = self.sweep_order().collect();
        for keys in &order {
            let left = Claim { max: req.max.max(1) - claimed.len(), ..req.clone() };
            claimed.extend(self.with_groups(&req.workflows, || self.claim_batch(keys, &left)).await?);
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
            let blocking = Claim { block: self.sweep_block(left).max(Duration::from_millis(1)), ..req.clone() };
            let deliveries = self.with_groups(&req.workflows, || self.read_new(order[0], &blocking)).await?;
            let claimed = self.claim_deliveries(req, deliveries).await?;
            if !claimed.is_empty() || left <= blocking.block {
                return Ok(claimed);
            }
            order = self.sweep_order().collect();
            for keys in &order {
                let claimed = self.with_groups(&req.workflows, || self.claim_batch(keys, req)).await?;
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
            }
        }
    }

    async fn reclaim_expired(&self, req: &Claim) -> Result<Vec<ClaimedTask>> {
        validate_claim(req)?;
        let deliveries = self.with_groups(&req.workflows, || self.read_expired(req)).await?;
        self.claim_deliveries(req, deliveries).await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<()> {
        let reply: Vec<String> = self
            .scripts
            .renew
            .prepare_invoke()
            .key(self.keys_of(&lease.run_id).prefix())
            .arg(lease.run_id.as_str())
            .arg(&lease.worker_id)
            .arg(lease.epoch)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(&lease.workflow)
            .arg(&lease.task_id)
            .invoke_on(self)
            .await?;
        if reply.first().map(String::as_str) == Some("OK") { Ok(()) } else { Err(Self::lost(lease)) }
    }

    async fn append(&self, lease: &Lease, events: &[JournalEvent]) -> Result<Appended> {
        crate::store::validate_values(events, None, &self.config)?;
        let patch = SummaryPatch::of(events);
        let mut invocation = self.scripts.append.prepare_invoke();
        invocation
            .key(self.keys_of(&lease.run_id).prefix())
            .arg(lease.run_id.as_str())
            .arg(&lease.worker_id)
            .arg(lease.epoch)
            .arg(patch.completed_delta)
            .arg(patch.current_step.as_deref().unwrap_or(""))
            .arg(patch.total_steps.map(|n| n.to_string()).unwrap_or_default())
            .arg(events.len());
        for event in events {
            invocation.arg(encode_event(event)?);
        }
        let reply: Value = invocation.invoke_on(self).await?;
        let reply = array(&reply)?;
        if text(&reply[0])? != "OK" {
            return Err(Self::lost(lease));
        }
        Ok(Appended {
            cancel_requested: opt_text(&reply[1])?.is_some_and(|v| v == "1"),
            seqs: array(&reply[2])?.iter().map(text).collect::<Result<_>>()?,
            pause_requested: opt_text(reply.get(3).unwrap_or(&Value::Nil))?.is_some_and(|v| v == "1"),
        })
    }

    async fn finish(&self, lease: &Lease, events: &[JournalEvent], how: Finish) -> Result<Finished> {
        crate::store::validate_values(events, Some(&how), &self.config)?;
        let patch = SummaryPatch::of(events);
        let (kind, final_entry, payload) = match &how {
            Finish::Complete { output } => {
                ("complete", encode_event(&JournalEvent::RunCompleted { output: output.clone() })?, to_json(output)?)
            }
            Finish::Fail { error } => {
                ("fail", encode_event(&JournalEvent::RunFailed { error: error.clone() })?, to_json(error)?)
            }
            Finish::Cancel { reason } => {
                ("cancel", encode_event(&JournalEvent::RunCancelled { reason: reason.clone() })?, String::new())
            }
            Finish::Suspend(s) => {
                validate_suspension(s)?;
                ("suspend", String::new(), String::new())
            }
            Finish::Release => ("release", String::new(), String::new()),
        };
        let cancelled = encode_event(&JournalEvent::RunCancelled { reason: None })?;
        let (wake, waits) = match &how {
            Finish::Suspend(s) => (s.wake_at_ms, crate::store::flatten_waits(s)),
            _ => (None, Vec::new()),
        };
        let column = |f: fn(&(&str, &str, u64)) -> String| waits.iter().map(f).collect::<Vec<_>>().join("\n");
        let mut invocation = self.scripts.finish.prepare_invoke();
        invocation
            .key(self.keys_of(&lease.run_id).prefix())
            .arg(lease.run_id.as_str())
            .arg(&lease.worker_id)
            .arg(lease.epoch)
            .arg(patch.completed_delta)
            .arg(patch.current_step.as_deref().unwrap_or(""))
            .arg(patch.total_steps.map(|n| n.to_string()).unwrap_or_default())
            .arg(kind)
            .arg(self.config.retention.as_millis() as u64)
            .arg(final_entry)
            .arg(payload)
            .arg(cancelled)
            .arg(wake.map(|ms| ms.to_string()).unwrap_or_default())
            .arg(column(|w| w.0.to_owned()))
            .arg(column(|w| w.1.to_owned()))
            .arg(column(|w| w.2.to_string()))
            .arg(self.config.event_lookback.as_millis().max(1) as u64)
            .arg(events.len())
            .arg(crate::store::child_outcome_of(&how)?.unwrap_or_default())
            .arg(self.config.event_lookback_max.max(1));
        for event in events {
            invocation.arg(encode_event(event)?);
        }
        let reply: Value = invocation.invoke_on(self).await?;
        let reply = array(&reply)?;
        let ended = matches!(how, Finish::Complete { .. } | Finish::Fail { .. } | Finish::Cancel { .. })
            || text(&reply[0])? == "CANCELLED";
        if ended && self.parts.len() > 1 && text(&reply[0])? != "LOST" {
            // A child's outcome for a parent in another partition goes at once;
            // the timer duty forwards whatever this misses (a crash right here).
            if let Err(e) = self.forward_relay_of(self.keys_of(&lease.run_id), 100).await {
                tracing::warn!(error = %e, "forwarding a child's outcome failed; the timer duty will");
            }
        }
        match text(&reply[0])?.as_str() {
            "DONE" => Ok(Finished::Done),
            "CANCELLED" => Ok(Finished::Cancelled),
            "EVENT" => Ok(Finished::EventArrived(decode_record(&text(&reply[1])?, &text(&reply[2])?)?)),
            _ => Err(Self::lost(lease)),
        }
    }

    /// Every partition's due timers; with several partitions, also forwards
    /// the relay (children's outcomes for parents in other partitions).
    async fn fire_due_timers(&self, limit: usize) -> Result<Vec<RunId>> {
        let woken: Vec<Vec<String>> = self.limited_script(&self.scripts.timers, limit).await?;
        let mut woken: Vec<RunId> = woken.into_iter().flatten().map(RunId::new).collect::<Result<_, _>>()?;
        if self.parts.len() > 1 {
            woken.extend(self.forward_relay(limit).await?);
        }
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
        let once = |keys: &Keys| client_id.map(|id| keys.event_id(key, id));
        let home_keys = &self.parts[home];
        let mut answer = self.deliver_in(home_keys, key, &data, once(home_keys).as_deref(), None).await?;
        // The other partitions at once (one round trip's wait, not P).
        let others = self.parts.iter().filter(|keys| keys.index() != home_keys.index()).map(|keys| {
            let (data, id, answer_id) = (&data, once(keys), answer.event_id.clone());
            async move { self.deliver_in(keys, key, data, id.as_deref(), Some(&answer_id)).await }
        });
        for delivered in futures::future::try_join_all(others).await? {
            answer.woken.extend(delivered.woken);
        }
        Ok(answer)
    }

    async fn request_cancel(&self, run_id: &RunId, reason: Option<&str>) -> Result<CancelOutcome> {
        let reason = reason.map(str::to_owned);
        let requested = encode_event(&JournalEvent::CancelRequested { reason: reason.clone() })?;
        let cancelled = encode_event(&JournalEvent::RunCancelled { reason })?;
        let reply: Vec<String> = self
            .scripts
            .cancel
            .prepare_invoke()
            .key(self.keys_of(run_id).prefix())
            .arg(run_id.as_str())
            .arg(requested)
            .arg(cancelled)
            .arg(self.config.retention.as_millis() as u64)
            .arg(self.config.event_lookback.as_millis().max(1) as u64)
            .arg(self.config.event_lookback_max.max(1))
            .invoke_on(self)
            .await?;
        if reply.first().map(String::as_str) == Some("CANCELLED") && self.parts.len() > 1 {
            // A child's outcome for a parent in another partition goes at once.
            if let Err(e) = self.forward_relay_of(self.keys_of(run_id), 100).await {
                tracing::warn!(error = %e, "forwarding a child's outcome failed; the timer duty will");
            }
        }
        match reply.first().map(String::as_str) {
            Some("CANCELLED") => Ok(CancelOutcome::Cancelled),
            Some("REQUESTED") => Ok(CancelOutcome::Requested),
            Some("NOT_FOUND") => Err(Error::RunNotFound(run_id.clone())),
            Some("FINAL") => Err(Error::RunFinal {
                run_id: run_id.clone(),
                status: reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(RunStatus::Completed),
            }),
            _ => Err(Error::corrupt("cancel reply", format!("{reply:?}"))),
        }
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
        Ok(self.limited_script::<usize>(&self.scripts.expire, limit).await?.into_iter().sum())
    }

    async fn reconcile(&self, limit: usize) -> Result<Vec<RunId>> {
        let fixed: Vec<Vec<String>> = self.limited_script(&self.scripts.reconcile, limit).await?;
        fixed.into_iter().flatten().map(|id| Ok(RunId::new(id)?)).collect()
    }

    async fn pause(&self, run_id: &RunId) -> Result<PauseOutcome> {
        match self.run_script(&self.scripts.pause, run_id).await?.as_slice() {
            [s] if s == "PAUSED" => Ok(PauseOutcome::Paused),
            [s] if s == "REQUESTED" => Ok(PauseOutcome::Requested),
            other => Err(self.state_error(run_id, other)),
        }
    }

    async fn resume(&self, run_id: &RunId) -> Result<ResumeOutcome> {
        match self.run_script(&self.scripts.resume, run_id).await?.as_slice() {
            [s] if s == "RESUMED" => Ok(ResumeOutcome::Resumed),
            [s] if s == "NOT_PAUSED" => Ok(ResumeOutcome::NotPaused),
            other => Err(self.state_error(run_id, other)),
        }
    }

    async fn retry(&self, run_id: &RunId) -> Result<()> {
        match self.run_script(&self.scripts.retry, run_id).await?.as_slice() {
            [s] if s == "RETRIED" => Ok(()),
            other => Err(self.state_error(run_id, other)),
        }
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
            if self.watch(run_id, left.min(RECHECK) + BLOCK_MARGIN).await? == "NONE" {
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
            match self.watch(run_id, left.min(RECHECK) + BLOCK_MARGIN).await?.as_str() {
                "NONE" => return Ok(None),
                "FINAL" => return self.get_run(run_id).await,
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
            let mut invocation = self.scripts.unpark.prepare_invoke();
            invocation.key(keys.prefix()).arg(workflow);
            for version in versions {
                invocation.arg(version);
            }
            let ids: Vec<String> = invocation.invoke_on(self).await?;
            for id in ids {
                out.push(RunId::new(id)?);
            }
        }
        Ok(out)
    }
}
