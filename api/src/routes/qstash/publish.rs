//! `POST /v2/batch` and `POST /v2/publish/<url>`: what an SDK app (or any
//! QStash client) publishes. An Init message starts an `upstash` run; a
//! message of a run goes to its inbox; anything else is a plain message,
//! delivered once.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json as Reply;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use keel_engine::CreateRun;
use keel_proto::qstash::{
    BatchMessage, InvokeRequest, LABEL_LABEL, PublishAnswer, RunConfig, Submission, UPSTASH_WORKFLOW, URL_LABEL,
    UpstashRun, parse_duration,
};
use keel_proto::{ParentRef, RunId};
use serde_json::Value;

use super::{checked_live, message_id, now_ms, sdk_run_id, submit, upstash_headers};
use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// The most messages one batch may hold.
const MAX_BATCH: usize = 100;

/// `POST /v2/batch`: a JSON array of messages (a single object is taken as one).
pub async fn batch(State(state): State<AppState>, body: Bytes) -> ApiResult<(StatusCode, Reply<Vec<PublishAnswer>>)> {
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(format!("the batch is not JSON: {e}")))?;
    let messages: Vec<BatchMessage> = match value {
        Value::Array(_) => serde_json::from_value(value),
        other => serde_json::from_value(other).map(|m| vec![m]),
    }
    .map_err(|e| ApiError::InvalidRequest(format!("a batch is an array of {{destination, headers, body}}: {e}")))?;
    if messages.len() > MAX_BATCH {
        return Err(ApiError::InvalidRequest(format!("a batch holds at most {MAX_BATCH} messages")));
    }
    let mut answers = Vec::with_capacity(messages.len());
    for mut message in messages {
        message.headers = message.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        answers.push(accept(&state, message).await?);
    }
    Ok((StatusCode::CREATED, Reply(answers)))
}

/// `POST /v2/publish/<destination>`: one message, its settings in headers; the
/// destination is the rest of the path, unencoded (with the query, if any).
pub async fn publish(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Reply<PublishAnswer>)> {
    let path_and_query = uri.path_and_query().map_or("", |p| p.as_str());
    let destination = path_and_query.strip_prefix("/v2/publish/").unwrap_or_default().to_owned();
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::InvalidRequest("a message body must be UTF-8 text".into()))?;
    let message = BatchMessage { destination, headers: upstash_headers(&headers), body: Some(body), queue: None };
    Ok((StatusCode::CREATED, Reply(accept(&state, message).await?)))
}

fn checked_destination(url: &str) -> ApiResult<()> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 2048
        && !url.contains(char::is_whitespace);
    if ok { Ok(()) } else { Err(ApiError::InvalidRequest(format!("the destination {url:?} is not an http(s) URL"))) }
}

/// When a message becomes due: `upstash-delay`, or `upstash-not-before` (Unix seconds).
fn delay_of(headers: &BTreeMap<String, String>, now: u64) -> ApiResult<Option<Duration>> {
    if let Some(text) = headers.get("upstash-delay") {
        let delay = parse_duration(text).ok_or_else(|| {
            ApiError::InvalidRequest(format!("upstash-delay: {text:?} is not a duration (e.g. 90s, 5m, 2h, 1d)"))
        })?;
        return Ok((!delay.is_zero()).then_some(delay));
    }
    if let Some(text) = headers.get("upstash-not-before") {
        let at: u64 = text
            .trim()
            .parse()
            .map_err(|_| ApiError::InvalidRequest(format!("upstash-not-before: {text:?} is not Unix seconds")))?;
        let at_ms = at.saturating_mul(1000);
        return Ok((at_ms > now).then(|| Duration::from_millis(at_ms - now)));
    }
    Ok(None)
}

/// A label value of at most 256 bytes (cut at a character boundary).
fn label_value(text: &str) -> String {
    let mut end = text.len().min(256);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// One published message.
pub(crate) async fn accept(state: &AppState, message: BatchMessage) -> ApiResult<PublishAnswer> {
    checked_destination(&message.destination)?;
    let h = &message.headers;
    let now = now_ms();
    if h.get("upstash-workflow-init").map(String::as_str) == Some("true") {
        return start(state, message, now).await;
    }
    let id = message_id();
    if let Some(run_id) = h.get("upstash-workflow-runid") {
        let run_id = sdk_run_id(run_id)?;
        submit(state, &run_id, &Submission::Publish { id: id.clone(), message, at_ms: now }).await?;
        return Ok(PublishAnswer { message_id: id, deduplicated: false });
    }
    // A plain message: delivered once (with its retries) as it is.
    let run_id = RunId::new(id.clone()).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let delay = delay_of(h, now)?;
    RunConfig::of(h).map_err(ApiError::InvalidRequest)?;
    let run = UpstashRun {
        url: message.destination.clone(),
        body: message.body.clone().unwrap_or_default(),
        headers: message.headers.clone(),
        created_ms: now,
        message_id: id.clone(),
        invoker: None,
        plain: true,
    };
    create(state, run_id, run, delay, None).await?;
    Ok(PublishAnswer { message_id: id, deduplicated: false })
}

/// An Init message: a new run (or, for a run id already used, the same run).
async fn start(state: &AppState, message: BatchMessage, now: u64) -> ApiResult<PublishAnswer> {
    let h = &message.headers;
    RunConfig::of(h).map_err(ApiError::InvalidRequest)?;
    let run_id = match h.get("upstash-workflow-runid") {
        Some(id) => sdk_run_id(id)?,
        None => sdk_run_id(&format!("wfr_{}", uuid::Uuid::now_v7().simple()))?,
    };
    let delay = delay_of(h, now)?;
    let raw = message.body.clone().unwrap_or_default();
    let (body, invoker) = if h.get("upstash-workflow-invoke").map(String::as_str) == Some("true") {
        let request: InvokeRequest = serde_json::from_str(&raw)
            .map_err(|e| ApiError::InvalidRequest(format!("an invoke message's body is not an invoke request: {e}")))?;
        (request.body.clone().unwrap_or_default(), Some(request))
    } else {
        (raw, None)
    };
    let id = message_id();
    let parent = match &invoker {
        Some(request) => {
            Some(ParentRef { run_id: sdk_run_id(&request.workflow_run_id)?, step_id: format!("invoke/{run_id}") })
        }
        None => None,
    };
    let invoked = invoker.as_ref().zip(parent.as_ref()).map(|(request, parent)| {
        (parent.run_id.clone(), Submission::Invoked { child_run_id: run_id.to_string(), request: request.clone() })
    });
    if let Some((parent, _)) = &invoked {
        checked_live(state, parent).await?;
    }
    let run = UpstashRun {
        url: message.destination.clone(),
        body,
        headers: message.headers.clone(),
        created_ms: now,
        message_id: id.clone(),
        invoker,
        plain: false,
    };
    let created = create(state, run_id, run, delay, parent).await?;
    // The invoker hears of its child only once the child exists (an inbox
    // never names a run that is not there). A crash between the two leaves a
    // child nobody waits for, and the SDK, without an answer, publishes its
    // invoke again: told again (the runner takes a child once), never lost.
    if let Some((parent, invoked)) = invoked {
        submit(state, &parent, &invoked).await?;
    }
    Ok(PublishAnswer { message_id: id, deduplicated: !created })
}

/// Create the run; false when its id was taken (the same run, deduplicated).
pub(crate) async fn create(
    state: &AppState,
    run_id: RunId,
    run: UpstashRun,
    delay: Option<Duration>,
    parent: Option<ParentRef>,
) -> ApiResult<bool> {
    let mut labels = BTreeMap::from([(URL_LABEL.to_owned(), label_value(&run.url))]);
    if let Some(label) = run.headers.get("upstash-label") {
        labels.insert(LABEL_LABEL.to_owned(), label_value(label));
    }
    let input = serde_json::to_value(&run).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let request = CreateRun {
        workflow: UPSTASH_WORKFLOW.to_owned(),
        version: 1,
        input,
        run_id: Some(run_id.clone()),
        delay,
        labels,
        parent,
        ..Default::default()
    };
    match state.store().create_run(request).await {
        Ok(created) => Ok(created.created),
        // The same id with another Init (a trigger sent again): the run there is.
        Err(keel_engine::Error::IdempotencyConflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
