//! The QStash protocol (`/v2/…`), for apps written with the unmodified
//! `@upstash/workflow` SDK: `QSTASH_URL` is this server. What the SDK submits
//! becomes `upstash` runs (started by an Init message) and their inboxes
//! (every other message); keel-workflows' `upstash` workflow delivers them.
//! Not in /openapi.json: the SDK's protocol is Upstash's, not Keel's API.

pub mod dlq;
pub mod events;
mod journal;
pub mod logs;
pub mod publish;
pub mod runs;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json as Reply;
use axum::extract::State;
use axum::http::HeaderMap;
use keel_engine::InboxPush;
use keel_proto::RunId;
use keel_proto::qstash::Submission;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A new message id.
pub(crate) fn message_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// The request's `upstash-*` and `content-type` headers, names in lower case
/// (what the qstash client puts settings in; it prefixes every other header
/// of the app's with `upstash-forward-`).
pub(crate) fn upstash_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("upstash-") || name.as_str() == "content-type")
        .filter_map(|(name, value)| value.to_str().ok().map(|v| (name.as_str().to_owned(), v.to_owned())))
        .collect()
}

/// A run id the SDK sent.
pub(crate) fn sdk_run_id(text: &str) -> ApiResult<RunId> {
    RunId::new(text).map_err(|e| ApiError::InvalidRequest(format!("workflow run id {text:?}: {e}")))
}

/// Put `submission` in the inbox of a live `upstash` run; a finished (or
/// unknown) run is a 400, which the SDK takes as "the run has ended".
pub(crate) async fn submit(state: &AppState, run_id: &RunId, submission: &Submission) -> ApiResult<()> {
    let run = state.store().get_run(run_id).await?;
    match run {
        Some(run) if run.workflow == keel_proto::qstash::UPSTASH_WORKFLOW && !run.status.is_final() => {}
        Some(run) if run.status.is_final() => {
            return Err(ApiError::BadRequest(format!("workflow run {run_id} has ended ({:?})", run.status)));
        }
        _ => return Err(ApiError::BadRequest(format!("there is no workflow run {run_id}"))),
    }
    let text = serde_json::to_string(submission).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    match state.store().inbox_push(run_id, &[text], false).await? {
        InboxPush::Added(_) => Ok(()),
        InboxPush::Closed => Err(ApiError::BadRequest(format!("workflow run {run_id} has ended"))),
    }
}

/// `GET /v2/keys`: the signing keys deliveries are signed with (the app's
/// `QSTASH_CURRENT_SIGNING_KEY` and `QSTASH_NEXT_SIGNING_KEY`).
pub async fn keys(State(state): State<AppState>) -> ApiResult<Reply<Value>> {
    let (current, next) = state.qstash_keys().ok_or_else(|| {
        ApiError::NotFound("this server has no QStash signing keys (it runs no `upstash` deliveries)".into())
    })?;
    Ok(Reply(json!({"current": current.expose(), "next": next.expose()})))
}
