//! The workflow DLQ (`client.dlq`): the `upstash` runs that failed for good.
//! A DLQ id is the run's id. `resume` runs the failed run again from the
//! delivery that failed (Keel's retry of a failed run); `restart` starts a new
//! run with the same initial payload and settings; `delete` takes runs off it.

use axum::Json as Reply;
use axum::extract::{RawQuery, State};
use keel_proto::qstash::{LABEL_LABEL, UPSTASH_WORKFLOW};
use keel_proto::{RunStatus, RunSummary};
use serde_json::{Value, json};

use super::runs::query_pairs;
use super::{RunFilter, filtered_runs, message_id, now_ms, sdk_run_id};
use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// How long a deletion from the DLQ is remembered (longer than runs are kept).
const DELETED_KEPT: std::time::Duration = std::time::Duration::from_secs(60 * 86_400);

/// The runs a DLQ call names: by `dlqIds`, or every failed run (`count` at most).
async fn targets(state: &AppState, pairs: &[(String, String)]) -> ApiResult<(Vec<RunSummary>, Option<String>)> {
    let ids: Vec<&str> = pairs.iter().filter(|(k, _)| k == "dlqIds").map(|(_, v)| v.as_str()).collect();
    if !ids.is_empty() {
        let mut runs = Vec::new();
        for id in ids {
            let run = state.store().get_run(&sdk_run_id(id)?).await?;
            let listed = match &run {
                Some(r) => !state.store().dlq_deleted(std::slice::from_ref(&r.run_id)).await?[0],
                None => false,
            };
            match run.filter(|r| listed && r.workflow == UPSTASH_WORKFLOW && r.status == RunStatus::Failed) {
                Some(run) => runs.push(run),
                None => return Err(ApiError::NotFound(format!("no failed workflow run {id} in the DLQ"))),
            }
        }
        return Ok((runs, None));
    }
    failed_runs(state, pairs).await
}

/// A page of failed `upstash` runs not taken off the DLQ, with the list's
/// filters (a filter Keel cannot apply is a 400).
async fn failed_runs(state: &AppState, pairs: &[(String, String)]) -> ApiResult<(Vec<RunSummary>, Option<String>)> {
    let allowed = ["workflowUrl", "url", "workflowRunId", "workflowCreatedAt", "label", "fromDate", "toDate"];
    let filter = RunFilter::of(pairs, &allowed, true)?;
    let count = filter.count.unwrap_or(100).min(100);
    let (runs, cursor) = filtered_runs(state, &filter, Some(RunStatus::Failed), count, |_| "").await?;
    let ids: Vec<_> = runs.iter().map(|r| r.run_id.clone()).collect();
    let deleted = state.store().dlq_deleted(&ids).await?;
    let listed = runs.into_iter().zip(deleted).filter(|(_, deleted)| !deleted).map(|(run, _)| run).collect();
    Ok((listed, cursor))
}

/// `GET /v2/dlq?source=workflow`: the failed runs as DLQ messages.
pub async fn list(State(state): State<AppState>, RawQuery(query): RawQuery) -> ApiResult<Reply<Value>> {
    let pairs = query_pairs(query.as_deref());
    let (runs, cursor) = failed_runs(&state, &pairs).await?;
    let mut messages = Vec::with_capacity(runs.len());
    for run in runs {
        let record = super::journal::read(&state, &run.run_id).await?;
        let (input, answer) = (record.input, record.failed.unwrap_or_default());
        let url = input.as_ref().map(|i| i.url.clone()).unwrap_or_default();
        let mut message = json!({
            "messageId": input.as_ref().map(|i| i.message_id.clone()).unwrap_or_default(),
            "dlqId": run.run_id,
            "url": url,
            "workflowUrl": url,
            "method": "POST",
            "header": {},
            "body": input.as_ref().map(|i| i.body.clone()).unwrap_or_default(),
            "maxRetries": input.as_ref().and_then(|i| i.headers.get("upstash-retries")).and_then(|r| r.parse::<u32>().ok()).unwrap_or(3),
            "notBefore": 0,
            "createdAt": run.finished_at_ms.unwrap_or(run.updated_at_ms),
            "callerIP": "",
            "workflowRunId": run.run_id,
            "workflowCreatedAt": run.created_at_ms,
            "responseStatus": answer.status,
            "responseHeader": answer.header,
            "responseBody": decode_b64(&answer.body),
        });
        if let Some(failure) = input.as_ref().and_then(|i| i.headers.get("upstash-failure-callback")) {
            message["failureCallback"] = json!(failure);
        }
        if let Some(label) = run.labels.get(LABEL_LABEL) {
            message["label"] = json!(label.split(',').next().unwrap_or_default());
            message["labels"] = json!(label.split(',').collect::<Vec<_>>());
        }
        messages.push(message);
    }
    let mut answer = json!({"messages": messages});
    if let Some(cursor) = cursor {
        answer["cursor"] = json!(cursor);
    }
    Ok(Reply(answer))
}

fn decode_b64(text: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `POST /v2/workflows/dlq/resume`: each failed run goes on from the delivery that failed.
pub async fn resume(State(state): State<AppState>, RawQuery(query): RawQuery) -> ApiResult<Reply<Value>> {
    let pairs = query_pairs(query.as_deref());
    let (runs, cursor) = targets(&state, &pairs).await?;
    let mut resumed = Vec::with_capacity(runs.len());
    for run in runs {
        state.store().retry(&run.run_id).await?;
        resumed.push(json!({"workflowRunId": run.run_id, "workflowCreatedAt": run.created_at_ms.to_string()}));
    }
    Ok(Reply(with_cursor(json!({"workflowRuns": resumed}), cursor)))
}

/// `POST /v2/workflows/dlq/restart`: a new run from each failed run's Init message.
pub async fn restart(State(state): State<AppState>, RawQuery(query): RawQuery) -> ApiResult<Reply<Value>> {
    let pairs = query_pairs(query.as_deref());
    let (runs, cursor) = targets(&state, &pairs).await?;
    let mut restarted = Vec::with_capacity(runs.len());
    for run in runs {
        let Some(mut input) = super::journal::read(&state, &run.run_id).await?.input else {
            return Err(ApiError::Conflict(format!("run {} has no Init message to restart from", run.run_id)));
        };
        let run_id = sdk_run_id(&format!("wfr_{}", uuid::Uuid::now_v7().simple()))?;
        input.created_ms = now_ms();
        input.message_id = message_id();
        input.headers.insert("upstash-workflow-runid".into(), run_id.to_string());
        super::publish::create(&state, run_id.clone(), input, None, None).await?;
        restarted.push(json!({"workflowRunId": run_id, "workflowCreatedAt": now_ms().to_string()}));
    }
    Ok(Reply(with_cursor(json!({"workflowRuns": restarted}), cursor)))
}

/// `DELETE /v2/workflows/dlq`: take failed runs off the DLQ (they stay
/// failed, and leave with the retention like any run).
pub async fn delete(State(state): State<AppState>, RawQuery(query): RawQuery) -> ApiResult<Reply<Value>> {
    let pairs = query_pairs(query.as_deref());
    let (runs, cursor) = targets(&state, &pairs).await?;
    let ids: Vec<_> = runs.into_iter().map(|r| r.run_id).collect();
    let deleted = state.store().dlq_delete(&ids, DELETED_KEPT).await?;
    Ok(Reply(with_cursor(json!({"deleted": deleted}), cursor)))
}

fn with_cursor(mut answer: Value, cursor: Option<String>) -> Value {
    if let Some(cursor) = cursor {
        answer["cursor"] = json!(cursor);
    }
    answer
}
