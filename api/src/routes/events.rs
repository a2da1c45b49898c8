//! `POST /v1/events/{key}`: deliver an event to the runs waiting for it.

use axum::Json as Reply;
use axum::extract::State;
use keel_proto::http::EventDelivered;
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path};

/// Deliver an event (the body is its data) to every run waiting on the key (a
/// broadcast to the current waiters). Runs that start waiting shortly after
/// still get it (the lookback window), unless the event is older than the run.
/// With an `Idempotency-Key`, a repeat of the same event is delivered only once.
#[utoipa::path(post, path = "/v1/events/{key}", operation_id = "sendEvent", tag = "events",
    params(("key" = String, Path, description = "the event key, e.g. order-42:paid"),
           ("Idempotency-Key" = Option<String>, Header, description = "the event's id: a repeat is not delivered again")),
    request_body(content = Value, description = "the event's data (any JSON)"),
    responses((status = 200, body = EventDelivered),
        (status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 413, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 415, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn send(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: axum::http::HeaderMap,
    Json(data): Json<Value>,
) -> ApiResult<Reply<EventDelivered>> {
    let client_id = crate::util::idempotency_key(&headers)?;
    keel_proto::validate_event_key(&key).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    if key.starts_with("keel.") {
        return Err(ApiError::InvalidRequest(format!(
            "event keys starting with `keel.` are reserved for Keel ({key:?})"
        )));
    }
    let delivered = state.store().deliver(&key, &data, client_id.as_deref()).await?;
    Ok(Reply(EventDelivered { event_id: delivered.event_id, woken: delivered.woken, duplicate: delivered.duplicate }))
}
