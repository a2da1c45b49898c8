//! The handlers, one file per resource.

pub mod events;
pub mod flow_control;
pub mod health;
pub mod qstash;
pub mod runs;
pub mod schedules;
pub mod signing_keys;
pub mod webhooks;
pub mod workflows;

use keel_proto::RunId;

use crate::error::ApiError;

/// A run id from a path.
pub(crate) fn run_id(text: String) -> Result<RunId, ApiError> {
    RunId::new(text).map_err(|e| ApiError::RunNotFound(format!("no such run: {e}")))
}
