//! read.lua: queued tasks of one partition handed to this worker, highest
//! priority first, never more than it asked for.

use super::*;
use crate::store::redis::claims::Delivery;

/// One queue to read: a workflow's queue of one priority.
#[derive(Serialize, Clone, Copy)]
pub(in crate::store::redis) struct Queue<'a> {
    pub wf: &'a str,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "priority_text")]
    pub pr: Option<u8>,
}

impl<'a> Queue<'a> {
    pub fn new(wf: &'a str, priority: u8) -> Self {
        Self { wf, pr: (priority != keel_proto::DEFAULT_PRIORITY).then_some(priority) }
    }

    pub fn priority(&self) -> u8 {
        self.pr.unwrap_or(keel_proto::DEFAULT_PRIORITY)
    }
}

fn priority_text<S: serde::Serializer>(pr: &Option<u8>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match pr {
        Some(p) => s.serialize_str(&p.to_string()),
        None => s.serialize_none(),
    }
}

/// What to read: new entries, or entries idle longer than a lease.
#[derive(Clone, Copy)]
pub(in crate::store::redis) enum Read {
    New { wait: bool },
    Expired { idle_ms: u64 },
}

#[derive(Serialize)]
struct Args<'a> {
    worker: &'a str,
    max: usize,
    queues: &'a [Queue<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_ms: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    wait: bool,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(deserialize_with = "list")]
    tasks: Vec<Task>,
    #[serde(default)]
    trimmed: u64,
    #[serde(default, deserialize_with = "list")]
    last: Vec<String>,
}

#[derive(Deserialize)]
struct Task {
    q: usize,
    tid: String,
    #[serde(default)]
    id: Option<String>,
}

/// What a read found: deliveries, and when nothing was there and the caller
/// means to wait, each queue's key and last entry id (to block on anything newer).
pub(in crate::store::redis) struct Found {
    pub deliveries: Vec<Delivery>,
    pub last: Vec<(String, String)>,
}

/// Read up to `max` entries from `queues` (in that order) of partition `keys`.
pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    keys: &Keys,
    worker: &str,
    max: usize,
    queues: &[Queue<'_>],
    read: Read,
) -> Result<Found> {
    let mut d = Declared::new(keys);
    for q in queues {
        d.queue(q.wf, q.priority());
    }
    let (idle_ms, wait) = match read {
        Read::New { wait } => (None, wait),
        Read::Expired { idle_ms } => (Some(idle_ms), false),
    };
    let args = Args { worker, max: max.max(1), queues, idle_ms, wait };
    let reply: Reply = run_script(store, &store.scripts.read, &d, args, false).await?;
    if reply.trimmed > 0 {
        // A pending entry trimmed away is a task lost; the reconciler re-queues its run.
        tracing::warn!(pending = reply.trimmed, "XAUTOCLAIM found pending tasks deleted from a queue");
    }
    let mut deliveries = Vec::with_capacity(reply.tasks.len());
    for task in reply.tasks {
        let queue = queues.get(task.q.wrapping_sub(1)).ok_or_else(|| Error::corrupt("read reply", "unasked queue"))?;
        let run_id = task.id.ok_or_else(|| Error::corrupt(format!("task {}", task.tid), "no run_id field"))?;
        deliveries.push(Delivery {
            partition: keys.index(),
            workflow: queue.wf.to_owned(),
            priority: queue.priority(),
            task_id: task.tid,
            run_id: RunId::new(run_id)?,
        });
    }
    let last = queues.iter().zip(reply.last).map(|(q, id)| (keys.queue_at(q.wf, q.priority()), id)).collect();
    Ok(Found { deliveries, last })
}
