//! Schedules: a workflow started on a cron in a time zone. The engine's
//! scheduler (keel_engine::schedules) fires them in every server; these
//! handlers create, show, pause, resume, trigger and delete them.

use axum::Json as Reply;
use axum::extract::State;
use axum::http::StatusCode;
use keel_engine::StoredSchedule;
use keel_engine::schedules::{Cadence, start_tick, validate};
use keel_proto::{Schedule, ScheduleList, ScheduleSpec, TriggeredRun};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path};

/// How many upcoming ticks a schedule shows.
const SHOWN_TICKS: usize = 3;

fn view(stored: StoredSchedule) -> Schedule {
    let next_fire_times = match (stored.paused, stored.next_ms, Cadence::of(&stored.spec)) {
        (false, Some(next), Ok(cadence)) => {
            let mut ticks = vec![next];
            ticks.extend(cadence.upcoming(next, SHOWN_TICKS - 1));
            ticks
        }
        _ => Vec::new(),
    };
    Schedule { spec: stored.spec, paused: stored.paused, next_fire_times, state: stored.state }
}

async fn find(state: &AppState, id: &str) -> ApiResult<StoredSchedule> {
    state.store().get_schedule(id).await?.ok_or_else(|| ApiError::NotFound(format!("no schedule {id:?}")))
}

/// Create or replace a schedule (201 when new). A replaced schedule keeps its
/// pause and its last run; its next tick follows the new cron.
#[utoipa::path(post, path = "/v1/schedules", operation_id = "putSchedule", tag = "schedules", request_body = ScheduleSpec,
    responses((status = 201, body = Schedule), (status = 200, body = Schedule),
        (status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 413, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 415, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn put(
    State(state): State<AppState>,
    Json(spec): Json<ScheduleSpec>,
) -> ApiResult<(StatusCode, Reply<Schedule>)> {
    // A cron that never matches (30 February) is only known after a search
    // of years ahead: off the async threads.
    let (spec, cadence) = {
        let config = state.store().config().clone();
        tokio::task::spawn_blocking(move || validate(&spec, &config).map(|cadence| (spec, cadence)))
            .await
            .map_err(|e| ApiError::Internal(format!("validating a schedule: {e}")))??
    };
    let next = cadence.next_after(state.store().wall_ms());
    let created = state.store().put_schedule(&spec, next).await?;
    let stored = find(&state, &spec.id).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Reply(view(stored))))
}

/// Every schedule, by id, with its next ticks.
#[utoipa::path(get, path = "/v1/schedules", operation_id = "listSchedules", tag = "schedules",
    responses((status = 200, body = ScheduleList)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Reply<ScheduleList>> {
    let schedules = state.store().list_schedules().await?.into_iter().map(view).collect();
    Ok(Reply(ScheduleList { schedules }))
}

/// One schedule, with its next ticks and its last run.
#[utoipa::path(get, path = "/v1/schedules/{id}", operation_id = "getSchedule", tag = "schedules",
    params(("id" = String, Path)),
    responses((status = 200, body = Schedule), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn get_one(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Reply<Schedule>> {
    Ok(Reply(view(find(&state, &id).await?)))
}

/// Delete a schedule; its runs stay.
#[utoipa::path(delete, path = "/v1/schedules/{id}", operation_id = "deleteSchedule", tag = "schedules",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if state.store().delete_schedule(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no schedule {id:?}")))
    }
}

async fn set_paused(state: &AppState, id: &str, paused: bool) -> ApiResult<Reply<Schedule>> {
    let stored = find(state, id).await?;
    // Resumed: on from now (ticks missed while paused are not caught up).
    let next = if paused { None } else { Cadence::of(&stored.spec)?.next_after(state.store().wall_ms()) };
    if !state.store().pause_schedule(id, paused, next).await? {
        return Err(ApiError::NotFound(format!("no schedule {id:?}")));
    }
    Ok(Reply(view(find(state, id).await?)))
}

/// Stop a schedule's ticks until it is resumed.
#[utoipa::path(post, path = "/v1/schedules/{id}/pause", operation_id = "pauseSchedule", tag = "schedules",
    params(("id" = String, Path)),
    responses((status = 200, body = Schedule), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn pause(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Reply<Schedule>> {
    set_paused(&state, &id, true).await
}

/// Let a paused schedule tick again, from its next tick after now.
#[utoipa::path(post, path = "/v1/schedules/{id}/resume", operation_id = "resumeSchedule", tag = "schedules",
    params(("id" = String, Path)),
    responses((status = 200, body = Schedule), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn resume(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Reply<Schedule>> {
    set_paused(&state, &id, false).await
}

/// Start the schedule's workflow now (paused or not), as a tick at this
/// millisecond would; the schedule's own ticks go on unchanged.
#[utoipa::path(post, path = "/v1/schedules/{id}/trigger", operation_id = "triggerSchedule", tag = "schedules",
    params(("id" = String, Path)),
    responses((status = 201, body = TriggeredRun),
        (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn trigger(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Reply<TriggeredRun>)> {
    let stored = find(&state, &id).await?;
    match start_tick(state.store().as_ref(), &stored.spec, state.store().wall_ms()).await? {
        Ok(run_id) => Ok((StatusCode::CREATED, Reply(TriggeredRun { run_id }))),
        Err(why) => Err(ApiError::UnknownWorkflow(why)),
    }
}
