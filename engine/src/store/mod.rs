//! The [`Store`] trait: the narrow set of atomic operations the engine needs.
//!
//! Every operation is one atomic step in the backing store (one Lua script in
//! Redis, one critical section in memory). Operations that act under a [`Lease`]
//! are fenced: if the run's epoch moved on, they fail with
//! [`Error::LeaseLost`](crate::Error::LeaseLost) and change nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use keel_proto::{
    DeliveryJob, ErrorInfo, FlowControl, FlowKeyStatus, JournalEntry, JournalEvent, JournalRecord, ParentRef, RunId,
    RunPage, RunStatus, RunSummary, ScheduleSpec, ScheduleState, WebhookDelivery, WebhookSubscription, WorkerInfo,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::{FlowRule, SlotAnswer, SlotRequest};
use crate::{Error, Result, StoreConfig};

pub mod memory;
pub mod redis;

/// Start a run.
#[derive(Debug, Clone, Default)]
pub struct CreateRun {
    pub workflow: String,
    pub version: u32,
    pub input: Value,
    /// A client-chosen id; a second create with the same id (and the same workflow
    /// and input) is the same run.
    pub run_id: Option<RunId>,
    /// Maps to one run for [`StoreConfig::idempotency_ttl`].
    pub idempotency_key: Option<String>,
    /// Start later: the first task is queued by the timer scheduler.
    pub delay: Option<Duration>,
    pub labels: BTreeMap<String, String>,
    pub parent: Option<ParentRef>,
    /// Also send this run's webhook events to this URL.
    pub callback_url: Option<String>,
    /// 1 to 5, higher claimed first ([`keel_proto::DEFAULT_PRIORITY`] when
    /// `None`). Not part of the run's fingerprint: a repeated start that only
    /// changes the priority is the same run.
    pub priority: Option<u8>,
    /// Every step of the run executes under this flow-control key.
    pub flow_control: Option<FlowControl>,
}

impl CreateRun {
    /// The priority the run gets.
    pub fn priority(&self) -> u8 {
        self.priority.unwrap_or(keel_proto::DEFAULT_PRIORITY)
    }
}

/// Who gets a run [`RunStore::create_claimed`] creates.
#[derive(Debug, Clone)]
pub struct ClaimOnCreate {
    pub worker_id: String,
    /// How long the lease lasts without renewal.
    pub lease: Duration,
}

/// The answer to [`Store::create_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub run_id: RunId,
    /// False when the run already existed (same idempotency key or run id).
    pub created: bool,
}

/// Take tasks from the queues of some workflows.
#[derive(Debug, Clone)]
pub struct Claim {
    pub workflows: Vec<String>,
    /// Unique per worker process start; never reused.
    pub worker_id: String,
    /// How long the lease lasts without renewal. Reclaiming takes tasks idle longer than this.
    pub lease: Duration,
    /// At most this many tasks at once.
    pub max: usize,
    /// How long to block waiting for a task when none is queued.
    pub block: Duration,
    /// The versions the claimer runs, per workflow (none listed: any version).
    /// A task of a run pinned to another version is not handed out: the run is
    /// parked (`blocked`) until [`Store::unpark`] by a worker that has it.
    pub versions: BTreeMap<String, Vec<u32>>,
}

/// The right to write a run's journal: held by one worker, under one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub run_id: RunId,
    pub workflow: String,
    pub worker_id: String,
    pub epoch: u64,
    /// The queue entry this lease came from; acked when the lease ends.
    pub task_id: String,
    /// The run's priority: which of the workflow's queues `task_id` is in.
    #[serde(default = "default_priority")]
    pub priority: u8,
}

fn default_priority() -> u8 {
    keel_proto::DEFAULT_PRIORITY
}

/// A claimed task: the lease, and what the worker needs to replay the run.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub lease: Lease,
    pub run: RunSummary,
    pub journal: Vec<JournalRecord>,
    /// How many times this task has been delivered (1 on the first delivery).
    pub deliveries: u32,
    /// The store's clock at the claim, Unix milliseconds: the time replay compares
    /// timers against.
    pub now_ms: u64,
}

/// What [`Store::append`] reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The sequence numbers of the appended entries, in order.
    pub seqs: Vec<String>,
    /// Somebody asked to cancel the run: stop at this step boundary.
    pub cancel_requested: bool,
    /// Somebody asked to pause the run: hand it back at this step boundary.
    pub pause_requested: bool,
}

/// How a lease ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Complete {
        output: Value,
    },
    Fail {
        error: ErrorInfo,
    },
    Cancel {
        reason: Option<String>,
    },
    /// Suspend until a timer fires or an event arrives, whichever comes first.
    Suspend(Suspension),
    /// Hand the run back at once (graceful shutdown): another worker may claim it now.
    Release,
}

/// What a suspended run waits for: a timer, events, or both; the first to come
/// wakes it. (A woken run replays and suspends again on what it still waits for.)
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Suspension {
    /// Wake the run at this store time (Unix ms).
    pub wake_at_ms: Option<u64>,
    /// One per step waiting (parallel branches may wait at once).
    pub waits: Vec<EventWait>,
    /// Why the run waits, for its status (e.g. `waiting for flow-control key
    /// "openai"`): the run shows as waiting, its timer wakes it.
    pub blocked: Option<String>,
}

/// One step waits for the first event on any of `keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventWait {
    pub step_id: String,
    pub keys: Vec<String>,
    /// When the wait began (Unix ms, store time). Events delivered up to the
    /// lookback window before this moment still count.
    pub since_ms: u64,
}

/// What [`Store::finish`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    Done,
    /// A suspension found its event already delivered (within the lookback): the
    /// `event_received` entry was appended, the lease is still held, go on.
    EventArrived(JournalRecord),
    /// A cancel was requested while the run was held; instead of suspending or
    /// handing back, the run was cancelled.
    Cancelled,
}

/// What [`Store::deliver_event`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub event_id: String,
    /// The runs this event woke (each gets it exactly once).
    pub woken: Vec<RunId>,
    /// The client's event id was seen before: this is that event, not delivered again.
    pub duplicate: bool,
}

/// What [`Store::request_cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The run was not held by a worker and is now cancelled.
    Cancelled,
    /// A worker holds the run; it stops at its next step boundary.
    Requested,
}

/// What [`Store::pause`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseOutcome {
    /// The run is paused now (or already was).
    Paused,
    /// It is held by a worker or suspended: it pauses at its next boundary or wake-up.
    Requested,
}

/// What [`Store::resume`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeOutcome {
    Resumed,
    /// It was not paused (a pause not yet taken was withdrawn, if any).
    NotPaused,
}

/// What /metrics reports, read from the store at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// `(workflow, stat)` -> count; stats: started, completed, failed, cancelled,
    /// steps_completed, steps_failed.
    pub counters: BTreeMap<(String, String), u64>,
    /// Step durations: (upper bound in ms, `None` for +Inf) -> count, not cumulative.
    pub step_ms_buckets: BTreeMap<Option<u64>, u64>,
    pub step_ms_sum: u64,
    /// Per workflow: tasks queued and not yet delivered, and delivered and not finished.
    pub queued: BTreeMap<String, u64>,
    pub in_flight: BTreeMap<String, u64>,
    pub dead_letters: u64,
    pub runs_by_status: BTreeMap<RunStatus, u64>,
    /// Requests Keel processes sent to Redis (a script call, a command or a
    /// pipeline is one round trip), as each reported them, about once a second.
    pub redis_round_trips: u64,
}

/// The upper bounds (ms) of the step duration histogram.
pub const STEP_MS_BUCKETS: [u64; 13] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000];

/// Journal entry types that are webhook events, and which. (The one place:
/// the Lua scripts get this table generated from it, see redis/scripts.rs.)
pub const JOURNAL_HOOKS: [(&str, keel_proto::WebhookEventType); 6] = [
    ("run_started", keel_proto::WebhookEventType::RunStarted),
    ("step_completed", keel_proto::WebhookEventType::StepCompleted),
    ("step_failed", keel_proto::WebhookEventType::StepFailed),
    ("run_completed", keel_proto::WebhookEventType::RunCompleted),
    ("run_failed", keel_proto::WebhookEventType::RunFailed),
    ("run_cancelled", keel_proto::WebhookEventType::RunCancelled),
];

/// Journal entry types counted for /metrics, and the counter each bumps
/// (`<workflow>|<stat>` in the stats hash). Generated into Lua like the above.
pub const JOURNAL_STATS: [(&str, &str); 6] = [
    ("run_started", "started"),
    ("run_completed", "completed"),
    ("run_failed", "failed"),
    ("run_cancelled", "cancelled"),
    ("step_completed", "steps_completed"),
    ("step_failed", "steps_failed"),
];

/// A webhook event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: String,
    pub run_id: RunId,
    pub sequence: String,
    pub event_type: keel_proto::WebhookEventType,
}

/// Filter and page through runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    /// Only runs with this label name and value.
    pub label: Option<(String, String)>,
    /// Only runs created at or after this (Unix ms).
    pub created_after_ms: Option<u64>,
    /// Only runs created before this (Unix ms).
    pub created_before_ms: Option<u64>,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// A task that was delivered too often and set aside, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub run_id: RunId,
    pub workflow: String,
    pub task_id: String,
    pub deliveries: u32,
    pub reason: String,
    pub at_ms: u64,
}

/// The engine's storage: every concern below, on one backend. See the module
/// documentation.
#[async_trait]
pub trait Store:
    RunStore + HookStore + RegistryStore + ScheduleStore + FlowStore + InboxStore + fmt::Debug + 'static
{
    fn config(&self) -> &StoreConfig;

    /// The store's clock, ms since the epoch: the wall clock, or a test's
    /// movable one (the memory store's). Schedules tick by it.
    fn wall_ms(&self) -> u64 {
        crate::Clock::now_ms(&crate::SystemClock)
    }

    /// Another handle on the same data whose connections are driven by the
    /// runtime this is awaited on (the worker renews leases through one on a
    /// thread of its own, so a step that blocks the main runtime cannot starve
    /// them). `None`: this store has no connections, use it as it is.
    async fn independent(&self) -> Result<Option<std::sync::Arc<dyn Store>>> {
        Ok(None)
    }
}

/// Runs and their transitions: create, claim under a lease, journal, suspend,
/// wake, finish, and the operators' controls; and reading them back.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Create a run with its `run_started` entry and its first task (or its start
    /// timer), atomically. Idempotent by key and by client run id.
    async fn create_run(&self, req: CreateRun) -> Result<Created>;

    /// [`create_run`](Self::create_run), the run created already leased to
    /// `claim.worker_id` (epoch 1, no task queued): a start handed straight to
    /// a worker in the same process (`keel dev`), one script instead of a
    /// create, a queue entry and a claim. The lease is as durable as a claimed
    /// one: if the worker dies, it lapses and reconciliation queues the run.
    /// A run that already existed or starts later is not claimed (`None`).
    async fn create_claimed(&self, req: CreateRun, claim: &ClaimOnCreate) -> Result<(Created, Option<ClaimedTask>)>;

    /// Take up to `req.max` new tasks, waiting up to `req.block` for one. Each comes
    /// with a fresh lease (epoch + 1) and the run's journal. Tasks of finished runs
    /// are acked and skipped; tasks delivered too often are dead-lettered.
    async fn claim(&self, req: &Claim) -> Result<Vec<ClaimedTask>>;

    /// Take over tasks whose holder's lease expired (never one whose lease is live).
    async fn reclaim_expired(&self, req: &Claim) -> Result<Vec<ClaimedTask>>;

    /// Extend a lease by `ttl` from now (store time). Fenced.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<()>;

    /// Append journal entries and update the summary. Fenced.
    async fn append(&self, lease: &Lease, events: &[JournalEvent]) -> Result<Appended>;

    /// Append the last entries of this lease and end it as `how` says, acking the
    /// task. Fenced.
    async fn finish(&self, lease: &Lease, events: &[JournalEvent], how: Finish) -> Result<Finished>;

    /// Queue a task for every run whose timer is due. Safe to run in many processes:
    /// each due timer yields exactly one task. Returns the woken runs.
    async fn fire_due_timers(&self, limit: usize) -> Result<Vec<RunId>>;

    /// Deliver an event to every run waiting on `key`, and keep it for the lookback
    /// window for runs that start waiting just after.
    async fn deliver_event(&self, key: &str, data: &Value) -> Result<Delivered> {
        self.deliver(key, data, None).await
    }

    /// [`deliver_event`](Self::deliver_event) with a client's id for the event:
    /// a repeat of an id seen on this key (for [`StoreConfig::idempotency_ttl`])
    /// is not delivered again and answers the first delivery's event id.
    async fn deliver(&self, key: &str, data: &Value, client_id: Option<&str>) -> Result<Delivered>;

    /// Cancel a run now if no worker holds it, else ask its worker to stop.
    async fn request_cancel(&self, run_id: &RunId, reason: Option<&str>) -> Result<CancelOutcome>;

    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunSummary>>;

    /// Journal entries after `after` (exclusive; from the start when `None`).
    async fn read_journal(&self, run_id: &RunId, after: Option<&str>, limit: usize) -> Result<Vec<JournalRecord>>;

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage>;

    /// Delete finished runs whose retention has passed, with every key and index
    /// entry they had. Returns how many were deleted.
    async fn expire_finished(&self, limit: usize) -> Result<usize>;

    /// Re-queue runs that should have a task but have none (pending with no queued
    /// task, running with neither lease nor task): the repair after Redis lost its
    /// last writes. Returns the runs re-queued.
    async fn reconcile(&self, limit: usize) -> Result<Vec<RunId>>;

    /// Hold a run between steps until resumed.
    async fn pause(&self, run_id: &RunId) -> Result<PauseOutcome>;

    async fn resume(&self, run_id: &RunId) -> Result<ResumeOutcome>;

    /// Run a failed run again from its failed step.
    async fn retry(&self, run_id: &RunId) -> Result<()>;

    /// Journal entries after `after`, waiting up to `block` for the first one
    /// (for long-polls and live progress; Redis: XREAD BLOCK, never polling).
    async fn watch_journal(&self, run_id: &RunId, after: Option<&str>, block: Duration) -> Result<Vec<JournalRecord>>;

    /// Wait up to `timeout` for the run to end (one blocking read on its end
    /// signal, not a wake-up per journal entry). The run as it stands then; `None`
    /// if it does not exist.
    async fn wait_finished(&self, run_id: &RunId, timeout: Duration) -> Result<Option<RunSummary>>;

    /// Queue again the runs of `workflow` pinned to one of `versions` that a
    /// claim parked (see [`Claim::versions`]): a worker that runs them is live.
    /// Returns them.
    async fn unpark(&self, workflow: &str, versions: &[u32]) -> Result<Vec<RunId>>;
}

/// Webhooks: subscriptions, the outbox every event goes through, delivery jobs
/// and receivers' delivery logs.
#[async_trait]
pub trait HookStore: Send + Sync {
    /// Add or replace a webhook subscription.
    async fn put_webhook(&self, subscription: &WebhookSubscription) -> Result<()>;

    async fn list_webhooks(&self) -> Result<Vec<WebhookSubscription>>;

    /// Whether it existed.
    async fn delete_webhook(&self, id: &str) -> Result<bool>;

    /// Take webhook events from the outbox (shared by the dispatchers of every
    /// server through a consumer group), new ones and ones another dispatcher
    /// took `stale` ago or longer and never finished.
    async fn claim_outbox(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
        stale: Duration,
    ) -> Result<Vec<OutboxItem>>;

    /// Turn an outbox event into delivery jobs and remove it from the outbox, atomically.
    async fn fan_out(&self, item: &OutboxItem, jobs: &[DeliveryJob]) -> Result<()>;

    /// Take due delivery jobs; each comes due again after `visibility` unless updated.
    async fn due_jobs(&self, max: usize, visibility: Duration) -> Result<Vec<DeliveryJob>>;

    /// A job is done (`next: None`) or comes back after a delay as its next attempt.
    async fn update_job(&self, job: &DeliveryJob, next: Option<(&DeliveryJob, Duration)>) -> Result<()>;

    /// Keep a delivery attempt in a receiver's log (the newest 100).
    async fn log_delivery(&self, log: &str, delivery: &WebhookDelivery) -> Result<()>;

    async fn deliveries(&self, log: &str, limit: usize) -> Result<Vec<WebhookDelivery>>;
}

/// Live workers, and what /metrics and operators read across runs.
#[async_trait]
pub trait RegistryStore: Send + Sync {
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Counters, queue depths and run counts for /metrics, for these workflows.
    /// (This process's own counts are flushed first; other processes' arrive
    /// within about a second of their transitions.)
    async fn stats(&self, workflows: &[String]) -> Result<Stats>;

    /// Write the /metrics counts this process still holds (a graceful
    /// shutdown calls it; stores that count in place have nothing to do).
    async fn flush_counters(&self) -> Result<()> {
        Ok(())
    }

    /// Register (or refresh) a live worker for `ttl`.
    async fn register_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<()>;

    /// Remove a worker's registration at once (its graceful shutdown).
    async fn unregister_worker(&self, worker_id: &str) -> Result<()>;

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>>;

    /// The deployment's signing keys (secrets as base64, as `KEEL_SIGNING_KEY`
    /// takes them), oldest first. With `offer`, a deployment that has none gets
    /// it as its first key, atomically (of concurrent offers, one wins). The
    /// secrets are never logged or answered by the API.
    async fn signing_keys(&self, offer: Option<&str>) -> Result<Vec<StoredSigningKey>>;

    /// Add `secret` as the deployment's newest signing key (a rotation); at
    /// most [`MAX_SIGNING_KEYS`] are active at once.
    async fn add_signing_key(&self, secret: &str) -> Result<Vec<StoredSigningKey>>;

    /// Retire key `id` (or the oldest): never the last one, and not before the
    /// newest key that stays has been out for `settle` (every process must
    /// have picked it up, or what it signs would verify with no listed key).
    async fn retire_signing_key(&self, id: Option<&str>, settle: Duration) -> Result<Vec<StoredSigningKey>>;
}

/// Flow control: slots, windows and waiters of flow-control keys, shared by
/// every run, worker and server (flow.rs has the rules).
#[async_trait]
pub trait FlowStore: Send + Sync {
    /// Release `req.releases`, then take a slot for `req.holder` if the key's
    /// limits (the server's, else `req.rule`) leave room for it, waiters that
    /// came earlier first; else queue it (keeping its place) and say when to
    /// ask again.
    async fn acquire_slot(&self, req: &SlotRequest<'_>) -> Result<SlotAnswer>;

    /// Release these holders' slots; the waiting runs that now have room.
    async fn release_slots(&self, key: &str, holders: &[String]) -> Result<Vec<RunId>>;

    /// Extend the slots these holders still have by `lease` from now.
    async fn renew_slots(&self, key: &str, holders: &[String], lease: Duration) -> Result<()>;

    /// Wake a run that waits for a flow-control slot now (its timer fires at
    /// the next timer tick); nothing if it waits for something else.
    async fn wake_flow_waiter(&self, run_id: &RunId) -> Result<()>;

    /// Set (or with `None` clear) the server's limits of `key`; they win over
    /// what runs ask for. A new key past
    /// [`MAX_CONFIGURED_KEYS`](crate::flow::MAX_CONFIGURED_KEYS) is refused.
    async fn set_flow_limits(&self, key: &str, rule: Option<FlowRule>) -> Result<()>;

    /// Pause (no step of the key starts) or resume; resuming wakes the waiters it has room for.
    async fn pause_flow_key(&self, key: &str, paused: bool) -> Result<Vec<RunId>>;

    /// One key as it stands (None when nothing ever used or configured it).
    async fn flow_key(&self, key: &str) -> Result<Option<FlowKeyStatus>>;

    /// Keys configured on the server (limits or a pause) and, unless
    /// `configured_only`, the 1,000 used most recently in the last day; by name.
    async fn flow_keys(&self, configured_only: bool) -> Result<Vec<FlowKeyStatus>>;
}

/// The most messages one run's inbox holds: a client cannot grow it without bound.
pub const MAX_INBOX_MESSAGES: u64 = 10_000;

/// What [`InboxStore::inbox_push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxPush {
    /// Appended; the position of the last message (positions start at 1).
    Added(u64),
    /// The inbox was closed (its run finished or was cancelled): nothing appended.
    Closed,
}

/// Messages of an inbox after a position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxPage {
    pub messages: Vec<String>,
    /// How many messages the inbox holds in all.
    pub total: u64,
    pub closed: bool,
}

/// A run's inbox: messages sent to a run from outside while it runs, appended
/// by the API and read by position by whoever holds the run (the QStash
/// protocol's step submissions for the `upstash` workflow). Positions are
/// stable: the reader journals how far it has read.
#[async_trait]
pub trait InboxStore: Send + Sync {
    /// Append `messages` (and with `close`, refuse any after them) unless the
    /// inbox is closed. More than [`MAX_INBOX_MESSAGES`] in all is refused.
    async fn inbox_push(&self, run_id: &RunId, messages: &[String], close: bool) -> Result<InboxPush>;

    /// At most `limit` messages after position `after`. An inbox that was read
    /// past and is gone (it expired) is an error, not an empty page.
    async fn inbox_read(&self, run_id: &RunId, after: u64, limit: usize) -> Result<InboxPage>;

    /// Refuse further messages; keep the inbox for `keep`, then drop it.
    async fn inbox_close(&self, run_id: &RunId, keep: Duration) -> Result<()>;

    /// Take failed runs off the QStash DLQ (`client.dlq.delete`): they stay
    /// failed but are no longer listed there; remembered for `keep`. How many
    /// were not off it already.
    async fn dlq_delete(&self, run_ids: &[RunId], keep: Duration) -> Result<u64>;

    /// Which of these runs were taken off the DLQ.
    async fn dlq_deleted(&self, run_ids: &[RunId]) -> Result<Vec<bool>>;

    /// The QStash signing key pair (current, next) of the deployment: the one
    /// stored, or `offer` stored as it when there is none yet (or, with
    /// `replace`, in any case: an operator's keys).
    async fn qstash_signing_keys(&self, offer: (&str, &str), replace: bool) -> Result<(String, String)>;
}

/// Schedules (the scheduler in schedules.rs decides; the store keeps them and
/// moves them on atomically).
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Create or replace a schedule; a paused one stays paused, its state is
    /// kept. `next_ms`: its next tick. True when it is new. A new one past
    /// [`MAX_SCHEDULES`](crate::schedules::MAX_SCHEDULES) is refused.
    async fn put_schedule(&self, spec: &ScheduleSpec, next_ms: Option<u64>) -> Result<bool>;

    async fn get_schedule(&self, id: &str) -> Result<Option<StoredSchedule>>;

    /// Every schedule, by id.
    async fn list_schedules(&self) -> Result<Vec<StoredSchedule>>;

    /// Whether it existed.
    async fn delete_schedule(&self, id: &str) -> Result<bool>;

    /// Pause (no ticks) or resume from `next_ms`. False when there is no such schedule.
    async fn pause_schedule(&self, id: &str, paused: bool, next_ms: Option<u64>) -> Result<bool>;

    /// Schedules whose next tick is at or before `now_ms`, soonest first.
    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<DueSchedule>>;

    /// Move a schedule on from the tick it was due at to `next_ms` (none: it
    /// never fires again) with `state`, only if it is still due at `from_tick_ms`
    /// (another server may have moved it, or a client paused it). True when it moved.
    async fn advance_schedule(
        &self,
        id: &str,
        from_tick_ms: u64,
        next_ms: Option<u64>,
        state: &ScheduleState,
    ) -> Result<bool>;
}

/// A schedule as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSchedule {
    pub spec: ScheduleSpec,
    pub paused: bool,
    pub state: ScheduleState,
    /// Its next tick (none while paused, or when the cron never fires again).
    pub next_ms: Option<u64>,
}

/// A schedule whose tick has come.
#[derive(Debug, Clone, PartialEq)]
pub struct DueSchedule {
    pub spec: ScheduleSpec,
    pub state: ScheduleState,
    pub tick_ms: u64,
}

/// At most this many signing keys are active at once: every webhook and
/// signed call carries one signature per key.
pub const MAX_SIGNING_KEYS: usize = 3;

/// One of the deployment's signing keys as the store keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSigningKey {
    /// `k1`, `k2`, …: given out in order, never reused.
    pub id: String,
    /// When it was added (the store's clock, ms since the epoch).
    pub since_ms: u64,
    /// The secret, base64.
    pub secret: String,
}

impl std::fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("id", &self.id)
            .field("since_ms", &self.since_ms)
            .finish_non_exhaustive()
    }
}

/// A store script's refusal (a code and a detail) as the error callers see.
pub(crate) fn refusal(code: &str, detail: &str) -> Error {
    match code {
        "FULL" => Error::SigningKeys(format!(
            "the deployment already has {MAX_SIGNING_KEYS} signing keys: retire one first (keel keys retire)"
        )),
        "LAST" => {
            Error::SigningKeys("this is the deployment's only signing key: rotate first (keel keys rotate)".into())
        }
        "UNKNOWN" => Error::Invalid(format!("the deployment has no signing key {detail:?}")),
        "FULL_FLOW_KEYS" => Error::Invalid(format!(
            "a deployment has at most {} flow-control keys with limits set on the server: clear one first",
            crate::flow::MAX_CONFIGURED_KEYS
        )),
        "FULL_SCHEDULES" => Error::Invalid(format!(
            "a deployment has at most {} schedules: delete one first",
            crate::schedules::MAX_SCHEDULES
        )),
        "SOON" => {
            let age_ms: u64 = detail.parse().unwrap_or(0);
            let wait_ms = (SIGNING_KEY_SETTLE.as_millis() as u64).saturating_sub(age_ms).max(1);
            Error::SigningKeys(format!(
                "the newest signing key was added {age_ms} ms ago: every process picks keys up within a few \
                 seconds, so retire once it is {} s old (in {:.1} s)",
                SIGNING_KEY_SETTLE.as_secs(),
                wait_ms as f64 / 1000.0
            ))
        }
        other => Error::corrupt("signing keys", format!("unknown answer {other}")),
    }
}

/// How often every process reads the deployment's signing keys again.
pub const SIGNING_KEYS_REFRESH: Duration = Duration::from_secs(2);

/// How long a new key must have been out before an older one can be retired.
pub const SIGNING_KEY_SETTLE: Duration = Duration::from_secs(10);

/// How a batch of journal events changes the run summary. Written once, applied by
/// both stores, so their summaries agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SummaryPatch {
    pub completed_delta: u32,
    pub current_step: Option<String>,
    pub total_steps: Option<u32>,
}

impl SummaryPatch {
    pub fn of(events: &[JournalEvent]) -> Self {
        let mut patch = Self::default();
        for event in events {
            match event {
                JournalEvent::StepCompleted { .. }
                | JournalEvent::TimerFired { .. }
                | JournalEvent::EventReceived { .. }
                | JournalEvent::WaitTimedOut { .. }
                | JournalEvent::ChildCompleted { .. } => patch.completed_delta += 1,
                JournalEvent::ProgressDeclared { total_steps } => patch.total_steps = Some(*total_steps),
                _ => {}
            }
            if let Some(step) = event.step_id() {
                patch.current_step = Some(step.to_owned());
            }
        }
        patch
    }
}

/// What every child's outcome key starts with.
pub const CHILD_EVENT_KEY_PREFIX: &str = "keel.child:";

/// The event key on which a child run's outcome reaches its parent. The `keel.`
/// prefix is reserved: the API refuses events sent to it.
pub fn child_event_key(child: &RunId) -> String {
    format!("{CHILD_EVENT_KEY_PREFIX}{child}")
}

/// What a parent hears when its child finishes this way (None: not final).
pub(crate) fn child_outcome_of(how: &Finish) -> Result<Option<String>> {
    let outcome = match how {
        Finish::Complete { output } => keel_proto::ChildOutcome::Completed { output: output.clone() },
        Finish::Fail { error } => keel_proto::ChildOutcome::Failed { error: error.clone() },
        Finish::Cancel { .. } => keel_proto::ChildOutcome::Cancelled,
        Finish::Suspend(_) | Finish::Release => return Ok(None),
    };
    serde_json::to_string(&outcome).map(Some).map_err(|e| Error::Invalid(e.to_string()))
}

/// The JSON text of a journal event, as both stores keep it.
pub(crate) fn encode_event(event: &JournalEvent) -> Result<String> {
    serde_json::to_string(&JournalEntry::new(event.clone())).map_err(|e| Error::Invalid(e.to_string()))
}

pub(crate) fn decode_record(seq: &str, text: &str) -> Result<JournalRecord> {
    let entry: JournalEntry =
        serde_json::from_str(text).map_err(|e| Error::corrupt(format!("journal entry {seq}"), e))?;
    if entry.v > keel_proto::JOURNAL_VERSION {
        return Err(Error::corrupt(
            format!("journal entry {seq}"),
            format!("format v{} is newer than this build (v{})", entry.v, keel_proto::JOURNAL_VERSION),
        ));
    }
    Ok(JournalRecord { seq: seq.to_owned(), at_ms: seq_millis(seq)?, entry })
}

/// Stream ids are `<ms>-<n>`; both stores issue them that way.
pub(crate) fn seq_millis(seq: &str) -> Result<u64> {
    seq.split_once('-').and_then(|(ms, _)| ms.parse().ok()).ok_or_else(|| Error::corrupt("stream id", seq))
}

/// The idempotency fingerprint of a start: the whole request (workflow, input,
/// labels, delay, callback URL). A repeat with the same key or run id must be the
/// same request, or it is refused: a changed label or delay is never dropped
/// silently. (serde_json sorts object keys, so key order does not matter.)
pub(crate) fn fingerprint(req: &CreateRun) -> String {
    let labels = serde_json::to_string(&req.labels).unwrap_or_default();
    let delay = req.delay.map_or(0, |d| d.as_millis());
    let callback = req.callback_url.as_deref().unwrap_or("");
    format!("{}\n{}\n{labels}\n{delay}\n{callback}", req.workflow, req.input)
}

/// How many delivery attempts a webhook log keeps.
pub(crate) const DELIVERY_LOG_LEN: usize = 100;

pub(crate) fn validate_create(req: &CreateRun, config: &StoreConfig) -> Result<()> {
    keel_proto::validate_workflow_name(&req.workflow)?;
    if let Some(priority) = req.priority {
        keel_proto::validate_priority(priority).map_err(Error::Invalid)?;
    }
    if let Some(fc) = &req.flow_control {
        crate::flow::check(&fc.key, &fc.limits)?;
    }
    crate::check_value_size("run's input", &req.input, config.max_value_bytes)?;
    if let Some(key) = &req.idempotency_key {
        keel_proto::validate_idempotency_key(key)?;
    }
    validate_labels(&req.labels)
}

/// A run's labels: at most [`MAX_LABELS`], names 1-64 bytes without `=` or
/// control characters, values at most 256 bytes.
pub(crate) fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::Invalid(format!("a run has at most {MAX_LABELS} labels, not {}", labels.len())));
    }
    for (name, value) in labels {
        if name.is_empty()
            || name.len() > 64
            || value.len() > 256
            || name.contains('=')
            || name.contains(char::is_control)
        {
            return Err(Error::Invalid(format!(
                "label {name:?}: names are 1-64 bytes without '=' or control characters, values at most 256 bytes"
            )));
        }
    }
    Ok(())
}

/// An event to deliver: a valid key, data within the limit, a valid client id.
pub(crate) fn validate_delivery(key: &str, data: &Value, client_id: Option<&str>, config: &StoreConfig) -> Result<()> {
    crate::check_value_size("event's data", data, config.max_value_bytes)?;
    keel_proto::validate_event_key(key)?;
    if let Some(id) = client_id {
        keel_proto::validate_idempotency_key(id)?;
    }
    Ok(())
}

/// The values a lease writes must fit the limit: step outputs, received data,
/// the run's output and error.
pub(crate) fn validate_values(events: &[JournalEvent], how: Option<&Finish>, config: &StoreConfig) -> Result<()> {
    let limit = config.max_value_bytes;
    for event in events {
        if let JournalEvent::StepCompleted { output, step_id, .. } = event {
            crate::check_value_size(&format!("output of step {step_id:?}"), output, limit)?;
        }
    }
    if let Some(Finish::Complete { output }) = how {
        crate::check_value_size("run's output", output, limit)?;
    }
    Ok(())
}

pub(crate) fn validate_claim(req: &Claim) -> Result<()> {
    if req.workflows.is_empty() {
        return Err(Error::Invalid("a claim needs at least one workflow".into()));
    }
    for workflow in &req.workflows {
        keel_proto::validate_workflow_name(workflow)?;
    }
    if req.worker_id.is_empty() || req.worker_id.contains(char::is_whitespace) {
        return Err(Error::Invalid("worker_id must be non-empty and without whitespace".into()));
    }
    if req.lease < Duration::from_millis(10) {
        return Err(Error::Invalid("a lease must last at least 10 ms".into()));
    }
    Ok(())
}

pub(crate) fn validate_suspension(s: &Suspension) -> Result<()> {
    if s.waits.is_empty() && s.wake_at_ms.is_none() {
        return Err(Error::Invalid("a suspension needs a wake-up time, an event wait, or both".into()));
    }
    if let Some(why) = &s.blocked
        && (s.wake_at_ms.is_none() || why.is_empty() || why.len() > 300)
    {
        return Err(Error::Invalid("a blocked suspension needs a wake-up time and a reason of 1-300 bytes".into()));
    }
    for wait in &s.waits {
        if wait.keys.is_empty() {
            return Err(Error::Invalid(format!("the wait of step {:?} needs at least one key", wait.step_id)));
        }
        if wait.step_id.is_empty() || wait.step_id.contains('\n') {
            return Err(Error::Invalid(format!("step id {:?} is empty or has a line break", wait.step_id)));
        }
        for key in &wait.keys {
            keel_proto::validate_event_key(key)?;
        }
    }
    Ok(())
}

/// The waits of a suspension, one `(step, key, since)` per waited key.
pub(crate) fn flatten_waits(s: &Suspension) -> Vec<(&str, &str, u64)> {
    s.waits.iter().flat_map(|w| w.keys.iter().map(move |k| (w.step_id.as_str(), k.as_str(), w.since_ms))).collect()
}

/// Listing cursors are `<created_ms>:<run_id>`: the last run of the previous page.
pub(crate) fn parse_cursor(cursor: &str) -> Result<(u64, RunId)> {
    let bad = || Error::BadCursor(cursor.to_owned());
    let (ms, id) = cursor.split_once(':').ok_or_else(bad)?;
    Ok((ms.parse().map_err(|_| bad())?, RunId::new(id).map_err(|_| bad())?))
}

pub(crate) fn make_cursor(run: &RunSummary) -> String {
    cursor_at(run.created_at_ms, run.run_id.as_str())
}

/// A cursor at a place in a creation-time index (score, run id).
pub(crate) fn cursor_at(created_ms: impl std::fmt::Display, run_id: &str) -> String {
    format!("{created_ms}:{run_id}")
}

/// Labels a run may carry (each is an index entry).
pub const MAX_LABELS: usize = 64;

pub(crate) const DEFAULT_PAGE: usize = 50;
pub(crate) const MAX_PAGE: usize = 1000;

pub(crate) fn page_limit(limit: usize) -> usize {
    if limit == 0 { DEFAULT_PAGE } else { limit.min(MAX_PAGE) }
}

pub(crate) fn dead_letter_reason(max_deliveries: u32) -> String {
    format!(
        "task delivered more than {max_deliveries} times without finishing (a worker crashing on this run?); \
         the run was failed and the task set aside"
    )
}
