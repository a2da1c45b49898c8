//! Webhook subscriptions, their delivery logs, and the key that verifies them.

use axum::Json as Reply;
use axum::extract::State;
use axum::http::StatusCode;
use keel_proto::WebhookSubscription;
use keel_proto::http::{CreateWebhook, DeliveryLog, SigningKey, WebhookList};
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path, Query};

/// Subscribe a URL to webhook events (all, or some types; all workflows, or one).
#[utoipa::path(post, path = "/v1/webhooks", operation_id = "createWebhook", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = WebhookSubscription),
        (status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 413, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 415, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    Json(body): Json<CreateWebhook>,
) -> ApiResult<(StatusCode, Reply<WebhookSubscription>)> {
    keel_net::ssrf::check(&body.url, state.config().allow_private_targets)
        .await
        .map_err(|e| ApiError::TargetRefused(e.to_string()))?;
    if let Some(workflow) = &body.workflow {
        keel_proto::validate_workflow_name(workflow).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    }
    let subscription = WebhookSubscription {
        id: format!("wh_{}", uuid::Uuid::now_v7().simple()),
        url: body.url,
        event_types: body.event_types,
        workflow: body.workflow,
        created_at_ms: keel_engine::Clock::now_ms(&keel_engine::SystemClock),
        disabled: None,
    };
    state.store().put_webhook(&subscription).await?;
    Ok((StatusCode::CREATED, Reply(shown(subscription))))
}

#[utoipa::path(get, path = "/v1/webhooks", operation_id = "listWebhooks", tag = "webhooks", responses((status = 200, body = WebhookList)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Reply<WebhookList>> {
    let webhooks = state.store().list_webhooks().await?.into_iter().map(shown).collect();
    Ok(Reply(WebhookList { webhooks }))
}

async fn find(state: &AppState, id: &str) -> ApiResult<WebhookSubscription> {
    state
        .store()
        .list_webhooks()
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no webhook subscription {id:?}")))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", operation_id = "getWebhook", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 200, body = WebhookSubscription), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn get_one(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Reply<WebhookSubscription>> {
    Ok(Reply(shown(find(&state, &id).await?)))
}

/// A subscription as answered: credentials in its URL are never shown back.
pub(crate) fn shown(mut subscription: WebhookSubscription) -> WebhookSubscription {
    subscription.url = keel_net::ssrf::redact_url(&subscription.url);
    subscription
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "deleteWebhook", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 204, description = "deleted"), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if state.store().delete_webhook(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no webhook subscription {id:?}")))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// 1–100, default 50
    limit: Option<usize>,
}

/// The newest delivery attempts to a subscription.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", operation_id = "listWebhookDeliveries", tag = "webhooks", params(("id" = String, Path), LogQuery),
    responses((status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 200, body = DeliveryLog), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Reply<DeliveryLog>> {
    find(&state, &id).await?;
    let deliveries = state.store().deliveries(&id, q.limit.unwrap_or(50).clamp(1, 100)).await?;
    Ok(Reply(DeliveryLog { deliveries }))
}

/// The ed25519 public keys that verify webhook and call signatures: the
/// newest, and every active one with its id (several during a rotation).
#[utoipa::path(get, path = "/v1/webhooks/signing-key", operation_id = "getSigningKey", tag = "webhooks", responses((status = 200, body = SigningKey)))]
pub async fn signing_key(State(state): State<AppState>) -> ApiResult<Reply<SigningKey>> {
    Ok(Reply(crate::routes::signing_keys::current(&state).await?))
}
