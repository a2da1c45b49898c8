//! Flow control in a worker: a step under a flow-control key asks the store
//! for a slot before each attempt it runs (not on replay), and gives it back
//! when the attempt ends. The give-back is not waited for: it rides on the
//! next ask for the same key from this worker (one script does both), or goes
//! out by itself within [`FLUSH_AFTER`]; so an uncontended key costs one round
//! trip per step. Held slots are renewed with the leases, on the heartbeat
//! thread (a blocking step cannot let them lapse while its run is alive), and
//! the waiting runs a release made room for are woken.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_engine::Store;
use keel_engine::flow::{FlowRule, Slot, SlotRequest};
use keel_engine::proto::RunId;
use tokio::sync::Notify;

/// How long a release waits for the next ask of its key to ride on.
const FLUSH_AFTER: Duration = Duration::from_millis(2);

/// A worker's flow-control client, shared by its executions.
pub(crate) struct FlowGate {
    store: Arc<dyn Store>,
    lease: Duration,
    state: Mutex<GateState>,
    released: Notify,
}

#[derive(Default)]
struct GateState {
    /// Per key: holders whose attempts ended, not yet sent, and since when
    /// the oldest of them waits.
    releases: HashMap<String, (Vec<String>, std::time::Instant)>,
    /// Per key: holders with a slot now (renewed with the leases).
    held: HashMap<String, HashSet<String>>,
}

impl std::fmt::Debug for FlowGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowGate").finish_non_exhaustive()
    }
}

impl FlowGate {
    /// The gate. [`send`](Self::send) is its sender of releases and
    /// renewals, to run on the heartbeat thread.
    pub fn new(store: Arc<dyn Store>, lease: Duration) -> Arc<Self> {
        Arc::new(Self { store, lease, state: Mutex::new(GateState::default()), released: Notify::new() })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ask for a slot of `key` for `holder` under `rule` (the server's limits win).
    pub async fn acquire(&self, key: &str, holder: &str, rule: FlowRule) -> keel_engine::Result<Slot> {
        let releases = self.state().releases.remove(key).map(|(holders, _)| holders).unwrap_or_default();
        let req = SlotRequest { key, holder, rule, lease: self.lease, releases: &releases };
        match self.store.acquire_slot(&req).await {
            Ok(answer) => {
                if answer.slot == Slot::Acquired {
                    self.state().held.entry(key.to_owned()).or_default().insert(holder.to_owned());
                }
                wake(&self.store, answer.wake);
                Ok(answer.slot)
            }
            Err(e) => {
                // Not sent: they go with the next try, or the flush.
                let mut state = self.state();
                let pending =
                    state.releases.entry(key.to_owned()).or_insert_with(|| (Vec::new(), std::time::Instant::now()));
                pending.0.extend(releases);
                drop(state);
                self.released.notify_one();
                Err(e)
            }
        }
    }

    /// The attempt of `holder` ended: give its slot back (soon, not waited for).
    pub fn release(&self, key: &str, holder: &str) {
        {
            let mut state = self.state();
            if let Some(held) = state.held.get_mut(key) {
                held.remove(holder);
                if held.is_empty() {
                    state.held.remove(key);
                }
            }
            let pending =
                state.releases.entry(key.to_owned()).or_insert_with(|| (Vec::new(), std::time::Instant::now()));
            pending.0.push(holder.to_owned());
        }
        self.released.notify_one();
    }

    /// Send releases that found nothing to ride on, renew held slots every
    /// lease / 3, until the gate is dropped. Runs on the heartbeat thread.
    pub async fn send(gate: std::sync::Weak<Self>, store: Arc<dyn Store>, lease: Duration) {
        let renew_every = (lease / 3).max(Duration::from_millis(100));
        let mut renewed = tokio::time::Instant::now();
        loop {
            let Some(this) = gate.upgrade() else { return };
            let notified = this.released.notified();
            tokio::select! {
                () = notified => tokio::time::sleep(FLUSH_AFTER).await,
                () = tokio::time::sleep(renew_every) => {}
            }
            let (releases, held, more) = {
                let mut state = this.state();
                // Only what waited FLUSH_AFTER already: a fresher release may
                // still ride on an ask.
                let due: Vec<String> = state
                    .releases
                    .iter()
                    .filter(|(_, (_, since))| since.elapsed() >= FLUSH_AFTER)
                    .map(|(k, _)| k.clone())
                    .collect();
                let releases: Vec<(String, Vec<String>)> = due
                    .into_iter()
                    .filter_map(|k| state.releases.remove(&k).map(|(holders, _)| (k, holders)))
                    .collect();
                let held: Vec<(String, Vec<String>)> = if renewed.elapsed() >= renew_every {
                    renewed = tokio::time::Instant::now();
                    state.held.iter().map(|(k, hs)| (k.clone(), hs.iter().cloned().collect())).collect()
                } else {
                    Vec::new()
                };
                (releases, held, !state.releases.is_empty())
            };
            if more {
                // Younger releases wait their turn: look again after them.
                this.released.notify_one();
            }
            drop(this);
            for (key, holders) in releases {
                match store.release_slots(&key, &holders).await {
                    Ok(woken) => wake(&store, woken),
                    Err(e) => {
                        // The slots lapse with their lease at the latest.
                        tracing::warn!(key = %key, error = %e, "releasing flow-control slots failed; they lapse with the lease");
                    }
                }
            }
            for (key, holders) in held {
                if let Err(e) = store.renew_slots(&key, &holders, lease).await {
                    tracing::warn!(key = %key, error = %e, "renewing flow-control slots failed; will retry");
                }
            }
        }
    }
}

/// Wake runs that wait for a slot a call made room for (in the background:
/// the timer wakes them anyway, later).
fn wake(store: &Arc<dyn Store>, runs: Vec<RunId>) {
    if runs.is_empty() {
        return;
    }
    let store = store.clone();
    tokio::spawn(async move {
        for run in runs {
            if let Err(e) = store.wake_flow_waiter(&run).await {
                tracing::debug!(run_id = %run, error = %e, "waking a flow-control waiter failed; its timer will");
            }
        }
    });
}

/// A slot held by one attempt: given back when dropped (the attempt ended, or
/// its execution was dropped: a lost lease, a shutdown).
pub(crate) struct SlotGuard {
    gate: Arc<FlowGate>,
    key: String,
    holder: String,
}

impl SlotGuard {
    pub fn new(gate: Arc<FlowGate>, key: &str, holder: &str) -> Self {
        Self { gate, key: key.to_owned(), holder: holder.to_owned() }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.gate.release(&self.key, &self.holder);
    }
}

/// A flow-control key and its checked limits, as a run or a step asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlowAsk {
    pub key: String,
    pub rule: FlowRule,
}

impl FlowAsk {
    pub fn of(fc: &keel_proto::FlowControl) -> keel_engine::Result<Self> {
        Ok(Self { key: fc.key.clone(), rule: keel_engine::flow::check(&fc.key, &fc.limits)? })
    }
}
