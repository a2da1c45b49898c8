//! [`Context`]: what a workflow's code uses to take durable steps.
//!
//! Every primitive first finds out from the journal what already happened (the
//! pure decisions in `history.rs`), then either returns the recorded result, or
//! does the work and records it, or blocks its branch for good (a timer, an
//! event, a child run). When every branch of the workflow is blocked and none is
//! working, the runtime suspends the run: it records what the run waits for,
//! drops the workflow's future and releases the task. The author never sees it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use keel_engine::{CreateRun, EventWait, Lease, Store};
use keel_proto::{ChildOutcome, ErrorInfo, JournalEntry, JournalEvent, JournalRecord, ParentRef, RunId, RunStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::history::{
    ChildDecision, History, SleepDecision, StepDecision, WaitDecision, decide_child, decide_sleep, decide_step,
    decide_wait,
};
use crate::marks::{AttemptBoard, MarkState, StartedMark};
use crate::{Error, Result, RetryPolicy, StepError};

/// A step attempt that runs longer than this is journaled as started before it
/// ends; a faster one only by its result.
const STARTED_AFTER: Duration = Duration::from_millis(10);

/// Which earlier events a wait may receive. Events go to the runs waiting when
/// they are sent (a broadcast); a run that starts waiting later gets the first
/// event sent within the store's lookback window (5 minutes by default) before
/// its wait began, and never one it consumed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lookback {
    /// Only events sent since this run started (the default): a new run never
    /// receives an event that was meant for an earlier one.
    #[default]
    SinceRunStart,
    /// Any event within the lookback window, even one sent before this run began.
    Window,
}

/// What a step's code learns about the attempt it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInfo {
    pub run_id: RunId,
    pub step_id: String,
    /// 1 on the first attempt.
    pub attempt: u32,
    /// `run_id:step_id`: the same on every attempt of this step, so the services a
    /// step calls can de-duplicate its side effects.
    pub idempotency_key: String,
}

/// Decides whether a step attempt runs or fails at once (test harness fault injection).
pub(crate) type Interceptor = Arc<dyn Fn(&StepInfo) -> Option<StepError> + Send + Sync>;

/// What the runtime shares with every run it executes.
pub(crate) struct Settings {
    pub default_retry: RetryPolicy,
    pub interceptor: Option<Interceptor>,
    /// The newest registered version of each workflow, for child runs.
    pub versions: HashMap<String, u32>,
    /// How `ctx.call` sends requests.
    pub calls: crate::CallSettings,
    /// Lease renewals and the started marks of long attempts, on their own thread.
    pub heartbeats: crate::heartbeat::Heartbeats,
    /// Flow-control slots: asked for before attempts, given back after.
    pub flow: Arc<crate::flow::FlowGate>,
}

/// Why the run must stop being driven.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stop {
    /// A cancel was requested: stop at the step boundary.
    Cancel,
    /// A pause was requested: hand the run back at the step boundary.
    Pause,
    /// The run fails now (non-determinism, an undecodable journal…).
    Fail(ErrorInfo),
    /// The lease is gone or the store failed: drop everything, record nothing.
    Abandon(String),
}

/// What every execution of one claimed run shares (the run may replay
/// several times under one lease: a failure handler, a suspension that found
/// its event already there).
#[derive(Clone)]
pub(crate) struct Shared {
    /// Attempts whose started mark the heartbeat thread may have to write.
    pub board: Arc<AttemptBoard>,
    /// The flow-control key every step of the run executes under (its start's).
    pub flow: Option<crate::flow::FlowAsk>,
}

/// Everything one execution of a run (one lease) shares between its branches.
pub(crate) struct RunCore {
    pub store: Arc<dyn Store>,
    pub lease: Lease,
    pub settings: Arc<Settings>,
    base_ms: u64,
    base_at: Instant,
    /// When the run started (its `run_started` entry), store time.
    run_start_ms: u64,
    state: Mutex<RunState>,
    /// Journal writes go one at a time, in the order branches asked for them.
    writes: tokio::sync::Mutex<()>,
    /// Completed steps not yet written: they go with the next write, which
    /// always comes before another attempt, child or suspension starts, or
    /// with the run's finish. A run whose last step is followed by its end
    /// commits both in one call; every step is still durable before any
    /// later work of the run begins.
    deferred: Mutex<Vec<JournalEvent>>,
    /// Attempts whose started mark the heartbeat thread may have to write.
    pub board: Arc<AttemptBoard>,
    /// The flow-control key every step of the run executes under (its start's).
    pub flow: Option<crate::flow::FlowAsk>,
}

pub(crate) struct RunState {
    pub journal: Vec<JournalRecord>,
    pub history: History,
    /// Per branch: primitives reached so far.
    positions: HashMap<Arc<str>, usize>,
    /// Per branch and name: occurrences so far.
    occurrences: HashMap<(Arc<str>, String), u32>,
    /// Branches doing work (running a step, writing to the store).
    pub executing: usize,
    /// Branches blocked until a time.
    pub blocked_until: Vec<u64>,
    /// Branches blocked on events, with their timeouts.
    pub waits: Vec<(EventWait, Option<u64>)>,
    pub stop: Option<Stop>,
    /// A branch waits for a flow-control slot: the run's status says which key.
    pub flow_blocked: Option<String>,
}

impl RunCore {
    pub fn new(
        store: Arc<dyn Store>,
        lease: Lease,
        settings: Arc<Settings>,
        journal: Vec<JournalRecord>,
        now_ms: u64,
        stop: Option<Stop>,
        shared: Shared,
    ) -> Arc<Self> {
        let Shared { board, flow } = shared;
        let history = History::new(&journal);
        let run_start_ms = journal.first().map_or(now_ms, |r| r.at_ms);
        Arc::new(Self {
            store,
            lease,
            settings,
            base_ms: now_ms,
            base_at: Instant::now(),
            run_start_ms,
            state: Mutex::new(RunState {
                journal,
                history,
                positions: HashMap::new(),
                occurrences: HashMap::new(),
                executing: 0,
                blocked_until: Vec::new(),
                waits: Vec::new(),
                stop,
                flow_blocked: None,
            }),
            writes: tokio::sync::Mutex::new(()),
            deferred: Mutex::new(Vec::new()),
            board,
            flow,
        })
    }

    pub fn state(&self) -> MutexGuard<'_, RunState> {
        // Never held across an await; a panic while holding it is a bug in this
        // crate, and the state is still the journal's truth.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store's clock, as of the claim plus the time since.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base_at.elapsed().as_millis() as u64
    }

    /// The `since_ms` a wait that began at `wait_start` hands the store (which
    /// counts events from `since_ms - lookback`): by default never before the
    /// run's own start, so a new run never gets an event meant for an older one.
    fn event_since(&self, wait_start: u64, lookback: Lookback) -> u64 {
        match lookback {
            Lookback::Window => wait_start,
            Lookback::SinceRunStart => {
                let window = millis(self.store.config().event_lookback);
                wait_start.max(self.run_start_ms.saturating_add(window))
            }
        }
    }

    fn halt(&self, stop: Stop) {
        let mut state = self.state();
        // A failure or an abandon outranks a cancel or a pause; the first of equals wins.
        match (&state.stop, &stop) {
            (None, _) | (Some(Stop::Cancel | Stop::Pause), Stop::Fail(_) | Stop::Abandon(_)) => state.stop = Some(stop),
            _ => {}
        }
    }

    /// Enter a primitive: its step id, its place, the determinism guard, and a
    /// mark that this branch is working. `None` when the run is stopping.
    fn enter(self: &Arc<Self>, name: &str) -> Option<(String, Active)> {
        let branch = current_branch();
        let mut state = self.state();
        if state.stop.is_some() {
            return None;
        }
        let occurrence = state.occurrences.entry((branch.clone(), name.to_owned())).or_insert(0);
        *occurrence += 1;
        let mut step_id = name.to_owned();
        if *occurrence > 1 {
            step_id.push_str(&format!("#{occurrence}"));
        }
        if !branch.is_empty() {
            step_id.push('@');
            step_id.push_str(&branch);
        }
        let index = state.positions.entry(branch.clone()).or_insert(0);
        let pos = format!("{branch}:{index}");
        *index += 1;
        if let Err(error) = state.history.check_position(&pos, &step_id) {
            drop(state);
            self.halt(Stop::Fail(error));
            return None;
        }
        state.executing += 1;
        Some((step_id, Active { core: self.clone(), pos }))
    }

    /// Take the next place in the current branch for a parallel group (so what
    /// follows the group gets places that depend on it).
    fn slot(&self) -> usize {
        let branch = current_branch();
        let mut state = self.state();
        let index = state.positions.entry(branch).or_insert(0);
        *index += 1;
        *index - 1
    }

    /// Mark this branch as working outside a positioned primitive.
    fn busy(self: &Arc<Self>) -> Active {
        self.state().executing += 1;
        Active { core: self.clone(), pos: String::new() }
    }

    /// Keep a completed step's entry for the next write (see `deferred`).
    fn defer(&self, event: JournalEvent) {
        self.deferred.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(event);
    }

    /// The completed steps not yet written, for the run's finish to carry.
    pub(crate) fn take_deferred(&self) -> Vec<JournalEvent> {
        std::mem::take(&mut *self.deferred.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Write the completed steps not yet written; false if that failed (the
    /// execution is abandoned, as for any failed write).
    pub(crate) async fn flush(self: &Arc<Self>) -> bool {
        if self.deferred.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty() {
            return true;
        }
        // The branch counts as working meanwhile: the run must not suspend
        // with this write in flight.
        let _working = self.busy();
        self.append(Vec::new()).await.is_some()
    }

    /// Append entries under the lease. On failure the run is abandoned (its lease
    /// will expire and the journal, which has or has not the entries, decides).
    async fn append(&self, events: Vec<JournalEvent>) -> Option<Vec<JournalRecord>> {
        self.append_via(self.store.as_ref(), events).await
    }

    /// [`append`](Self::append) through another handle on the store (the
    /// heartbeat thread's, which a blocked runtime cannot stall).
    pub(crate) async fn append_via(&self, store: &dyn Store, events: Vec<JournalEvent>) -> Option<Vec<JournalRecord>> {
        let _turn = self.writes.lock().await;
        if matches!(self.state().stop, Some(Stop::Abandon(_) | Stop::Fail(_))) {
            return None;
        }
        // Completed steps waiting for a write go first; the caller gets its own records.
        let mut all = self.take_deferred();
        let earlier = all.len();
        all.extend(events);
        let events = all;
        if events.is_empty() {
            return Some(Vec::new());
        }
        match store.append(&self.lease, &events).await {
            Ok(appended) => {
                let mut records: Vec<JournalRecord> = appended
                    .seqs
                    .iter()
                    .zip(events)
                    .map(|(seq, event)| JournalRecord {
                        at_ms: seq.split_once('-').and_then(|(ms, _)| ms.parse().ok()).unwrap_or_default(),
                        seq: seq.clone(),
                        entry: JournalEntry::new(event),
                    })
                    .collect();
                let mut state = self.state();
                for record in &records {
                    state.history.apply(record);
                    state.journal.push(record.clone());
                }
                if appended.cancel_requested && matches!(state.stop, None | Some(Stop::Pause)) {
                    state.stop = Some(Stop::Cancel);
                } else if appended.pause_requested && state.stop.is_none() {
                    state.stop = Some(Stop::Pause);
                }
                Some(records.split_off(earlier))
            }
            Err(e) => {
                tracing::warn!(run_id = %self.lease.run_id, error = %e, "journal write failed; abandoning this execution");
                self.halt(Stop::Abandon(e.to_string()));
                None
            }
        }
    }
}

/// A branch at work; dropping it marks the branch idle.
struct Active {
    core: Arc<RunCore>,
    pos: String,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.core.state().executing -= 1;
    }
}

impl Active {
    /// The step fails for good with `error`: journaled, then the error (or,
    /// when the write fails, the execution stops).
    async fn fail_step<T>(self, step_id: String, attempt: u32, error: ErrorInfo, pos: Option<String>) -> Result<T> {
        let failed = JournalEvent::StepFailed { step_id, attempt, error: error.clone(), retry_at_ms: None, pos };
        if self.core.append(vec![failed]).await.is_none() {
            return self.halt().await;
        }
        Err(Error::from_info(error))
    }

    /// Block this branch until `at` (store time): the run suspends when every
    /// branch is blocked. Never returns.
    async fn block_until<T>(self, at: u64) -> T {
        self.core.state().blocked_until.push(at);
        drop(self);
        std::future::pending().await
    }

    async fn block_on_event<T>(self, wait: EventWait, timeout_at_ms: Option<u64>) -> T {
        self.core.state().waits.push((wait, timeout_at_ms));
        drop(self);
        std::future::pending().await
    }

    /// The run is stopping: this branch goes no further.
    async fn halt<T>(self) -> T {
        drop(self);
        std::future::pending().await
    }
}

async fn halted<T>() -> T {
    std::future::pending().await
}

fn decode<T: DeserializeOwned>(step_id: &str, value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| {
        Error::from_info(
            ErrorInfo::new(
                "decode_failed",
                format!("the recorded result does not decode as the type the workflow expects: {e}"),
            )
            .in_step(step_id),
        )
    })
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

thread_local! {
    /// The branch being polled: its path through `ctx.all` / `ctx.join`.
    static BRANCH: RefCell<Arc<str>> = RefCell::new(Arc::from(""));
}

fn current_branch() -> Arc<str> {
    BRANCH.with(|b| b.borrow().clone())
}

/// A future polled as one branch of a parallel group, so the steps it reaches
/// get places (and ids) that do not depend on how branches interleave.
struct Branch<F> {
    path: Arc<str>,
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for Branch<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let path = self.path.clone();
        let outer = BRANCH.with(|b| std::mem::replace(&mut *b.borrow_mut(), path));
        let result = self.fut.as_mut().poll(cx);
        BRANCH.with(|b| *b.borrow_mut() = outer);
        result
    }
}

/// Poll `fut` as the named branch (the failure handler runs as its own branch,
/// so its step never takes the place of one of the workflow's).
pub(crate) fn in_branch<F: Future>(path: &str, fut: F) -> impl Future<Output = F::Output> {
    Branch { path: Arc::from(path), fut: Box::pin(fut) }
}

/// Branch `index` of the parallel group that took place `slot` in the current branch.
fn branch<F: Future>(slot: usize, index: usize, fut: F) -> Branch<F> {
    let parent = current_branch();
    let path: Arc<str> = if parent.is_empty() {
        Arc::from(format!("{slot}.{index}"))
    } else {
        Arc::from(format!("{parent}/{slot}.{index}"))
    };
    Branch { path, fut: Box::pin(fut) }
}

/// The handle a workflow's code receives: take steps, sleep, wait for events,
/// start child runs, all durably.
///
/// ```
/// use keel_worker::{Context, Result, StepError};
///
/// async fn greet(ctx: Context, name: String) -> Result<String> {
///     let greeting: String = ctx.step("greet").run(|| async move { Ok::<_, StepError>(format!("hello {name}")) }).await?;
///     ctx.sleep("pause", std::time::Duration::from_secs(1)).await?;
///     Ok(greeting)
/// }
/// ```
#[derive(Clone)]
pub struct Context {
    core: Arc<RunCore>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("run_id", &self.core.lease.run_id).finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(core: Arc<RunCore>) -> Self {
        Self { core }
    }

    /// This run's id.
    ///
    /// ```
    /// # async fn f(ctx: keel_worker::Context) {
    /// tracing::info!(run_id = %ctx.run_id(), lease_epoch = ctx.lease_epoch(), "working");
    /// # }
    /// ```
    pub fn run_id(&self) -> &RunId {
        &self.core.lease.run_id
    }

    /// The epoch of the lease this execution holds: how many times a worker has
    /// picked this run up (1 on the first execution; a resume after a sleep or an
    /// event, or a takeover after a crash, counts too). A step's own attempt
    /// number is [`StepInfo::attempt`].
    pub fn lease_epoch(&self) -> u64 {
        self.core.lease.epoch
    }

    /// A step named `name`; configure it, then [`run`](Step::run) it.
    ///
    /// ```
    /// # use keel_worker::{Context, Result, StepError};
    /// # async fn f(ctx: Context) -> Result<u32> {
    /// let n: u32 = ctx.step("count").retry(5).run(|| async { Ok::<_, StepError>(42) }).await?;
    /// # Ok(n) }
    /// ```
    pub fn step(&self, name: impl Into<String>) -> Step {
        Step { ctx: self.clone(), name: name.into(), retry: None, timeout: None, flow: None }
    }

    /// Run futures (usually steps) in parallel, each as its own branch, and wait
    /// for all; the first error (in order) is returned after all have finished.
    ///
    /// ```
    /// # use keel_worker::{Context, Result, StepError};
    /// async fn fetch_all(ctx: Context, urls: Vec<String>) -> Result<Vec<usize>> {
    ///     ctx.all(urls.into_iter().map(|url| {
    ///         ctx.step(format!("fetch-{url}")).retry(5).run(move || async move { Ok::<_, StepError>(url.len()) })
    ///     }))
    ///     .await
    /// }
    /// ```
    pub async fn all<T, F>(&self, futures: impl IntoIterator<Item = F>) -> Result<Vec<T>>
    where
        F: Future<Output = Result<T>>,
    {
        let slot = self.core.slot();
        let branches: Vec<_> = futures.into_iter().enumerate().map(|(i, f)| branch(slot, i, f)).collect();
        futures::future::join_all(branches).await.into_iter().collect()
    }

    /// Run two futures of different types in parallel, each as its own branch.
    ///
    /// ```
    /// # use keel_worker::{Context, Result, StepError};
    /// # async fn f(ctx: Context) -> Result<()> {
    /// let (user, orders): (String, Vec<u32>) = ctx
    ///     .join(
    ///         ctx.step("user").run(|| async { Ok::<_, StepError>("ann".to_owned()) }),
    ///         ctx.step("orders").run(|| async { Ok::<_, StepError>(vec![1, 2]) }),
    ///     )
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn join<A, B>(
        &self,
        a: impl Future<Output = Result<A>>,
        b: impl Future<Output = Result<B>>,
    ) -> Result<(A, B)> {
        let slot = self.core.slot();
        let (a, b) = futures::future::join(branch(slot, 0, a), branch(slot, 1, b)).await;
        Ok((a?, b?))
    }

    /// Three futures of different types in parallel.
    ///
    /// ```
    /// # use keel_worker::{Context, Result, StepError};
    /// # async fn f(ctx: Context) -> Result<()> {
    /// let (a, b, c): (u8, u16, u32) = ctx
    ///     .join3(
    ///         ctx.step("a").run(|| async { Ok::<_, StepError>(1) }),
    ///         ctx.step("b").run(|| async { Ok::<_, StepError>(2) }),
    ///         ctx.step("c").run(|| async { Ok::<_, StepError>(3) }),
    ///     )
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn join3<A, B, C>(
        &self,
        a: impl Future<Output = Result<A>>,
        b: impl Future<Output = Result<B>>,
        c: impl Future<Output = Result<C>>,
    ) -> Result<(A, B, C)> {
        let slot = self.core.slot();
        let (a, b, c) = futures::future::join3(branch(slot, 0, a), branch(slot, 1, b), branch(slot, 2, c)).await;
        Ok((a?, b?, c?))
    }

    /// A durable sleep: the run is suspended (the worker is free) and resumes
    /// after `duration`, even across worker restarts.
    ///
    /// ```
    /// # async fn f(ctx: keel_worker::Context) -> keel_worker::Result<()> {
    /// ctx.sleep("cool-down", std::time::Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn sleep(&self, name: impl Into<String>, duration: Duration) -> Result<()> {
        self.sleep_to(name.into(), Target::After(duration)).await
    }

    /// A durable sleep until a wall-clock time.
    ///
    /// ```
    /// # async fn f(ctx: keel_worker::Context) -> keel_worker::Result<()> {
    /// let tomorrow = std::time::SystemTime::now() + std::time::Duration::from_secs(86_400);
    /// ctx.sleep_until("until-tomorrow", tomorrow).await?;
    /// # Ok(()) }
    /// ```
    pub async fn sleep_until(&self, name: impl Into<String>, at: SystemTime) -> Result<()> {
        let at_ms = at.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0);
        self.sleep_to(name.into(), Target::At(at_ms)).await
    }

    async fn sleep_to(&self, name: String, target: Target) -> Result<()> {
        let core = &self.core;
        // A step boundary: earlier steps' results are written first (and a
        // cancel or pause asked for meanwhile is seen here).
        if !core.flush().await {
            return halted().await;
        }
        let Some((step_id, active)) = core.enter(&name) else { return halted().await };
        let now = core.now_ms();
        let decision = decide_sleep(core.state().history.step(&step_id), now);
        match decision {
            SleepDecision::Done => Ok(()),
            SleepDecision::WaitUntil(at) => active.block_until(at).await,
            SleepDecision::Fire => {
                if core.append(vec![JournalEvent::TimerFired { step_id }]).await.is_none() {
                    return active.halt().await;
                }
                Ok(())
            }
            SleepDecision::Schedule => {
                let fire_at_ms = match target {
                    Target::After(d) => now.saturating_add(millis(d)),
                    Target::At(at) => at,
                };
                let scheduled = JournalEvent::TimerScheduled {
                    step_id: step_id.clone(),
                    fire_at_ms,
                    pos: Some(active.pos.clone()),
                };
                let mut events = vec![scheduled];
                if fire_at_ms <= now {
                    events.push(JournalEvent::TimerFired { step_id });
                }
                let done = events.len() == 2;
                if core.append(events).await.is_none() {
                    return active.halt().await;
                }
                if done { Ok(()) } else { active.block_until(fire_at_ms).await }
            }
        }
    }

    /// Wait for the first event on `key`; `None` when `timeout` passes first. An
    /// event sent shortly before the wait began (within the store's lookback
    /// window) counts.
    ///
    /// ```
    /// # async fn f(ctx: keel_worker::Context) -> keel_worker::Result<()> {
    /// use std::time::Duration;
    /// let paid: Option<serde_json::Value> =
    ///     ctx.wait_for_event("payment", "order-42:paid", Some(Duration::from_secs(3600))).await?;
    /// if paid.is_none() { /* an hour passed without payment */ }
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_event<T: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        key: impl Into<String>,
        timeout: Option<Duration>,
    ) -> Result<Option<T>> {
        Ok(self.wait_for_any(name, [key.into()], timeout).await?.map(|(_, data)| data))
    }

    /// Wait for the first event on any of `keys`: which key, and its data.
    ///
    /// ```
    /// # async fn f(ctx: keel_worker::Context) -> keel_worker::Result<()> {
    /// let verdict: Option<(String, bool)> = ctx.wait_for_any("review", ["doc-7:approved", "doc-7:rejected"], None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_any<T: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        keys: impl IntoIterator<Item = impl Into<String>>,
        timeout: Option<Duration>,
    ) -> Result<Option<(String, T)>> {
        self.wait_for_any_with(name, keys, timeout, Lookback::SinceRunStart).await
    }

    /// [`wait_for_any`](Self::wait_for_any), choosing which earlier events count.
    ///
    /// ```
    /// # async fn f(ctx: keel_worker::Context) -> keel_worker::Result<()> {
    /// use keel_worker::Lookback;
    /// // The deploy may have been announced before this run started: take it anyway.
    /// let deployed: Option<(String, String)> =
    ///     ctx.wait_for_any_with("deployed", ["release-9:deployed"], None, Lookback::Window).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_any_with<T: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        keys: impl IntoIterator<Item = impl Into<String>>,
        timeout: Option<Duration>,
        lookback: Lookback,
    ) -> Result<Option<(String, T)>> {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        for key in &keys {
            keel_proto::validate_event_key(key).map_err(|e| Error::new("invalid_event_key", e.to_string()))?;
        }
        let core = &self.core;
        let name = name.into();
        // A step boundary: earlier steps' results are written first (and a
        // cancel or pause asked for meanwhile is seen here).
        if !core.flush().await {
            return halted().await;
        }
        let Some((step_id, active)) = core.enter(&name) else { return halted().await };
        let now = core.now_ms();
        let decision = decide_wait(core.state().history.step(&step_id), now);
        match decision {
            WaitDecision::Received(key, data) => Ok(Some((key, decode(&step_id, data)?))),
            WaitDecision::TimedOut => Ok(None),
            WaitDecision::TimeOut => {
                if core.append(vec![JournalEvent::WaitTimedOut { step_id }]).await.is_none() {
                    return active.halt().await;
                }
                Ok(None)
            }
            WaitDecision::Wait(w) => {
                let wait = EventWait { step_id, keys: w.keys, since_ms: core.event_since(w.since_ms, lookback) };
                active.block_on_event(wait, w.timeout_at_ms).await
            }
            WaitDecision::Start => {
                let timeout_at_ms = timeout.map(|d| now.saturating_add(millis(d)));
                let started = JournalEvent::WaitStarted {
                    step_id: step_id.clone(),
                    event_keys: keys.clone(),
                    timeout_at_ms,
                    pos: Some(active.pos.clone()),
                };
                let Some(records) = core.append(vec![started]).await else { return active.halt().await };
                let since_ms = core.event_since(records.first().map_or(now, |r| r.at_ms), lookback);
                active.block_on_event(EventWait { step_id, keys, since_ms }, timeout_at_ms).await
            }
        }
    }

    /// Start a child run of `workflow` and wait for its output. Its failure (or
    /// cancellation) comes back as an error of kind `child_failed` / `child_cancelled`.
    ///
    /// ```
    /// # async fn f(ctx: keel_worker::Context) -> keel_worker::Result<()> {
    /// let summary: String = ctx.invoke("summarize", "summarizer", &serde_json::json!({"doc": 7})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn invoke<I: Serialize, O: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        workflow: &str,
        input: &I,
    ) -> Result<O> {
        let input = serde_json::to_value(input).map_err(|e| Error::new("invalid_input", e.to_string()))?;
        let core = &self.core;
        let name = name.into();
        // A step boundary: earlier steps' results are written first (and a
        // cancel or pause asked for meanwhile is seen here).
        if !core.flush().await {
            return halted().await;
        }
        let Some((step_id, active)) = core.enter(&name) else { return halted().await };
        let decision = decide_child(core.state().history.step(&step_id));
        let outcome = match decision {
            ChildDecision::Done(outcome) => outcome,
            ChildDecision::Start => {
                let child_run_id = child_run_id(&core.lease.run_id, &step_id);
                let created = core
                    .store
                    .create_run(CreateRun {
                        workflow: workflow.to_owned(),
                        version: core.settings.versions.get(workflow).copied().unwrap_or(1),
                        input,
                        run_id: Some(child_run_id.clone()),
                        parent: Some(ParentRef { run_id: core.lease.run_id.clone(), step_id: step_id.clone() }),
                        // A child is as urgent as the run waiting for it.
                        priority: Some(core.lease.priority),
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(_) => {}
                    // The request itself is wrong: retrying cannot help.
                    Err(
                        e @ (keel_engine::Error::Invalid(_)
                        | keel_engine::Error::Id(_)
                        | keel_engine::Error::IdempotencyConflict { .. }
                        | keel_engine::Error::PayloadTooLarge { .. }),
                    ) => {
                        let error = ErrorInfo::new("child_not_started", e.to_string()).in_step(&step_id);
                        return Err(Error::from_info(error));
                    }
                    // The store failed (a blip, a timeout): abandon like every other
                    // store error; the replay creates the same child id again.
                    Err(e) => {
                        tracing::warn!(run_id = %core.lease.run_id, error = %e, "starting a child run failed; abandoning this execution");
                        core.halt(Stop::Abandon(e.to_string()));
                        return active.halt().await;
                    }
                }
                let started = JournalEvent::ChildStarted {
                    step_id: step_id.clone(),
                    child_run_id: child_run_id.clone(),
                    workflow: workflow.to_owned(),
                    pos: Some(active.pos.clone()),
                };
                let Some(records) = core.append(vec![started]).await else { return active.halt().await };
                let since_ms = records.first().map_or(core.now_ms(), |r| r.at_ms);
                let keys = vec![keel_engine::child_event_key(&child_run_id)];
                return active.block_on_event(EventWait { step_id, keys, since_ms }, None).await;
            }
            ChildDecision::Wait { child, since_ms } => {
                // The outcome may have come and gone from the lookback while this run
                // was not waiting (a long crash): ask the child itself.
                match core.store.get_run(&child).await {
                    Ok(Some(run)) if run.status.is_final() => {
                        let outcome = match run.status {
                            RunStatus::Completed => {
                                ChildOutcome::Completed { output: run.output.unwrap_or(Value::Null) }
                            }
                            RunStatus::Failed => ChildOutcome::Failed {
                                error: run
                                    .error
                                    .unwrap_or_else(|| ErrorInfo::new("child_failed", "the child run failed")),
                            },
                            _ => ChildOutcome::Cancelled,
                        };
                        let done = JournalEvent::ChildCompleted {
                            step_id: step_id.clone(),
                            child_run_id: child,
                            outcome: outcome.clone(),
                        };
                        if core.append(vec![done]).await.is_none() {
                            return active.halt().await;
                        }
                        outcome
                    }
                    Ok(_) => {
                        let keys = vec![keel_engine::child_event_key(&child)];
                        return active.block_on_event(EventWait { step_id, keys, since_ms }, None).await;
                    }
                    Err(e) => {
                        core.halt(Stop::Abandon(e.to_string()));
                        return active.halt().await;
                    }
                }
            }
        };
        drop(active);
        match outcome {
            ChildOutcome::Completed { output } => decode(&step_id, output),
            ChildOutcome::Failed { error } => {
                Err(Error::from_info(ErrorInfo::new("child_failed", error.message).in_step(step_id)))
            }
            ChildOutcome::Cancelled => {
                Err(Error::from_info(ErrorInfo::new("child_cancelled", "the child run was cancelled").in_step(step_id)))
            }
        }
    }

    /// A durable HTTP call: a step whose result is the response. See [`CallRequest`](crate::CallRequest).
    ///
    /// ```
    /// # async fn f(ctx: keel_worker::Context) -> keel_worker::Result<()> {
    /// use keel_worker::CallRequest;
    /// let response = ctx.call("score", CallRequest::post("https://api.example.com/score", serde_json::json!({"text": "hi"})).signed()).await?;
    /// let score = response.body["score"].as_f64();
    /// # Ok(()) }
    /// ```
    pub async fn call(&self, name: impl Into<String>, request: crate::CallRequest) -> Result<crate::CallResponse> {
        let (policy, timeout) = request.policy();
        let settings = self.core.settings.calls.clone();
        // The step's own limit leaves the request's timeout room to report itself.
        let mut step = self.step(name).retry(policy).timeout(timeout + Duration::from_secs(5));
        if let Some(fc) = request.flow() {
            step = step.flow_control(fc.key.clone(), fc.limits.clone());
        }
        step.run_with(move |info| async move { crate::call::send(&settings, &info, &request).await }).await
    }

    /// The worker's call settings (signing key, private targets), for handlers
    /// that make their own requests inside a step.
    pub fn call_settings(&self) -> &crate::CallSettings {
        &self.core.settings.calls
    }

    /// Declare how many steps the run expects in all, for progress displays.
    ///
    /// ```
    /// # async fn f(ctx: keel_worker::Context) -> keel_worker::Result<()> {
    /// ctx.progress(12).await?; // dashboards show "n of 12"
    /// # Ok(()) }
    /// ```
    pub async fn progress(&self, total_steps: u32) -> Result<()> {
        let core = &self.core;
        if core.state().history.progress == Some(total_steps) {
            return Ok(());
        }
        if core.state().stop.is_some() {
            return halted().await;
        }
        let active = core.busy();
        if core.append(vec![JournalEvent::ProgressDeclared { total_steps }]).await.is_none() {
            return active.halt().await;
        }
        Ok(())
    }
}

enum Target {
    After(Duration),
    At(u64),
}

/// A child's id is derived from its parent and step, so a replay that starts it
/// again finds the same run.
fn child_run_id(parent: &RunId, step_id: &str) -> RunId {
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("keel/{parent}/{step_id}").as_bytes());
    // A UUID is always a valid run id.
    RunId::new(id.to_string()).unwrap_or_else(|_| parent.clone())
}

/// A step being configured. Its result is journaled before the workflow goes on;
/// on replay it is returned without running the closure again.
#[must_use = "a step does nothing until `.run(...)` is awaited"]
pub struct Step {
    ctx: Context,
    name: String,
    retry: Option<RetryPolicy>,
    timeout: Option<Duration>,
    flow: Option<keel_proto::FlowControl>,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("flow_control", &self.flow)
            .finish()
    }
}

impl Step {
    /// How often to try, and the back-off between tries (a number is that many attempts).
    ///
    /// ```
    /// # use keel_worker::{Context, Result, RetryPolicy, StepError};
    /// # async fn f(ctx: Context) -> Result<()> {
    /// use std::time::Duration;
    /// let policy = RetryPolicy::attempts(8).initial(Duration::from_millis(500)).max_delay(Duration::from_secs(30));
    /// ctx.step("call-api").retry(policy).run(|| async { Ok::<_, StepError>(()) }).await?;
    /// # Ok(()) }
    /// ```
    pub fn retry(mut self, policy: impl Into<RetryPolicy>) -> Self {
        self.retry = Some(policy.into());
        self
    }

    /// An attempt that runs longer than this fails (kind `timeout`) and counts as an attempt.
    ///
    /// ```
    /// # use keel_worker::{Context, Result, StepError};
    /// # async fn f(ctx: Context) -> Result<()> {
    /// ctx.step("llm").timeout(std::time::Duration::from_secs(60)).run(|| async { Ok::<_, StepError>(()) }).await?;
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Each attempt executes under flow-control key `key`: at most
    /// `parallelism` steps of the key at once and `rate` starts per `period`,
    /// across every run, worker and server (limits set on the server for the
    /// key win). Without a slot the run suspends, holding no worker slot, and
    /// goes on when one frees, in arrival order. Instead of the run's own key.
    ///
    /// ```
    /// # use keel_worker::{Context, Result, StepError};
    /// # async fn f(ctx: Context) -> Result<()> {
    /// use keel_worker::FlowLimits;
    /// let limits = FlowLimits { parallelism: Some(4), rate: Some(60), period: Some("1m".into()) };
    /// ctx.step("plan").flow_control("openai", limits).run(|| async { Ok::<_, StepError>(()) }).await?;
    /// # Ok(()) }
    /// ```
    pub fn flow_control(mut self, key: impl Into<String>, limits: keel_proto::FlowLimits) -> Self {
        self.flow = Some(keel_proto::FlowControl { key: key.into(), limits });
        self
    }

    /// Run the step's code.
    ///
    /// ```
    /// # use keel_worker::{Context, Result, StepError};
    /// # async fn f(ctx: Context) -> Result<()> {
    /// let rows: Vec<u32> = ctx.step("load").run(|| async { Ok::<_, StepError>(vec![1, 2, 3]) }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn run<T, F, Fut>(self, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        self.run_with(move |_| f()).await
    }

    /// Run the step's code, which receives the attempt and its idempotency key.
    ///
    /// ```
    /// # use keel_worker::{Context, Result, StepError, StepInfo};
    /// async fn charge(ctx: Context, cents: u64) -> Result<String> {
    ///     ctx.step("charge")
    ///         .run_with(|info: StepInfo| async move {
    ///             // Pass info.idempotency_key to the payment API so a retry never charges twice.
    ///             Ok::<_, StepError>(format!("{} for {cents}", info.idempotency_key))
    ///         })
    ///         .await
    /// }
    /// ```
    pub async fn run_with<T, F, Fut>(self, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(StepInfo) -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let core = self.ctx.core.clone();
        if self.name.is_empty() || self.name.contains('\n') || self.name.len() > 256 {
            return Err(Error::new(
                "invalid_step_name",
                format!("step name {:?} must be 1-256 characters without line breaks", self.name),
            ));
        }
        // A step boundary: earlier steps' results are written before this
        // step's attempt begins (and a cancel or pause asked for meanwhile is
        // seen here).
        if !core.flush().await {
            return halted().await;
        }
        let Some((step_id, active)) = core.enter(&self.name) else { return halted().await };
        let decision = decide_step(core.state().history.step(&step_id), core.now_ms());
        let (attempt, interrupted_before) = match decision {
            StepDecision::Replay(output) => return decode(&step_id, output),
            StepDecision::ReplayFailure(error) => return Err(Error::from_info(error)),
            StepDecision::WaitUntil(at) => return active.block_until(at).await,
            StepDecision::Execute { attempt } => (attempt, false),
            StepDecision::AfterInterruption { attempt } => (attempt, true),
        };
        let policy = self.retry.clone().unwrap_or_else(|| core.settings.default_retry.clone());
        if interrupted_before && attempt > policy.max_attempts() {
            // Every attempt the policy allows began and none ended: each was
            // cut off by its worker's death or a lost lease (a step that
            // blocks, hangs or crashes the process). Those count, as failed
            // attempts do: the step fails for good instead of trying forever.
            let interrupted = attempt - 1;
            let error = ErrorInfo::new(
                "attempts_exhausted",
                format!(
                    "all {} attempts the step's policy allows began and none finished (the worker running each \
                     stopped or lost the run's lease during it)",
                    policy.max_attempts()
                ),
            )
            .in_step(&step_id);
            return active.fail_step(step_id, interrupted, error, None).await;
        }
        // A slot of the step's (or the run's) flow-control key before the
        // attempt; none free: the run waits for one, holding no worker slot.
        let flow = match &self.flow {
            Some(fc) => match crate::flow::FlowAsk::of(fc) {
                Ok(ask) => Some(ask),
                Err(e) => {
                    let error = ErrorInfo::new("invalid_flow_control", e.to_string()).in_step(&step_id);
                    return active.fail_step(step_id, attempt, error, None).await;
                }
            },
            None => core.flow.clone(),
        };
        let slot = match &flow {
            Some(ask) => {
                let holder = keel_engine::flow::holder(&core.lease.run_id, &step_id);
                match core.settings.flow.acquire(&ask.key, &holder, ask.rule).await {
                    Ok(keel_engine::flow::Slot::Acquired) => {
                        Some(crate::flow::SlotGuard::new(core.settings.flow.clone(), &ask.key, &holder))
                    }
                    Ok(keel_engine::flow::Slot::Wait { retry_at_ms, paused }) => {
                        core.state().flow_blocked = Some(keel_engine::flow::waiting_reason(&ask.key, paused));
                        return active.block_until(retry_at_ms).await;
                    }
                    Err(e) => {
                        core.halt(Stop::Abandon(format!("asking for a flow-control slot failed: {e}")));
                        return active.halt().await;
                    }
                }
            }
            None => None,
        };
        let run_id = core.lease.run_id.clone();
        let info =
            StepInfo { idempotency_key: format!("{run_id}:{step_id}"), run_id, step_id: step_id.clone(), attempt };
        // A fast attempt is journaled once, by its result; one that runs longer
        // than STARTED_AFTER is first journaled as started (so its attempt count is
        // durable and dashboards see it running). The first entry carries the place.
        // The started mark is written from the heartbeat thread: a step that blocks
        // its thread must still count as an attempt if its worker dies during it.
        let injected = core.settings.interceptor.as_ref().and_then(|intercept| intercept(&info));
        let mut started = false;
        let outcome: Result<(T, Duration), (ErrorInfo, Option<StepError>)> = match injected {
            Some(err) => Err((ErrorInfo::new(err.kind_name(), err.message()), Some(err))),
            None => {
                let began = Instant::now();
                let mark = StartedMark::new();
                let entry =
                    JournalEvent::StepStarted { step_id: step_id.clone(), attempt, pos: Some(active.pos.clone()) };
                // The heartbeat thread's watchdog writes the mark if this task
                // cannot (a step blocking its thread); the attempt's own timer
                // does it otherwise, without crossing threads.
                let pending = core.board.add(&core, &mark, entry.clone());
                let work = attempt_once(f, info, self.timeout);
                tokio::pin!(work);
                let result = tokio::select! {
                    biased;
                    result = &mut work => result,
                    () = tokio::time::sleep(STARTED_AFTER) => {
                        StartedMark::write(&mark.0, &core, core.store.as_ref(), entry).await;
                        work.await
                    }
                };
                core.board.remove(&pending);
                match mark.settle().await {
                    MarkState::Running | MarkState::Done => {}
                    MarkState::Journaled => started = true,
                    MarkState::Journaling | MarkState::Failed => return active.halt().await,
                }
                match result {
                    Ok(Ok(value)) => Ok((value, began.elapsed())),
                    Ok(Err(err)) => Err((ErrorInfo::new(err.kind_name(), err.message()), Some(err))),
                    Err(error) => Err((error, None)),
                }
            }
        };
        // The attempt is over: its slot goes back (its result is written at the next boundary).
        drop(slot);
        let pos = (attempt == 1 && !started).then(|| active.pos.clone());
        match outcome {
            Ok((value, took)) => {
                let limit = core.store.config().max_value_bytes;
                let encoded = serde_json::to_value(&value)
                    .map_err(|e| ErrorInfo::new("encode_failed", format!("the step's result is not JSON: {e}")))
                    .and_then(|output| {
                        // Too large to store: a terminal failure (a retry would return the same).
                        keel_engine::check_value_size("step's output", &output, limit)
                            .map(|()| output)
                            .map_err(|e| ErrorInfo::new("payload_too_large", e.to_string()))
                    });
                let output = match encoded {
                    Ok(output) => output,
                    Err(error) => {
                        let error = error.in_step(&step_id);
                        return active.fail_step(step_id, attempt, error, pos).await;
                    }
                };
                let done =
                    JournalEvent::StepCompleted { step_id, attempt, output, pos, duration_ms: Some(millis(took)) };
                core.defer(done);
                Ok(value)
            }
            Err((error, step_error)) => {
                let error = error.in_step(&step_id);

                let retryable = step_error.as_ref().is_none_or(StepError::is_retryable);
                if retryable && attempt < policy.max_attempts() {
                    let delay = step_error
                        .as_ref()
                        .and_then(StepError::retry_delay)
                        .unwrap_or_else(|| policy.delay_after(attempt));
                    let retry_at = core.now_ms().saturating_add(millis(delay));
                    tracing::debug!(run_id = %core.lease.run_id, step = %step_id, attempt, ?delay, "step attempt failed; retrying");
                    let failed = JournalEvent::StepFailed { step_id, attempt, error, retry_at_ms: Some(retry_at), pos };
                    if core.append(vec![failed]).await.is_none() {
                        return active.halt().await;
                    }
                    active.block_until(retry_at).await
                } else {
                    active.fail_step(step_id, attempt, error, pos).await
                }
            }
        }
    }
}

/// One attempt of a step's code, bounded by its timeout. A panic (while building
/// the future or polling it) is a failed attempt, retried by the step's policy.
async fn attempt_once<T, F, Fut>(
    f: F,
    info: StepInfo,
    limit: Option<Duration>,
) -> Result<Result<T, StepError>, ErrorInfo>
where
    F: FnOnce(StepInfo) -> Fut,
    Fut: Future<Output = Result<T, StepError>>,
{
    let panicked = |payload: Box<dyn std::any::Any + Send>| {
        let message = crate::runtime::panic_message(&*payload);
        tracing::error!(panic = %message, "a step attempt panicked");
        ErrorInfo::new("panicked", format!("the step panicked: {message}"))
    };
    let work = match std::panic::catch_unwind(AssertUnwindSafe(|| f(info))) {
        Ok(work) => AssertUnwindSafe(work).catch_unwind(),
        Err(payload) => return Err(panicked(payload)),
    };
    let result = match limit {
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => return Err(ErrorInfo::new("timeout", format!("the attempt took longer than {limit:?}"))),
        },
        None => work.await,
    };
    result.map_err(panicked)
}
