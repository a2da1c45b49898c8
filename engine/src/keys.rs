//! The one place that spells a Redis key. (The Lua scripts get every key they
//! touch in KEYS, declared by `store/redis/ops`; they build none.)
//!
//! The layout (version [`LAYOUT`]): every key a transition touches is a
//! *partition* key, `{<namespace>:<p>}:...`, and all of a partition's keys share
//! that hash tag, so one script only ever touches one Redis Cluster slot. Keys no
//! script touches (webhook subscriptions, delivery logs, the worker registry, the
//! layout record) are *global*, `{<namespace>}:...`, in a slot of their own.
//! A deployment has P partitions (recorded at first start): a run lives in
//! partition [`partition_of`] its id. With one partition the tag is
//! `{<namespace>:0}`; with more, each partition's tag carries a salt chosen so
//! that the P tags' slots are evenly spaced over the 16,384 Cluster slots, so
//! any even split of the slots over masters splits the partitions evenly too.

use keel_proto::{RunId, RunStatus};

/// The consumer group every workflow queue is read through.
pub const GROUP: &str = "keel";

/// The consumer group the webhook dispatchers read the outbox through.
pub const DISPATCH_GROUP: &str = "dispatch";

/// The key layout's version, recorded in [`Keys::layout`].
pub const LAYOUT: u32 = 2;

/// The most partitions a namespace may have.
pub const MAX_PARTITIONS: u16 = 1024;

/// The partition (of `partitions`) a run id lives in: FNV-1a of the id.
pub fn partition_of(run_id: &str, partitions: u16) -> u16 {
    if partitions <= 1 {
        return 0;
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in run_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(partitions)) as u16
}

/// The Redis Cluster slot of a key (CRC16/XMODEM of its hash tag, mod 16,384).
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| key[open + 1..].find('}').map(|len| &bytes[open + 1..open + 1 + len]))
        .filter(|tag| !tag.is_empty());
    let mut crc: u16 = 0;
    for &byte in tagged.unwrap_or(bytes) {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

/// Key names of one partition (and the global ones) under one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    namespace: String,
    partition: u16,
    /// `{<namespace>:<p>[~salt]}`: the prefix (and hash tag) of partition keys.
    prefix: String,
    /// `{<namespace>}`: the prefix (and hash tag) of global keys.
    global: String,
    /// The partition's notify channel (named on every script call).
    notify: String,
}

impl Keys {
    /// Key names of a namespace with one partition. The namespace must not hold
    /// `{` or `}` (it is part of every hash tag); the store checks that.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self::partition(namespace, 0, 1)
    }

    /// Key names of partition `p` of `partitions`.
    pub fn partition(namespace: impl Into<String>, p: u16, partitions: u16) -> Self {
        let namespace = namespace.into();
        let prefix = if partitions <= 1 {
            format!("{{{namespace}:0}}")
        } else {
            // The first salt whose slot falls in this partition's share of the
            // slot space (about `partitions` tries).
            let (from, to) =
                (u32::from(p) * 16384 / u32::from(partitions), (u32::from(p) + 1) * 16384 / u32::from(partitions));
            (0u32..)
                .map(|salt| format!("{{{namespace}:{p}~{salt}}}"))
                .find(|tag| (from..to).contains(&u32::from(slot(tag))))
                .unwrap_or_else(|| format!("{{{namespace}:{p}}}"))
        };
        Self { notify: format!("{prefix}:notify"), prefix, global: format!("{{{namespace}}}"), namespace, partition: p }
    }

    /// Which partition these keys are of.
    pub fn index(&self) -> u16 {
        self.partition
    }

    /// The partition prefix: every script gets it as KEYS[1], and it routes the
    /// script to its slot on Redis Cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace these keys live under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `KEYS` patterns that match every key of this namespace (tests and tools).
    pub fn patterns(&self) -> [String; 2] {
        [format!("{{{}:*", self.namespace), format!("{}*", self.global)]
    }

    /// Hash (global): `version` and `partitions` of the layout this namespace
    /// was written with; a store refuses to start on another.
    pub fn layout(&self) -> String {
        format!("{}:layout", self.global)
    }

    /// A key of the layout before partitions (version 1): its presence means
    /// data this version cannot read.
    pub fn layout_v1_marker(&self) -> String {
        format!("{}:runs", self.namespace)
    }

    /// Stream (partition): notes for runs in other partitions (a child's outcome
    /// for its parent), forwarded by the timer duty and deleted once delivered.
    pub fn relay(&self) -> String {
        format!("{}:relay", self.prefix)
    }

    /// String (partition): present while any webhook subscription exists, so
    /// scripts know whether to write the outbox without reading a global key.
    pub fn hooks_flag(&self) -> String {
        format!("{}:hooks", self.prefix)
    }

    /// Hash: the run summary.
    pub fn run(&self, id: &RunId) -> String {
        format!("{}:run:{id}", self.prefix)
    }

    /// Stream: the run's journal.
    pub fn journal(&self, id: &RunId) -> String {
        format!("{}:run:{id}:journal", self.prefix)
    }

    /// String with expiry: `worker_id:epoch` of the lease holder.
    pub fn lease(&self, id: &RunId) -> String {
        format!("{}:run:{id}:lease", self.prefix)
    }

    /// String with a TTL: somebody long-polls this run's result or streams its
    /// journal; while it exists, the run's scripts publish on [`notify`](Self::notify).
    pub fn watch(&self, id: &RunId) -> String {
        format!("{}:run:{id}:watch", self.prefix)
    }

    /// Pub/sub channel: the id of a watched run whose journal grew or that ended.
    pub fn notify(&self) -> String {
        self.notify.clone()
    }

    /// [`notify`](Self::notify), borrowed.
    pub fn notify_channel(&self) -> &str {
        &self.notify
    }

    /// Stream + consumer group [`GROUP`]: tasks of one workflow.
    pub fn queue(&self, workflow: &str) -> String {
        format!("{}:queue:{workflow}", self.prefix)
    }

    /// The queue of a workflow's runs of one priority: the default priority's
    /// is [`queue`](Self::queue) itself (deployments that never set one have
    /// one queue per workflow, as before priorities), the others `…:p<n>`
    /// (workflow names have no `:`).
    pub fn queue_at(&self, workflow: &str, priority: u8) -> String {
        if priority == keel_proto::DEFAULT_PRIORITY {
            self.queue(workflow)
        } else {
            format!("{}:queue:{workflow}:p{priority}", self.prefix)
        }
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

    /// Sorted set: a workflow's runs in one status, by creation time.
    pub fn runs_by_workflow_status(&self, workflow: &str, status: RunStatus) -> String {
        format!("{}:runs:wf:{workflow}:status:{status}", self.prefix)
    }

    /// Sorted set: runs carrying the label `name=value`, by creation time.
    pub fn runs_by_label(&self, name: &str, value: &str) -> String {
        format!("{}:runs:label:{name}={value}", self.prefix)
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
        format!("{}:webhooks", self.global)
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
        format!("{}:webhook-log:{log}", self.global)
    }

    /// Hash: counters for /metrics (`<workflow>|<stat>`, `step_ms|<bucket>`).
    pub fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }

    /// String (global): the deployment's webhook and call signing key, the
    /// secret as base64; set once, by the first process without
    /// `KEEL_SIGNING_KEY` (or with it, when none is stored yet).
    pub fn signing_key(&self) -> String {
        format!("{}:signing-key", self.global)
    }

    /// Hash (global): schedule id -> its spec (JSON), written by the API.
    pub fn schedules(&self) -> String {
        format!("{}:schedules", self.global)
    }

    /// Hash (global): schedule id -> the scheduler's state (JSON), written by
    /// `schedules.lua` as it moves a schedule on.
    pub fn schedule_states(&self) -> String {
        format!("{}:schedule-states", self.global)
    }

    /// Sorted set (global): schedule id by its next tick (ms); a paused schedule is not in it.
    pub fn schedules_due(&self) -> String {
        format!("{}:schedules:due", self.global)
    }

    /// Set (global): the ids of paused schedules.
    pub fn schedules_paused(&self) -> String {
        format!("{}:schedules:paused", self.global)
    }

    /// One flow-control key's five keys, under a hash tag of their own
    /// (`{<namespace>:fc:<key>}`: flow keys hold no `{` or `}`): its conf
    /// (hash), slots, starts, queue and alive (sorted sets). See flow_control.lua.
    pub fn flow(&self, key: &str) -> [String; 5] {
        let tag = format!("{{{}:fc:{key}}}", self.namespace);
        ["conf", "slots", "starts", "queue", "alive"].map(|part| format!("{tag}:{part}"))
    }

    /// A run's inbox (QStash protocol submissions), under a hash tag of its
    /// own (`{<namespace>:in:<run>}`: run ids hold no braces): the messages
    /// (list) and its state (hash: `closed`). See inbox.lua.
    pub fn inbox(&self, run_id: &str) -> [String; 2] {
        let tag = format!("{{{}:in:{run_id}}}", self.namespace);
        [format!("{tag}:messages"), format!("{tag}:state")]
    }

    /// Sorted set (global): runs taken off the QStash DLQ, by when they are forgotten (ms).
    pub fn qstash_dlq_deleted(&self) -> String {
        format!("{}:qstash-dlq-deleted", self.global)
    }

    /// Hash (global): the QStash signing keys, `current` and `next`.
    pub fn qstash_signing_keys(&self) -> String {
        format!("{}:qstash-signing-keys", self.global)
    }

    /// Sorted set (global): flow-control keys by last use (ms), for the listing.
    pub fn flow_keys(&self) -> String {
        format!("{}:flow-keys", self.global)
    }

    /// Set (global): flow-control keys with limits set on the server.
    pub fn flow_configured(&self) -> String {
        format!("{}:flow-keys:configured", self.global)
    }

    /// Set (global): paused flow-control keys.
    pub fn flow_paused(&self) -> String {
        format!("{}:flow-keys:paused", self.global)
    }

    /// Hash (global): the deployment's signing keys, `k<n>` -> `<since ms>
    /// <secret as base64>`, and `#n`, the last n given out. Made from the
    /// first offer (or from the older single key above, which it replaces);
    /// rotations add keys, retirements remove them, never the last.
    pub fn signing_keys(&self) -> String {
        format!("{}:signing-keys", self.global)
    }

    /// Sorted set: worker id by registration expiry (wall clock ms).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.global)
    }

    /// String with a TTL: a live worker's registration (JSON).
    pub fn worker(&self, worker_id: &str) -> String {
        format!("{}:worker:{worker_id}", self.global)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Known answers (CLUSTER KEYSLOT): the spec's example, and tags.
        assert_eq!(slot("123456789"), 0x31c3, "CRC16/XMODEM check value");
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("{}x"), slot("{}x"), "an empty tag hashes the whole key");
    }

    #[test]
    fn partitions_spread_evenly_over_the_slots_and_runs_over_partitions() {
        let parts: Vec<Keys> = (0..16).map(|p| Keys::partition("keel", p, 16)).collect();
        for (p, keys) in parts.iter().enumerate() {
            let s = u32::from(slot(keys.prefix()));
            assert!((p as u32 * 1024..(p as u32 + 1) * 1024).contains(&s), "{} in slot {s}", keys.prefix());
            assert!(keys.run(&RunId::new("r").unwrap()).starts_with(keys.prefix()));
        }
        assert_eq!(Keys::new("keel").prefix(), "{keel:0}", "one partition keeps the plain tag");
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[usize::from(partition_of(&uuid::Uuid::now_v7().to_string(), 16))] += 1;
            let _ = i;
        }
        assert!(counts.iter().all(|&n| (700..1300).contains(&n)), "{counts:?}");
    }
}
