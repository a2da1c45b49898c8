//! [`Client`]: a typed Rust client of a Keel server's HTTP API: start runs, await
//! their results, send events, cancel. For services (and examples and tests)
//! that start workflows without touching the store.

use std::time::Duration;

use keel_proto::http::{EventDelivered, Problem, RunAction, RunDetail, RunResult, StartRunRequest};
use keel_proto::{ErrorInfo, RunId, RunStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a problem (RFC 9457): its stable type, status and detail.
    #[error("{status} {problem_type}: {detail}")]
    Problem { status: u16, problem_type: String, detail: String },
    #[error("the request to Keel failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the input or output is not the JSON expected: {0}")]
    Json(#[from] serde_json::Error),
    /// The run ended without an output (failed or cancelled).
    #[error("run {run_id} ended {status}{}", error.as_ref().map(|e| format!(": {}", e.message)).unwrap_or_default())]
    RunFailed { run_id: RunId, status: RunStatus, error: Option<ErrorInfo> },
    #[error("run {0} did not finish within the wait")]
    NotFinished(RunId),
}

/// A started (or already known) run.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub run_id: RunId,
    /// False when the idempotency key (or run id) had started it before.
    pub created: bool,
    pub status: RunStatus,
}

/// Options of a start beyond the input.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The same key gives the same run (for 24 h by default).
    pub idempotency_key: Option<String>,
    /// A run id of your choosing (idempotent too).
    pub run_id: Option<String>,
    /// Start later (`5m`, `1h`…).
    pub delay: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Also send this run's webhook events here.
    pub callback_url: Option<String>,
    /// 1 to 5 (default 3): among queued runs of the workflow, higher is claimed first.
    pub priority: Option<u8>,
    /// Every step of the run executes under this flow-control key.
    pub flow_control: Option<keel_proto::FlowControl>,
}

/// A client of one Keel server.
///
/// ```no_run
/// # async fn f() -> Result<(), keel_worker::ClientError> {
/// use keel_worker::Client;
/// let keel = Client::new("http://127.0.0.1:7400").token("s3cret");
/// let started = keel.start("demo", &serde_json::json!({"steps": 3})).await?;
/// let output: serde_json::Value = keel.result(&started.run_id, std::time::Duration::from_secs(30)).await?;
/// keel.notify("order-42:paid", &serde_json::json!({"amount": 10})).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    // The token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:7400`).
    pub fn new(base_url: impl Into<String>) -> Self {
        let base = base_url.into().trim_end_matches('/').to_owned();
        Self { base, token: None, http: reqwest::Client::new() }
    }

    /// Send `Authorization: Bearer <token>`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        if status >= 400 {
            return Err(match serde_json::from_slice::<Problem>(&bytes) {
                Ok(problem) => {
                    ClientError::Problem { status, problem_type: problem.problem_type, detail: problem.detail }
                }
                Err(_) => ClientError::Problem {
                    status,
                    problem_type: "about:blank".into(),
                    detail: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                },
            });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Start a run of `workflow` with `input`.
    pub async fn start(&self, workflow: &str, input: &impl Serialize) -> Result<Started, ClientError> {
        self.start_with(workflow, input, StartOptions::default()).await
    }

    /// Start a run with an idempotency key, labels, a delay…
    pub async fn start_with(
        &self,
        workflow: &str,
        input: &impl Serialize,
        options: StartOptions,
    ) -> Result<Started, ClientError> {
        let body = StartRunRequest {
            input: serde_json::to_value(input)?,
            run_id: options.run_id,
            delay: options.delay,
            callback_url: options.callback_url,
            labels: options.labels,
            priority: options.priority,
            flow_control: options.flow_control,
        };
        let mut request = self.request(reqwest::Method::POST, &format!("/v1/workflows/{workflow}/runs")).json(&body);
        if let Some(key) = &options.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let result: RunResult = Self::answer(request.send().await?).await?;
        Ok(Started { run_id: result.run_id, created: result.created.unwrap_or(true), status: result.status })
    }

    /// Wait up to `wait` for the run to end (one long-poll, renewed until the
    /// wait is over): its output, decoded; an error if it failed or was cancelled.
    pub async fn result<T: DeserializeOwned>(&self, run_id: &RunId, wait: Duration) -> Result<T, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // The server caps each long-poll; ask again until our own wait is over.
            let poll = left.min(Duration::from_secs(60));
            let path = format!("/v1/runs/{run_id}/result?wait={}ms", poll.as_millis());
            let response = self.request(reqwest::Method::GET, &path).timeout(poll + Duration::from_secs(30)).send();
            let result: RunResult = Self::answer(response.await?).await?;
            match result.status {
                RunStatus::Completed => return Ok(serde_json::from_value(result.output.unwrap_or_default())?),
                status if status.is_final() => {
                    return Err(ClientError::RunFailed { run_id: result.run_id, status, error: result.error });
                }
                _ if left.is_zero() => return Err(ClientError::NotFinished(result.run_id)),
                _ => {}
            }
        }
    }

    /// The run: status, progress, steps.
    pub async fn run(&self, run_id: &RunId) -> Result<RunDetail, ClientError> {
        Self::answer(self.request(reqwest::Method::GET, &format!("/v1/runs/{run_id}")).send().await?).await
    }

    /// Send an event to the runs waiting on `key`.
    pub async fn notify(&self, key: &str, data: &impl Serialize) -> Result<EventDelivered, ClientError> {
        let request = self.request(reqwest::Method::POST, &format!("/v1/events/{key}")).json(data);
        Self::answer(request.send().await?).await
    }

    /// Send an event with an id of yours: a repeat of the id (a retry of yours)
    /// is not delivered again.
    pub async fn notify_once(&self, key: &str, id: &str, data: &impl Serialize) -> Result<EventDelivered, ClientError> {
        let request =
            self.request(reqwest::Method::POST, &format!("/v1/events/{key}")).header("idempotency-key", id).json(data);
        Self::answer(request.send().await?).await
    }

    /// Cancel the run (at once if no worker holds it, else at its next step).
    pub async fn cancel(&self, run_id: &RunId) -> Result<RunAction, ClientError> {
        Self::answer(self.request(reqwest::Method::POST, &format!("/v1/runs/{run_id}/cancel")).send().await?).await
    }
}
