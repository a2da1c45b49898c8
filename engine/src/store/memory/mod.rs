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
    Appended, CancelOutcome, Claim, ClaimOnCreate, ClaimedTask, CreateRun, Created, DeadLetter, Delivered, Finish,
    Finished, HookStore, Lease, OutboxItem, PauseOutcome, RegistryStore, ResumeOutcome, RunQuery, RunStore, Stats,
    Store, SummaryPatch, child_event_key, decode_record, encode_event, fingerprint, make_cursor, page_limit,
    parse_cursor, validate_claim, validate_create, validate_suspension,
};
use crate::clock::{Clock, SystemClock};

mod flow;
mod hooks;
mod inbox;
mod registry;
mod runs;
mod schedules;
use crate::{Error, Result, StoreConfig};

/// A stream id: `(ms, n)`, shown as `ms-n`.
type Sid = (u64, u64);

fn sid_text(id: Sid) -> String {
    format!("{}-{}", id.0, id.1)
}

/// The webhook event of a serialized journal entry (`JOURNAL_HOOKS`).
fn webhook_type(entry: &str) -> Option<WebhookEventType> {
    let kind = entry_kind(entry)?;
    super::JOURNAL_HOOKS.iter().find(|(k, _)| *k == kind).map(|(_, hook)| *hook)
}

/// The `type` of a serialized journal entry (keel-proto writes `{"v":N,"type":"..."`).
fn entry_kind(entry: &str) -> Option<&str> {
    entry.strip_prefix("{\"v\":")?.split_once(",\"type\":\"")?.1.split('"').next()
}

fn parse_sid(s: &str) -> Result<Sid> {
    s.split_once('-')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| Error::Invalid(format!("{s:?} is not a journal sequence number (<ms>-<n>)")))
}

/// A queue's name: a workflow's runs of one priority (the Redis store's
/// `queue_at`: the default priority's is the workflow's name).
fn queue_name(workflow: &str, priority: u8) -> String {
    if priority == keel_proto::DEFAULT_PRIORITY { workflow.to_owned() } else { format!("{workflow}:p{priority}") }
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
    /// Claim reads made: every tenth goes lowest priority first (as in Redis).
    reads: std::sync::atomic::AtomicUsize,
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
    /// By [`queue_name`]: a workflow's runs of one priority.
    queues: HashMap<String, Queue>,
    timers: BTreeSet<(u64, RunId)>,
    waiters: HashMap<String, BTreeSet<RunId>>,
    events: HashMap<String, EventLog>,
    idempotency: HashMap<String, (RunId, u64)>,
    retention: BTreeSet<(u64, RunId)>,
    dead: Vec<DeadLetter>,
    workers: HashMap<String, (WorkerInfo, u64)>,
    /// The deployment's signing keys.
    signing_keys: SigningKeyRing,
    /// Flow-control keys by name (flow.rs).
    flow: BTreeMap<String, flow::FlowKey>,
    /// Run inboxes (inbox.rs) and the QStash signing key pair.
    inboxes: HashMap<RunId, inbox::Inbox>,
    qstash_keys: Option<(String, String)>,
    /// Runs taken off the QStash DLQ, until when.
    dlq_deleted: HashMap<RunId, u64>,
    /// Schedules by id, and their next ticks.
    schedules: BTreeMap<String, crate::store::StoredSchedule>,
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
    flow_control: Option<keel_proto::FlowControl>,
    workflow: String,
    version: u32,
    priority: u8,
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
            priority: self.priority,
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
            flow_control: self.flow_control.clone(),
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
        let queue = queue_name(&run.workflow, run.priority);
        self.queues.entry(queue).or_default().entries.insert(tid, id.clone());
        Ok(())
    }

    /// Ack and drop entry `tid` of queue `queue` ([`queue_name`]).
    fn ack(&mut self, queue: &str, tid: Option<Sid>) {
        if let (Some(tid), Some(queue)) = (tid, self.queues.get_mut(queue)) {
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
        let Some(&(_, stat)) = entry_kind(entry).and_then(|kind| super::JOURNAL_STATS.iter().find(|(k, _)| *k == kind))
        else {
            return;
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
        run.blocked = None;
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
        priority: u8,
        tid: Sid,
        now: u64,
    ) -> Result<Option<ClaimedTask>> {
        let queue_name = queue_name(workflow, priority);
        let Some(queue) = self.queues.get(&queue_name) else { return Ok(None) };
        let (Some(pending), Some(run_id)) = (queue.pending.get(&tid), queue.entries.get(&tid)) else {
            return Ok(None);
        };
        if pending.consumer != req.worker_id {
            return Ok(None);
        }
        let deliveries = pending.deliveries;
        let run_id = run_id.clone();
        let Some(run) = self.runs.get(&run_id) else {
            self.ack(&queue_name, Some(tid));
            return Ok(None);
        };
        if run.status.is_final() || run.task != Some(tid) {
            self.ack(&queue_name, Some(tid));
            return Ok(None);
        }
        if run.live_lease(now).is_some() {
            return Ok(None);
        }
        if let Some(versions) = req.versions.get(workflow)
            && !versions.contains(&run.version)
        {
            let reason = format!("no live worker has {workflow} v{}", run.version);
            self.ack(&queue_name, Some(tid));
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
            self.ack(&queue_name, Some(tid));
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
                priority,
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
        Self {
            config,
            clock,
            state: Mutex::new(State::default()),
            queued: Notify::new(),
            appended: Notify::new(),
            reads: std::sync::atomic::AtomicUsize::new(0),
        }
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

    fn try_claim_new(&self, req: &Claim, order: &[(&String, u8)]) -> Result<Vec<ClaimedTask>> {
        let now = self.now_ms();
        let mut state = self.state();
        let mut delivered = Vec::new();
        for &(workflow, priority) in order {
            let queue = state.queues.entry(queue_name(workflow, priority)).or_default();
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
                delivered.push((workflow.clone(), priority, tid));
            }
            if delivered.len() >= req.max.max(1) {
                break;
            }
        }
        let mut claimed = Vec::new();
        for (workflow, priority, tid) in delivered {
            claimed.extend(state.claim_one(&self.config, req, &workflow, priority, tid, now)?);
        }
        Ok(claimed)
    }

    /// The queues a claim reads, in order (as the Redis store: redis/claims.rs):
    /// highest priority first, every tenth claim lowest first.
    fn queue_order<'a>(&self, workflows: &'a [String]) -> Vec<(&'a String, u8)> {
        let n = self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut levels: Vec<u8> = keel_proto::PRIORITIES.rev().collect();
        if n % 10 == 9 {
            levels.reverse();
        }
        levels.into_iter().flat_map(|pr| workflows.iter().map(move |wf| (wf, pr))).collect()
    }

    fn queued_any(&self, req: &Claim) -> bool {
        let state = self.state();
        req.workflows.iter().flat_map(|wf| keel_proto::PRIORITIES.map(move |pr| queue_name(wf, pr))).any(|name| {
            state.queues.get(&name).is_some_and(|q| {
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

    fn wall_ms(&self) -> u64 {
        self.now_ms()
    }
}

/// The deployment's signing keys, oldest first, and the last key number given out.
#[derive(Debug, Default)]
struct SigningKeyRing {
    keys: Vec<crate::store::StoredSigningKey>,
    last: u64,
}

impl SigningKeyRing {
    fn add(&mut self, secret: &str, now_ms: u64) {
        self.last += 1;
        self.keys.push(crate::store::StoredSigningKey {
            id: format!("k{}", self.last),
            since_ms: now_ms,
            secret: secret.into(),
        });
    }
}
