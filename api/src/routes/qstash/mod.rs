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
use keel_proto::qstash::{LABEL_LABEL, Submission, UPSTASH_WORKFLOW, URL_LABEL};
use keel_proto::{RunId, RunSummary};
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

/// A live `upstash` run, or the 400 the SDK takes as "the run has ended".
pub(crate) async fn checked_live(state: &AppState, run_id: &RunId) -> ApiResult<()> {
    match state.store().get_run(run_id).await? {
        Some(run) if run.workflow == UPSTASH_WORKFLOW && !run.status.is_final() => Ok(()),
        Some(run) if run.status.is_final() => {
            Err(ApiError::BadRequest(format!("workflow run {run_id} has ended ({:?})", run.status)))
        }
        _ => Err(ApiError::BadRequest(format!("there is no workflow run {run_id}"))),
    }
}

/// Put `submission` in the inbox of a live `upstash` run; a finished (or
/// unknown) run is a 400, which the SDK takes as "the run has ended".
pub(crate) async fn submit(state: &AppState, run_id: &RunId, submission: &Submission) -> ApiResult<()> {
    checked_live(state, run_id).await?;
    let text = serde_json::to_string(submission).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    match state.store().inbox_push(run_id, &[text], false).await? {
        InboxPush::Added(_) => Ok(()),
        InboxPush::Closed => Err(ApiError::BadRequest(format!("workflow run {run_id} has ended"))),
    }
}

/// The filters `client.logs`, `client.cancel` and `client.dlq` send (each
/// name may repeat: any of its values matches). A filter Keel cannot apply is
/// refused, never ignored: a cancel must not widen to every run.
#[derive(Debug, Default)]
pub(crate) struct RunFilter {
    urls: Vec<String>,
    url_exact: bool,
    labels: Vec<String>,
    from: Option<u64>,
    to: Option<u64>,
    run_id: Option<String>,
    created_at: Option<u64>,
    states: Vec<String>,
    pub count: Option<usize>,
    pub cursor: Option<String>,
}

impl RunFilter {
    /// Read `pairs`; names outside `allowed` (and the paging ones) are a 400.
    /// `workflowUrl` is an exact match where `url_exact` (logs, the DLQ), a
    /// prefix unless `workflowUrlExactMatch=true` (cancel) otherwise.
    pub(crate) fn of(pairs: &[(String, String)], allowed: &[&str], url_exact: bool) -> ApiResult<Self> {
        let mut filter = Self { url_exact, ..Self::default() };
        let number = |name: &str, value: &str| {
            value.parse::<u64>().map_err(|_| ApiError::InvalidRequest(format!("{name}: {value:?} is not a number")))
        };
        for (name, value) in pairs {
            if value.is_empty() {
                continue;
            }
            let known =
                matches!(name.as_str(), "count" | "cursor" | "groupBy" | "source") || allowed.contains(&name.as_str());
            if !known {
                return Err(ApiError::InvalidRequest(format!("filtering by {name:?} is not supported here")));
            }
            match name.as_str() {
                "workflowUrl" | "url" => filter.urls.push(value.clone()),
                "workflowUrlExactMatch" => filter.url_exact = value == "true",
                "label" => filter.labels.push(value.clone()),
                "fromDate" => filter.from = Some(number(name, value)?),
                "toDate" => filter.to = Some(number(name, value)?),
                "workflowRunId" => filter.run_id = Some(value.clone()),
                "workflowCreatedAt" => filter.created_at = Some(number(name, value)?),
                "state" => filter.states.push(value.clone()),
                "count" => filter.count = Some(number(name, value)?.clamp(1, 1000) as usize),
                "cursor" => filter.cursor = Some(value.clone()),
                _ => {}
            }
        }
        Ok(filter)
    }

    /// The one exact URL the store's label index can narrow to.
    pub(crate) fn indexed_url(&self) -> Option<(String, String)> {
        (self.url_exact && self.urls.len() == 1).then(|| (URL_LABEL.to_owned(), self.urls[0].clone()))
    }

    pub(crate) fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    pub(crate) fn matches(&self, run: &RunSummary, state: &str) -> bool {
        let url = run.labels.get(URL_LABEL).map_or("", String::as_str);
        let labels: Vec<&str> = run.labels.get(LABEL_LABEL).map(|l| l.split(',').collect()).unwrap_or_default();
        run.workflow == UPSTASH_WORKFLOW
            && (self.urls.is_empty()
                || self.urls.iter().any(|u| if self.url_exact { url == u } else { url.starts_with(u.as_str()) }))
            && (self.labels.is_empty() || self.labels.iter().any(|l| labels.contains(&l.as_str())))
            && self.from.is_none_or(|f| run.created_at_ms >= f)
            && self.to.is_none_or(|t| run.created_at_ms <= t)
            && self.run_id.as_deref().is_none_or(|id| run.run_id.as_str() == id)
            && self.created_at.is_none_or(|c| run.created_at_ms == c)
            && (self.states.is_empty() || self.states.iter().any(|s| s == state))
    }
}

/// Up to `count` runs matching `filter` (newest first) and the cursor after
/// the last one read: pages of the store's list are read (at most 20), each
/// asking only for what is still missing, so no matching run is skipped.
pub(crate) async fn filtered_runs(
    state: &AppState,
    filter: &RunFilter,
    status: Option<keel_proto::RunStatus>,
    count: usize,
    state_of: impl Fn(&RunSummary) -> &'static str,
) -> ApiResult<(Vec<RunSummary>, Option<String>)> {
    if let Some(id) = filter.run_id() {
        let run = state.store().get_run(&sdk_run_id(id)?).await?;
        let run = run.filter(|r| status.is_none_or(|s| r.status == s) && filter.matches(r, state_of(r)));
        return Ok((run.into_iter().collect(), None));
    }
    let mut runs = Vec::new();
    let mut cursor = filter.cursor.clone();
    for _ in 0..20 {
        let query = keel_engine::RunQuery {
            workflow: Some(UPSTASH_WORKFLOW.to_owned()),
            status,
            label: filter.indexed_url(),
            // QStash's `toDate` is inclusive.
            created_after_ms: filter.from,
            created_before_ms: filter.to.map(|t| t.saturating_add(1)),
            limit: count - runs.len(),
            cursor: cursor.take(),
        };
        let page = state.store().list_runs(&query).await?;
        runs.extend(page.runs.into_iter().filter(|r| filter.matches(r, state_of(r))));
        cursor = page.next_cursor;
        if runs.len() >= count || cursor.is_none() {
            break;
        }
    }
    Ok((runs, cursor))
}

/// `GET /v2/keys`: the signing keys deliveries are signed with (the app's
/// `QSTASH_CURRENT_SIGNING_KEY` and `QSTASH_NEXT_SIGNING_KEY`).
pub async fn keys(State(state): State<AppState>) -> ApiResult<Reply<Value>> {
    let (current, next) = state.qstash_keys().ok_or_else(|| {
        ApiError::NotFound("this server has no QStash signing keys (it runs no `upstash` deliveries)".into())
    })?;
    Ok(Reply(json!({"current": current.expose(), "next": next.expose()})))
}
