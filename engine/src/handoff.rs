//! A worker in the same process as the API (`keel dev`) can take a run the
//! moment a start creates it: the run is created leased to that worker
//! ([`RunStore::create_claimed`](crate::RunStore::create_claimed)), one
//! script instead of a create, a queue entry, a read of the queue and a claim,
//! and the start's `?wait=` learns the end from the worker in process instead
//! of a notification through Redis.
//!
//! Durability is a claimed run's: the journal and the lease are in Redis
//! before the worker starts; if the process dies, the lease lapses and
//! reconciliation queues the run for any worker.

use tokio::sync::oneshot;

use crate::store::{ClaimOnCreate, ClaimedTask};

/// The API's view of the worker beside it.
pub trait LocalWorker: Send + Sync + std::fmt::Debug {
    /// A slot for one run of `workflow` at `version`, if this worker runs that
    /// version and has a slot free now; `None` sends the run through the queue.
    fn reserve(&self, workflow: &str, version: u32) -> Option<Box<dyn LocalSlot>>;
}

/// One reserved slot. Dropped unused, it is free again.
pub trait LocalSlot: Send {
    /// Whom the run is leased to.
    fn claim(&self) -> ClaimOnCreate;

    /// Run the claimed task in this slot. The receiver resolves (or fails,
    /// if the worker is stopping) when the execution ends: the run finished,
    /// suspended, was handed back or its lease was lost.
    fn run(self: Box<Self>, task: ClaimedTask) -> oneshot::Receiver<()>;
}
