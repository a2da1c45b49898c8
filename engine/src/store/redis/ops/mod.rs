//! The typed boundary to the Lua scripts: one module per operation, each with
//! its argument object (serialized to the script's one argument, `ARGV[1]`),
//! its reply (the JSON the script returns), and the keys it declares.
//!
//! Keys are declared through [`Declared`], which takes every name from
//! [`Keys`] (keys.rs) and tells the script where in `KEYS` each one is, by
//! kind and name (`run` of a run id, `queue` of a workflow, `timers`): Lua
//! looks keys up there and never builds one. Where a script acts on runs it
//! finds in Redis (waiters of an event, due timers, parked runs), the caller
//! first reads them, declares their keys, and the script checks that what it
//! finds is what the caller saw, else answers `RETRY` (or leaves a changed run
//! for the next pass).

use std::borrow::Cow;
use std::collections::HashMap;

use keel_proto::{JournalEvent, RunId, RunStatus};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value as Json};

use super::{Invoke, RedisStore};
use crate::keys::Keys;
use crate::{Error, Result};

pub(super) mod append;
pub(super) mod cancel;
pub(super) mod claim;
pub(super) mod create;
pub(super) mod deliver;
pub(super) mod due;
pub(super) mod expire;
pub(super) mod fanout;
pub(super) mod finish;
pub(super) mod job_update;
pub(super) mod jobs_due;
pub(super) mod nudge;
pub(super) mod pause;
pub(super) mod read;
pub(super) mod reconcile;
pub(super) mod renew;
pub(super) mod resume;
pub(super) mod retry;
pub(super) mod timers;
pub(super) mod unpark;
pub(super) mod watch;

/// How often an operation whose script answers `RETRY` (what it read changed
/// before the script ran) reads and tries again before giving up.
const RETRIES: usize = 20;

/// The keys one script call may touch: `KEYS` (the partition prefix first, so
/// it routes the call), and the map the script finds them by (`k`: kind ->
/// index, or kind -> name -> index), serialized straight from here.
pub(super) struct Declared<'k> {
    keys: &'k Keys,
    list: Vec<String>,
    ones: Vec<(&'static str, usize)>,
    named: Vec<(&'static str, Names<'k>)>,
}

/// One kind's declared keys: name -> index in KEYS.
type Names<'k> = Vec<(Cow<'k, str>, usize)>;

impl<'k> Declared<'k> {
    pub fn new(keys: &'k Keys) -> Self {
        Self { keys, list: vec![keys.prefix().to_owned()], ones: Vec::new(), named: Vec::new() }
    }

    /// Where `key` is in KEYS (1-based), added if new. (A call declares a
    /// few dozen keys at most: a scan is cheaper than hashing them.)
    fn index(&mut self, key: String) -> usize {
        if let Some(at) = self.list.iter().position(|k| *k == key) {
            return at + 1;
        }
        self.list.push(key);
        self.list.len()
    }

    /// A key of which the script uses one (`timers`, `outbox`).
    pub fn one(&mut self, kind: &'static str, key: String) -> &mut Self {
        let i = self.index(key);
        match self.ones.iter_mut().find(|(k, _)| *k == kind) {
            Some(entry) => entry.1 = i,
            None => self.ones.push((kind, i)),
        }
        self
    }

    /// A key of which the script uses one per name (`run` per run id).
    pub fn named(&mut self, kind: &'static str, name: impl Into<Cow<'k, str>>, key: String) -> &mut Self {
        let name = name.into();
        let i = self.index(key);
        self.push_name(kind, name, i)
    }

    fn push_name(&mut self, kind: &'static str, name: Cow<'k, str>, i: usize) -> &mut Self {
        let names = match self.named.iter().position(|(k, _)| *k == kind) {
            Some(at) => &mut self.named[at].1,
            None => {
                self.named.push((kind, Vec::new()));
                &mut self.named.last_mut().expect("just pushed").1
            }
        };
        if !names.iter().any(|(n, _)| *n == name) {
            names.push((name, i));
        }
        self
    }

    /// A run's own keys: summary, journal, lease, watch mark. Declared for the
    /// first time, they go into KEYS side by side and the map names only the
    /// first (`rb`, a run block: Lua finds the other three after it), which
    /// keeps the argument every hot call decodes short.
    pub fn run(&mut self, id: &'k RunId) -> &mut Self {
        let k = self.keys;
        let own = [k.run(id), k.journal(id), k.lease(id), k.watch(id)];
        if own.iter().all(|key| !self.list.contains(key)) {
            let first = self.list.len() + 1;
            self.list.extend(own);
            return self.push_name("rb", id.as_str().into(), first);
        }
        let [run, journal, lease, watch] = own;
        self.named("run", id.as_str(), run)
            .named("journal", id.as_str(), journal)
            .named("lease", id.as_str(), lease)
            .named("watch", id.as_str(), watch)
    }

    /// What writing a journal entry may touch besides the run: the outbox
    /// and the webhook flag. (Counters go back with the reply: counters.rs.)
    pub fn journal_writes(&mut self) -> &mut Self {
        let k = self.keys;
        self.one("outbox", k.outbox()).one("hooks", k.hooks_flag())
    }

    /// A workflow's queue of one priority, named as prelude.lua's `k_queue`
    /// looks it up (`<wf>` for the default priority, else `<wf>\n<priority>`).
    pub fn queue(&mut self, wf: &'k str, priority: u8) -> &mut Self {
        let key = self.keys.queue_at(wf, priority);
        if priority == keel_proto::DEFAULT_PRIORITY {
            self.named("queue", wf, key)
        } else {
            self.named("queue", format!("{wf}\n{priority}"), key)
        }
    }

    /// A workflow's queue of `priority` and the status indexes (all runs' and
    /// the workflow's) of `statuses`, for a run moving between them.
    pub fn workflow(&mut self, wf: &'k str, priority: u8, statuses: &[RunStatus]) -> &mut Self {
        self.queue(wf, priority).statuses(wf, statuses)
    }

    /// The status indexes (all runs' and the workflow's) of `statuses`.
    pub fn statuses(&mut self, wf: &'k str, statuses: &[RunStatus]) -> &mut Self {
        let k = self.keys;
        for &st in statuses {
            self.named("status", st.as_str(), k.runs_by_status(st));
            self.named("wf_status", format!("{wf}\n{st}"), k.runs_by_workflow_status(wf, st));
        }
        self
    }

    /// A run the script may wake, as the caller saw it: its summary always
    /// (the script reads it), and when it exists its other keys, its
    /// workflow's queue and `statuses`, and the waiter sets of its wait keys.
    pub fn waking(&mut self, id: &'k RunId, seen: &Seen<'k>, statuses: &[RunStatus]) -> &mut Self {
        let k = self.keys;
        self.named("run", id.as_str(), k.run(id));
        if let Some(wf) = seen.wf {
            self.run(id).workflow(wf, seen.priority(), statuses).waiters_of(seen.wk);
        }
        self
    }

    /// The waiter sets of a run's wait keys (`wk`: one per line).
    pub fn waiters_of(&mut self, wait_keys: Option<&'k str>) -> &mut Self {
        let k = self.keys;
        for key in wait_keys.unwrap_or("").lines().filter(|l| !l.is_empty()) {
            self.named("waiters", key, k.waiters(key));
        }
        self
    }
}

/// `k`, the map of declared keys, as the script reads it.
impl Serialize for Declared<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct NameMap<'a>(&'a [(Cow<'a, str>, usize)]);
        impl Serialize for NameMap<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(name, i)| (name, i)))
            }
        }
        let mut map = s.serialize_map(Some(self.ones.len() + self.named.len()))?;
        for (kind, i) in &self.ones {
            map.serialize_entry(kind, i)?;
        }
        for (kind, names) in &self.named {
            map.serialize_entry(kind, &NameMap(names))?;
        }
        map.end()
    }
}

/// A run's workflow, wait keys and priority as the caller read them
/// ([`SEEN_FIELDS`]): the script compares them with what it finds and leaves
/// (or RETRYs) a run that changed.
#[derive(Serialize)]
pub(super) struct Seen<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wf: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wk: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pr: Option<&'a str>,
}

/// The run fields [`Seen`] is read from.
pub(super) const SEEN_FIELDS: [&str; 3] = ["wf", "wk", "pr"];

impl<'a> Seen<'a> {
    /// From a `read_fields(.., &SEEN_FIELDS)` row.
    pub fn of(fields: &'a [Option<String>]) -> Self {
        Self { wf: fields[0].as_deref(), wk: fields[1].as_deref(), pr: fields[2].as_deref() }
    }

    /// The run's priority (its queue).
    pub fn priority(&self) -> u8 {
        priority_of(self.pr)
    }
}

/// A run's priority from its `pr` field (absent: the default).
pub(super) fn priority_of(pr: Option<&str>) -> u8 {
    pr.and_then(|p| p.parse().ok()).unwrap_or(keel_proto::DEFAULT_PRIORITY)
}

/// A run id with what the caller saw of it.
#[derive(Serialize)]
pub(super) struct SeenRun<'a> {
    pub id: &'a str,
    #[serde(flatten)]
    pub seen: Seen<'a>,
}

/// A journal entry as a script takes it: the text keel-proto wrote, its
/// type, and a step's duration (for the histogram).
#[derive(Serialize)]
pub(super) struct Entry {
    e: String,
    t: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ms: Option<u64>,
}

impl Entry {
    pub fn of(event: &JournalEvent) -> Result<Self> {
        let ms = match event {
            JournalEvent::StepCompleted { duration_ms, .. } => *duration_ms,
            _ => None,
        };
        Ok(Self { e: crate::store::encode_event(event)?, t: event.kind(), ms })
    }

    /// The entry as keel-proto serialized it.
    pub fn text(&self) -> &str {
        &self.e
    }

    pub fn all(events: &[JournalEvent]) -> Result<Vec<Self>> {
        events.iter().map(Self::of).collect()
    }
}

/// The one argument a script gets: its own arguments, and beside them the
/// declared keys' map and the partition's notify channel.
#[derive(Serialize)]
struct Argument<'a, T> {
    #[serde(flatten)]
    args: T,
    k: &'a Declared<'a>,
    ch: &'a str,
}

/// Call operation `op` with `declared` keys and `args`; decode its JSON
/// reply. A write waits for replicas when the store is set to.
pub(super) async fn run_script<R: DeserializeOwned>(
    store: &RedisStore,
    op: &super::scripts::Op,
    declared: &Declared<'_>,
    args: impl Serialize,
    write: bool,
) -> Result<R> {
    let reply = if store.uses_functions() {
        store.fcall(&op.function, &declared.list, argument(declared, args)?, write).await?
    } else {
        eval(store, &op.script, declared, args, write).await?
    };
    // A script that journaled countable entries hands its counts back after
    // a newline (cjson never writes a raw one): see counters.rs.
    let reply = match reply.split_once('\n') {
        Some((reply, counts)) => {
            store.count(declared.keys.index(), counts);
            reply
        }
        None => &reply,
    };
    // Every process runs some script at least every timer tick (its duties),
    // so counts wait about a second at most.
    store.flush_counters_when_due();
    serde_json::from_str(reply).map_err(|e| Error::corrupt("script reply", format!("{e}: {reply}")))
}

/// The token of one lease-fenced write (`w`; see `replayed` in prelude.lua):
/// the lease's epoch, which one holder has, and this process's count of
/// writes. A cluster client re-sends a script whose connection dropped after
/// it may have run; the script knows the token again and answers what it
/// answered the first time, so a step's result is journaled once.
pub(super) fn write_token(lease: &crate::store::Lease) -> String {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{}.{}", lease.epoch, WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// The one argument an operation gets, as JSON text.
fn argument(declared: &Declared<'_>, args: impl Serialize) -> Result<String> {
    serde_json::to_string(&Argument { args, k: declared, ch: declared.keys.notify_channel() })
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// Run `script` by EVALSHA (loading it on NOSCRIPT); its reply's text.
pub(super) async fn eval(
    store: &RedisStore,
    script: &redis::Script,
    declared: &Declared<'_>,
    args: impl Serialize,
    write: bool,
) -> Result<String> {
    let mut invocation = script.prepare_invoke();
    for key in &declared.list {
        invocation.key(key);
    }
    invocation.arg(argument(declared, args)?);
    if write { invocation.invoke_on(store).await } else { Ok(invocation.invoke_async(&mut store.conn.clone()).await?) }
}

/// Try `attempt` until it answers something other than `None` (its script
/// said RETRY), a bounded number of times.
pub(super) async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    for _ in 0..RETRIES {
        if let Some(answer) = attempt().await? {
            return Ok(answer);
        }
    }
    Err(Error::Contended(format!("{what}: what it read kept changing under it ({RETRIES} tries)")))
}

/// A run hash a script returned as a field/value list (HGETALL's shape).
pub(super) fn hash_of(pairs: &[String]) -> HashMap<String, String> {
    pairs.chunks(2).filter_map(|p| Some((p[0].clone(), p.get(1)?.clone()))).collect()
}

/// A list the script wrote: cjson writes an empty one as `{}`.
pub(super) fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        List(Vec<T>),
        Empty(Map<String, Json>),
    }
    match Either::deserialize(d)? {
        Either::List(items) => Ok(items),
        Either::Empty(map) if map.is_empty() => Ok(Vec::new()),
        Either::Empty(_) => Err(serde::de::Error::custom("expected a list")),
    }
}

/// Facts about runs read before a script, for declaring the keys it will
/// touch: one HMGET per run, in one pipeline.
pub(super) async fn read_fields(
    store: &RedisStore,
    keys: &Keys,
    ids: &[RunId],
    fields: &[&str],
) -> Result<Vec<Vec<Option<String>>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HMGET").arg(keys.run(id)).arg(fields);
    }
    Ok(pipe.query_async(&mut store.conn.clone()).await?)
}

/// Ids as Redis gave them, checked.
pub(super) fn run_ids(ids: Vec<String>) -> Result<Vec<RunId>> {
    ids.into_iter().map(|id| Ok(RunId::new(id)?)).collect()
}
