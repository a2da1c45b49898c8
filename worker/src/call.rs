//! `ctx.call`: a durable HTTP call. It is a step: the response (status, headers,
//! body) is journaled, so replay returns it without calling again. Requests go
//! only where the SSRF rules allow, follow no redirects, carry the run id, step
//! id and an idempotency key (the same on every attempt), and can be signed with
//! the worker's ed25519 key (Standard Webhooks headers). Retries follow the
//! status class: timeouts, 408, 429 and 5xx are retried (honouring
//! `Retry-After`); other 4xx fail the step at once.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{RetryPolicy, StepError, StepInfo};

/// An HTTP request to make durably.
///
/// ```
/// use std::time::Duration;
/// use keel_worker::CallRequest;
/// let request = CallRequest::post("https://api.example.com/score", serde_json::json!({"text": "hi"}))
///     .header("x-tenant", "acme")
///     .timeout(Duration::from_secs(20))
///     .retry(5)
///     .signed();
/// assert_eq!(request.method(), "POST");
/// ```
#[derive(Debug, Clone)]
pub struct CallRequest {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    timeout: Duration,
    retry: RetryPolicy,
    sign: bool,
    flow: Option<keel_proto::FlowControl>,
}

impl CallRequest {
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into().to_ascii_uppercase(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::attempts(5),
            sign: false,
            flow: None,
        }
    }

    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A POST with a JSON body.
    pub fn post(url: impl Into<String>, body: Value) -> Self {
        Self { body: Some(body), ..Self::new("POST", url) }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// One attempt's limit (default 30 s); a timeout is retried.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Attempts and back-off (default: 5 attempts, 1 s doubling).
    pub fn retry(mut self, policy: impl Into<RetryPolicy>) -> Self {
        self.retry = policy.into();
        self
    }

    /// Sign it with the worker's key, as Keel signs webhooks, so the receiver can
    /// verify it is Keel calling.
    pub fn signed(mut self) -> Self {
        self.sign = true;
        self
    }

    /// Each attempt sends under flow-control key `key` (see
    /// [`Step::flow_control`](crate::Step::flow_control)): e.g. a model
    /// provider's limits per API key.
    pub fn flow_control(mut self, key: impl Into<String>, limits: keel_proto::FlowLimits) -> Self {
        self.flow = Some(keel_proto::FlowControl { key: key.into(), limits });
        self
    }

    pub(crate) fn flow(&self) -> Option<&keel_proto::FlowControl> {
        self.flow.as_ref()
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    pub(crate) fn policy(&self) -> (RetryPolicy, Duration) {
        (self.retry.clone(), self.timeout)
    }
}

/// A response, as journaled: the body is the JSON it held, or its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResponse {
    pub status: u16,
    /// Header names in lower case; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

/// How the worker sends calls.
#[derive(Debug, Clone, Default)]
pub struct CallSettings {
    pub signer: Option<keel_net::Signer>,
    pub allow_private_targets: bool,
    /// The largest response body read (default: the store's value limit, 1 MiB):
    /// a larger one fails the call terminally with `payload_too_large`.
    pub max_response_bytes: Option<usize>,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Make one attempt of `request` (not durable by itself: `ctx.call` wraps it in a
/// step). Failures come back classified for the step's retry policy.
pub async fn send(settings: &CallSettings, info: &StepInfo, request: &CallRequest) -> Result<CallResponse, StepError> {
    let target = keel_net::check(&request.url, settings.allow_private_targets).await.map_err(|e| match e {
        keel_net::TargetError::Unresolvable { .. } => StepError::retryable(e.to_string()),
        _ => StepError::terminal(e.to_string()),
    })?;
    let client = keel_net::pinned_client(&target, request.timeout).map_err(|e| StepError::retryable(e.to_string()))?;
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| StepError::terminal(format!("{:?} is not an HTTP method", request.method)))?;
    let body = match &request.body {
        Some(value) => serde_json::to_vec(value).map_err(|e| StepError::terminal(e.to_string()))?,
        None => Vec::new(),
    };
    let mut builder = client
        .request(method, target.url.clone())
        .header("idempotency-key", &info.idempotency_key)
        .header("keel-run-id", info.run_id.as_str())
        .header("keel-step-id", &info.step_id);
    if request.body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    if request.sign {
        let signer = settings.signer.as_ref().ok_or_else(|| {
            StepError::terminal("this call asks to be signed, but the worker has no signing key (KEEL_SIGNING_KEY)")
        })?;
        let id =
            format!("msg_{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, info.idempotency_key.as_bytes()).simple());
        let timestamp = unix_now();
        let signature = signer.sign(&id, timestamp, &body);
        builder = builder
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature.header)
            .header(keel_net::KEY_IDS_HEADER, signature.key_ids);
    }
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let response = builder
        .body(body)
        .send()
        .await
        .map_err(|e| StepError::retryable(format!("{} {} failed: {e}", request.method, request.url)))?;
    let status = response.status().as_u16();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.entry(name.as_str().to_owned()).and_modify(|v| *v = format!("{v}, {value}")).or_insert(value);
    }
    let limit = settings.max_response_bytes.unwrap_or(keel_engine::StoreConfig::default().max_value_bytes);
    let bytes = read_capped(response, limit).await?;
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    let excerpt = || {
        let text = match &body {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.chars().take(300).collect::<String>()
    };
    let what = format!("{} {} answered {status}", request.method, request.url);
    match status {
        200..=299 => Ok(CallResponse { status, headers, body }),
        300..=399 => {
            let location = headers.get("location").map(String::as_str).unwrap_or("none");
            Err(StepError::terminal(format!("{what}: redirects are not followed (Location: {location})")))
        }
        408 | 429 | 500..=599 => {
            let after = headers.get("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
            Err(match after {
                Some(secs) => StepError::retry_after(format!("{what}: {}", excerpt()), Duration::from_secs(secs)),
                None => StepError::retryable(format!("{what}: {}", excerpt())),
            })
        }
        _ => Err(StepError::terminal(format!("{what}: {}", excerpt()))),
    }
}

/// The body, read no further than `limit` bytes: a larger one is a terminal
/// `payload_too_large` failure, never a 60 MB allocation.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, StepError> {
    let too_large = |size: String| {
        StepError::terminal_kind(
            "payload_too_large",
            format!("the response body is {size} bytes, over the limit of {limit} bytes (KEEL_MAX_VALUE_BYTES)"),
        )
    };
    if let Some(length) = response.content_length()
        && length > limit as u64
    {
        return Err(too_large(length.to_string()));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|e| StepError::retryable(format!("reading the response failed: {e}")))?
    {
        if bytes.len() + chunk.len() > limit {
            return Err(too_large(format!("more than {limit}")));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
