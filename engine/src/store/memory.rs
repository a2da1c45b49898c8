//! [`MemoryStore`]: the same operations as the Redis store, in process.
//!
//! For `keel dev` without Redis and for workflow authors' unit tests. It mirrors
//! the Lua scripts step by step (one mutex section per operation stands for one
//! script), including stream ids, consumer-group delivery counts, idle times and
//! lease expiry by the wall clock, so the conformance suite holds it to the same
//! behaviour. It spawns no tasks; blocking claims wait on a [`Notify`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use keel_proto::{
    ChildOutcome, DeliveryJob, ErrorInfo, JournalEvent, JournalRecord, ParentRef, RunId, RunPage, RunStatus,
    RunSummary, WebhookDelivery, WebhookEventType, WebhookSubscription, WorkerInfo,
};
use serde_json::Value as Json;
use tokio::sync::Notify;

use super::{
    Appended, CancelOutcome, Claim, ClaimedTask, CreateRun, Created, DeadLetter, Delivered, Finish, Finished, Lease,
    OutboxItem, PauseOutcome, ResumeOutcome, RunQuery, Stats, Store, SummaryPatch, child_event_key, decode_record,
    encode_event, fingerprint, make_cursor, page_limit, parse_cursor, validate_claim, validate_create,
    validate_suspension,
};
use crate::clock::{Clock, SystemClock};
use crate::{Error, Result, StoreConfig};

/// A stream id: `(ms, n)`, shown as `ms-n`.
type Sid = (u64, u64);

fn sid_text(id: Sid) -> String {
    format!("{}-{}", id.0, id.1)
}

/// The webhook event of a serialized journal entry, as prelude.lua's `HOOKS`.
fn webhook_type(entry: &str) -> Option<WebhookEventType> {
    let kind = entry.strip_prefix("{\"v\":")?.split_once(",\"type\":\"")?.1.split('"').next()?;
    match kind {
        "run_started" => Some(WebhookEventType::RunStarted),
        "step_completed" => Some(WebhookEventType::StepCompleted),
        "step_failed" => Some(WebhookEventType::StepFailed),
        "run_completed" => Some(WebhookEventType::RunCompleted),
        "run_failed" => Some(WebhookEventType::RunFailed),
        "run_cancelled" => Some(WebhookEventType::RunCancelled),
        _ => None,
    }
}

fn parse_sid(s: &str) -> Result<Sid> {
    s.split_once('-')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| Error::Invalid(format!("{s:?} is not a journal sequence number (<ms>-<n>)")))
}

/// The in-process [`Store`].
pub struct MemoryStore {
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Woken whenever a task is queued.
    queued: Notify,
    /// Woken whenever a journal grows (watchers, the outbox).
    appended: Notify,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore").field("namespace", &self.config.namespace).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    last_id: Sid,
    /// (event key, client id) -> the event id it got, and until when it counts.
    event_ids: HashMap<(String, String), (String, u64)>,
    runs: HashMap<RunId, Run>,
    queues: HashMap<String, Queue>,
    timers: BTreeSet<(u64, RunId)>,
    waiters: HashMap<String, BTreeSet<RunId>>,
    events: HashMap<String, EventLog>,
    idempotency: HashMap<String, (RunId, u64)>,
    retention: BTreeSet<(u64, RunId)>,
    dead: Vec<DeadLetter>,
    workers: HashMap<String, (WorkerInfo, u64)>,
    webhooks: BTreeMap<String, WebhookSubscription>,
    /// Webhook events not yet fanned out; `outbox_taken` holds the claimed ones.
    outbox: BTreeMap<Sid, OutboxItem>,
    outbox_taken: HashMap<Sid, u64>,
    /// Delivery job JSON -> due time, and the reverse index.
    jobs: HashMap<String, u64>,
    delivery_logs: HashMap<String, VecDeque<WebhookDelivery>>,
    /// Set by every journal append, for `watch_journal`'s waiters.
    journal_changed: bool,
    stats: Stats,
}

struct Run {
    workflow: String,
    version: u32,
    status: RunStatus,
    created: u64,
    updated: u64,
    finished: Option<u64>,
    epoch: u64,
    completed: u32,
    total: Option<u32>,
    current: Option<String>,
    wake: Option<u64>,
    /// Waited-for keys and, aligned, the step waiting on each.
    wait_keys: Vec<String>,
    wait_steps: Vec<String>,
    /// Per event key, the newest event this run consumed.
    event_floor: HashMap<String, Sid>,
    cancel_requested: bool,
    pause_requested: bool,
    callback_url: Option<String>,
    output: Option<Json>,
    error: Option<ErrorInfo>,
    parent: Option<ParentRef>,
    labels: BTreeMap<String, String>,
    task: Option<Sid>,
    fingerprint: String,
    idempotency_key: Option<String>,
    journal: Vec<(Sid, String)>,
    /// Holder (`worker:epoch`) and expiry, ms.
    lease: Option<(String, u64)>,
    /// Parked by a claim: why no worker runs it (see [`Claim::versions`]).
    blocked: Option<String>,
}

impl Run {
    fn summary(&self, id: &RunId) -> RunSummary {
        RunSummary {
            run_id: id.clone(),
            workflow: self.workflow.clone(),
            version: self.version,
            status: self.status,
            created_at_ms: self.created,
            updated_at_ms: self.updated,
            finished_at_ms: self.finished,
            epoch: self.epoch,
            completed_steps: self.completed,
            total_steps: self.total,
            current_step: self.current.clone(),
            wake_at_ms: self.wake,
            waiting_for: self.wait_keys.clone(),
            cancel_requested: self.cancel_requested,
            pause_requested: self.pause_requested,
            output: self.output.clone(),
            error: self.error.clone(),
            parent: self.parent.clone(),
            labels: self.labels.clone(),
            callback_url: self.callback_url.clone(),
            blocked: self.blocked.clone(),
        }
    }

    fn live_lease(&self, now: u64) -> Option<&str> {
        self.lease.as_ref().filter(|(_, expires)| *expires > now).map(|(holder, _)| holder.as_str())
    }

    fn apply(&mut self, patch: &SummaryPatch, now: u64) {
        self.completed += patch.completed_delta;
        if let Some(step) = &patch.current_step {
            self.current = Some(step.clone());
        }
        if let Some(total) = patch.total_steps {
            self.total = Some(total);
        }
        self.updated = now;
    }
}

#[derive(Default)]
struct Queue {
    /// Entries not yet acked: undelivered ones and pending ones.
    entries: BTreeMap<Sid, RunId>,
    last_delivered: Sid,
    pending: HashMap<Sid, Pending>,
}

struct Pending {
    consumer: String,
    delivered_at: u64,
    deliveries: u32,
}

#[derive(Default)]
struct EventLog {
    entries: VecDeque<(Sid, String)>,
    expires_at: u64,
}

impl State {
    fn next_id(&mut self, now: u64) -> Sid {
        self.last_id = if now > self.last_id.0 { (now, 0) } else { (self.last_id.0, self.last_id.1 + 1) };
        self.last_id
    }

    fn run_mut(&mut self, id: &RunId) -> Result<&mut Run> {
        self.runs.get_mut(id).ok_or_else(|| Error::RunNotFound(id.clone()))
    }

    fn enqueue(&mut self, id: &RunId, now: u64) -> Result<()> {
        let tid = self.next_id(now);
        let run = self.run_mut(id)?;
        run.task = Some(tid);
        let workflow = run.workflow.clone();
        self.queues.entry(workflow).or_default().entries.insert(tid, id.clone());
        Ok(())
    }

    fn ack(&mut self, workflow: &str, tid: Option<Sid>) {
        if let (Some(tid), Some(queue)) = (tid, self.queues.get_mut(workflow)) {
            queue.entries.remove(&tid);
            queue.pending.remove(&tid);
        }
    }

    /// `journal_add` in prelude.lua: the entries, and their webhook events to the
    /// outbox when anyone listens.
    fn append(&mut self, id: &RunId, entries: Vec<String>, now: u64) -> Result<Vec<Sid>> {
        let sids: Vec<Sid> = entries.iter().map(|_| self.next_id(now)).collect();
        let listened = !self.webhooks.is_empty() || self.runs.get(id).is_some_and(|r| r.callback_url.is_some());
        if listened {
            for (sid, entry) in sids.iter().zip(&entries) {
                if let Some(event_type) = webhook_type(entry) {
                    let out = self.next_id(now);
                    self.outbox.insert(
                        out,
                        OutboxItem { id: sid_text(out), run_id: id.clone(), sequence: sid_text(*sid), event_type },
                    );
                }
            }
        }
        let workflow = self.run_mut(id)?.workflow.clone();
        for entry in &entries {
            self.count_stats(&workflow, entry);
        }
        let run = self.run_mut(id)?;
        run.journal.extend(sids.iter().copied().zip(entries));
        self.journal_changed = true;
        Ok(sids)
    }

    /// `count_stats` in prelude.lua.
    fn count_stats(&mut self, workflow: &str, entry: &str) {
        let Ok(parsed) = serde_json::from_str::<keel_proto::JournalEntry>(entry) else { return };
        let stat = match &parsed.event {
            JournalEvent::RunStarted { .. } => "started",
            JournalEvent::RunCompleted { .. } => "completed",
            JournalEvent::RunFailed { .. } => "failed",
            JournalEvent::RunCancelled { .. } => "cancelled",
            JournalEvent::StepCompleted { .. } => "steps_completed",
            JournalEvent::StepFailed { .. } => "steps_failed",
            _ => return,
        };
        *self.stats.counters.entry((workflow.to_owned(), stat.to_owned())).or_default() += 1;
        if let JournalEvent::StepCompleted { duration_ms: Some(ms), .. } = parsed.event {
            let bound = super::STEP_MS_BUCKETS.iter().copied().find(|b| ms <= *b);
            *self.stats.step_ms_buckets.entry(bound).or_default() += 1;
            self.stats.step_ms_sum += ms;
        }
    }

    fn clear_wait(&mut self, id: &RunId) -> Result<()> {
        let run = self.run_mut(id)?;
        let keys = std::mem::take(&mut run.wait_keys);
        run.wait_steps.clear();
        let wake = run.wake.take();
        for key in keys {
            if let Some(set) = self.waiters.get_mut(&key) {
                set.remove(id);
                if set.is_empty() {
                    self.waiters.remove(&key);
                }
            }
        }
        if let Some(at) = wake {
            self.timers.remove(&(at, id.clone()));
        }
        Ok(())
    }

    fn wake(&mut self, id: &RunId, now: u64) -> Result<()> {
        self.clear_wait(id)?;
        self.runnable(id, now).map(|_| ())
    }

    /// `runnable` in prelude.lua: paused here if a pause was asked for, else
    /// pending with a task. Whether a task was queued.
    fn runnable(&mut self, id: &RunId, now: u64) -> Result<bool> {
        if self.run_mut(id)?.pause_requested {
            self.run_mut(id)?.status = RunStatus::Paused;
            self.append(id, vec![encode_event(&JournalEvent::RunPaused {})?], now)?;
            return Ok(false);
        }
        self.run_mut(id)?.status = RunStatus::Pending;
        self.enqueue(id, now)?;
        Ok(true)
    }

    fn finalize(&mut self, id: &RunId, status: RunStatus, now: u64, retention: Duration) -> Result<()> {
        let run = self.run_mut(id)?;
        run.status = status;
        run.finished = Some(now);
        run.updated = now;
        run.task = None;
        run.cancel_requested = false;
        run.pause_requested = false;
        run.lease = None;
        run.blocked = None;
        self.retention.insert((now + retention.as_millis() as u64, id.clone()));
        Ok(())
    }

    /// The fence, as in `prelude.lua`: epoch current, run running, lease (if any
    /// still live) ours.
    fn fenced(&mut self, lease: &Lease, now: u64) -> Result<&mut Run> {
        let lost = || Error::LeaseLost { run_id: lease.run_id.clone(), epoch: lease.epoch };
        let run = self.runs.get_mut(&lease.run_id).ok_or_else(lost)?;
        let holder = format!("{}:{}", lease.worker_id, lease.epoch);
        if run.epoch != lease.epoch || run.status != RunStatus::Running {
            return Err(lost());
        }
        if run.live_lease(now).is_some_and(|h| h != holder) {
            return Err(lost());
        }
        Ok(run)
    }

    /// `deliver` in prelude.lua: keep the event for the lookback, wake each waiter once.
    fn deliver(&mut self, config: &StoreConfig, key: &str, data: &Json, now: u64) -> Result<(Sid, Vec<RunId>)> {
        let text = serde_json::to_string(data).map_err(|e| Error::Invalid(e.to_string()))?;
        let sid = self.next_id(now);
        let log = self.events.entry(key.to_owned()).or_default();
        if log.expires_at <= now {
            log.entries.clear();
        }
        log.entries.push_back((sid, text));
        while log.entries.len() > config.event_lookback_max.max(1) {
            log.entries.pop_front();
        }
        log.expires_at = now + config.event_lookback.as_millis() as u64;
        let waiting: Vec<RunId> = self.waiters.get(key).map(|set| set.iter().cloned().collect()).unwrap_or_default();
        let mut woken = Vec::new();
        for id in waiting {
            let step = self
                .runs
                .get(&id)
                .filter(|run| run.status == RunStatus::Waiting)
                .and_then(|run| run.wait_keys.iter().position(|k| k == key).map(|i| run.wait_steps[i].clone()));
            let Some(step_id) = step else {
                if let Some(set) = self.waiters.get_mut(key) {
                    set.remove(&id);
                }
                continue;
            };
            let event = JournalEvent::EventReceived {
                step_id,
                event_key: key.to_owned(),
                event_id: sid_text(sid),
                data: data.clone(),
            };
            self.append(&id, vec![encode_event(&event)?], now)?;
            let run = self.run_mut(&id)?;
            run.apply(&SummaryPatch::of(std::slice::from_ref(&event)), now);
            run.event_floor.insert(key.to_owned(), sid);
            self.wake(&id, now)?;
            woken.push(id);
        }
        Ok((sid, woken))
    }

    /// `notify_parent` in prelude.lua: a finished child tells its parent how it ended.
    fn notify_parent(&mut self, config: &StoreConfig, id: &RunId, outcome: &ChildOutcome, now: u64) -> Result<()> {
        if self.runs.get(id).is_some_and(|run| run.parent.is_some()) {
            let data = serde_json::to_value(outcome).map_err(|e| Error::Invalid(e.to_string()))?;
            self.deliver(config, &child_event_key(id), &data, now)?;
        }
        Ok(())
    }

    /// claim.lua for one delivery already handed to `worker`.
    fn claim_one(
        &mut self,
        config: &StoreConfig,
        req: &Claim,
        workflow: &str,
        tid: Sid,
        now: u64,
    ) -> Result<Option<ClaimedTask>> {
        let Some(queue) = self.queues.get(workflow) else { return Ok(None) };
        let (Some(pending), Some(run_id)) = (queue.pending.get(&tid), queue.entries.get(&tid)) else {
            return Ok(None);
        };
        if pending.consumer != req.worker_id {
            return Ok(None);
        }
        let deliveries = pending.deliveries;
        let run_id = run_id.clone();
        let Some(run) = self.runs.get(&run_id) else {
            self.ack(workflow, Some(tid));
            return Ok(None);
        };
        if run.status.is_final() || run.task != Some(tid) {
            self.ack(workflow, Some(tid));
            return Ok(None);
        }
        if run.live_lease(now).is_some() {
            return Ok(None);
        }
        if let Some(versions) = req.versions.get(workflow)
            && !versions.contains(&run.version)
        {
            let reason = format!("no live worker has {workflow} v{}", run.version);
            self.ack(workflow, Some(tid));
            let run = self.run_mut(&run_id)?;
            run.task = None;
            run.status = RunStatus::Pending;
            run.blocked = Some(reason);
            return Ok(None);
        }
        if deliveries > config.max_deliveries {
            let reason = super::dead_letter_reason(config.max_deliveries);
            let error = ErrorInfo::new("dead_lettered", reason.clone());
            self.dead.push(DeadLetter {
                run_id: run_id.clone(),
                workflow: workflow.to_owned(),
                task_id: sid_text(tid),
                deliveries,
                reason,
                at_ms: now,
            });
            let entry = encode_event(&JournalEvent::RunFailed { error: error.clone() })?;
            self.append(&run_id, vec![entry], now)?;
            self.run_mut(&run_id)?.error = Some(error.clone());
            self.finalize(&run_id, RunStatus::Failed, now, config.retention)?;
            self.ack(workflow, Some(tid));
            self.notify_parent(config, &run_id, &ChildOutcome::Failed { error }, now)?;
            return Ok(None);
        }
        let run = self.run_mut(&run_id)?;
        run.epoch += 1;
        run.lease = Some((format!("{}:{}", req.worker_id, run.epoch), now + req.lease.as_millis() as u64));
        run.status = RunStatus::Running;
        run.updated = now;
        let journal =
            run.journal.iter().map(|(sid, text)| decode_record(&sid_text(*sid), text)).collect::<Result<Vec<_>>>()?;
        Ok(Some(ClaimedTask {
            lease: Lease {
                run_id: run_id.clone(),
                workflow: workflow.to_owned(),
                worker_id: req.worker_id.clone(),
                epoch: run.epoch,
                task_id: sid_text(tid),
            },
            run: run.summary(&run_id),
            journal,
            deliveries,
            now_ms: now,
        }))
    }
}

impl MemoryStore {
    pub fn new(config: StoreConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A store whose time is `clock` (a [`ManualClock`](crate::ManualClock) lets tests skip time).
    pub fn with_clock(config: StoreConfig, clock: Arc<dyn Clock>) -> Self {
        Self { config, clock, state: Mutex::new(State::default()), queued: Notify::new(), appended: Notify::new() }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn state(&self) -> StateGuard<'_> {
        // A panic while holding the lock leaves the state as consistent as the
        // step that panicked; carrying on is what a restarted Redis would do too.
        StateGuard {
            guard: self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            appended: &self.appended,
        }
    }

    fn try_claim_new(&self, req: &Claim) -> Result<Vec<ClaimedTask>> {
        let now = self.now_ms();
        let mut state = self.state();
        let mut delivered = Vec::new();
        for workflow in &req.workflows {
            let queue = state.queues.entry(workflow.clone()).or_default();
            let fresh: Vec<Sid> = queue
                .entries
                .range((std::ops::Bound::Excluded(queue.last_delivered), std::ops::Bound::Unbounded))
                .map(|(tid, _)| *tid)
                .take(req.max.max(1) - delivered.len())
                .collect();
            for tid in fresh {
                queue.last_delivered = tid;
                queue
                    .pending
                    .insert(tid, Pending { consumer: req.worker_id.clone(), delivered_at: now, deliveries: 1 });
                delivered.push((workflow.clone(), tid));
            }
            if delivered.len() >= req.max.max(1) {
                break;
            }
        }
        let mut claimed = Vec::new();
        for (workflow, tid) in delivered {
            claimed.extend(state.claim_one(&self.config, req, &workflow, tid, now)?);
        }
        Ok(claimed)
    }

    fn queued_any(&self, req: &Claim) -> bool {
        let state = self.state();
        req.workflows.iter().any(|wf| {
            state.queues.get(wf).is_some_and(|q| {
                q.entries
                    .range((std::ops::Bound::Excluded(q.last_delivered), std::ops::Bound::Unbounded))
                    .next()
                    .is_some()
            })
        })
    }
}

/// The state, locked; tells journal watchers when an operation appended.
struct StateGuard<'a> {
    guard: MutexGuard<'a, State>,
    appended: &'a Notify,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.guard.journal_changed) {
            self.appended.notify_waiters();
        }
    }
}

/// Fault injection for the conformance suite: what a Redis that lost its last
/// writes, or restarted empty, looks like to this store.
#[doc(hidden)]
impl MemoryStore {
    /// Drop every queued task, as if Redis lost the queue streams' last writes.
    pub fn lose_queued_tasks(&self) {
        self.state().queues.clear();
    }

    /// Forget everything, as a Redis restarted without persistence would.
    pub fn wipe(&self) {
        *self.state() = State::default();
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(StoreConfig::default())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    async fn create_run(&self, req: CreateRun) -> Result<Created> {
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
                return Ok(Created { run_id: existing, created: false });
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
            return Ok(Created { run_id: id, created: false });
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
        if delay > 0 {
            state.run_mut(&id)?.wake = Some(now.saturating_add(delay));
            state.timers.insert((now.saturating_add(delay), id.clone()));
        } else {
            state.enqueue(&id, now)?;
            drop(state);
            self.queued.notify_waiters();
        }
        Ok(Created { run_id: id, created: true })
    }

    async fn claim(&self, req: &Claim) -> Result<Vec<ClaimedTask>> {
        validate_claim(req)?;
        let deadline = tokio::time::Instant::now() + req.block;
        loop {
            let notified = self.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.queued_any(req) {
                let claimed = self.try_claim_new(req)?;
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
        for workflow in &req.workflows {
            let Some(queue) = state.queues.get_mut(workflow) else { continue };
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
                    taken.push((workflow.clone(), tid));
                }
            }
        }
        let mut claimed = Vec::new();
        for (workflow, tid) in taken {
            claimed.extend(state.claim_one(&self.config, req, &workflow, tid, now)?);
        }
        Ok(claimed)
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<()> {
        let now = self.now_ms();
        let mut state = self.state();
        let run = state.fenced(lease, now)?;
        run.lease = Some((format!("{}:{}", lease.worker_id, lease.epoch), now + ttl.as_millis().max(1) as u64));
        if let (Some(queue), Ok(tid)) = (state.queues.get_mut(&lease.workflow), parse_sid(&lease.task_id))
            && let Some(p) = queue.pending.get_mut(&tid)
        {
            p.consumer = lease.worker_id.clone();
            p.delivered_at = now;
        }
        Ok(())
    }

    async fn append(&self, lease: &Lease, events: &[JournalEvent]) -> Result<Appended> {
        super::validate_values(events, None, &self.config)?;
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
        super::validate_values(events, Some(&how), &self.config)?;
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
                state.ack(&lease.workflow, task);
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
                state.ack(&lease.workflow, task);
                state.notify_parent(&self.config, id, &ChildOutcome::Cancelled, now)?;
                drop(state);
                self.queued.notify_waiters();
                return Ok(Finished::Cancelled);
            }
            Finish::Suspend(_) => None,
        };
        if let Some(status) = final_status {
            state.finalize(id, status, now, retention)?;
            state.ack(&lease.workflow, task);
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
        let waits = super::flatten_waits(&suspension);
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
        state.ack(&lease.workflow, task);
        let run = state.run_mut(id)?;
        run.task = None;
        run.lease = None;
        run.status = if waits.is_empty() { RunStatus::Sleeping } else { RunStatus::Waiting };
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
        super::validate_delivery(key, data, client_id, &self.config)?;
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
        let (workflow, task) = (run.workflow.clone(), run.task);
        state.append(run_id, vec![requested, cancelled], now)?;
        state.clear_wait(run_id)?;
        state.ack(&workflow, task);
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

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.state().dead.iter().rev().take(limit.max(1)).cloned().collect())
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
                    let queued = run
                        .task
                        .is_some_and(|t| state.queues.get(&run.workflow).is_some_and(|q| q.entries.contains_key(&t)));
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
            let (workflow, task) = (run.workflow.clone(), run.task);
            state.ack(&workflow, task);
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

    async fn put_webhook(&self, subscription: &WebhookSubscription) -> Result<()> {
        self.state().webhooks.insert(subscription.id.clone(), subscription.clone());
        Ok(())
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookSubscription>> {
        let mut subs: Vec<WebhookSubscription> = self.state().webhooks.values().cloned().collect();
        subs.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(subs)
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        let mut state = self.state();
        state.delivery_logs.remove(id);
        Ok(state.webhooks.remove(id).is_some())
    }

    async fn claim_outbox(
        &self,
        _consumer: &str,
        max: usize,
        block: Duration,
        stale: Duration,
    ) -> Result<Vec<OutboxItem>> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let now = self.now_ms();
                let mut state = self.state();
                let taken_before = now.saturating_sub(stale.as_millis() as u64);
                let free: Vec<Sid> = state
                    .outbox
                    .keys()
                    .filter(|sid| state.outbox_taken.get(sid).is_none_or(|at| *at <= taken_before))
                    .take(max.max(1))
                    .copied()
                    .collect();
                if !free.is_empty() {
                    let mut items = Vec::new();
                    for sid in free {
                        state.outbox_taken.insert(sid, now);
                        items.extend(state.outbox.get(&sid).cloned());
                    }
                    return Ok(items);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn fan_out(&self, item_id: &str, jobs: &[DeliveryJob]) -> Result<()> {
        let sid = parse_sid(item_id)?;
        let now = self.now_ms();
        let mut state = self.state();
        state.outbox_taken.remove(&sid);
        // Fanned out already (by a dispatcher that took it before us): nothing to add.
        if state.outbox.remove(&sid).is_none() {
            return Ok(());
        }
        for job in jobs {
            let member = serde_json::to_string(job).map_err(|e| Error::Invalid(e.to_string()))?;
            state.jobs.entry(member).or_insert(now);
        }
        Ok(())
    }

    async fn due_jobs(&self, max: usize, visibility: Duration) -> Result<Vec<DeliveryJob>> {
        let now = self.now_ms();
        let mut state = self.state();
        let mut due: Vec<(u64, String)> =
            state.jobs.iter().filter(|(_, at)| **at <= now).map(|(job, at)| (*at, job.clone())).collect();
        due.sort();
        due.truncate(max.max(1));
        let mut out = Vec::new();
        for (_, member) in due {
            state.jobs.insert(member.clone(), now + visibility.as_millis() as u64);
            out.push(serde_json::from_str(&member).map_err(|e| Error::corrupt("delivery job", e))?);
        }
        Ok(out)
    }

    async fn update_job(&self, job: &DeliveryJob, next: Option<(&DeliveryJob, Duration)>) -> Result<()> {
        let now = self.now_ms();
        let mut state = self.state();
        state.jobs.remove(&serde_json::to_string(job).map_err(|e| Error::Invalid(e.to_string()))?);
        if let Some((next, delay)) = next {
            let member = serde_json::to_string(next).map_err(|e| Error::Invalid(e.to_string()))?;
            state.jobs.insert(member, now + delay.as_millis() as u64);
        }
        Ok(())
    }

    async fn log_delivery(&self, log: &str, delivery: &WebhookDelivery) -> Result<()> {
        let mut state = self.state();
        let entries = state.delivery_logs.entry(log.to_owned()).or_default();
        entries.push_front(delivery.clone());
        entries.truncate(super::DELIVERY_LOG_LEN);
        Ok(())
    }

    async fn deliveries(&self, log: &str, limit: usize) -> Result<Vec<WebhookDelivery>> {
        let state = self.state();
        Ok(state.delivery_logs.get(log).map(|l| l.iter().take(limit.max(1)).cloned().collect()).unwrap_or_default())
    }

    async fn stats(&self, workflows: &[String]) -> Result<Stats> {
        let state = self.state();
        let mut stats = state.stats.clone();
        stats.dead_letters = state.dead.len() as u64;
        for status in RunStatus::ALL {
            stats.runs_by_status.insert(status, state.runs.values().filter(|r| r.status == status).count() as u64);
        }
        for workflow in workflows {
            let (queued, in_flight) = state
                .queues
                .get(workflow)
                .map(|q| ((q.entries.len() - q.pending.len()) as u64, q.pending.len() as u64))
                .unwrap_or((0, 0));
            stats.queued.insert(workflow.clone(), queued);
            stats.in_flight.insert(workflow.clone(), in_flight);
        }
        Ok(stats)
    }

    async fn register_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<()> {
        let now = self.now_ms();
        let mut info = info.clone();
        info.heartbeat_at_ms = now;
        self.state().workers.insert(info.worker_id.clone(), (info, now + ttl.as_millis() as u64));
        Ok(())
    }

    async fn unregister_worker(&self, worker_id: &str) -> Result<()> {
        self.state().workers.remove(worker_id);
        Ok(())
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

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        let now = self.now_ms();
        let mut state = self.state();
        state.workers.retain(|_, (_, expires)| *expires > now);
        let mut workers: Vec<WorkerInfo> = state.workers.values().map(|(info, _)| info.clone()).collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(workers)
    }
}
