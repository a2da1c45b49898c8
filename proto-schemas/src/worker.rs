//! Worker registrations: how the API knows which workflows have live workers.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A live worker, as it registers itself (and refreshes with every heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WorkerInfo {
    /// Unique per process start (`host:pid:uuid`), never reused.
    pub worker_id: String,
    /// Workflow name -> the versions this worker runs.
    pub workflows: BTreeMap<String, Vec<u32>>,
    /// Workflow name -> the JSON Schema of its newest version's input.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_schemas: BTreeMap<String, serde_json::Value>,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    /// Filled in by the store when listing: the last heartbeat, Unix milliseconds.
    #[serde(default)]
    pub heartbeat_at_ms: u64,
}
