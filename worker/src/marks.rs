//! The "step started" mark of an attempt that runs longer than a moment: written
//! by the attempt's own timer, or, when the step blocks its thread, by the
//! heartbeat thread's watchdog. A watch channel settles who writes it and the
//! race with the attempt's result.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keel_engine::Store;
use keel_proto::JournalEvent;

use crate::context::RunCore;

/// Where the "step started" entry of one attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkState {
    /// The attempt runs; nothing journaled yet.
    Running,
    /// The heartbeat thread is writing the entry.
    Journaling,
    Journaled,
    /// Writing it failed: the execution is abandoned.
    Failed,
    /// The attempt ended before the entry was due: its result is its only entry.
    Done,
}

/// Shared between an attempt and the task that journals its start; the watch
/// channel works across the two runtimes.
pub(crate) struct StartedMark(pub(crate) Arc<tokio::sync::watch::Sender<MarkState>>);

impl StartedMark {
    pub(crate) fn new() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(MarkState::Running)))
    }

    /// Journal `entry` unless the attempt has ended or somebody else is at it
    /// (the attempt's own timer and the heartbeat thread's watchdog race; one writes).
    pub(crate) async fn write(
        state: &tokio::sync::watch::Sender<MarkState>,
        core: &RunCore,
        store: &dyn Store,
        entry: JournalEvent,
    ) {
        if Self::begin(state) {
            Self::journal(state, core, store, entry).await;
        }
    }

    /// Take the writing of the mark: false if the attempt ended or another is at it.
    fn begin(state: &tokio::sync::watch::Sender<MarkState>) -> bool {
        state.send_if_modified(|s| {
            let running = *s == MarkState::Running;
            if running {
                *s = MarkState::Journaling;
            }
            running
        })
    }

    async fn journal(
        state: &tokio::sync::watch::Sender<MarkState>,
        core: &RunCore,
        store: &dyn Store,
        entry: JournalEvent,
    ) {
        let written = core.append_via(store, vec![entry]).await.is_some();
        state.send_replace(if written { MarkState::Journaled } else { MarkState::Failed });
    }

    /// The attempt ended: close the mark, or wait for a write in progress.
    pub(crate) async fn settle(&self) -> MarkState {
        self.0.send_if_modified(|s| {
            let running = *s == MarkState::Running;
            if running {
                *s = MarkState::Done;
            }
            running
        });
        let mut seen = self.0.subscribe();
        match seen.wait_for(|s| *s != MarkState::Journaling).await {
            Ok(state) => *state,
            Err(_) => MarkState::Failed,
        }
    }
}

/// The attempts of one execution whose started mark is not written yet: the
/// heartbeat thread's watchdog writes the marks of those running too long
/// (their own task may be blocked by the step).
#[derive(Default)]
pub(crate) struct AttemptBoard(Mutex<Vec<Arc<Pending>>>);

pub(crate) struct Pending {
    core: std::sync::Weak<RunCore>,
    mark: Arc<tokio::sync::watch::Sender<MarkState>>,
    entry: JournalEvent,
    since: Instant,
}

impl AttemptBoard {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Pending>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add(&self, core: &Arc<RunCore>, mark: &StartedMark, entry: JournalEvent) -> Arc<Pending> {
        let pending =
            Arc::new(Pending { core: Arc::downgrade(core), mark: mark.0.clone(), entry, since: Instant::now() });
        self.lock().push(pending.clone());
        pending
    }

    pub(crate) fn remove(&self, pending: &Arc<Pending>) {
        self.lock().retain(|p| !Arc::ptr_eq(p, pending));
    }

    /// From the heartbeat thread: journal the start of every attempt running
    /// longer than `after` whose mark is not written yet. Each write is a task of
    /// its own: it may wait for the run's write lock, the lease renewals must not.
    pub(crate) fn mark_overdue(&self, after: Duration, store: &Arc<dyn Store>) {
        for pending in self.lock().iter().filter(|p| p.since.elapsed() >= after) {
            if let Some(core) = pending.core.upgrade()
                && StartedMark::begin(&pending.mark)
            {
                let (mark, entry, store) = (pending.mark.clone(), pending.entry.clone(), store.clone());
                tokio::spawn(async move { StartedMark::journal(&mark, &core, store.as_ref(), entry).await });
            }
        }
    }
}
