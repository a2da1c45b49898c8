//! Runs handed over by an API in the same process (`keel dev`): the start
//! creates the run leased to this worker (see keel_engine::handoff) and sends
//! it here, where it runs beside the claimed ones, in slots of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_engine::handoff::{LocalSlot, LocalWorker, RunEnd};
use keel_engine::{ClaimOnCreate, ClaimedTask};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::runtime::{Worker, log_join_error};

/// A run the API created leased to this worker, with its slot and whom to
/// tell when its execution ends.
pub(crate) struct LocalRun {
    task: ClaimedTask,
    permit: OwnedSemaphorePermit,
    done: oneshot::Sender<Option<RunEnd>>,
}

/// The worker's end of the handoff.
#[derive(Debug)]
pub(crate) struct Local {
    /// Slots for handed-over runs: as many as the worker's concurrency, apart
    /// from the claim loop's (which holds its free permits while it blocks on
    /// the queues, so a handoff could never get one of those).
    slots: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<LocalRun>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<LocalRun>>>,
}

impl Local {
    pub(crate) fn new(concurrency: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { slots: Arc::new(Semaphore::new(concurrency)), tx, rx: Mutex::new(Some(rx)) }
    }

    /// The API's end.
    pub(crate) fn handoff(
        &self,
        worker_id: &str,
        lease: Duration,
        versions: BTreeMap<String, Vec<u32>>,
    ) -> Arc<dyn LocalWorker> {
        Arc::new(Handoff {
            claim: ClaimOnCreate { worker_id: worker_id.to_owned(), lease },
            versions,
            slots: self.slots.clone(),
            tx: self.tx.clone(),
        })
    }

    /// Run what is handed over until `stop`; then no more slots are given
    /// out, what was already sent still runs, and this returns when every
    /// handed-over execution has ended (`handback` hands the rest back).
    pub(crate) async fn serve(worker: Arc<Worker>, stop: CancellationToken, handback: CancellationToken) {
        let Some(mut rx) = worker.local().rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
            return;
        };
        let mut runs = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                run = rx.recv() => match run {
                    Some(run) => spawn(&mut runs, &worker, run, &handback),
                    None => break,
                },
                Some(joined) = runs.join_next(), if !runs.is_empty() => log_join_error(joined),
            }
        }
        worker.local().slots.close();
        rx.close();
        while let Some(run) = rx.recv().await {
            spawn(&mut runs, &worker, run, &handback);
        }
        while let Some(joined) = runs.join_next().await {
            log_join_error(joined);
        }
    }
}

fn spawn(runs: &mut JoinSet<()>, worker: &Arc<Worker>, run: LocalRun, handback: &CancellationToken) {
    let (worker, handback) = (worker.clone(), handback.clone());
    runs.spawn(async move {
        let LocalRun { task, permit, done } = run;
        let end = worker.execute_guarded(task, handback).await;
        drop(permit);
        let _ = done.send(end);
    });
}

#[derive(Debug)]
struct Handoff {
    claim: ClaimOnCreate,
    versions: BTreeMap<String, Vec<u32>>,
    slots: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<LocalRun>,
}

impl LocalWorker for Handoff {
    fn reserve(&self, workflow: &str, version: u32) -> Option<Box<dyn LocalSlot>> {
        if !self.versions.get(workflow).is_some_and(|versions| versions.contains(&version)) || self.tx.is_closed() {
            return None;
        }
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Box::new(Slot { claim: self.claim.clone(), permit, tx: self.tx.clone() }))
    }
}

struct Slot {
    claim: ClaimOnCreate,
    permit: OwnedSemaphorePermit,
    tx: mpsc::UnboundedSender<LocalRun>,
}

impl LocalSlot for Slot {
    fn claim(&self) -> ClaimOnCreate {
        self.claim.clone()
    }

    fn run(self: Box<Self>, task: ClaimedTask) -> oneshot::Receiver<Option<RunEnd>> {
        let (done, ended) = oneshot::channel();
        // A worker that stopped meanwhile drops the run: its lease lapses and
        // reconciliation queues it for any worker.
        if self.tx.send(LocalRun { task, permit: self.permit, done }).is_err() {
            tracing::warn!("the worker stopped before a handed-over run reached it; it runs after its lease lapses");
        }
        ended
    }
}
