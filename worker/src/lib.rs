//! keel-worker: the SDK a workflow author writes steps with, and the runtime
//! that claims tasks and replays workflows on a [`keel_engine::Store`].
//!
//! Not built yet: see the worker SDK issue. The crate exists so the dependency
//! graph (engine <- worker <- workflows) is fixed from the start.

pub use keel_engine as engine;
