//! Flow-control keys: their limits set on the server (which win over what
//! runs ask for), pause and resume, and what each holds now. The slots
//! themselves are taken and given back by workers (keel_worker's flow gate).

use axum::Json as Reply;
use axum::extract::State;
use axum::http::StatusCode;
use keel_engine::flow::FlowRule;
use keel_proto::{FlowKeyList, FlowKeyStatus, FlowLimits, RunId};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path};

fn checked_key(key: &str) -> ApiResult<()> {
    keel_proto::validate_flow_key(key).map_err(ApiError::InvalidRequest)
}

async fn find(state: &AppState, key: &str) -> ApiResult<FlowKeyStatus> {
    state.store().flow_key(key).await?.ok_or_else(|| ApiError::NotFound(format!("no flow-control key {key:?}")))
}

/// Wake the runs a resume or a cleared limit made room for (their timers
/// would, later).
async fn wake(state: &AppState, runs: Vec<RunId>) {
    for run in runs {
        if let Err(e) = state.store().wake_flow_waiter(&run).await {
            tracing::debug!(run_id = %run, error = %e, "waking a flow-control waiter failed; its timer will");
        }
    }
}

/// Keys with limits set here, paused keys, and keys steps used in the last
/// day (the 1,000 most recent), by name.
#[utoipa::path(get, path = "/v1/flow-control", operation_id = "listFlowKeys", tag = "flow-control",
    responses((status = 200, body = FlowKeyList)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Reply<FlowKeyList>> {
    Ok(Reply(FlowKeyList { keys: state.store().flow_keys(false).await? }))
}

/// One key: its limits, what steps asked for, steps in flight, runs waiting,
/// starts in the current window.
#[utoipa::path(get, path = "/v1/flow-control/{key}", operation_id = "getFlowKey", tag = "flow-control",
    params(("key" = String, Path)),
    responses((status = 200, body = FlowKeyStatus),
        (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn get_one(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Reply<FlowKeyStatus>> {
    checked_key(&key)?;
    Ok(Reply(find(&state, &key).await?))
}

/// Set the key's limits on the server: they win over what runs and steps
/// ask for, from their next slot on.
#[utoipa::path(put, path = "/v1/flow-control/{key}", operation_id = "putFlowKey", tag = "flow-control",
    params(("key" = String, Path)), request_body = FlowLimits,
    responses((status = 200, body = FlowKeyStatus),
        (status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 415, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn put(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Json(limits): Json<FlowLimits>,
) -> ApiResult<Reply<FlowKeyStatus>> {
    checked_key(&key)?;
    let rule = FlowRule::of(&limits)?;
    state.store().set_flow_limits(&key, Some(rule)).await?;
    // Raised limits make room for waiters now.
    let woken = state.store().release_slots(&key, &[]).await?;
    wake(&state, woken).await;
    Ok(Reply(find(&state, &key).await?))
}

/// Clear the key's limits on the server: steps' own apply again.
#[utoipa::path(delete, path = "/v1/flow-control/{key}", operation_id = "clearFlowKey", tag = "flow-control",
    params(("key" = String, Path)),
    responses((status = 204), (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn clear(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<StatusCode> {
    checked_key(&key)?;
    state.store().set_flow_limits(&key, None).await?;
    let woken = state.store().release_slots(&key, &[]).await?;
    wake(&state, woken).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause the key: no step under it starts (steps already running go on);
/// runs that reach one wait, showing why.
#[utoipa::path(post, path = "/v1/flow-control/{key}/pause", operation_id = "pauseFlowKey", tag = "flow-control",
    params(("key" = String, Path)),
    responses((status = 200, body = FlowKeyStatus),
        (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn pause(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Reply<FlowKeyStatus>> {
    checked_key(&key)?;
    state.store().pause_flow_key(&key, true).await?;
    Ok(Reply(find(&state, &key).await?))
}

/// Resume a paused key: the runs waiting for it go on, in arrival order.
#[utoipa::path(post, path = "/v1/flow-control/{key}/resume", operation_id = "resumeFlowKey", tag = "flow-control",
    params(("key" = String, Path)),
    responses((status = 200, body = FlowKeyStatus),
        (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn resume(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Reply<FlowKeyStatus>> {
    checked_key(&key)?;
    let woken = state.store().pause_flow_key(&key, false).await?;
    wake(&state, woken).await;
    Ok(Reply(find(&state, &key).await?))
}
