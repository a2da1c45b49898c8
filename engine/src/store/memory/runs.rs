//! The memory store's runs and their transitions: each one critical section, fenced by the lease epoch.

#[allow(clippy::wildcard_imports)]
use super::*;

#[async_trait]
impl RunStore for MemoryStore {
    async fn create_run(&self, req: CreateRun) -> Result<Created> {
        Ok(self.create(req, None)?.0)
    }

    async fn create_claimed(&self, req: CreateRun, claim: &ClaimOnCreate) -> Result<(Created, Option<ClaimedTask>)> {
        if claim.lease.is_zero() {
            return Err(Error::Invalid("a lease must be longer than zero".into()));
        }
        self.create(req, Some(claim))
    }

    async fn claim(&self, req: &Claim) -> Result<Vec<ClaimedTask>> {
        validate_claim(req)?;
        let deadline = tokio::time::Instant::now() + req.block;
        let order = self.queue_order(&req.workflows);
        loop {
            let notified = self.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.queued_any(req) {
                let claimed = self.try_claim_new(req, &order)?;
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
                // Everything delivered was skipped (finished runs, duplicates): look again.
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn reclaim_expired(&self, req: &Claim) -> Result<Vec<ClaimedTask>> {
        validate_claim(req)?;
        let now = self.now_ms();
        let min_idle = req.lease.as_millis() as u64;
        let mut state = self.state();
        let mut taken = Vec::new();
        for (workflow, priority) in self.queue_order(&req.workflows) {
            let Some(queue) = state.queues.get_mut(&queue_name(workflow, priority)) else { continue };
            let mut idle: Vec<Sid> = queue
                .pending
                .iter()
                .filter(|(_, p)| now.saturating_sub(p.delivered_at) >= min_idle)
                .map(|(tid, _)| *tid)
                .collect();
            idle.sort();
            for tid in idle.into_iter().take(req.max.max(1)) {
                if let Some(p) = queue.pending.get_mut(&tid) {
                    p.consumer = req.worker_id.clone();
                    p.delivered_at = now;
                    p.deliveries += 1;
                    taken.push((workflow.clone(), priority, tid));
                }
            }
        }
        let mut claimed = Vec::new();
        for (workflow, priority, tid) in taken {
            claimed.extend(state.claim_one(&self.config, req, &workflow, priority, tid, now)?);
        }
        Ok(claimed)
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<()> {
        let now = self.now_ms();
        let mut state = self.state();
        let run = state.fenced(lease, now)?;
        run.lease = Some((format!("{}:{}", lease.worker_id, lease.epoch), now + ttl.as_millis().max(1) as u64));
        if let (Some(queue), Ok(tid)) =
            (state.queues.get_mut(&queue_name(&lease.workflow, lease.priority)), parse_sid(&lease.task_id))
            && let Some(p) = queue.pending.get_mut(&tid)
        {
            p.consumer = lease.worker_id.clone();
            p.delivered_at = now;
        }
        Ok(())
    }

    async fn append(&self, lease: &Lease, events: &[JournalEvent]) -> Result<Appended> {
        crate::store::validate_values(events, None, &self.config)?;
        let entries = events.iter().map(encode_event).collect::<Result<Vec<_>>>()?;
        let patch = SummaryPatch::of(events);
        let now = self.now_ms();
        let mut state = self.state();
        state.fenced(lease, now)?;
        let sids = state.append(&lease.run_id, entries, now)?;
        let run = state.run_mut(&lease.run_id)?;
        run.apply(&patch, now);
        Ok(Appended {
            seqs: sids.into_iter().map(sid_text).collect(),
            cancel_requested: run.cancel_requested,
            pause_requested: run.pause_requested,
        })
    }

    async fn finish(&self, lease: &Lease, events: &[JournalEvent], how: Finish) -> Result<Finished> {
        crate::store::validate_values(events, Some(&how), &self.config)?;
        if let Finish::Suspend(s) = &how {
            validate_suspension(s)?;
        }
        let entries = events.iter().map(encode_event).collect::<Result<Vec<_>>>()?;
        let patch = SummaryPatch::of(events);
        let now = self.now_ms();
        let retention = self.config.retention;
        let mut state = self.state();
        let run = state.fenced(lease, now)?;
        let task = run.task;
        let cancel_requested = run.cancel_requested;
        state.append(&lease.run_id, entries, now)?;
        state.run_mut(&lease.run_id)?.apply(&patch, now);
        let id = &lease.run_id;
        let final_status = match &how {
            Finish::Complete { output } => {
                state.append(id, vec![encode_event(&JournalEvent::RunCompleted { output: output.clone() })?], now)?;
                state.run_mut(id)?.output = Some(output.clone());
                Some(RunStatus::Completed)
            }
            Finish::Fail { error } => {
                state.append(id, vec![encode_event(&JournalEvent::RunFailed { error: error.clone() })?], now)?;
                state.run_mut(id)?.error = Some(error.clone());
                Some(RunStatus::Failed)
            }
            Finish::Cancel { reason } => {
                state.append(id, vec![encode_event(&JournalEvent::RunCancelled { reason: reason.clone() })?], now)?;
                Some(RunStatus::Cancelled)
            }
            Finish::Release => {
                state.ack(&queue_name(&lease.workflow, lease.priority), task);
                let run = state.run_mut(id)?;
                run.lease = None;
                run.task = None;
                if state.runnable(id, now)? {
                    drop(state);
                    self.queued.notify_waiters();
                }
                return Ok(Finished::Done);
            }
            Finish::Suspend(_) if cancel_requested => {
                state.append(id, vec![encode_event(&JournalEvent::RunCancelled { reason: None })?], now)?;
                state.finalize(id, RunStatus::Cancelled, now, retention)?;
                state.ack(&queue_name(&lease.workflow, lease.priority), task);
                state.notify_parent(&self.config, id, &ChildOutcome::Cancelled, now)?;
                drop(state);
                self.queued.notify_waiters();
                return Ok(Finished::Cancelled);
            }
            Finish::Suspend(_) => None,
        };
        if let Some(status) = final_status {
            state.finalize(id, status, now, retention)?;
            state.ack(&queue_name(&lease.workflow, lease.priority), task);
            let outcome = match &how {
                Finish::Complete { output } => ChildOutcome::Completed { output: output.clone() },
                Finish::Fail { error } => ChildOutcome::Failed { error: error.clone() },
                _ => ChildOutcome::Cancelled,
            };
            state.notify_parent(&self.config, id, &outcome, now)?;
            drop(state);
            self.queued.notify_waiters();
            return Ok(Finished::Done);
        }
        let Finish::Suspend(suspension) = how else { return Ok(Finished::Done) };
        let waits = crate::store::flatten_waits(&suspension);
        if !waits.is_empty() {
            let lookback = self.config.event_lookback.as_millis() as u64;
            let floors = state.run_mut(id)?.event_floor.clone();
            let mut best: Option<(Sid, &str, &str, String)> = None;
            for &(step, key, since) in &waits {
                let Some(log) = state.events.get(key).filter(|log| log.expires_at > now) else { continue };
                let from = (since.saturating_sub(lookback), 0);
                let floor = floors.get(key);
                let found = log.entries.iter().find(|(sid, _)| *sid >= from && floor.is_none_or(|f| sid > f));
                if let Some((sid, data)) = found
                    && best.as_ref().is_none_or(|(b, ..)| sid < b)
                {
                    best = Some((*sid, step, key, data.clone()));
                }
            }
            if let Some((sid, step, key, data)) = best {
                let data: Json = serde_json::from_str(&data).map_err(|e| Error::corrupt("event", e))?;
                let event = JournalEvent::EventReceived {
                    step_id: step.to_owned(),
                    event_key: key.to_owned(),
                    event_id: sid_text(sid),
                    data,
                };
                let text = encode_event(&event)?;
                let seq = state.append(id, vec![text.clone()], now)?[0];
                let run = state.run_mut(id)?;
                run.apply(&SummaryPatch::of(std::slice::from_ref(&event)), now);
                run.event_floor.insert(key.to_owned(), sid);
                return Ok(Finished::EventArrived(decode_record(&sid_text(seq), &text)?));
            }
            for &(_, key, _) in &waits {
                state.waiters.entry(key.to_owned()).or_default().insert(id.clone());
            }
            let run = state.run_mut(id)?;
            run.wait_keys = waits.iter().map(|w| w.1.to_owned()).collect();
            run.wait_steps = waits.iter().map(|w| w.0.to_owned()).collect();
        }
        if let Some(at) = suspension.wake_at_ms {
            let run = state.run_mut(id)?;
            if let Some(old) = run.wake.replace(at) {
                state.timers.remove(&(old, id.clone()));
            }
            state.timers.insert((at, id.clone()));
        }
        state.ack(&queue_name(&lease.workflow, lease.priority), task);
        let run = state.run_mut(id)?;
        run.task = None;
        run.lease = None;
        run.status =
            if waits.is_empty() && suspension.blocked.is_none() { RunStatus::Sleeping } else { RunStatus::Waiting };
        run.blocked = suspension.blocked;
        Ok(Finished::Done)
    }

    async fn fire_due_timers(&self, limit: usize) -> Result<Vec<RunId>> {
        let now = self.now_ms();
        let mut state = self.state();
        let due: Vec<(u64, RunId)> =
            state.timers.iter().take_while(|(at, _)| *at <= now).take(limit.max(1)).cloned().collect();
        let mut woken = Vec::new();
        for timer in due {
            state.timers.remove(&timer);
            let id = timer.1;
            let suspended =
                state.runs.get(&id).is_some_and(|run| matches!(run.status, RunStatus::Sleeping | RunStatus::Waiting));
            if suspended {
                state.wake(&id, now)?;
                woken.push(id);
            }
        }
        drop(state);
        if !woken.is_empty() {
            self.queued.notify_waiters();
        }
        Ok(woken)
    }

    async fn deliver(&self, key: &str, data: &Json, client_id: Option<&str>) -> Result<Delivered> {
        crate::store::validate_delivery(key, data, client_id, &self.config)?;
        let now = self.now_ms();
        let mut state = self.state();
        let seen_key = client_id.map(|id| (key.to_owned(), id.to_owned()));
        if let Some(seen) = &seen_key
            && let Some((event_id, expires)) = state.event_ids.get(seen)
            && *expires > now
        {
            return Ok(Delivered { event_id: event_id.clone(), woken: Vec::new(), duplicate: true });
        }
        let (sid, woken) = state.deliver(&self.config, key, data, now)?;
        if let Some(seen) = seen_key {
            let expires = now + self.config.idempotency_ttl.as_millis() as u64;
            state.event_ids.insert(seen, (sid_text(sid), expires));
        }
        drop(state);
        if !woken.is_empty() {
            self.queued.notify_waiters();
        }
        Ok(Delivered { event_id: sid_text(sid), woken, duplicate: false })
    }

    async fn request_cancel(&self, run_id: &RunId, reason: Option<&str>) -> Result<CancelOutcome> {
        let reason = reason.map(str::to_owned);
        let requested = encode_event(&JournalEvent::CancelRequested { reason: reason.clone() })?;
        let cancelled = encode_event(&JournalEvent::RunCancelled { reason })?;
        let now = self.now_ms();
        let mut state = self.state();
        let run = state.runs.get(run_id).ok_or_else(|| Error::RunNotFound(run_id.clone()))?;
        if run.status.is_final() {
            return Err(Error::RunFinal { run_id: run_id.clone(), status: run.status });
        }
        if run.status == RunStatus::Running && run.live_lease(now).is_some() {
            if !run.cancel_requested {
                state.run_mut(run_id)?.cancel_requested = true;
                state.append(run_id, vec![requested], now)?;
            }
            return Ok(CancelOutcome::Requested);
        }
        let (queue, task) = (queue_name(&run.workflow, run.priority), run.task);
        state.append(run_id, vec![requested, cancelled], now)?;
        state.clear_wait(run_id)?;
        state.ack(&queue, task);
        state.finalize(run_id, RunStatus::Cancelled, now, self.config.retention)?;
        state.notify_parent(&self.config, run_id, &ChildOutcome::Cancelled, now)?;
        drop(state);
        self.queued.notify_waiters();
        Ok(CancelOutcome::Cancelled)
    }

    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunSummary>> {
        Ok(self.state().runs.get(run_id).map(|run| run.summary(run_id)))
    }

    async fn read_journal(&self, run_id: &RunId, after: Option<&str>, limit: usize) -> Result<Vec<JournalRecord>> {
        let after = after.map(parse_sid).transpose()?;
        let state = self.state();
        let Some(run) = state.runs.get(run_id) else { return Ok(Vec::new()) };
        run.journal
            .iter()
            .filter(|(sid, _)| after.is_none_or(|a| *sid > a))
            .take(limit.max(1))
            .map(|(sid, text)| decode_record(&sid_text(*sid), text))
            .collect()
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        if let Some(workflow) = &query.workflow {
            keel_proto::validate_workflow_name(workflow)?;
        }
        let limit = page_limit(query.limit);
        let cursor = query.cursor.as_deref().map(parse_cursor).transpose()?;
        let state = self.state();
        // Newest first; ties broken by id, descending, as a Redis sorted set does.
        let mut matching: Vec<(u64, &RunId, &Run)> = state
            .runs
            .iter()
            .filter(|(_, run)| query.workflow.as_ref().is_none_or(|wf| &run.workflow == wf))
            .filter(|(_, run)| query.status.is_none_or(|st| run.status == st))
            .filter(|(_, run)| query.label.as_ref().is_none_or(|(k, v)| run.labels.get(k) == Some(v)))
            .filter(|(_, run)| query.created_after_ms.is_none_or(|after| run.created >= after))
            .filter(|(_, run)| query.created_before_ms.is_none_or(|before| run.created < before))
            .map(|(id, run)| (run.created, id, run))
            .collect();
        matching.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)));
        let start = match &cursor {
            Some((ms, id)) => matching.iter().position(|(c, i, _)| (*c, *i) < (*ms, id)).unwrap_or(matching.len()),
            None => 0,
        };
        let mut runs: Vec<RunSummary> =
            matching[start..].iter().take(limit + 1).map(|(_, id, run)| run.summary(id)).collect();
        let more = runs.len() > limit;
        runs.truncate(limit);
        let next_cursor = if more { runs.last().map(make_cursor) } else { None };
        Ok(RunPage { runs, next_cursor })
    }

    async fn expire_finished(&self, limit: usize) -> Result<usize> {
        let now = self.now_ms();
        let mut state = self.state();
        let due: Vec<(u64, RunId)> =
            state.retention.iter().take_while(|(at, _)| *at <= now).take(limit.max(1)).cloned().collect();
        for entry in &due {
            state.retention.remove(entry);
            if let Some(run) = state.runs.remove(&entry.1)
                && let Some(key) = run.idempotency_key
                && state.idempotency.get(&key).is_some_and(|(id, _)| id == &entry.1)
            {
                state.idempotency.remove(&key);
            }
        }
        // Expired lookback logs, idempotency keys and worker registrations go too,
        // as their Redis TTLs would make them.
        state.events.retain(|_, log| log.expires_at > now);
        state.idempotency.retain(|_, (_, expires)| *expires > now);
        state.workers.retain(|_, (_, expires)| *expires > now);
        Ok(due.len())
    }

    async fn reconcile(&self, limit: usize) -> Result<Vec<RunId>> {
        let now = self.now_ms();
        let mut state = self.state();
        let mut fixed = Vec::new();
        let mut stuck: Vec<RunId> = Vec::new();
        let mut untimed: Vec<(RunId, u64)> = Vec::new();
        for (id, run) in &state.runs {
            match run.status {
                // Parked runs have no task on purpose: unpark queues them.
                RunStatus::Pending | RunStatus::Running if run.blocked.is_none() => {
                    let queued = run.task.is_some_and(|t| {
                        state
                            .queues
                            .get(&queue_name(&run.workflow, run.priority))
                            .is_some_and(|q| q.entries.contains_key(&t))
                    });
                    if !queued && run.live_lease(now).is_none() {
                        stuck.push(id.clone());
                    }
                }
                RunStatus::Sleeping | RunStatus::Waiting => {
                    if let Some(at) = run.wake
                        && !state.timers.contains(&(at, id.clone()))
                    {
                        untimed.push((id.clone(), at));
                    }
                }
                _ => {}
            }
        }
        for id in stuck.into_iter().take(limit.max(1)) {
            state.run_mut(&id)?.status = RunStatus::Pending;
            state.enqueue(&id, now)?;
            fixed.push(id);
        }
        for (id, at) in untimed.into_iter().take(limit.max(1)) {
            state.timers.insert((at, id.clone()));
            fixed.push(id);
        }
        drop(state);
        if !fixed.is_empty() {
            self.queued.notify_waiters();
        }
        Ok(fixed)
    }

    async fn pause(&self, run_id: &RunId) -> Result<PauseOutcome> {
        let now = self.now_ms();
        let mut state = self.state();
        let run = state.runs.get(run_id).ok_or_else(|| Error::RunNotFound(run_id.clone()))?;
        if run.status.is_final() {
            return Err(Error::RunFinal { run_id: run_id.clone(), status: run.status });
        }
        if run.status == RunStatus::Paused {
            return Ok(PauseOutcome::Paused);
        }
        let unheld =
            run.status == RunStatus::Pending || (run.status == RunStatus::Running && run.live_lease(now).is_none());
        if unheld {
            let (queue, task) = (queue_name(&run.workflow, run.priority), run.task);
            state.ack(&queue, task);
            let run = state.run_mut(run_id)?;
            run.task = None;
            run.lease = None;
            run.updated = now;
            run.status = RunStatus::Paused;
            state.append(run_id, vec![encode_event(&JournalEvent::RunPaused {})?], now)?;
            return Ok(PauseOutcome::Paused);
        }
        state.run_mut(run_id)?.pause_requested = true;
        Ok(PauseOutcome::Requested)
    }

    async fn resume(&self, run_id: &RunId) -> Result<ResumeOutcome> {
        let now = self.now_ms();
        let mut state = self.state();
        let run = state.run_mut(run_id)?;
        if run.status.is_final() {
            return Err(Error::RunFinal { run_id: run_id.clone(), status: run.status });
        }
        run.pause_requested = false;
        if run.status != RunStatus::Paused {
            return Ok(ResumeOutcome::NotPaused);
        }
        run.updated = now;
        run.status = RunStatus::Pending;
        state.append(run_id, vec![encode_event(&JournalEvent::RunResumed {})?], now)?;
        state.enqueue(run_id, now)?;
        drop(state);
        self.queued.notify_waiters();
        Ok(ResumeOutcome::Resumed)
    }

    async fn retry(&self, run_id: &RunId) -> Result<()> {
        let now = self.now_ms();
        let mut state = self.state();
        let run = state.run_mut(run_id)?;
        if run.status != RunStatus::Failed {
            return Err(Error::NotFailed { run_id: run_id.clone(), status: run.status });
        }
        run.error = None;
        run.finished = None;
        run.updated = now;
        run.status = RunStatus::Pending;
        state.retention.retain(|(_, id)| id != run_id);
        state.append(run_id, vec![encode_event(&JournalEvent::RunRetried {})?], now)?;
        state.enqueue(run_id, now)?;
        drop(state);
        self.queued.notify_waiters();
        Ok(())
    }

    async fn watch_journal(&self, run_id: &RunId, after: Option<&str>, block: Duration) -> Result<Vec<JournalRecord>> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found = self.read_journal(run_id, after, 1000).await?;
            if !found.is_empty() {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn wait_finished(&self, run_id: &RunId, timeout: Duration) -> Result<Option<RunSummary>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let run = self.get_run(run_id).await?;
            if run.as_ref().is_none_or(|r| r.status.is_final()) {
                return Ok(run);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get_run(run_id).await;
            }
        }
    }

    async fn unpark(&self, workflow: &str, versions: &[u32]) -> Result<Vec<RunId>> {
        let now = self.now_ms();
        let mut state = self.state();
        let parked: Vec<RunId> = state
            .runs
            .iter()
            .filter(|(_, run)| {
                run.blocked.is_some()
                    && run.workflow == workflow
                    && versions.contains(&run.version)
                    && !run.status.is_final()
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &parked {
            state.run_mut(id)?.blocked = None;
            state.runnable(id, now)?;
        }
        drop(state);
        if !parked.is_empty() {
            self.queued.notify_waiters();
        }
        Ok(parked)
    }
}

impl MemoryStore {
    /// create.lua: `create_run`, or with `claim`, `create_claimed`.
    fn create(&self, req: CreateRun, claim: Option<&ClaimOnCreate>) -> Result<(Created, Option<ClaimedTask>)> {
        validate_create(&req, &self.config)?;
        let client_chose = req.run_id.is_some();
        let id = match req.run_id.clone() {
            Some(id) => id,
            None => RunId::new(uuid::Uuid::now_v7().to_string())?,
        };
        let fp = fingerprint(&req);
        let now = self.now_ms();
        let mut state = self.state();
        if let Some(key) = &req.idempotency_key
            && let Some((existing, expires)) = state.idempotency.get(key).cloned()
            && expires > now
            && let Some(run) = state.runs.get(&existing)
        {
            if run.fingerprint == fp && (!client_chose || existing == id) {
                return Ok((Created { run_id: existing, created: false }, None));
            }
            return Err(Error::IdempotencyConflict { run_id: existing, what: "idempotency key" });
        }
        let idem_expiry = now + self.config.idempotency_ttl.as_millis() as u64;
        if let Some(run) = state.runs.get(&id) {
            if run.fingerprint != fp {
                return Err(Error::IdempotencyConflict { run_id: id, what: "run id" });
            }
            if let Some(key) = &req.idempotency_key {
                state.idempotency.insert(key.clone(), (id.clone(), idem_expiry));
            }
            return Ok((Created { run_id: id, created: false }, None));
        }
        let started = encode_event(&JournalEvent::RunStarted {
            workflow: req.workflow.clone(),
            version: req.version,
            input: req.input.clone(),
            parent: req.parent.clone(),
            labels: req.labels.clone(),
        })?;
        let delay = req.delay.map_or(0, |d| d.as_millis() as u64);
        state.runs.insert(
            id.clone(),
            Run {
                priority: req.priority(),
                flow_control: req.flow_control.clone(),
                workflow: req.workflow,
                version: req.version,
                status: if delay > 0 { RunStatus::Sleeping } else { RunStatus::Pending },
                created: now,
                updated: now,
                finished: None,
                epoch: 0,
                completed: 0,
                total: None,
                current: None,
                wake: None,
                wait_keys: Vec::new(),
                wait_steps: Vec::new(),
                event_floor: HashMap::new(),
                cancel_requested: false,
                pause_requested: false,
                callback_url: req.callback_url,
                output: None,
                error: None,
                parent: req.parent,
                labels: req.labels,
                task: None,
                fingerprint: fp,
                idempotency_key: req.idempotency_key.clone(),
                journal: Vec::new(),
                lease: None,
                blocked: None,
            },
        );
        state.append(&id, vec![started], now)?;
        if let Some(key) = req.idempotency_key {
            state.idempotency.insert(key, (id.clone(), idem_expiry));
        }
        let created = Created { run_id: id.clone(), created: true };
        if delay > 0 {
            state.run_mut(&id)?.wake = Some(now.saturating_add(delay));
            state.timers.insert((now.saturating_add(delay), id.clone()));
        } else if let Some(claim) = claim {
            // create.lua's claim: leased at epoch 1, no task.
            let run = state.run_mut(&id)?;
            run.epoch = 1;
            run.lease = Some((format!("{}:1", claim.worker_id), now + claim.lease.as_millis() as u64));
            run.status = RunStatus::Running;
            let journal = run
                .journal
                .iter()
                .map(|(sid, text)| decode_record(&sid_text(*sid), text))
                .collect::<Result<Vec<_>>>()?;
            let task = ClaimedTask {
                lease: Lease {
                    run_id: id.clone(),
                    workflow: run.workflow.clone(),
                    worker_id: claim.worker_id.clone(),
                    epoch: 1,
                    task_id: String::new(),
                    priority: run.priority,
                },
                run: run.summary(&id),
                journal,
                deliveries: 1,
                now_ms: now,
            };
            return Ok((created, Some(task)));
        } else {
            state.enqueue(&id, now)?;
            drop(state);
            self.queued.notify_waiters();
        }
        Ok((created, None))
    }
}
