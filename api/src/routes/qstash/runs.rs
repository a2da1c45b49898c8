//! `DELETE /v2/workflows/runs/{id}`: the route returned (`cancel=false`, the
//! body is the result) or called `context.cancel()` (`cancel=true`); and
//! `DELETE /v2/workflows/runs`: `client.cancel` of runs by id or by filter.

use std::time::Duration;

use axum::Json as Reply;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use keel_proto::qstash::{RawStep, Submission, UPSTASH_WORKFLOW};
use keel_proto::{RunId, RunStatus};
use serde_json::{Value, json};

use super::{RunFilter, filtered_runs, sdk_run_id};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;

/// How long a finished run's inbox is kept (late submissions get their 400).
const CLOSED_INBOX_KEPT: Duration = Duration::from_secs(86_400);
/// The most runs one bulk cancel by filter cancels.
const MAX_BULK: usize = 1000;

/// The query's pairs, decoded (repeated names kept).
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn cancel(state: &AppState, run_id: &RunId, reason: &str) -> ApiResult<bool> {
    let outcome = state.store().request_cancel(run_id, Some(reason)).await;
    state.store().inbox_close(run_id, CLOSED_INBOX_KEPT).await?;
    match outcome {
        Ok(_) => Ok(true),
        Err(keel_engine::Error::RunNotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub async fn end(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Reply<Value>> {
    let run_id = sdk_run_id(&id)?;
    let cancelled = query_pairs(query.as_deref()).iter().any(|(k, v)| k == "cancel" && v == "true");
    let run = state
        .store()
        .get_run(&run_id)
        .await?
        .filter(|r| r.workflow == UPSTASH_WORKFLOW)
        .ok_or_else(|| ApiError::RunNotFound(format!("there is no workflow run {run_id}")))?;
    if cancelled {
        cancel(&state, &run_id, "cancelled by the workflow (context.cancel)").await?;
        return Ok(Reply(json!({"workflowRunId": run_id})));
    }
    if !run.status.is_final() {
        let body = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::InvalidRequest("a workflow's result must be UTF-8 text".into()))?;
        let text =
            serde_json::to_string(&Submission::Finish { body }).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        // A second DELETE (a delivery retried) finds the inbox closed: the same answer.
        state.store().inbox_push(&run_id, &[text], true).await?;
    }
    Ok(Reply(json!({"workflowRunId": run_id})))
}

/// `GET /v2/workflows/runs/{id}`: a live run's log (what the SDK fetches
/// when a delivery comes with an empty body, its LazyFetch); 404 once the
/// run has ended, which the SDK takes as "ended". Keel sends every log
/// inline, so apps only call this if they choose to.
pub async fn log(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Reply<Vec<RawStep>>> {
    let run_id = sdk_run_id(&id)?;
    let live = state.store().get_run(&run_id).await?.filter(|r| r.workflow == UPSTASH_WORKFLOW && !r.status.is_final());
    if live.is_none() {
        return Err(ApiError::RunNotFound(format!("workflow run {run_id} does not exist or has ended")));
    }
    let record = super::journal::read(&state, &run_id).await?;
    let mut log: Vec<RawStep> = record.log.into_iter().map(|(entry, _)| entry).collect();
    if log.is_empty()
        && let Some(input) = record.input
    {
        // Not delivered yet: the log is the initial payload.
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(&input.body);
        log.push(RawStep { message_id: input.message_id, body, call_type: "step".into() });
    }
    Ok(Reply(log))
}

/// `client.cancel`: by ids (`workflowRunIds`), by filter (`workflowUrl`,
/// as a prefix unless `workflowUrlExactMatch=true`, `label`, `fromDate`,
/// `toDate`), or every live run (`all`: no filter), `count` at a time (at
/// most 1,000); a filter Keel cannot apply is a 400, never a wider cancel.
pub async fn bulk_cancel(State(state): State<AppState>, RawQuery(query): RawQuery) -> ApiResult<Reply<Value>> {
    let pairs = query_pairs(query.as_deref());
    let ids: Vec<&str> = pairs.iter().filter(|(k, _)| k == "workflowRunIds").map(|(_, v)| v.as_str()).collect();
    let mut cancelled = 0u64;
    if !ids.is_empty() {
        for id in ids {
            if cancel(&state, &sdk_run_id(id)?, "cancelled by client.cancel").await? {
                cancelled += 1;
            }
        }
        return Ok(Reply(json!({"cancelled": cancelled})));
    }
    let allowed = ["workflowUrl", "workflowUrlExactMatch", "label", "fromDate", "toDate"];
    let filter = RunFilter::of(&pairs, &allowed, false)?;
    let count = filter.count.unwrap_or(100).min(MAX_BULK);
    // Live runs only: every status but the final ones, newest first.
    let mut live = Vec::new();
    for status in [RunStatus::Pending, RunStatus::Running, RunStatus::Sleeping, RunStatus::Waiting, RunStatus::Paused] {
        if live.len() >= count {
            break;
        }
        let (runs, _) = filtered_runs(&state, &filter, Some(status), count - live.len(), |_| "").await?;
        live.extend(runs);
    }
    for run in live {
        if cancel(&state, &run.run_id, "cancelled by client.cancel").await? {
            cancelled += 1;
        }
    }
    Ok(Reply(json!({"cancelled": cancelled})))
}
