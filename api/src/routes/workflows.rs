//! `GET /v1/workflows`: the workflows live workers run.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::State;
use keel_proto::http::{WorkflowList, WorkflowView};

use crate::AppState;
use crate::error::ApiResult;

/// Registered workflows: name, versions, input JSON Schema, live workers.
#[utoipa::path(get, path = "/v1/workflows", operation_id = "listWorkflows", tag = "workflows", responses((status = 200, body = WorkflowList)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<WorkflowList>> {
    Ok(Json(WorkflowList { workflows: live_workflows(&state).await? }))
}

/// One live workflow, from a cache refreshed every second (and at once when the
/// name is not in it, so a worker that just started is seen).
/// The live workflows as last read, shared by every request of the second.
pub(crate) type LiveWorkflows = std::sync::Arc<Vec<std::sync::Arc<WorkflowView>>>;

pub(crate) async fn live_workflow(state: &AppState, name: &str) -> ApiResult<Option<std::sync::Arc<WorkflowView>>> {
    let cached = state.inner.workflows.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some((at, views)) = cached
        && at.elapsed() < std::time::Duration::from_secs(1)
        && let Some(view) = views.iter().find(|w| w.name == name)
    {
        return Ok(Some(view.clone()));
    }
    let views: Vec<std::sync::Arc<WorkflowView>> =
        live_workflows(state).await?.into_iter().map(std::sync::Arc::new).collect();
    let found = views.iter().find(|w| w.name == name).cloned();
    *state.inner.workflows.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((std::time::Instant::now(), std::sync::Arc::new(views)));
    Ok(found)
}

pub(crate) async fn live_workflows(state: &AppState) -> ApiResult<Vec<WorkflowView>> {
    let mut views: BTreeMap<String, (BTreeSet<u32>, Option<serde_json::Value>, u32)> = BTreeMap::new();
    for worker in state.store().list_workers().await? {
        for (name, versions) in &worker.workflows {
            let view = views.entry(name.clone()).or_default();
            let newest = versions.iter().max().copied().unwrap_or(0);
            let had_newer = view.0.iter().max().is_some_and(|v| *v > newest);
            view.0.extend(versions);
            if !had_newer && let Some(schema) = worker.input_schemas.get(name) {
                view.1 = Some(schema.clone());
            }
            view.2 += 1;
        }
    }
    Ok(views
        .into_iter()
        .map(|(name, (versions, input_schema, workers))| WorkflowView {
            name,
            versions: versions.into_iter().collect(),
            input_schema,
            workers,
        })
        .collect())
}
