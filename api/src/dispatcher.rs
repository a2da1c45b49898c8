//! The webhook dispatcher: turns outbox events into delivery jobs (one per
//! receiver) and delivers due jobs, signed, through SSRF-checked connections,
//! retrying with exponential back-off for about a day.
//!
//! Several servers share the work: the outbox is read through a consumer group,
//! and a job taken by one dispatcher is invisible to the others for a minute
//! (if that dispatcher dies, the job comes due again: at least once). The same
//! event always carries the same `webhook-id`; timestamp and signature are new
//! on every attempt. Only a 2xx succeeds; 410 disables the subscription; 429
//! honours Retry-After; no redirect is followed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backoff::backoff::Backoff;
use futures::StreamExt;
use keel_engine::{OutboxItem, Store};
use keel_proto::{
    DeliveryJob, DeliveryTarget, JournalRecord, RunId, WebhookDelivery, WebhookPayload, WebhookSubscription,
};
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// How deliveries are retried.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Unique per server process.
    pub consumer: String,
    /// The first retry's delay; each next one doubles (to an hour at most).
    pub retry_base: Duration,
    /// Give up on an event this long after its first attempt.
    pub give_up_after: Duration,
    /// One attempt's timeout.
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// A job or event a dispatcher took and never finished (it died) comes due
    /// again after this long.
    pub visibility: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            consumer: format!("dispatch:{}:{}", std::process::id(), uuid::Uuid::now_v7().simple()),
            retry_base: Duration::from_secs(5),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(15),
            concurrency: 32,
            visibility: Duration::from_secs(60),
        }
    }
}

/// Run until `stop` is cancelled; a delivery in flight finishes first.
pub async fn run(state: AppState, config: DispatchConfig, stop: CancellationToken) {
    tracing::info!(consumer = %config.consumer, "webhook dispatcher started");
    while !stop.is_cancelled() {
        if let Err(e) = round(&state, &config).await {
            state.metrics().store_errors.inc();
            tracing::warn!(error = %e, "webhook dispatch round failed; retrying");
            tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
        }
    }
    tracing::info!("webhook dispatcher stopped");
}

async fn round(state: &AppState, config: &DispatchConfig) -> keel_engine::Result<()> {
    let store = state.store();
    let jobs = store.due_jobs(config.concurrency, config.visibility).await?;
    // With nothing due, wait a little for new events instead of spinning.
    let block = if jobs.is_empty() { Duration::from_millis(250) } else { Duration::ZERO };
    let items = store.claim_outbox(&config.consumer, 100, block, config.visibility).await?;
    let subscriptions = store.list_webhooks().await?;
    for item in items {
        fan_out(store.as_ref(), &subscriptions, item).await?;
    }
    let by_id: HashMap<&str, &WebhookSubscription> = subscriptions.iter().map(|s| (s.id.as_str(), s)).collect();
    // One receiver's jobs one after another (oldest first), receivers at once:
    // after a 410 the receiver's other jobs of this round are dropped, not sent.
    let mut by_target: BTreeMap<String, Vec<DeliveryJob>> = BTreeMap::new();
    for job in jobs {
        let target = match &job.target {
            DeliveryTarget::Subscription(id) => format!("s:{id}"),
            DeliveryTarget::Callback(url) => format!("c:{url}"),
        };
        by_target.entry(target).or_default().push(job);
    }
    futures::stream::iter(by_target.into_values())
        .for_each_concurrent(config.concurrency, |mut group| {
            let by_id = &by_id;
            async move {
                group.sort_by(|a, b| (a.first_due_ms, &a.sequence).cmp(&(b.first_due_ms, &b.sequence)));
                let mut gone = false;
                for job in group {
                    if gone {
                        finish(store.as_ref(), &job, None).await;
                    } else {
                        gone = deliver(state, config, by_id, job).await;
                    }
                }
            }
        })
        .await;
    Ok(())
}

/// The `webhook-id` of an event: derived from run and sequence, so a replay that
/// re-emits the event re-emits the id.
fn webhook_id(run_id: &RunId, sequence: &str) -> String {
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("keel/{run_id}/{sequence}").as_bytes());
    format!("msg_{}", id.simple())
}

async fn fan_out(
    store: &dyn Store,
    subscriptions: &[WebhookSubscription],
    item: OutboxItem,
) -> keel_engine::Result<()> {
    let Some(run) = store.get_run(&item.run_id).await? else {
        // Expired before its events went out: nothing to send.
        return store.fan_out(&item, &[]).await;
    };
    let job = |target| DeliveryJob {
        webhook_id: webhook_id(&item.run_id, &item.sequence),
        run_id: item.run_id.clone(),
        sequence: item.sequence.clone(),
        event_type: item.event_type,
        target,
        attempts: 0,
        first_due_ms: now_ms(),
    };
    let mut jobs: Vec<DeliveryJob> = subscriptions
        .iter()
        .filter(|s| s.disabled.is_none())
        .filter(|s| s.event_types.is_empty() || s.event_types.contains(&item.event_type))
        .filter(|s| s.workflow.as_ref().is_none_or(|w| *w == run.workflow))
        .map(|s| job(DeliveryTarget::Subscription(s.id.clone())))
        .collect();
    if let Some(url) = run.callback_url {
        jobs.push(job(DeliveryTarget::Callback(url)));
    }
    store.fan_out(&item, &jobs).await
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The stream id just before `seq`, to read exactly that entry with an exclusive start.
fn before(seq: &str) -> Option<String> {
    let (ms, n) = seq.split_once('-')?;
    let (ms, n): (u64, u64) = (ms.parse().ok()?, n.parse().ok()?);
    Some(if n > 0 { format!("{ms}-{}", n - 1) } else { format!("{}-{}", ms.checked_sub(1)?, u64::MAX) })
}

async fn record_of(store: &dyn Store, job: &DeliveryJob) -> keel_engine::Result<Option<JournalRecord>> {
    let Some(start) = before(&job.sequence) else { return Ok(None) };
    let found = store.read_journal(&job.run_id, Some(&start), 1).await?;
    Ok(found.into_iter().next().filter(|r| r.seq == job.sequence))
}

/// How one attempt went.
enum Attempt {
    Delivered(u16),
    Gone(u16),
    Retry { status: Option<u16>, error: Option<String>, not_before: Option<Duration> },
    Refused(String),
}

/// One attempt of a job, logged and finished or rescheduled. True when the
/// receiver is gone (a 410 disabled its subscription).
async fn deliver(
    state: &AppState,
    config: &DispatchConfig,
    subs: &HashMap<&str, &WebhookSubscription>,
    job: DeliveryJob,
) -> bool {
    let store = state.store();
    let (url, log) = match &job.target {
        DeliveryTarget::Subscription(id) => match subs.get(id.as_str()) {
            Some(sub) if sub.disabled.is_none() => (sub.url.clone(), id.clone()),
            // Deleted or disabled since: nothing more to do.
            _ => {
                finish(store.as_ref(), &job, None).await;
                return false;
            }
        },
        DeliveryTarget::Callback(url) => (url.clone(), format!("run:{}", job.run_id)),
    };
    let record = match record_of(store.as_ref(), &job).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            finish(store.as_ref(), &job, None).await;
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading a webhook's event failed; it comes due again");
            return false;
        }
    };
    let workflow = store.get_run(&job.run_id).await.ok().flatten().map(|r| r.workflow).unwrap_or_default();
    let payload = WebhookPayload {
        event_type: job.event_type,
        timestamp_ms: record.at_ms,
        run_id: job.run_id.clone(),
        workflow,
        sequence: job.sequence.clone(),
        event: record.entry,
    };
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    let attempt = attempt(state, config, &url, &job.webhook_id, &body).await;
    let attempts = job.attempts + 1;
    let age = Duration::from_millis(now_ms().saturating_sub(job.first_due_ms));
    let (outcome, status, error, next) = match attempt {
        Attempt::Delivered(status) => ("delivered", Some(status), None, None),
        Attempt::Refused(reason) => ("refused", None, Some(reason), None),
        Attempt::Gone(status) => {
            if let DeliveryTarget::Subscription(id) = &job.target
                && let Some(sub) = subs.get(id.as_str())
            {
                let mut disabled = (*sub).clone();
                disabled.disabled = Some(format!("the receiver answered 410 Gone at {} ms", now_ms()));
                if let Err(e) = store.put_webhook(&disabled).await {
                    tracing::warn!(error = %e, "disabling a gone webhook subscription failed");
                }
            }
            ("disabled", Some(status), Some("410 Gone: the subscription is disabled".to_owned()), None)
        }
        Attempt::Retry { status, error, not_before } => {
            if age >= config.give_up_after {
                ("failed", status, error.or(Some("gave up after about a day of retries".into())), None)
            } else {
                let delay = retry_delay(config.retry_base, attempts).max(not_before.unwrap_or_default());
                ("retrying", status, error, Some(delay))
            }
        }
    };
    state.metrics().webhook(outcome);
    let at_ms = now_ms();
    let delivery = WebhookDelivery {
        webhook_id: job.webhook_id.clone(),
        event_type: job.event_type,
        run_id: job.run_id.clone(),
        // The log is shown back (GET /v1/webhooks/{id}/deliveries): no credentials.
        url: keel_net::redact_url(&url),
        attempt: attempts,
        at_ms,
        status,
        outcome: outcome.into(),
        error,
        next_attempt_at_ms: next.map(|delay| at_ms + delay.as_millis() as u64),
    };
    if let Err(e) = store.log_delivery(&log, &delivery).await {
        tracing::warn!(error = %e, "logging a webhook delivery failed");
    }
    let next_job = DeliveryJob { attempts, ..job.clone() };
    finish(store.as_ref(), &job, next.map(|d| (next_job, d))).await;
    outcome == "disabled"
}

async fn finish(store: &dyn Store, job: &DeliveryJob, next: Option<(DeliveryJob, Duration)>) {
    let next = next.as_ref().map(|(j, d)| (j, *d));
    if let Err(e) = store.update_job(job, next).await {
        tracing::warn!(error = %e, "updating a webhook job failed; it comes due again");
    }
}

fn retry_delay(base: Duration, attempts: u32) -> Duration {
    let mut policy = backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(base)
        .with_multiplier(2.0)
        .with_max_interval(Duration::from_secs(3600))
        .with_randomization_factor(0.2)
        .with_max_elapsed_time(None)
        .build();
    let mut delay = base;
    for _ in 0..attempts.max(1) {
        delay = policy.next_backoff().unwrap_or(Duration::from_secs(3600));
    }
    delay
}

async fn attempt(state: &AppState, config: &DispatchConfig, url: &str, id: &str, body: &[u8]) -> Attempt {
    let target = match keel_net::ssrf::check(url, state.config().allow_private_targets).await {
        Ok(target) => target,
        Err(e @ keel_net::ssrf::TargetError::Unresolvable { .. }) => {
            return Attempt::Retry { status: None, error: Some(e.to_string()), not_before: None };
        }
        Err(e) => return Attempt::Refused(e.to_string()),
    };
    let client = match keel_net::ssrf::pinned_client(&target, config.timeout) {
        Ok(client) => client,
        Err(e) => return Attempt::Retry { status: None, error: Some(e.to_string()), not_before: None },
    };
    let timestamp = (now_ms() / 1000) as i64;
    let signature = state.signer().sign(id, timestamp, body);
    let response = client
        .post(target.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature.header)
        .header(keel_net::KEY_IDS_HEADER, signature.key_ids)
        .body(body.to_vec())
        .send()
        .await;
    match response {
        Ok(r) if r.status().is_success() => Attempt::Delivered(r.status().as_u16()),
        Ok(r) if r.status().as_u16() == 410 => Attempt::Gone(410),
        Ok(r) => {
            let status = r.status().as_u16();
            let not_before = (status == 429)
                .then(|| r.headers().get("retry-after")?.to_str().ok()?.trim().parse::<u64>().ok())
                .flatten()
                .map(Duration::from_secs);
            let error = if r.status().is_redirection() {
                Some("redirects are not followed".to_owned())
            } else {
                Some(format!("the receiver answered {status}"))
            };
            Attempt::Retry { status: Some(status), error, not_before }
        }
        Err(e) => Attempt::Retry { status: None, error: Some(format!("the request failed: {e}")), not_before: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_event_always_has_the_same_webhook_id() {
        let run = RunId::new("r1").unwrap();
        assert_eq!(webhook_id(&run, "5-0"), webhook_id(&run, "5-0"));
        assert_ne!(webhook_id(&run, "5-0"), webhook_id(&run, "5-1"));
        assert!(!webhook_id(&run, "5-0").contains('.'), "no dots: they separate the signed parts");
    }

    #[test]
    fn before_gives_the_previous_stream_id() {
        assert_eq!(before("10-3").as_deref(), Some("10-2"));
        assert_eq!(before("10-0").as_deref(), Some(format!("9-{}", u64::MAX).as_str()));
        assert_eq!(before("x"), None);
    }

    #[test]
    fn retries_back_off_exponentially_to_an_hour() {
        let base = Duration::from_secs(5);
        let first = retry_delay(base, 1);
        assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(6), "{first:?}");
        let later = retry_delay(base, 4);
        assert!(later >= Duration::from_secs(32), "{later:?}");
        assert!(retry_delay(base, 40) <= Duration::from_secs(4320));
    }
}
