//! `GET /v2/workflows/events` (`client.logs`): `upstash` runs as the SDK's
//! `WorkflowRunLog`s, their steps read back from the runner's journal (the
//! log entry each delivery ended with).

use axum::Json as Reply;
use axum::extract::{RawQuery, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keel_proto::qstash::{LABEL_LABEL, StepView, URL_LABEL};
use keel_proto::{RunStatus, RunSummary};
use serde_json::{Map, Value, json};

use super::runs::query_pairs;
use super::{RunFilter, filtered_runs};
use crate::AppState;
use crate::error::ApiResult;

fn state_of(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Completed => "RUN_SUCCESS",
        RunStatus::Failed => "RUN_FAILED",
        RunStatus::Cancelled => "RUN_CANCELED",
        _ => "RUN_STARTED",
    }
}

pub async fn logs(State(state): State<AppState>, RawQuery(query): RawQuery) -> ApiResult<Reply<Value>> {
    let pairs = query_pairs(query.as_deref());
    let allowed = ["workflowRunId", "workflowUrl", "workflowCreatedAt", "state", "label", "fromDate", "toDate"];
    let filter = RunFilter::of(&pairs, &allowed, true)?;
    let count = filter.count.unwrap_or(10).min(100);
    let (runs, next_cursor) = filtered_runs(&state, &filter, None, count, |r| state_of(r.status)).await?;
    let mut logs = Vec::with_capacity(runs.len());
    for run in &runs {
        logs.push(run_log(&state, run).await?);
    }
    let mut answer = json!({"runs": logs});
    if let Some(cursor) = next_cursor {
        answer["cursor"] = Value::String(cursor);
    }
    Ok(Reply(answer))
}

async fn run_log(state: &AppState, run: &RunSummary) -> ApiResult<Value> {
    let record = super::journal::read(state, &run.run_id).await?;
    let input = record.input;
    let mut groups: Vec<Value> = Vec::new();
    if let Some(started) = &input {
        let step = json!({"stepId": 0, "stepName": "init", "stepType": "Initial", "callType": "step",
            "messageId": started.message_id, "out": started.body, "concurrent": 1,
            "state": "STEP_SUCCESS", "createdAt": run.created_at_ms, "headers": {}});
        groups.push(json!({"type": "sequential", "steps": [step]}));
    }
    let mut parallel: Vec<Value> = Vec::new();
    // Every entry the run's deliveries ended with, after the initial payload:
    // the steps' results (parallel plans left out), the app's and the server's
    // (a wait's event, an invoked child's outcome) alike.
    for (entry, at_ms) in record.log.iter().skip(1) {
        if entry.call_type != "step" {
            continue;
        }
        let body = String::from_utf8(B64.decode(&entry.body).unwrap_or_default()).unwrap_or_default();
        let Ok(full) = serde_json::from_str::<Map<String, Value>>(&body) else { continue };
        let view: StepView = serde_json::from_value(Value::Object(full.clone())).unwrap_or_default();
        if view.target_step.is_some() {
            continue;
        }
        let mut step = json!({"stepId": view.step_id, "stepName": view.step_name, "stepType": view.step_type,
            "callType": "step", "messageId": entry.message_id, "concurrent": view.concurrent.max(1),
            "state": "STEP_SUCCESS", "createdAt": at_ms, "headers": {}});
        for field in ["out", "sleepFor", "sleepUntil", "callUrl", "callMethod", "waitEventId", "waitTimeout"] {
            if let Some(v) = full.get(field) {
                step[field] = v.clone();
            }
        }
        if view.concurrent > 1 {
            parallel.push(step);
            if parallel.len() as u64 >= view.concurrent {
                groups.push(json!({"type": "parallel", "steps": std::mem::take(&mut parallel)}));
            }
        } else {
            groups.push(json!({"type": "sequential", "steps": [step]}));
        }
    }
    if !parallel.is_empty() {
        groups.push(json!({"type": "parallel", "steps": parallel}));
    }
    let url = input.as_ref().map(|i| i.url.clone()).or_else(|| run.labels.get(URL_LABEL).cloned()).unwrap_or_default();
    let mut log = json!({
        "workflowRunId": run.run_id,
        "workflowUrl": url,
        "workflowState": state_of(run.status),
        "workflowRunCreatedAt": run.created_at_ms,
        "steps": groups,
    });
    if let Some(done) = run.finished_at_ms {
        log["workflowRunCompletedAt"] = json!(done);
    }
    if run.status == RunStatus::Completed {
        let response = match &run.output {
            None | Some(Value::Null) => String::new(),
            Some(value) => value.to_string(),
        };
        log["workflowRunResponse"] = Value::String(response);
    }
    if let Some(label) = run.labels.get(LABEL_LABEL) {
        log["label"] = json!(label.split(',').next().unwrap_or_default());
        log["labels"] = json!(label.split(',').collect::<Vec<_>>());
    }
    if let Some(invoker) = input.as_ref().and_then(|i| i.invoker.as_ref()) {
        log["invoker"] = json!({"workflowRunId": invoker.workflow_run_id, "workflowUrl": invoker.workflow_url,
            "workflowRunCreatedAt": invoker.workflow_run_created_at});
    }
    Ok(log)
}
