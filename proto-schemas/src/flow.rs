//! Flow control: a key that limits how many steps run at once (`parallelism`)
//! and how many start per window (`rate` per `period`) across every run,
//! worker and server that uses it. A run asks for a key at its start (every
//! step of the run), a workflow author per step or per `ctx.call`; limits set
//! on the server (`PUT /v1/flow-control/{key}`) win over those.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The longest flow-control key.
pub const FLOW_KEY_MAX: usize = 128;
/// The most steps of one key at once.
pub const PARALLELISM_MAX: u32 = 10_000;
/// The most step starts of one key per window.
pub const RATE_MAX: u32 = 100_000;

/// A flow-control key: 1–128 printable characters, no whitespace, no `{` or
/// `}` (it names a Redis hash tag), e.g. `openai:team-7`.
pub fn validate_flow_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > FLOW_KEY_MAX {
        return Err(format!("a flow-control key is 1 to {FLOW_KEY_MAX} characters, got {}", key.len()));
    }
    if let Some(c) = key.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}')) {
        return Err(format!("a flow-control key may not hold whitespace, control characters, {{ or }} (found {c:?})"));
    }
    Ok(())
}

/// Limits of a flow-control key: either or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowLimits {
    /// At most this many steps under the key execute at once (1–10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    #[schema(minimum = 1, maximum = 10000)]
    pub parallelism: Option<u32>,
    /// At most this many step starts in any window of `period` (1–100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    #[schema(minimum = 1, maximum = 100000)]
    pub rate: Option<u32>,
    /// The rate's window: `1s`, `1m`, `1h`, `1d` (1 s to 1 day; default 1 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
}

/// What a run or a step asks for: a key, and the limits it proposes for it
/// (the server's own limits for the key, when set, win).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowControl {
    pub key: String,
    #[serde(flatten)]
    pub limits: FlowLimits,
}

/// `GET /v1/flow-control/{key}`: a key's limits and what it holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct FlowKeyStatus {
    pub key: String,
    /// The limits set on the server (`PUT`), if any: they win over runs' own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FlowLimits>,
    /// The limits the last step under the key asked for (when the server set none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<FlowLimits>,
    /// A paused key starts no step until resumed.
    pub paused: bool,
    /// Steps executing under the key now.
    pub in_flight: u32,
    /// Steps whose runs wait for a slot, in arrival order.
    pub waiting: u32,
    /// Step starts in the current window (when the key has a rate).
    pub starts_in_window: u32,
    /// When a step last asked for the key (Unix ms, server time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
}

/// `GET /v1/flow-control`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct FlowKeyList {
    pub keys: Vec<FlowKeyStatus>,
}
