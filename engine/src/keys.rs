//! The one place in Rust that spells a Redis key. (The Lua scripts build the same
//! names in `store/redis/lua/prelude.lua`; a test holds the two together.)
//!
//! All of one run's keys share the hash tag `{<run_id>}`, so they live in one
//! Redis Cluster slot.

use keel_proto::{RunId, RunStatus};

/// The consumer group every workflow queue is read through.
pub const GROUP: &str = "keel";

/// The consumer group the webhook dispatchers read the outbox through.
pub const DISPATCH_GROUP: &str = "dispatch";

/// Key names under one namespace prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash: the run summary.
    pub fn run(&self, id: &RunId) -> String {
        format!("{}:run:{{{id}}}", self.prefix)
    }

    /// Stream: the run's journal.
    pub fn journal(&self, id: &RunId) -> String {
        format!("{}:run:{{{id}}}:journal", self.prefix)
    }

    /// String with expiry: `worker_id:epoch` of the lease holder.
    pub fn lease(&self, id: &RunId) -> String {
        format!("{}:run:{{{id}}}:lease", self.prefix)
    }

    /// String with a TTL: somebody long-polls this run's result or streams its
    /// journal; while it exists, the run's scripts publish on [`notify`](Self::notify).
    pub fn watch(&self, id: &RunId) -> String {
        format!("{}:run:{{{id}}}:watch", self.prefix)
    }

    /// Pub/sub channel: the id of a watched run whose journal grew or that ended.
    pub fn notify(&self) -> String {
        format!("{}:notify", self.prefix)
    }

    /// Stream + consumer group [`GROUP`]: tasks of one workflow.
    pub fn queue(&self, workflow: &str) -> String {
        format!("{}:queue:{workflow}", self.prefix)
    }

    /// Sorted set: every run by creation time.
    pub fn runs(&self) -> String {
        format!("{}:runs", self.prefix)
    }

    pub fn runs_by_workflow(&self, workflow: &str) -> String {
        format!("{}:runs:wf:{workflow}", self.prefix)
    }

    pub fn runs_by_status(&self, status: RunStatus) -> String {
        format!("{}:runs:status:{status}", self.prefix)
    }

    /// Sorted set: runs of a workflow parked for want of a worker with their
    /// version, scored by that version.
    pub fn parked(&self, workflow: &str) -> String {
        format!("{}:parked:{workflow}", self.prefix)
    }

    /// Hash: status -> where the next reconcile pass goes on in that status's index.
    pub fn reconcile(&self) -> String {
        format!("{}:reconcile", self.prefix)
    }

    /// Sorted set: run id by wake-up time.
    pub fn timers(&self) -> String {
        format!("{}:timers", self.prefix)
    }

    /// Sorted set: finished run id by expiry time.
    pub fn retention(&self) -> String {
        format!("{}:retention", self.prefix)
    }

    /// Set: runs waiting for an event key.
    pub fn waiters(&self, event_key: &str) -> String {
        format!("{}:waiters:{event_key}", self.prefix)
    }

    /// Capped stream with a TTL: recent events of a key, for the lookback.
    pub fn events(&self, event_key: &str) -> String {
        format!("{}:events:{event_key}", self.prefix)
    }

    /// String with a TTL: a client's id for an event on `event_key` -> the event's id.
    pub fn event_id(&self, event_key: &str, client_id: &str) -> String {
        format!("{}:event-id:{}:{event_key}:{client_id}", self.prefix, event_key.len())
    }

    /// String with a TTL: idempotency key -> run id.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.prefix)
    }

    /// Capped stream: dead-lettered tasks.
    pub fn dead_letters(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    /// Hash: webhook subscription id -> subscription JSON.
    pub fn webhooks(&self) -> String {
        format!("{}:webhooks", self.prefix)
    }

    /// Stream + consumer group `dispatch`: webhook events to fan out.
    pub fn outbox(&self) -> String {
        format!("{}:outbox", self.prefix)
    }

    /// Sorted set: delivery job JSON by due time.
    pub fn webhook_jobs(&self) -> String {
        format!("{}:webhook-jobs", self.prefix)
    }

    /// List (newest first, capped, with a TTL): a receiver's delivery log.
    pub fn webhook_log(&self, log: &str) -> String {
        format!("{}:webhook-log:{log}", self.prefix)
    }

    /// Hash: counters for /metrics (`<workflow>|<stat>`, `step_ms|<bucket>`).
    pub fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }

    /// Sorted set: worker id by registration expiry (wall clock ms).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// String with a TTL: a live worker's registration (JSON).
    pub fn worker(&self, worker_id: &str) -> String {
        format!("{}:worker:{worker_id}", self.prefix)
    }
}
