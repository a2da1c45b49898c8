//! keel-engine: the run model and the [`Store`] that keeps it.
//!
//! The store owns every state transition of a run: creating it, handing its task
//! to one worker under a lease, recording its journal under that lease (fenced by
//! the lease epoch), suspending it on timers and events, finishing it, and
//! expiring it. Two stores implement the same trait: [`RedisStore`] (the real
//! one) and [`MemoryStore`] (for `keel dev` without Redis and for unit tests). One
//! conformance suite (`tests/conformance`) runs against both (Redis as a single
//! server and as a cluster).
//!
//! This crate knows nothing of HTTP or of how a workflow's code runs.

mod clock;
mod config;
mod duties;
mod error;
pub mod flow;
pub mod handoff;
pub mod keys;
pub mod schedules;
pub mod signing_keys;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{StoreConfig, parse_bool, parse_duration};
pub use duties::{Duties, run_duties};
pub use error::{Error, Result, check_value_size, json_size};
pub use keel_proto as proto;
pub use keel_proto::WorkerInfo;
pub use store::memory::MemoryStore;
pub use store::redis::{RedisStore, RedisTarget};
pub use store::{
    Appended, CancelOutcome, Claim, ClaimOnCreate, ClaimedTask, CreateRun, Created, DeadLetter, Delivered, DueSchedule,
    EventWait, Finish, Finished, HookStore, InboxPage, InboxPush, InboxStore, Lease, MAX_INBOX_MESSAGES,
    MAX_SIGNING_KEYS, OutboxItem, PauseOutcome, RegistryStore, ResumeOutcome, RunQuery, RunStore, SIGNING_KEY_SETTLE,
    SIGNING_KEYS_REFRESH, STEP_MS_BUCKETS, ScheduleStore, Stats, Store, StoredSchedule, StoredSigningKey, Suspension,
    child_event_key,
};
