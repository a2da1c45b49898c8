//! The bodies of Keel's HTTP API (v1).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ErrorInfo, RunId, RunStatus, RunSummary, WebhookEventType};

/// `POST /v1/workflows/{name}/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRunRequest {
    /// The workflow's input; checked against its input JSON Schema.
    #[serde(default)]
    pub input: Value,
    /// Choose the run's id (1–128 of `A-Za-z0-9_.-`); a second start with the same
    /// id and input is the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Start later: `250ms`, `30s`, `5m`, `2h`, `1d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Also send this run's webhook events here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// 1 to 5 (default 3): among the workflow's queued runs, higher is claimed
    /// first; equal priorities keep arrival order. Lower ones are never starved:
    /// at least one claim in ten serves the lowest waiting priority first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    #[schema(minimum = 1, maximum = 5)]
    pub priority: Option<u8>,
    /// Every step of the run executes under this flow-control key: at most
    /// `parallelism` at once and `rate` starts per `period`, across every run
    /// that uses the key (limits set on the server for the key win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_control: Option<crate::FlowControl>,
}

/// The answer to a start (and to a long-poll for a result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct RunResult {
    pub run_id: RunId,
    pub status: RunStatus,
    /// False when the start found the run already there (same key or run id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// A step as the run detail shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct StepView {
    pub step_id: String,
    /// `running`, `retrying`, `completed`, `failed`, `sleeping`, `waiting`.
    pub status: String,
    pub attempts: u32,
    /// Unix ms of its first entry.
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The successful attempt's duration, as the worker measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// `GET /v1/runs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunSummary,
    pub steps: Vec<StepView>,
}

/// `GET /v1/runs/{id}/journal`: a page of the journal, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct JournalPage {
    pub entries: Vec<crate::JournalRecord>,
    /// Pass as `?after=` for the next page; absent at the end of the journal so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// `GET /v1/workflows`: a workflow with live workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WorkflowView {
    pub name: String,
    pub versions: Vec<u32>,
    /// The JSON Schema of the newest version's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// How many live workers run it.
    pub workers: u32,
}

/// `GET /v1/workflows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowView>,
}

/// `POST /v1/events/{event_key}`: the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct EventDelivered {
    pub event_id: String,
    /// The runs it woke.
    pub woken: Vec<RunId>,
    /// The `Idempotency-Key` was sent with an earlier event on this key: that
    /// event's id, delivered to nobody again.
    #[serde(default)]
    pub duplicate: bool,
}

/// `POST /v1/runs/{id}/cancel`, `/pause`, `/resume`, `/retry`: what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct RunAction {
    pub run_id: RunId,
    /// `cancelled`, `cancel_requested`, `paused`, `pause_requested`, `resumed`,
    /// `not_paused`, `retried`.
    pub outcome: String,
}

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    pub url: String,
    /// Which events (all when empty or absent).
    #[serde(default)]
    pub event_types: Vec<WebhookEventType>,
    /// Only runs of this workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
}

/// `GET /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<crate::WebhookSubscription>,
}

/// `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct DeliveryLog {
    pub deliveries: Vec<crate::WebhookDelivery>,
}

/// `GET /v1/webhooks/signing-key`: verify webhook and call signatures with
/// these keys. Every message carries one signature per active key and their
/// ids in the `keel-signing-key-ids` header; a receiver that meets an id it
/// does not know fetches this again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct SigningKey {
    /// `ed25519`.
    pub algorithm: String,
    /// The newest key: the raw 32-byte public key, base64.
    pub public_key: String,
    /// The newest key in Standard Webhooks form: `whpk_<base64>`.
    pub standard_webhooks: String,
    /// Every active key, oldest first (more than one during a rotation).
    pub keys: Vec<ActiveSigningKey>,
}

/// One active signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ActiveSigningKey {
    /// `k1`, `k2`, … (`local` for a process's own key outside a deployment's).
    pub id: String,
    /// The raw 32-byte public key, base64.
    pub public_key: String,
    /// `whpk_<base64>`.
    pub standard_webhooks: String,
    /// When it became active (ms since the Unix epoch).
    pub since_ms: u64,
}

/// An error, as RFC 9457 problem details (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem (`urn:keel:problem:<name>`).
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}
