//! The QStash workflow protocol as the unmodified `@upstash/workflow` SDK
//! speaks it (reference: upstash-protocol.md in the shared folder), and what
//! Keel keeps of it: the messages an app submits for a run (its inbox) and the
//! input of an `upstash` run.
//!
//! Field names are the SDK's (camelCase); header names are lower case, as the
//! SDK sends them in a batch.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod config;
mod delay;
pub use config::{DEFAULT_RETRIES, MAX_RETRIES, RunConfig, forwardable, prefixed};
pub use delay::{MAX_RETRY_DELAY, RetryDelay, default_retry_delay, retry_delay};

/// The workflow every run started through the QStash protocol belongs to.
pub const UPSTASH_WORKFLOW: &str = "upstash";
/// Label of an `upstash` run: the app endpoint's URL.
pub const URL_LABEL: &str = "upstash.url";
/// Label of an `upstash` run: the labels the app gave (`Upstash-Label`).
pub const LABEL_LABEL: &str = "upstash.label";

/// One message of `POST /v2/batch` (and, from headers, of `POST /v2/publish/<url>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BatchMessage {
    pub destination: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body as text; `context.call` with an object body sends the JSON
    /// value itself, kept as its JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "text_or_json")]
    #[schemars(with = "Option<Value>")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// A body the SDK sends as a string, or (`context.call` with an object) as JSON.
fn text_or_json<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text),
        Some(other) => Some(other.to_string()),
    })
}

/// The answer to one published message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishAnswer {
    pub message_id: String,
    /// An Init message for a run that already exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deduplicated: bool,
}

/// One entry of a delivery's body (a JSON array of these): the run's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RawStep {
    pub message_id: String,
    /// base64 of the message's body (entry 0: the run's initial payload).
    pub body: String,
    pub call_type: String,
}

/// The fields of an SDK step (`Step` in the SDK) Keel reads; the step itself
/// is kept and delivered as the app sent it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    #[serde(default)]
    pub step_id: u64,
    #[serde(default)]
    pub step_name: String,
    #[serde(default)]
    pub step_type: String,
    /// Plan steps of a parallel group: the step whose result this plan is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_step: Option<u64>,
    #[serde(default)]
    pub concurrent: u64,
}

/// `POST /v2/wait/{eventId}`: a step waits for an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitRequest {
    pub url: String,
    /// A duration (`"20s"`, `"7d"`) or seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_url: Option<String>,
    #[serde(default)]
    pub timeout_headers: BTreeMap<String, Vec<String>>,
    /// The waiting step (`stepId`, `stepName`, `stepType: "Wait"`, `concurrent`, …).
    pub step: Value,
}

/// The body of an Init message sent by `context.invoke`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvokeRequest {
    #[serde(default)]
    pub body: Option<String>,
    /// The headers of the invoker's result message.
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    pub workflow_run_id: String,
    #[serde(default)]
    pub workflow_run_created_at: Option<u64>,
    pub workflow_url: String,
    /// The invoking step.
    pub step: Value,
}

/// The body QStash POSTs to a callback (a call's result) or a failure URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallbackBody {
    pub status: u16,
    pub header: BTreeMap<String, Vec<String>>,
    /// base64 of the response body.
    pub body: String,
    pub retried: u32,
    pub max_retries: u32,
    pub source_message_id: String,
    pub url: String,
    pub method: String,
    pub source_header: BTreeMap<String, Vec<String>>,
    /// base64 of the request body (the failure callback: the run's initial payload).
    pub source_body: String,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_created_at: Option<u64>,
}

/// One waiter an event reached (`POST /v2/notify/…` answers a list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotifyResponse {
    pub waiter: Waiter,
    pub message_id: String,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_run_id: Option<String>,
}

/// A run waiting for an event, as the SDK's `Waiter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Waiter {
    pub url: String,
    pub deadline: u64,
    pub headers: BTreeMap<String, Vec<String>>,
    pub timeout_url: String,
    #[serde(default)]
    pub timeout_body: Value,
    pub timeout_headers: BTreeMap<String, Vec<String>>,
}

/// What an app submitted for a run (one entry of its inbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Submission {
    /// A message published for the run: a step, a parallel plan, or a call
    /// (`upstash-workflow-calltype: toCallback`, to a third party).
    Publish {
        /// The message id Keel answered.
        id: String,
        message: BatchMessage,
        /// When it was received (ms).
        at_ms: u64,
    },
    /// A step waits for an event (`POST /v2/wait/{eventId}`).
    Wait { event_id: String, request: WaitRequest, at_ms: u64 },
    /// A child run was invoked (`context.invoke`): its outcome goes back to this run.
    Invoked { child_run_id: String, request: InvokeRequest },
    /// The route returned (`DELETE /v2/workflows/runs/{id}?cancel=false`): the
    /// run's result (the body the SDK sent).
    Finish { body: String },
}

/// The journaled outcome of one request of an `upstash` run (the output of
/// its `deliver…` step): the log entry it delivered, what the app submitted
/// meanwhile, or the answer that made it fail for good.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryOutcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<FailedAnswer>,
    /// Inbox messages (`Submission` JSON) read after the app answered.
    #[serde(default)]
    pub inbox: Vec<String>,
    /// The log entry this delivery ended with (a step delivery's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<RawStep>,
}

/// The last answer to a request that failed for good (what a failure callback
/// and the DLQ report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FailedAnswer {
    /// 0: no answer at all (`error` says why).
    pub status: u16,
    pub header: BTreeMap<String, Vec<String>>,
    /// base64 of the body.
    pub body: String,
    pub retried: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The input of an `upstash` run: its Init message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpstashRun {
    /// The workflow endpoint: every delivery of the run goes here.
    pub url: String,
    /// The run's initial payload (the trigger's body), as text.
    pub body: String,
    /// The Init message's headers (lower case): forwarded headers, retries,
    /// retry delay, failure callback, flow control, label apply to the whole run.
    pub headers: BTreeMap<String, String>,
    /// The run's creation time (ms), `Upstash-Workflow-CreatedAt`.
    pub created_ms: u64,
    /// The message id of the Init message (the log's first entry).
    pub message_id: String,
    /// Started by `context.invoke`: the invoker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoker: Option<InvokeRequest>,
    /// A plain QStash message (published without workflow headers): its body
    /// is delivered as it is, once, and the run ends. (An SDK endpoint takes
    /// such a request as a new run's first invocation.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain: bool,
}

/// A QStash duration: `"90s"`, `"5m"`, `"2h"`, `"1d"`, `"500ms"`, or plain
/// seconds (a number or digits).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return None,
    };
    (0.0..1e10).contains(&secs).then(|| std::time::Duration::from_secs_f64(secs))
}

/// `Upstash-Flow-Control-Value`: `"parallelism=N, rate=R, period=P"` (period a
/// duration, default one second). None when a part is not understood.
pub fn parse_flow_control_value(text: &str) -> Option<crate::FlowLimits> {
    let mut limits = crate::FlowLimits::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "parallelism" => limits.parallelism = Some(value.parse().ok()?),
            "rate" => limits.rate = Some(value.parse().ok()?),
            "period" => limits.period = Some(format!("{}ms", parse_duration(value)?.as_millis())),
            _ => return None,
        }
    }
    Some(limits)
}

/// The Keel event key a wait for the SDK's `eventId` listens on (`POST /v2/notify/{eventId}`).
pub fn event_key(event_id: &str) -> String {
    safe_key(format!("upstash:{event_id}"))
}

/// The Keel event key of an event sent to one run (`POST /v2/notify/{runId}/{eventId}`).
pub fn run_event_key(run_id: &str, event_id: &str) -> String {
    safe_key(format!("upstash:{run_id}/{event_id}"))
}

/// Event keys are at most 256 printable characters without whitespace; an
/// SDK event id may be anything, so one that does not fit is hashed (FNV-1a,
/// twice, 128 bits: a key, not a secret).
fn safe_key(key: String) -> String {
    if crate::validate_event_key(&key).is_ok() {
        return key;
    }
    let fnv = |seed: u64| key.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("upstash:#{:016x}{:016x}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142))
}
