//! Lease renewals (and the "step started" marks of long attempts) on a thread of
//! their own.
//!
//! A step that blocks its thread (`std::thread::sleep`, CPU work, a sync client)
//! stalls every task the runtime would poll on that thread, and possibly the
//! tasks that drive the store's connection. If renewals ran there, the lease
//! would lapse, another worker would take the run over and run the step again.
//! So renewals run on a dedicated single-threaded runtime with a store handle
//! whose connections that runtime drives: nothing a step does can starve them.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::{Lease, Store};

use crate::marks::AttemptBoard;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The heartbeat thread: a runtime handle and a store handle driven by it.
/// Cloned into every execution; the thread ends when the last clone is gone.
#[derive(Clone)]
pub(crate) struct Heartbeats {
    handle: Handle,
    store: Arc<dyn Store>,
    _alive: Arc<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeats").finish_non_exhaustive()
    }
}

impl Heartbeats {
    /// Start the thread, and connect its own store handle from it.
    pub async fn start(store: &Arc<dyn Store>) -> Result<Self, keel_engine::Error> {
        let (alive, ended) = tokio::sync::oneshot::channel::<()>();
        let (ready, handle) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("keel-heartbeats".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(runtime.handle().clone()));
                // Runs the spawned renewals until every Heartbeats clone is dropped.
                runtime.block_on(async move {
                    let _ = ended.await;
                });
            })
            .map_err(|e| keel_engine::Error::Invalid(format!("cannot start the heartbeat thread: {e}")))?;
        // Awaited, not a blocking receive: this runs on the caller's runtime.
        let handle = handle
            .await
            .map_err(|_| keel_engine::Error::Invalid("the heartbeat thread died at start".into()))?
            .map_err(|e| keel_engine::Error::Invalid(format!("cannot start the heartbeat runtime: {e}")))?;
        let main = store.clone();
        // The connection is made on the heartbeat runtime, so that runtime drives it.
        let own = handle
            .spawn(async move { main.independent().await })
            .await
            .map_err(|e| keel_engine::Error::Invalid(format!("the heartbeat thread failed to connect: {e}")))??;
        Ok(Self { handle, store: own.unwrap_or_else(|| store.clone()), _alive: Arc::new(alive) })
    }

    /// Run what `task` makes of the thread's own store on the heartbeat thread,
    /// for as long as the thread lives.
    pub fn spawn_with_store<F: std::future::Future<Output = ()> + Send + 'static>(
        &self,
        task: impl FnOnce(Arc<dyn Store>) -> F,
    ) {
        self.handle.spawn(task(self.store.clone()));
    }

    /// Run `fut` on the heartbeat thread; it is aborted when the guard drops.
    pub fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) -> AbortOnDrop {
        AbortOnDrop(self.handle.spawn(fut))
    }

    /// Keep `lease` alive every `ttl / 3` until the guard drops; `lost` is
    /// cancelled when the store says another worker holds the run now. Also
    /// write the started marks of `board`'s attempts that run too long (their
    /// own task may be blocked by the step).
    pub fn keep(&self, lease: Lease, ttl: Duration, board: Arc<AttemptBoard>) -> (AbortOnDrop, CancellationToken) {
        let lost = CancellationToken::new();
        let guard = self.spawn(renew(self.store.clone(), lease, ttl, lost.clone(), board));
        (guard, lost)
    }
}

/// A task that ends when its owner does, on every path (return, `?`, panic).
#[derive(Debug)]
pub(crate) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the watchdog looks for attempts whose started mark is overdue.
const WATCHDOG: Duration = Duration::from_millis(100);

/// Keep the lease alive; say so when it is lost. Write overdue started marks.
async fn renew(store: Arc<dyn Store>, lease: Lease, ttl: Duration, lost: CancellationToken, board: Arc<AttemptBoard>) {
    let every = (ttl / 3).max(WATCHDOG);
    let mut tick = tokio::time::interval(WATCHDOG.min(every));
    tick.tick().await;
    let mut renewed = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        board.mark_overdue(WATCHDOG, &store);
        if renewed.elapsed() < every {
            continue;
        }
        renewed = tokio::time::Instant::now();
        match store.renew_lease(&lease, ttl).await {
            Ok(()) => {}
            Err(keel_engine::Error::LeaseLost { .. }) => {
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(run_id = %lease.run_id, error = %e, "lease renewal failed; will retry"),
        }
    }
}
