//! `POST /v2/wait/{eventId}` (a step waits for an event) and `POST
//! /v2/notify/{eventId}` / `/v2/notify/{runId}/{eventId}` (`notify`). Waits
//! are Keel event waits of the `upstash` run on keys made from the event id.

use axum::Json as Reply;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use keel_proto::qstash::{NotifyResponse, Submission, URL_LABEL, WaitRequest, Waiter, event_key, run_event_key};
use serde_json::Value;

use super::{now_ms, sdk_run_id, submit};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;

pub async fn wait(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Reply<Value>> {
    let run_id = headers
        .get("upstash-workflow-runid")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::InvalidRequest("a wait needs the Upstash-Workflow-RunId header".into()))?;
    let run_id = sdk_run_id(run_id)?;
    let request: WaitRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("a wait's body is not a wait request: {e}")))?;
    submit(&state, &run_id, &Submission::Wait { event_id, request, at_ms: now_ms() }).await?;
    Ok(Reply(Value::Object(Default::default())))
}

pub async fn notify(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
    body: Bytes,
) -> ApiResult<Reply<Vec<NotifyResponse>>> {
    deliver(&state, &event_key(&event_id), body).await
}

/// The lookback form: the event is kept for the run (for the store's event
/// lookback window) if it does not wait for it yet.
pub async fn notify_run(
    State(state): State<AppState>,
    Path((run_id, event_id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Reply<Vec<NotifyResponse>>> {
    let run_id = sdk_run_id(&run_id)?;
    deliver(&state, &run_event_key(run_id.as_str(), &event_id), body).await
}

async fn deliver(state: &AppState, key: &str, body: Bytes) -> ApiResult<Reply<Vec<NotifyResponse>>> {
    let data = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::InvalidRequest("an event's data must be UTF-8 text".into()))?;
    let delivered = state.store().deliver_event(key, &Value::String(data)).await?;
    let mut answers = Vec::with_capacity(delivered.woken.len());
    for run_id in delivered.woken {
        let url = match state.store().get_run(&run_id).await? {
            Some(run) => run.labels.get(URL_LABEL).cloned().unwrap_or_default(),
            None => String::new(),
        };
        answers.push(NotifyResponse {
            waiter: Waiter {
                url: url.clone(),
                deadline: 0,
                headers: Default::default(),
                timeout_url: url,
                timeout_body: Value::Null,
                timeout_headers: Default::default(),
            },
            message_id: delivered.event_id.clone(),
            error: String::new(),
            workflow_run_id: Some(run_id.to_string()),
        });
    }
    Ok(Reply(answers))
}

/// `/v2/workflows/hooks/{userId}/{runId}/{eventId}` (any method): a third
/// party calls the URL `context.createWebhook` made; the request is the event
/// of the run's `waitForWebhook`. Open without a token (the URL is the
/// secret: it holds the run's id and a random event id), and only for a live
/// run that made that webhook, so a stranger cannot store events.
pub async fn hook(
    State(state): State<AppState>,
    Path((_user, run_id, event_id)): Path<(String, String, String)>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Reply<Value>> {
    use base64::Engine;
    let run_id = sdk_run_id(&run_id)?;
    let unknown = || ApiError::NotFound("no workflow run waits for this webhook".into());
    let run = state.store().get_run(&run_id).await?.ok_or_else(unknown)?;
    if run.workflow != keel_proto::qstash::UPSTASH_WORKFLOW
        || run.status.is_final()
        || !made_webhook(&state, &run_id, &event_id).await?
    {
        return Err(unknown());
    }
    let mut header: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (name, value) in &headers {
        if let Ok(value) = value.to_str() {
            header.entry(name.as_str().to_owned()).or_default().push(value.to_owned());
        }
    }
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_owned();
    let request = serde_json::json!({
        "proto": "http",
        "host": host,
        "url": uri.path_and_query().map_or("/", |p| p.as_str()),
        "method": method.as_str(),
        "header": header,
        "body": base64::engine::general_purpose::STANDARD.encode(&body),
    });
    let delivered = state
        .store()
        .deliver_event(&run_event_key(run_id.as_str(), &event_id), &Value::String(request.to_string()))
        .await?;
    Ok(Reply(serde_json::json!({"messageId": delivered.event_id})))
}

/// Whether the run's app made the webhook `event_id` (its `createWebhook`
/// step's result, which names it, is in the run's inbox).
async fn made_webhook(state: &AppState, run_id: &keel_proto::RunId, event_id: &str) -> ApiResult<bool> {
    if event_id.len() > 128 || event_id.is_empty() {
        return Ok(false);
    }
    let mut after = 0;
    loop {
        let page = state.store().inbox_read(run_id, after, 500).await?;
        if page.messages.iter().any(|m| m.contains("CreateWebhook") && m.contains(event_id)) {
            return Ok(true);
        }
        after += page.messages.len() as u64;
        if page.messages.is_empty() || after >= page.total {
            return Ok(false);
        }
    }
}
