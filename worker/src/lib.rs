//! keel-worker: write durable workflows in Rust, and run them.
//!
//! A workflow is an async function of a [`Context`] and a typed input. Its side
//! effects live in steps: each step's result is recorded in the run's journal
//! before the workflow goes on, so when a worker crashes, another one replays the
//! function from the top, gets every recorded result back without running those
//! steps again, and continues where the run stopped.
//!
//! ```
//! use std::time::Duration;
//! use keel_worker::{Context, Deserialize, JsonSchema, Result, StepError, Workflow};
//!
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(crate = "keel_worker::serde")]
//! #[schemars(crate = "keel_worker::schemars")]
//! struct Goal { topic: String }
//!
//! async fn research(ctx: Context, goal: Goal) -> Result<String> {
//!     ctx.progress(3).await?;
//!     let topic = goal.topic;
//!     let plan: Vec<String> = ctx.step("plan").run(|| async move {
//!         Ok::<_, StepError>(vec![format!("{topic}: history"), format!("{topic}: today")])
//!     }).await?;
//!     let found = ctx.all(plan.iter().enumerate().map(|(i, item)| {
//!         let item = item.clone();
//!         ctx.step(format!("fetch-{i}")).timeout(Duration::from_secs(30)).retry(5)
//!             .run(move || async move { Ok::<_, StepError>(item.len()) })
//!     })).await?;
//!     ctx.sleep("cool-down", Duration::from_secs(10)).await?;
//!     ctx.step("reflect").run(|| async move { Ok::<_, StepError>(format!("{} findings", found.len())) }).await
//! }
//!
//! let workflow = Workflow::new("research", research);
//! # let _ = workflow;
//! ```
//!
//! Guarantees: a step's code runs at least once (a worker may die after the
//! work and before recording it; pass [`StepInfo::idempotency_key`] to the
//! services you call); a step's result is recorded exactly once (the store fences
//! writes by lease epoch). Only await Keel's primitives in a workflow's body (and
//! run parallel work through [`Context::all`] / [`Context::join`]): other awaits
//! are not durable. The [`testing`] module runs workflows without Redis or waiting.
//!
//! A step's code may panic: the attempt fails (kind `panicked`, with the
//! message) and is retried by the step's policy; a panic in the body outside any
//! step fails the run (kind `panicked`) and runs its failure handler.
//!
//! Blocking code (`std::thread::sleep`, heavy CPU work, a synchronous client)
//! belongs in [`tokio::task::spawn_blocking`] inside the step, so the worker's
//! other runs go on meanwhile. A step that blocks anyway does not lose its run:
//! leases are renewed from a thread of their own, so no other worker takes the
//! run over, and the attempt is journaled as started while it blocks.
//!
//! ```
//! # use keel_worker::{Context, Result, StepError};
//! async fn checksum(ctx: Context, path: String) -> Result<u64> {
//!     ctx.step("checksum")
//!         .run(move || async move {
//!             tokio::task::spawn_blocking(move || path.bytes().map(u64::from).sum::<u64>())
//!                 .await
//!                 .map_err(|e| StepError::retryable(e.to_string()))
//!         })
//!         .await
//! }
//! ```

mod call;
mod client;
mod context;
mod error;
mod flow;
mod heartbeat;
mod history;
mod local;
mod marks;
mod retry;
mod runtime;
pub mod signing;
pub mod testing;
mod workflow;

pub use call::{CallRequest, CallResponse, CallSettings, send as send_call};
pub use client::{Client, ClientError, StartOptions, Started};
// What a workflow with a typed input needs, so `keel-worker` and `tokio` are the
// only dependencies an author's crate must name (derive with
// `#[serde(crate = "keel_worker::serde")]` and `#[schemars(crate = "keel_worker::schemars")]`).
pub use context::{Context, Lookback, Step, StepInfo};
pub use error::{Error, Result, StepError};
pub use keel_engine as engine;
pub use keel_net as net;
pub use keel_proto::{ErrorInfo, FlowControl, FlowLimits, RunId, RunStatus};
pub use retry::RetryPolicy;
pub use runtime::{Worker, WorkerBuilder, WorkerError};
pub use schemars::{self, JsonSchema};
pub use serde::{self, Deserialize, Serialize};
pub use serde_json::{self, Value, json};
pub use workflow::Workflow;
