//! Prometheus metrics at /metrics: what the store counts for every process
//! (runs, steps, queues, dead letters — kept by the store's own scripts, so they
//! cover all workers), and what this server counts itself (HTTP requests,
//! webhook deliveries, store errors).

use std::collections::BTreeSet;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabels {
    workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// The counters this process keeps.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    http: Family<HttpLabels, Counter>,
    pub(crate) webhooks: Family<OutcomeLabels, Counter>,
    pub(crate) store_errors: Counter,
}

impl Metrics {
    pub(crate) fn webhook(&self, outcome: &str) {
        self.webhooks.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
    }
}

/// Count every request by method, route and status; count store failures.
/// Every label has a bounded set of values (anybody can send any method and
/// path, before auth): the standard methods else `other`, the matched route
/// template else `unmatched`.
pub(crate) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method()).to_owned();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    if status == 503 || status == 500 {
        state.metrics().store_errors.inc();
    }
    state.metrics().http.get_or_create(&HttpLabels { method, route, status }).inc();
    response
}

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A histogram whose buckets were counted elsewhere (by the store).
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for ConstHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Prometheus text format (OpenMetrics).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health", responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn scrape(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let store = state.store();
    let mut workflows: BTreeSet<String> = BTreeSet::new();
    for worker in store.list_workers().await? {
        workflows.extend(worker.workflows.into_keys());
    }
    let first = store.stats(&workflows.iter().cloned().collect::<Vec<_>>()).await?;
    workflows.extend(first.counters.keys().map(|(wf, _)| wf.clone()).filter(|wf| wf != "?"));
    let stats = store.stats(&workflows.iter().cloned().collect::<Vec<_>>()).await?;

    let mut registry = Registry::with_prefix("keel");
    for (stat, name, help) in [
        ("started", "runs_started", "Runs started"),
        ("completed", "runs_completed", "Runs completed"),
        ("failed", "runs_failed", "Runs failed"),
        ("cancelled", "runs_cancelled", "Runs cancelled"),
        ("steps_completed", "steps_completed", "Steps completed"),
        ("steps_failed", "step_attempts_failed", "Step attempts that failed"),
    ] {
        let family: Family<WorkflowLabels, ConstCounterU64> = Family::new_with_constructor(ConstCounterU64::default);
        for ((workflow, s), n) in &stats.counters {
            if s == stat {
                family.get_or_create(&WorkflowLabels { workflow: workflow.clone() }).set(*n);
            }
        }
        registry.register(name, help, family);
    }
    let queued: Family<WorkflowLabels, ConstGaugeI64> = Family::new_with_constructor(ConstGaugeI64::default);
    for (workflow, n) in &stats.queued {
        queued.get_or_create(&WorkflowLabels { workflow: workflow.clone() }).set(*n as i64);
    }
    registry.register("queue_depth", "Tasks queued and not yet taken by a worker", queued);
    let in_flight: Family<WorkflowLabels, ConstGaugeI64> = Family::new_with_constructor(ConstGaugeI64::default);
    for (workflow, n) in &stats.in_flight {
        in_flight.get_or_create(&WorkflowLabels { workflow: workflow.clone() }).set(*n as i64);
    }
    registry.register("tasks_pending", "Tasks taken by a worker and not yet finished", in_flight);
    let by_status: Family<StatusLabels, ConstGaugeI64> = Family::new_with_constructor(ConstGaugeI64::default);
    for (status, n) in &stats.runs_by_status {
        by_status.get_or_create(&StatusLabels { status: status.to_string() }).set(*n as i64);
    }
    registry.register("runs", "Runs kept in the store, by status", by_status);
    // Flow-control keys configured on the server (limits or a pause) only: at
    // most MAX_CONFIGURED_KEYS, so what runs ask for cannot grow the scrape.
    let flow = store.flow_keys(true).await?;
    for (name, help, value) in [
        (
            "flow_in_flight",
            "Steps executing under a configured flow-control key",
            (|k: &keel_proto::FlowKeyStatus| i64::from(k.in_flight)) as fn(&keel_proto::FlowKeyStatus) -> i64,
        ),
        ("flow_waiting", "Runs waiting for a slot of a configured flow-control key", |k| i64::from(k.waiting)),
        ("flow_starts_in_window", "Step starts in the current rate window of a configured flow-control key", |k| {
            i64::from(k.starts_in_window)
        }),
        ("flow_paused", "1 when a configured flow-control key is paused", |k| i64::from(k.paused)),
    ] {
        let family: Family<FlowLabels, ConstGaugeI64> = Family::new_with_constructor(ConstGaugeI64::default);
        for key in &flow {
            family.get_or_create(&FlowLabels { key: key.key.clone() }).set(value(key));
        }
        registry.register(name, help, family);
    }
    registry.register(
        "tasks_dead_lettered",
        "Tasks set aside after too many deliveries",
        ConstGauge::new(stats.dead_letters as i64),
    );
    let buckets: Vec<(f64, u64)> = keel_engine::STEP_MS_BUCKETS
        .iter()
        .map(|b| (*b as f64 / 1000.0, stats.step_ms_buckets.get(&Some(*b)).copied().unwrap_or(0)))
        .chain(std::iter::once((f64::INFINITY, stats.step_ms_buckets.get(&None).copied().unwrap_or(0))))
        .collect();
    let count = buckets.iter().map(|(_, n)| n).sum();
    registry.register(
        "step_duration_seconds",
        "Duration of successful step attempts, as workers measured them",
        ConstHistogram { sum: stats.step_ms_sum as f64 / 1000.0, count, buckets },
    );
    registry.register(
        "redis_round_trips",
        "Requests Keel processes sent to Redis (a script call, command or pipeline each), reported about once a second",
        ConstCounter::new(stats.redis_round_trips),
    );
    registry.register("http_requests", "HTTP requests served by this server", state.metrics().http.clone());
    registry.register(
        "webhook_deliveries",
        "Webhook delivery attempts by this server, by outcome",
        state.metrics().webhooks.clone(),
    );
    registry.register(
        "store_errors",
        "Requests and dispatcher rounds that failed on the store",
        state.metrics().store_errors.clone(),
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text))
}

/// A counter whose value was counted elsewhere.
#[derive(Debug, Default)]
struct ConstCounterU64(std::sync::atomic::AtomicU64);

impl ConstCounterU64 {
    fn set(&self, n: u64) {
        self.0.store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

impl TypedMetric for ConstCounterU64 {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ConstCounterU64 {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        ConstCounter::new(self.0.load(std::sync::atomic::Ordering::Relaxed)).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A gauge whose value was measured elsewhere.
#[derive(Debug, Default)]
struct ConstGaugeI64(std::sync::atomic::AtomicI64);

impl ConstGaugeI64 {
    fn set(&self, n: i64) {
        self.0.store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

impl TypedMetric for ConstGaugeI64 {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for ConstGaugeI64 {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        ConstGauge::new(self.0.load(std::sync::atomic::Ordering::Relaxed)).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}
