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

use keel_proto::{ErrorInfo, RunStatus};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::store::{ClaimOnCreate, ClaimedTask};

/// How a handed-over run ended, when its execution ended it and the store
/// confirmed the finish: what a waiting start answers without reading the
/// run back.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<ErrorInfo>,
}

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
    /// if the worker is stopping) when the execution ends: with the run's end
    /// if it completed or failed, `None` if it suspended, was handed back or
    /// lost its lease.
    fn run(self: Box<Self>, task: ClaimedTask) -> oneshot::Receiver<Option<RunEnd>>;
}
