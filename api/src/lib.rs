//! keel-api: the HTTP API (v1), live progress over SSE, Prometheus metrics and
//! the webhook dispatcher, on a [`keel_engine::Store`].
//!
//! [`router`] builds the axum `Router` that `keel server` serves and the tests
//! drive. [`dispatcher::run`] is the webhook dispatcher task (a server owns one).
//! This crate knows nothing of how a workflow's code runs.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::routing::{delete, get, post};
use keel_engine::Store;

pub mod auth;
pub mod dispatcher;
mod error;
mod extract;
mod metrics;
mod openapi;
mod routes;
mod serve;
pub mod ui;
mod util;

pub use auth::Secret;
pub use error::{ApiError, ApiResult};
pub use keel_net::{Signer, signing, ssrf};
pub use metrics::Metrics;
pub use openapi::openapi_json;
pub use serve::{ServeLimits, serve};

/// How the API behaves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Full-access bearer tokens; with none (and no read tokens), auth is off.
    pub api_tokens: Vec<Secret>,
    /// Read-only bearer tokens (GET only).
    pub read_tokens: Vec<Secret>,
    pub max_body_bytes: usize,
    /// Allow webhooks and calls to private and loopback addresses.
    pub allow_private_targets: bool,
    /// The longest `?wait=` honoured.
    pub max_wait: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            api_tokens: Vec::new(),
            read_tokens: Vec::new(),
            max_body_bytes: 1024 * 1024,
            allow_private_targets: false,
            max_wait: Duration::from_secs(300),
        }
    }
}

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    config: ApiConfig,
    signer: Signer,
    metrics: Metrics,
    schemas: util::SchemaCache,
    /// Live workflows, and when they were read (shared: a start looks one up
    /// without copying the list or its input schemas).
    workflows: std::sync::Mutex<Option<(std::time::Instant, routes::workflows::LiveWorkflows)>>,
    /// A worker in this process that takes the runs starts create (`keel dev`).
    local: Option<Arc<dyn keel_engine::handoff::LocalWorker>>,
    /// Whether `signer` holds the deployment's keys (and follows them), rather
    /// than a KEEL_SIGNING_KEY of this process's own.
    follows_deployment_keys: bool,
    /// The QStash signing keys (current, next) `upstash` deliveries are signed with.
    qstash_keys: Option<(Secret, Secret)>,
    /// The dashboard's readings of the counters (a bounded ring).
    samples: ui::Samples,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, config: ApiConfig, signer: Signer) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                signer,
                metrics: Metrics::default(),
                schemas: util::SchemaCache::default(),
                workflows: std::sync::Mutex::new(None),
                local: None,
                follows_deployment_keys: false,
                qstash_keys: None,
                samples: ui::Samples::default(),
            }),
        }
    }

    /// Hand the runs starts create to `worker`, a worker in this process,
    /// when it has a slot free (see keel_engine::handoff). Call before
    /// cloning the state.
    pub fn with_local_worker(mut self, worker: Arc<dyn keel_engine::handoff::LocalWorker>) -> Self {
        Arc::get_mut(&mut self.inner).expect("with_local_worker is called before the state is cloned").local =
            Some(worker);
        self
    }

    /// Say that the signer holds the deployment's keys (rotation goes through
    /// the store). Call before cloning the state.
    pub fn following_deployment_keys(mut self) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("following_deployment_keys is called before the state is cloned")
            .follows_deployment_keys = true;
        self
    }

    pub fn with_qstash_keys(mut self, current: Secret, next: Secret) -> Self {
        Arc::get_mut(&mut self.inner).expect("with_qstash_keys is called before the state is cloned").qstash_keys =
            Some((current, next));
        self
    }

    pub(crate) fn qstash_keys(&self) -> Option<&(Secret, Secret)> {
        self.inner.qstash_keys.as_ref()
    }

    pub(crate) fn follows_deployment_keys(&self) -> bool {
        self.inner.follows_deployment_keys
    }

    pub(crate) fn local_worker(&self) -> Option<&Arc<dyn keel_engine::handoff::LocalWorker>> {
        self.inner.local.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    pub fn signer(&self) -> &Signer {
        &self.inner.signer
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn samples(&self) -> &ui::Samples {
        &self.inner.samples
    }
}

/// The configured body limit, for the extractor's error message.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

pub(crate) fn body_limit(req: &Request) -> usize {
    req.extensions().get::<BodyLimit>().map_or(0, |l| l.0)
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let limit = state.config().max_body_bytes;
    Router::new()
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/openapi.json", get(openapi::serve))
        .route("/v1/workflows", get(routes::workflows::list))
        .route("/v1/workflows/{name}/runs", post(routes::runs::start))
        .route("/v1/runs", get(routes::runs::list))
        .route("/v1/runs/{id}", get(routes::runs::detail))
        .route("/v1/runs/{id}/result", get(routes::runs::result))
        .route("/v1/runs/{id}/journal", get(routes::runs::journal))
        .route("/v1/runs/{id}/events", get(routes::runs::events))
        .route("/v1/runs/{id}/cancel", post(routes::runs::cancel))
        .route("/v1/runs/{id}/pause", post(routes::runs::pause))
        .route("/v1/runs/{id}/resume", post(routes::runs::resume))
        .route("/v1/runs/{id}/retry", post(routes::runs::retry))
        .route("/v1/events/{key}", post(routes::events::send))
        .route("/v1/webhooks", post(routes::webhooks::create).get(routes::webhooks::list))
        .route("/v1/webhooks/signing-key", get(routes::webhooks::signing_key))
        .route("/v1/schedules", post(routes::schedules::put).get(routes::schedules::list))
        .route("/v1/schedules/{id}", get(routes::schedules::get_one).delete(routes::schedules::delete))
        .route("/v1/schedules/{id}/pause", post(routes::schedules::pause))
        .route("/v1/schedules/{id}/resume", post(routes::schedules::resume))
        .route("/v1/schedules/{id}/trigger", post(routes::schedules::trigger))
        .route("/v1/flow-control", get(routes::flow_control::list))
        .route(
            "/v1/flow-control/{key}",
            get(routes::flow_control::get_one).put(routes::flow_control::put).delete(routes::flow_control::clear),
        )
        .route("/v1/flow-control/{key}/pause", post(routes::flow_control::pause))
        .route("/v1/flow-control/{key}/resume", post(routes::flow_control::resume))
        .route("/v1/signing-keys/rotate", post(routes::signing_keys::rotate))
        .route("/v1/signing-keys/retire", post(routes::signing_keys::retire))
        .route("/v1/webhooks/{id}", get(routes::webhooks::get_one).delete(routes::webhooks::delete))
        .route("/v1/webhooks/{id}/deliveries", get(routes::webhooks::deliveries))
        // The QStash protocol, for apps on the @upstash/workflow SDK.
        .route("/v2/batch", post(routes::qstash::publish::batch))
        .route("/v2/publish/{*destination}", post(routes::qstash::publish::publish))
        .route("/v2/workflows/runs", delete(routes::qstash::runs::bulk_cancel))
        .route("/v2/workflows/runs/{id}", delete(routes::qstash::runs::end).get(routes::qstash::runs::log))
        .route("/v2/workflows/events", get(routes::qstash::logs::logs))
        .route("/v2/wait/{event_id}", post(routes::qstash::events::wait))
        .route("/v2/notify/{event_id}", post(routes::qstash::events::notify))
        .route("/v2/notify/{run_id}/{event_id}", post(routes::qstash::events::notify_run))
        .route("/v2/keys", get(routes::qstash::keys))
        .route("/v2/dlq", get(routes::qstash::dlq::list))
        .route("/v2/workflows/dlq/resume", post(routes::qstash::dlq::resume))
        .route("/v2/workflows/dlq/restart", post(routes::qstash::dlq::restart))
        .route("/v2/workflows/dlq", delete(routes::qstash::dlq::delete))
        .route("/v2/workflows/hooks/{user}/{run_id}/{event_id}", axum::routing::any(routes::qstash::events::hook))
        .merge(ui::routes())
        .fallback(routes::health::not_found)
        .method_not_allowed_fallback(routes::health::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(BodyLimit(limit)))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
