//! Webhooks: subscriptions, the payload POSTed to receivers, and the records
//! of deliveries.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{JournalEntry, RunId};

/// The event types a webhook can carry.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
pub enum WebhookEventType {
    #[serde(rename = "run.started")]
    RunStarted,
    #[serde(rename = "step.completed")]
    StepCompleted,
    #[serde(rename = "step.failed")]
    StepFailed,
    #[serde(rename = "run.completed")]
    RunCompleted,
    #[serde(rename = "run.failed")]
    RunFailed,
    #[serde(rename = "run.cancelled")]
    RunCancelled,
}

impl WebhookEventType {
    pub const ALL: [WebhookEventType; 6] = [
        Self::RunStarted,
        Self::StepCompleted,
        Self::StepFailed,
        Self::RunCompleted,
        Self::RunFailed,
        Self::RunCancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunStarted => "run.started",
            Self::StepCompleted => "step.completed",
            Self::StepFailed => "step.failed",
            Self::RunCompleted => "run.completed",
            Self::RunFailed => "run.failed",
            Self::RunCancelled => "run.cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WebhookSubscription {
    pub id: String,
    pub url: String,
    /// The event types sent to it (all when empty).
    #[serde(default)]
    pub event_types: Vec<WebhookEventType>,
    /// Only runs of this workflow, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Unix ms.
    pub created_at_ms: u64,
    /// Set when the receiver answered 410 Gone: nothing more is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
}

/// The body POSTed to a receiver. Signed per Standard Webhooks (`webhook-id`,
/// `webhook-timestamp`, `webhook-signature: v1a,<base64 ed25519>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WebhookPayload {
    #[serde(rename = "type")]
    pub event_type: WebhookEventType,
    /// When the event happened, Unix ms (server time).
    pub timestamp_ms: u64,
    pub run_id: RunId,
    pub workflow: String,
    /// The journal sequence number of the event: order is not promised, this is.
    pub sequence: String,
    /// The journal entry itself.
    pub event: JournalEntry,
}

/// One attempt to deliver one event to one receiver, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WebhookDelivery {
    /// The `webhook-id`: the same on every attempt of the same event.
    pub webhook_id: String,
    pub event_type: WebhookEventType,
    pub run_id: RunId,
    pub url: String,
    pub attempt: u32,
    /// Unix ms.
    pub at_ms: u64,
    /// The receiver's HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `delivered`, `retrying`, `failed` (given up), `disabled` (410), `refused` (SSRF rules).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When `retrying`: when the next attempt is due (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<u64>,
}

/// Where a delivery job goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryTarget {
    /// A subscription, by id.
    Subscription(String),
    /// A run's own callback URL.
    Callback(String),
}

/// One event to deliver to one receiver, with its attempt count: what the
/// dispatchers of all servers share (a sorted set by due time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct DeliveryJob {
    /// The `webhook-id`, derived from run id and journal sequence.
    pub webhook_id: String,
    pub run_id: RunId,
    pub sequence: String,
    pub event_type: WebhookEventType,
    pub target: DeliveryTarget,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt was due, Unix ms: retries stop about a day later.
    pub first_due_ms: u64,
}
