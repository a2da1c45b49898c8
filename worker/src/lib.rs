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
//! use keel_worker::{Context, Result, StepError, Workflow};
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
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

mod call;
mod context;
mod error;
mod history;
mod retry;
mod runtime;
pub mod testing;
mod workflow;

pub use call::{CallRequest, CallResponse, CallSettings, send as send_call};
pub use context::{Context, Step, StepInfo};
pub use error::{Error, Result, StepError};
pub use keel_engine as engine;
pub use keel_net as net;
pub use retry::RetryPolicy;
pub use runtime::{Worker, WorkerBuilder, WorkerError};
pub use workflow::Workflow;
