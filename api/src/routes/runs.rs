//! Runs: start (idempotent, delayed, synchronous on request), list, detail,
//! long-poll for the result, live progress over SSE, and the operator's
//! transitions (cancel, pause, resume, retry).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json as Reply;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use keel_engine::{CancelOutcome, CreateRun, PauseOutcome, ResumeOutcome, RunQuery};
use keel_proto::http::{RunAction, RunDetail, RunResult, StartRunRequest, StepView};
use keel_proto::{JournalEvent, JournalRecord, RunId, RunPage, RunStatus, RunSummary};
use serde::Deserialize;

use super::run_id;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path, Query};
use crate::util::parse_duration;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Wait up to this long for the run to finish (e.g. `30s`).
    wait: Option<String>,
}

/// Start a run. 201 with its id; 200 with the same id when the Idempotency-Key
/// (or run_id) was seen before; with `?wait=`, the result when it finishes in time
/// (else 202 with its status).
#[utoipa::path(post, path = "/v1/workflows/{name}/runs", operation_id = "startRun", tag = "runs",
    params(("name" = String, Path, description = "the workflow"),
           ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe starts: the same key gives the same run"),
           WaitQuery),
    request_body = StartRunRequest,
    responses(
        (status = 201, description = "started", body = RunResult),
        (status = 200, description = "already started with this key or run id; or finished within the wait", body = RunResult),
        (status = 202, description = "not finished within the wait", body = RunResult),
        (status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 413, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 415, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
    Json(body): Json<StartRunRequest>,
) -> ApiResult<Response> {
    let unknown = || {
        ApiError::UnknownWorkflow(format!(
            "no live worker runs workflow {name:?}; start a worker that registers it (GET /v1/workflows lists them)"
        ))
    };
    keel_proto::validate_workflow_name(&name).map_err(|_| unknown())?;
    let wait = query.wait.as_deref().map(parse_duration).transpose()?;
    let workflow = super::workflows::live_workflow(&state, &name).await?.ok_or_else(unknown)?;
    if let Some(schema) = &workflow.input_schema {
        state.inner.schemas.check(schema, &body.input)?;
    }
    let run_id = body.run_id.map(RunId::new).transpose().map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let delay = body.delay.as_deref().map(parse_duration).transpose()?;
    if let Some(url) = &body.callback_url {
        keel_net::ssrf::check(url, state.config().allow_private_targets)
            .await
            .map_err(|e| ApiError::TargetRefused(e.to_string()))?;
    }
    if let Some(priority) = body.priority {
        keel_proto::validate_priority(priority).map_err(ApiError::InvalidRequest)?;
    }
    if let Some(fc) = &body.flow_control {
        keel_engine::flow::check(&fc.key, &fc.limits).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    }
    let idempotency_key = crate::util::idempotency_key(&headers)?;
    let version = workflow.versions.iter().max().copied().unwrap_or(1);
    let req = CreateRun {
        workflow: name.clone(),
        version,
        input: body.input,
        run_id,
        idempotency_key,
        delay,
        labels: body.labels,
        parent: None,
        callback_url: body.callback_url,
        priority: body.priority,
        flow_control: body.flow_control,
    };
    // A caller that waits, with a worker in this process free to run it now:
    // the run is created leased to that worker (keel_engine::handoff).
    let slot = match (wait, state.local_worker()) {
        (Some(_), Some(local)) if delay.is_none_or(|d| d.is_zero()) => local.reserve(&name, version),
        _ => None,
    };
    let (created, ended) = match slot {
        Some(slot) => match state.store().create_claimed(req, &slot.claim()).await? {
            (created, Some(task)) => (created, Some(slot.run(task))),
            (created, None) => (created, None),
        },
        None => (state.store().create_run(req).await?, None),
    };
    if created.created {
        tracing::info!(run_id = %created.run_id, workflow = %name, "run started");
    }
    if let Some(wait) = wait {
        let wait = wait.min(state.config().max_wait);
        let started = tokio::time::Instant::now();
        // The worker beside us says how the run ended: no need to read it back.
        if let Some(ended) = ended
            && let Ok(Ok(Some(end))) = tokio::time::timeout(wait, ended).await
        {
            let result = RunResult {
                run_id: created.run_id,
                status: end.status,
                created: Some(true),
                output: end.output,
                error: end.error,
            };
            return Ok((StatusCode::OK, Reply(result)).into_response());
        }
        // Not over yet (suspended, handed back, or the wait ran out): wait
        // for it as for any run.
        let run = wait_final(&state, &created.run_id, wait.saturating_sub(started.elapsed())).await?;
        let code = if run.status.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
        return Ok((code, Reply(result_of(run, Some(created.created)))).into_response());
    }
    let code = if created.created { StatusCode::CREATED } else { StatusCode::OK };
    let status = match (created.created, delay) {
        (true, Some(d)) if !d.is_zero() => RunStatus::Sleeping,
        (true, _) => RunStatus::Pending,
        (false, _) => state.store().get_run(&created.run_id).await?.map_or(RunStatus::Pending, |r| r.status),
    };
    Ok((
        code,
        Reply(RunResult { run_id: created.run_id, status, created: Some(created.created), output: None, error: None }),
    )
        .into_response())
}

fn result_of(run: RunSummary, created: Option<bool>) -> RunResult {
    let finished = run.status.is_final();
    RunResult {
        run_id: run.run_id,
        status: run.status,
        created,
        output: if finished { run.output } else { None },
        error: if finished { run.error } else { None },
    }
}

/// Wait until the run is final or `wait` passes: one blocking read on the run's
/// end signal (XREAD BLOCK), never polling.
async fn wait_final(state: &AppState, id: &RunId, wait: Duration) -> ApiResult<RunSummary> {
    state
        .store()
        .wait_finished(id, wait.min(state.config().max_wait))
        .await?
        .ok_or_else(|| ApiError::RunNotFound(format!("run {id} does not exist")))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub(crate) workflow: Option<String>,
    /// pending, running, sleeping, waiting, paused, completed, failed, cancelled
    pub(crate) status: Option<String>,
    /// `name=value`
    pub(crate) label: Option<String>,
    /// A schedule's id: its runs (the same as `label=schedule=<id>`)
    pub(crate) schedule: Option<String>,
    /// Only runs created at or after this (Unix ms)
    pub(crate) created_after: Option<u64>,
    /// Only runs created before this (Unix ms)
    pub(crate) created_before: Option<u64>,
    /// 1–1000, default 50
    pub(crate) limit: Option<usize>,
    pub(crate) cursor: Option<String>,
}

impl ListQuery {
    /// The store's query, or what is wrong with the filters (the API's list
    /// and the dashboard's share it).
    pub(crate) fn into_store_query(self) -> Result<RunQuery, String> {
        let status = self.status.as_deref().map(str::parse::<RunStatus>).transpose()?;
        let label = self
            .label
            .as_deref()
            .map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .map(|l| l.ok_or_else(|| "label filters look like name=value".to_owned()))
            .transpose()?;
        let label = match (label, self.schedule) {
            (Some(_), Some(_)) => return Err("filter by label or by schedule, not both".into()),
            (label, None) => label,
            (None, Some(id)) => Some(("schedule".to_owned(), id)),
        };
        if self.limit.is_some_and(|l| l == 0 || l > 1000) {
            return Err("limit must be 1 to 1000".into());
        }
        if let (Some(after), Some(before)) = (self.created_after, self.created_before)
            && after >= before
        {
            return Err(format!("created_after ({after}) must be before created_before ({before})"));
        }
        Ok(RunQuery {
            workflow: self.workflow,
            status,
            label,
            created_after_ms: self.created_after,
            created_before_ms: self.created_before,
            limit: self.limit.unwrap_or(50),
            cursor: self.cursor,
        })
    }
}

/// List runs, newest first, filtered, cursor-paginated.
#[utoipa::path(get, path = "/v1/runs", operation_id = "listRuns", tag = "runs", params(ListQuery),
    responses((status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 200, body = RunPage), (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn list(State(state): State<AppState>, Query(query): Query<ListQuery>) -> ApiResult<Reply<RunPage>> {
    let query = query.into_store_query().map_err(ApiError::InvalidRequest)?;
    let mut page = state.store().list_runs(&query).await?;
    page.runs.iter_mut().for_each(shown);
    Ok(Reply(page))
}

/// A run as answered: credentials in its callback URL are never shown back.
pub(crate) fn shown(run: &mut RunSummary) {
    run.callback_url = run.callback_url.as_deref().map(keel_net::redact_url);
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DetailQuery {
    /// `outputs`: include each step's output (left out by default, so a long run's
    /// detail stays small; the journal endpoint pages through everything).
    include: Option<String>,
}

/// A run: status, progress, steps with attempts, durations, errors (and outputs
/// with `?include=outputs`).
#[utoipa::path(get, path = "/v1/runs/{id}", operation_id = "getRun", tag = "runs", params(("id" = String, Path), DetailQuery),
    responses((status = 200, body = RunDetail), (status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"),
              (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn detail(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<DetailQuery>,
) -> ApiResult<Reply<RunDetail>> {
    let outputs = match query.include.as_deref() {
        None | Some("") => false,
        Some("outputs") => true,
        Some(other) => return Err(ApiError::BadQuery(format!("include={other:?}: the only option is `outputs`"))),
    };
    let id = run_id(id)?;
    let mut run =
        state.store().get_run(&id).await?.ok_or_else(|| ApiError::RunNotFound(format!("run {id} does not exist")))?;
    shown(&mut run);
    let journal = state.store().read_journal(&id, None, 100_000).await?;
    let mut steps = steps_of(&journal);
    if !outputs {
        steps.iter_mut().for_each(|step| step.output = None);
    }
    Ok(Reply(RunDetail { run, steps }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JournalQuery {
    /// Entries after this sequence number (the previous page's `next_after`).
    after: Option<String>,
    /// 1–1000, default 100
    limit: Option<usize>,
}

/// The run's journal, oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/runs/{id}/journal", operation_id = "getRunJournal", tag = "runs", params(("id" = String, Path), JournalQuery),
    responses((status = 200, body = keel_proto::http::JournalPage), (status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"),
              (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn journal(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<JournalQuery>,
) -> ApiResult<Reply<keel_proto::http::JournalPage>> {
    let id = run_id(id)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadQuery("limit must be 1 to 1000".into()));
    }
    if let Some(after) = &query.after
        && !is_sequence(after)
    {
        return Err(ApiError::BadQuery(format!("after={after:?} is not a sequence number (like 1733140000000-0)")));
    }
    if state.store().get_run(&id).await?.is_none() {
        return Err(ApiError::RunNotFound(format!("run {id} does not exist")));
    }
    let entries = state.store().read_journal(&id, query.after.as_deref(), limit).await?;
    let next_after = (entries.len() == limit).then(|| entries.last().map(|r| r.seq.clone())).flatten();
    Ok(Reply(keel_proto::http::JournalPage { entries, next_after }))
}

/// The steps of a journal, in the order the run reached them.
pub(crate) fn steps_of(journal: &[JournalRecord]) -> Vec<StepView> {
    let mut order: Vec<String> = Vec::new();
    let mut steps: BTreeMap<String, StepView> = BTreeMap::new();
    for record in journal {
        let event = &record.entry.event;
        let Some(step_id) = event.step_id() else { continue };
        let step = steps.entry(step_id.to_owned()).or_insert_with(|| {
            order.push(step_id.to_owned());
            StepView {
                step_id: step_id.to_owned(),
                status: "running".into(),
                attempts: 0,
                started_at_ms: record.at_ms,
                finished_at_ms: None,
                duration_ms: None,
                output: None,
                error: None,
            }
        });
        let mut finish = |status: &str, output: Option<serde_json::Value>| {
            step.status = status.into();
            step.finished_at_ms = Some(record.at_ms);
            if output.is_some() {
                step.output = output;
            }
        };
        match event {
            JournalEvent::StepStarted { attempt, .. } => {
                step.attempts = step.attempts.max(*attempt);
                step.status = "running".into();
            }
            JournalEvent::StepCompleted { output, duration_ms, attempt, .. } => {
                step.attempts = step.attempts.max(*attempt);
                let mut finish = |status: &str, output: Option<serde_json::Value>| {
                    step.status = status.into();
                    step.finished_at_ms = Some(record.at_ms);
                    step.output = output;
                };
                finish("completed", Some(output.clone()));
                step.duration_ms = *duration_ms;
                step.error = None;
            }
            JournalEvent::StepFailed { error, retry_at_ms, attempt, .. } => {
                step.attempts = step.attempts.max(*attempt);
                step.error = Some(error.clone());
                if retry_at_ms.is_some() {
                    step.status = "retrying".into();
                } else {
                    finish("failed", None);
                }
            }
            JournalEvent::TimerScheduled { .. } => step.status = "sleeping".into(),
            JournalEvent::WaitStarted { .. } | JournalEvent::ChildStarted { .. } => step.status = "waiting".into(),
            JournalEvent::TimerFired { .. } => finish("completed", None),
            JournalEvent::EventReceived { data, .. } => finish("completed", Some(data.clone())),
            JournalEvent::WaitTimedOut { .. } => finish("completed", Some(serde_json::Value::Null)),
            JournalEvent::ChildCompleted { outcome, .. } => {
                finish("completed", serde_json::to_value(outcome).ok());
            }
            _ => {}
        }
    }
    order.into_iter().filter_map(|id| steps.remove(&id)).collect()
}

/// Long-poll for the result: answers as soon as the run is final (200), or with
/// its status when the wait ends (202).
#[utoipa::path(get, path = "/v1/runs/{id}/result", operation_id = "getRunResult", tag = "runs", params(("id" = String, Path), WaitQuery),
    responses((status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 200, body = RunResult), (status = 202, body = RunResult), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn result(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> ApiResult<Response> {
    let id = run_id(id)?;
    let wait = query.wait.as_deref().map(parse_duration).transpose()?.unwrap_or_default();
    let run = wait_final(&state, &id, wait).await?;
    let code = if run.status.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((code, Reply(result_of(run, None))).into_response())
}

/// The journal live as Server-Sent Events: every entry so far, then new ones as
/// they come; resumable with `Last-Event-ID` (each event's id is its sequence
/// number). The stream ends after the run's final entry.
#[utoipa::path(get, path = "/v1/runs/{id}/events", operation_id = "streamRunJournal", tag = "runs", params(("id" = String, Path),
    ("Last-Event-ID" = Option<String>, Header, description = "resume after this sequence number")),
    responses((status = 200, description = "text/event-stream of journal records", content_type = "text/event-stream"),
              (status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"),
              (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = run_id(id)?;
    if state.store().get_run(&id).await?.is_none() {
        return Err(ApiError::RunNotFound(format!("run {id} does not exist")));
    }
    let after = match headers.get("last-event-id") {
        None => None,
        // A browser's EventSource resends the last id it saw: one we never sent is
        // a client error, not an empty stream it would reconnect to for ever.
        Some(value) => Some(
            value.to_str().ok().map(str::trim).filter(|id| is_sequence(id)).map(str::to_owned).ok_or_else(|| {
                ApiError::BadRequest(
                    "Last-Event-ID must be the id of an event of this stream (like 1733140000000-0)".into(),
                )
            })?,
        ),
    };
    let stream = futures::stream::unfold((state, id, after, false), |(state, id, after, done)| async move {
        if done {
            return None;
        }
        let records = match state.store().watch_journal(&id, after.as_deref(), Duration::from_secs(15)).await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(run_id = %id, error = %e, "journal stream failed; ending the SSE stream");
                return None;
            }
        };
        let after = records.last().map(|r| r.seq.clone()).or(after);
        let done = records.iter().any(|r| r.entry.event.is_final());
        let events: Vec<Result<Event, Infallible>> = records
            .iter()
            .map(|record| {
                let kind = serde_json::to_value(&record.entry).ok().and_then(|v| v["type"].as_str().map(str::to_owned));
                let event = Event::default().id(record.seq.clone()).event(kind.unwrap_or_else(|| "entry".into()));
                Ok(event.json_data(record).unwrap_or_default())
            })
            .collect();
        Some((futures::stream::iter(events), (state, id, after, done)))
    });
    use futures::StreamExt;
    Ok(Sse::new(stream.flatten()).keep_alive(KeepAlive::default()))
}

/// A journal sequence number: `<ms>-<n>`, as the SSE ids are.
fn is_sequence(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, n)| ms.parse::<u64>().is_ok() && n.parse::<u64>().is_ok())
}

fn action(id: RunId, outcome: &str) -> Reply<RunAction> {
    Reply(RunAction { run_id: id, outcome: outcome.into() })
}

/// Cancel: at once if no worker holds the run, else at its next step boundary.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", operation_id = "cancelRun", tag = "runs", params(("id" = String, Path)),
    responses((status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 200, body = RunAction), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 409, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Reply<RunAction>> {
    let id = run_id(id)?;
    let outcome = match state.store().request_cancel(&id, Some("cancelled through the API")).await? {
        CancelOutcome::Cancelled => "cancelled",
        CancelOutcome::Requested => "cancel_requested",
    };
    Ok(action(id, outcome))
}

/// Hold a run between steps until resumed.
#[utoipa::path(post, path = "/v1/runs/{id}/pause", operation_id = "pauseRun", tag = "runs", params(("id" = String, Path)),
    responses((status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 200, body = RunAction), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 409, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn pause(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Reply<RunAction>> {
    let id = run_id(id)?;
    let outcome = match state.store().pause(&id).await? {
        PauseOutcome::Paused => "paused",
        PauseOutcome::Requested => "pause_requested",
    };
    Ok(action(id, outcome))
}

/// Let a paused run go on.
#[utoipa::path(post, path = "/v1/runs/{id}/resume", operation_id = "resumeRun", tag = "runs", params(("id" = String, Path)),
    responses((status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 200, body = RunAction), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 409, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn resume(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Reply<RunAction>> {
    let id = run_id(id)?;
    let outcome = match state.store().resume(&id).await? {
        ResumeOutcome::Resumed => "resumed",
        ResumeOutcome::NotPaused => "not_paused",
    };
    Ok(action(id, outcome))
}

/// Re-run a failed run from its failed step (recorded results are kept).
#[utoipa::path(post, path = "/v1/runs/{id}/retry", operation_id = "retryRun", tag = "runs", params(("id" = String, Path)),
    responses((status = 400, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 200, body = RunAction), (status = 404, body = keel_proto::http::Problem, content_type = "application/problem+json"), (status = 409, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn retry(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Reply<RunAction>> {
    let id = run_id(id)?;
    state.store().retry(&id).await?;
    Ok(action(id, "retried"))
}
