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
