//! Tasks: the messages in a workflow's queue stream.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::RunId;

/// The task format version written by this build.
pub const TASK_VERSION: u32 = 1;

/// "Resume run X": one entry of `keel:queue:<workflow>`. In Redis its fields are
/// stream fields of the same names (`v`, `run_id`), not a JSON document, so the
/// store's scripts read them without decoding JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Task {
    pub v: u32,
    pub run_id: RunId,
}
