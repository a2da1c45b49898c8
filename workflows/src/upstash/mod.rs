//! `upstash`: the runs of apps written with the `@upstash/workflow` SDK, which
//! reach Keel through the QStash protocol (keel-api's `/v2` routes).
//!
//! Such an app keeps no state: on every request it runs its route from the
//! top, returns the results it is sent, and submits the first step it has no
//! result for back to QStash (here: the run's inbox). An `upstash` run is the
//! QStash side of that loop, written as an ordinary Keel workflow so that it
//! gets Keel's durability: it keeps the run's log (the steps, in the order
//! they became due), delivers the log to the app one message at a time (never
//! two deliveries of a run at once), and reads what the app submitted during
//! each delivery in the same step, so a delivery and its outcome are journaled
//! together. Sleeps are timers, waits are Keel event waits, invoked children
//! are Keel child runs; everything the runner decides follows from its journal.

mod delivery;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keel_proto::qstash::{
    BatchMessage, CallbackBody, DeliveryOutcome, FailedAnswer, InvokeRequest, MAX_RETRIES, RawStep, RunConfig,
    StepView, Submission, UPSTASH_WORKFLOW, UpstashRun, WaitRequest, event_key, parse_duration, prefixed,
    run_event_key,
};
use keel_proto::{ChildOutcome, RunId};
use keel_worker::engine::Store;
use keel_worker::{Context, Error, Lookback, Result, RetryPolicy, StepError, StepInfo, Workflow};
use serde_json::{Value, json};

pub use delivery::{Deliverer, Incoming, NoResponse, Outgoing};

/// How long a wait lasts when the app names no timeout (the SDK's default).
const DEFAULT_WAIT: Duration = Duration::from_secs(7 * 86_400);
/// How many inbox messages one read takes.
const READ_BATCH: usize = 200;
/// When the app answers a delivery but submits nothing and nothing else is
/// pending, the runner looks again after these pauses, then fails the run.
const IDLE_CHECKS: [Duration; 4] =
    [Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)];

/// The `upstash` workflow: its requests sent by `deliverer`, its inbox read from `store`.
pub fn workflow(store: Arc<dyn Store>, deliverer: Deliverer) -> Workflow {
    Workflow::new(UPSTASH_WORKFLOW, move |ctx: Context, run: UpstashRun| {
        let (store, deliverer) = (store.clone(), deliverer.clone());
        async move {
            let config = RunConfig::of(&run.headers).map_err(|e| Error::new("invalid_run", e))?;
            Runner::new(ctx, run, config, store, deliverer).run().await
        }
    })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn answer_of(response: &Incoming, retried: u32) -> FailedAnswer {
    FailedAnswer {
        status: response.status,
        header: response.headers.clone(),
        body: B64.encode(&response.body),
        retried,
        error: None,
    }
}

fn no_answer(message: &str, retried: u32) -> FailedAnswer {
    FailedAnswer { status: 0, header: BTreeMap::new(), body: String::new(), retried, error: Some(message.to_owned()) }
}

/// What went wrong, for the run's error.
fn describe(answer: &FailedAnswer, url: &str) -> String {
    match &answer.error {
        Some(e) => format!("{e} (after {} retries)", answer.retried),
        None => {
            let body = B64.decode(&answer.body).unwrap_or_default();
            let excerpt: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            format!(
                "{} answered {} after {} retries: {excerpt}",
                keel_worker::net::redact_url(url),
                answer.status,
                answer.retried
            )
        }
    }
}

/// Something the run will do when its turn comes.
#[derive(Debug, Clone)]
enum Pending {
    /// Append to the log, deliver the log up to it.
    Step { id: String, message: BatchMessage },
    /// Call a third party, then deliver the callback.
    Call { id: String, message: BatchMessage, at_ms: u64 },
}

#[derive(Debug, Clone)]
struct PendingWait {
    event_id: String,
    request: WaitRequest,
    deadline_ms: u64,
}

struct Runner {
    ctx: Context,
    run: UpstashRun,
    config: RunConfig,
    store: Arc<dyn Store>,
    deliverer: Deliverer,
    log: Vec<RawStep>,
    /// How far the inbox has been read.
    read: u64,
    ready: VecDeque<Pending>,
    /// Steps that become due later (a sleep), in arrival order.
    timed: Vec<(u64, Pending)>,
    waits: Vec<PendingWait>,
    children: Vec<(RunId, InvokeRequest)>,
    /// (stepId, targetStep) of the steps in the log: a step submitted twice
    /// (a delivery retried after the app had answered) is logged once.
    seen: HashSet<(u64, u64)>,
    /// The steps whose `context.call` was made (by step id).
    calls: HashSet<String>,
    /// Messages the runner made itself (wait and invoke results), for their ids.
    made: u64,
    finished: Option<String>,
}

impl Runner {
    fn new(ctx: Context, run: UpstashRun, config: RunConfig, store: Arc<dyn Store>, deliverer: Deliverer) -> Self {
        let first =
            RawStep { message_id: run.message_id.clone(), body: B64.encode(&run.body), call_type: "step".into() };
        Self {
            ctx,
            run,
            config,
            store,
            deliverer,
            log: vec![first],
            read: 0,
            ready: VecDeque::new(),
            timed: Vec::new(),
            waits: Vec::new(),
            children: Vec::new(),
            seen: HashSet::new(),
            calls: HashSet::new(),
            made: 0,
            finished: None,
        }
    }

    fn run_id(&self) -> String {
        self.ctx.run_id().to_string()
    }

    async fn run(mut self) -> Result<Value> {
        if self.run.plain {
            return self.deliver_plain().await;
        }
        // The first delivery: the log holds the initial payload only.
        let headers = self.step_headers(&self.run.headers);
        let url = self.run.url.clone();
        self.deliver(&url, 0, headers).await?;
        let mut idle = 0;
        while self.finished.is_none() {
            if let Some(next) = self.ready.pop_front() {
                idle = 0;
                match next {
                    Pending::Step { id, message } => self.append_and_deliver(id, message).await?,
                    Pending::Call { id, message, at_ms } => self.call(id, message, at_ms).await?,
                }
            } else if !self.timed.is_empty() || !self.waits.is_empty() || !self.children.is_empty() {
                idle = 0;
                self.wait_for_something().await?;
            } else {
                // The app answered without submitting anything, and nothing
                // else is pending: a submission may be late (a delivery that
                // timed out here while the app went on); look again a few times.
                let Some(pause) = IDLE_CHECKS.get(idle) else {
                    return Err(Error::new(
                        "app_submitted_nothing",
                        "the app answered its last delivery without submitting a next step or finishing the run \
                         (a route that returns early, or an app that is not an Upstash workflow endpoint)",
                    ));
                };
                idle += 1;
                self.ctx.sleep("idle", *pause).await?;
                let store = self.store.clone();
                let (run_id, after) = (self.ctx.run_id().clone(), self.read);
                let inbox: Vec<String> = self
                    .ctx
                    .step("read-inbox")
                    .run(move || async move { read_inbox(store.as_ref(), &run_id, after).await })
                    .await?;
                self.absorb(inbox)?;
            }
        }
        let body = self.finished.take().unwrap_or_default();
        Ok(if body.is_empty() { Value::Null } else { serde_json::from_str(&body).unwrap_or(Value::String(body)) })
    }

    /// A plain message: its body as it was published, with its headers.
    async fn deliver_plain(&mut self) -> Result<Value> {
        let mut headers = self.user_headers();
        if let Some(ct) = self.run.headers.get("content-type") {
            headers.push(("content-type".into(), ct.clone()));
        }
        let message_id = self.run.message_id.clone();
        self.common_headers(&mut headers, &message_id);
        let method = self.run.headers.get("upstash-method").cloned().unwrap_or_else(|| "POST".into());
        let url = self.run.url.clone();
        let body = self.run.body.clone().into_bytes();
        let request = Outgoing { method, url: url.clone(), headers, body, sign: true, timeout: None };
        loop {
            let delivered = self.send_with_retries("deliver", request.clone(), false, None).await?;
            match delivered.failed {
                None => return Ok(Value::Null),
                Some(answer) => self.fail(&url, answer).await?,
            }
        }
    }

    /// Take in what the app submitted.
    fn absorb(&mut self, inbox: Vec<String>) -> Result<()> {
        for text in inbox {
            self.read += 1;
            let submission: Submission = serde_json::from_str(&text)
                .map_err(|e| Error::new("corrupt_inbox", format!("inbox message {}: {e}", self.read)))?;
            match submission {
                Submission::Publish { id, message, at_ms } => {
                    if message.headers.get("upstash-workflow-calltype").map(String::as_str) == Some("toCallback") {
                        // A step delivered again submits its call again: it is made once.
                        let step = message.headers.get("upstash-callback-forward-upstash-workflow-stepid").cloned();
                        if self.calls.insert(step.unwrap_or(id.clone())) {
                            self.ready.push_back(Pending::Call { id, message, at_ms });
                        }
                        continue;
                    }
                    let view: StepView =
                        message.body.as_deref().and_then(|b| serde_json::from_str(b).ok()).unwrap_or_default();
                    if !self.seen.insert((view.step_id, view.target_step.unwrap_or(0))) {
                        continue;
                    }
                    let due = due_at(&message.headers, at_ms);
                    let pending = Pending::Step { id, message };
                    match due {
                        Some(due) => self.timed.push((due, pending)),
                        None => self.ready.push_back(pending),
                    }
                }
                Submission::Wait { event_id, request, at_ms } => {
                    let timeout = match &request.timeout {
                        Some(Value::String(text)) => parse_duration(text),
                        Some(Value::Number(n)) => n.as_f64().map(|s| Duration::from_secs_f64(s.max(0.0))),
                        _ => None,
                    }
                    .unwrap_or(DEFAULT_WAIT);
                    let deadline_ms = at_ms.saturating_add(timeout.as_millis() as u64);
                    let step = request.step.get("stepId").cloned();
                    if !self.waits.iter().any(|w| w.request.step.get("stepId") == step.as_ref()) {
                        self.waits.push(PendingWait { event_id, request, deadline_ms });
                    }
                }
                Submission::Invoked { child_run_id, request } => {
                    let child = RunId::new(child_run_id).map_err(|e| Error::new("corrupt_inbox", e.to_string()))?;
                    // An invoke published again (its answer was lost) names the same child.
                    if !self.children.iter().any(|(c, _)| *c == child) {
                        self.children.push((child, request));
                    }
                }
                Submission::Finish { body } => self.finished = Some(body),
            }
        }
        Ok(())
    }

    /// The headers of a delivery of a step to the app: the run's forwarded
    /// headers and the message's own.
    fn step_headers(&self, message_headers: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut headers: BTreeMap<String, String> = self.config.forwarded.clone();
        headers.extend(prefixed(message_headers, "upstash-forward-"));
        headers.insert("content-type".into(), "application/json".into());
        headers.into_iter().collect()
    }

    /// Headers every request to the app carries.
    fn common_headers(&self, headers: &mut Vec<(String, String)>, message_id: &str) {
        headers.push(("upstash-workflow-runid".into(), self.run_id()));
        headers.push(("upstash-message-id".into(), message_id.to_owned()));
        headers.push(("upstash-workflow-createdat".into(), self.run.created_ms.to_string()));
        // The SDK forwards its label itself (`upstash-forward-upstash-label`) on a trigger.
        if let Some(label) = &self.config.label
            && !headers.iter().any(|(n, _)| n == "upstash-label")
        {
            headers.push(("upstash-label".into(), label.clone()));
        }
    }

    async fn append_and_deliver(&mut self, id: String, message: BatchMessage) -> Result<()> {
        let call_type = message.headers.get("upstash-workflow-calltype").cloned().unwrap_or_else(|| "step".into());
        let body = message.body.clone().unwrap_or_default();
        self.log.push(RawStep { message_id: id, body: B64.encode(body), call_type });
        let headers = self.step_headers(&message.headers);
        self.deliver(&message.destination, self.log.len() - 1, headers).await
    }

    /// Deliver the log up to entry `upto` to `url`, with retries; a delivery
    /// that fails for good ends the run (after the failure callback).
    async fn deliver(&mut self, url: &str, upto: usize, mut headers: Vec<(String, String)>) -> Result<()> {
        let message_id = self.log[upto].message_id.clone();
        self.common_headers(&mut headers, &message_id);
        let body = serde_json::to_vec(&self.log[..=upto]).map_err(|e| Error::new("encode_failed", e.to_string()))?;
        let request = Outgoing { method: "POST".into(), url: url.to_owned(), headers, body, sign: true, timeout: None };
        let entry = Some(self.log[upto].clone());
        loop {
            let delivered = self.send_with_retries("deliver", request.clone(), true, entry.clone()).await?;
            match delivered.failed {
                None => return self.absorb(delivered.inbox),
                // Resumed by an operator (the DLQ's resume, or `keel retry`): deliver again.
                Some(answer) => self.fail(url, answer).await?,
            }
        }
    }

    /// One request as a step: retried per the run's settings; the answer that
    /// ended it when it failed for good; with `read`, the inbox read after it;
    /// `entry`, the log entry it delivers, journaled with it (`client.logs`
    /// and `GET /v2/workflows/runs/{id}` read the log back from there).
    async fn send_with_retries(
        &self,
        name: &str,
        request: Outgoing,
        read: bool,
        entry: Option<RawStep>,
    ) -> Result<DeliveryOutcome> {
        let (retries, config) = (self.config.retries, self.config.clone());
        let (deliverer, store) = (self.deliverer.clone(), self.store.clone());
        let (run_id, after) = (self.ctx.run_id().clone(), self.read);
        let mut step = self
            .ctx
            .step(name)
            .retry(RetryPolicy::attempts(retries + 1))
            .timeout(deliverer.timeout + Duration::from_secs(10));
        if let Some(fc) = &self.config.flow_control {
            step = step.flow_control(fc.key.clone(), fc.limits.clone());
        }
        let outcome = step
            .run_with(move |info: StepInfo| async move {
                let retried = info.attempt.saturating_sub(1);
                let failed = attempt(&deliverer, request, retried, retries, |n| config.delay(n)).await?;
                let inbox = if read && failed.is_none() {
                    read_inbox(store.as_ref(), &run_id, after).await?
                } else {
                    Vec::new()
                };
                Ok(DeliveryOutcome { failed, inbox, entry })
            })
            .await;
        match outcome {
            Ok(delivered) => Ok(delivered),
            // Every attempt was cut off (the workers running it died): the
            // request failed for good without an answer.
            Err(e) if e.kind() == "attempts_exhausted" => {
                Ok(DeliveryOutcome { failed: Some(no_answer(e.message(), retries)), ..Default::default() })
            }
            Err(e) => Err(e),
        }
    }

    /// `context.call`: the request to the third party (its own retries and
    /// timeout), then its answer delivered to the callback URL.
    async fn call(&mut self, id: String, message: BatchMessage, at_ms: u64) -> Result<()> {
        let h = &message.headers;
        let method = h.get("upstash-method").cloned().unwrap_or_else(|| "POST".into());
        let retries = h.get("upstash-retries").and_then(|r| r.parse::<u32>().ok()).unwrap_or(0).min(MAX_RETRIES);
        let delay_expr = h.get("upstash-retry-delay").and_then(|d| keel_proto::qstash::RetryDelay::parse(d).ok());
        let timeout = h.get("upstash-timeout").and_then(|t| parse_duration(t));
        let body = message.body.clone().unwrap_or_default();
        let mut headers: Vec<(String, String)> = prefixed(h, "upstash-forward-").into_iter().collect();
        if let Some(ct) = h.get("content-type")
            && !headers.iter().any(|(n, _)| n == "content-type")
        {
            headers.push(("content-type".into(), ct.clone()));
        }
        let request = Outgoing {
            method: method.clone(),
            url: message.destination.clone(),
            headers,
            body: body.clone().into_bytes(),
            sign: false,
            timeout,
        };
        let deliverer = self.deliverer.clone();
        let mut step = self
            .ctx
            .step("call")
            .retry(RetryPolicy::attempts(retries + 1))
            .timeout(timeout.unwrap_or(deliverer.timeout) + Duration::from_secs(10));
        if let Some(key) = h.get("upstash-flow-control-key") {
            let value = h.get("upstash-flow-control-value").map_or("", String::as_str);
            if let Some(limits) = keel_proto::qstash::parse_flow_control_value(value) {
                step = step.flow_control(key.clone(), limits);
            }
        }
        let answer: FailedAnswer = step
            .run_with(move |info: StepInfo| async move {
                let retried = info.attempt.saturating_sub(1);
                let delay = |n: u32| keel_proto::qstash::retry_delay(delay_expr.as_ref(), n);
                // A call's answer goes back to the app whatever its status: the
                // last attempt's, or a success.
                match deliverer.send(&request).await {
                    Ok(response) if response.is_success() || retried >= retries => Ok(answer_of(&response, retried)),
                    Ok(response) => Err(StepError::retry_after(
                        format!("{} answered {}", keel_worker::net::redact_url(&request.url), response.status),
                        retry_after(&response).unwrap_or_else(|| delay(retried)),
                    )),
                    Err(no) if no.terminal || retried >= retries => Ok(no_answer(&no.message, retried)),
                    Err(no) => Err(StepError::retry_after(no.message, delay(retried))),
                }
            })
            .await
            .or_else(|e| if e.kind() == "attempts_exhausted" { Ok(no_answer(e.message(), retries)) } else { Err(e) })?;
        let Some(callback) = h.get("upstash-callback").cloned() else { return Ok(()) };
        let payload = CallbackBody {
            status: answer.status,
            header: answer.header.clone(),
            body: answer.body.clone(),
            retried: answer.retried,
            max_retries: retries,
            source_message_id: id,
            url: message.destination.clone(),
            method,
            source_header: BTreeMap::new(),
            source_body: B64.encode(body),
            created_at: at_ms,
            workflow_run_id: None,
            workflow_created_at: None,
        };
        let mut headers: Vec<(String, String)> = self.user_headers();
        headers.extend(prefixed(h, "upstash-callback-forward-"));
        headers.push(("content-type".into(), "application/json".into()));
        let message_id = self.next_id("callback");
        self.common_headers(&mut headers, &message_id);
        let body = serde_json::to_vec(&payload).map_err(|e| Error::new("encode_failed", e.to_string()))?;
        let request =
            Outgoing { method: "POST".into(), url: callback.clone(), headers, body, sign: true, timeout: None };
        loop {
            let delivered = self.send_with_retries("deliver-callback", request.clone(), true, None).await?;
            match delivered.failed {
                None => return self.absorb(delivered.inbox),
                Some(answer) => self.fail(&callback, answer).await?,
            }
        }
    }

    /// The run's forwarded headers without the SDK's protocol version (a
    /// callback or failure call carrying it would be read as a step delivery).
    fn user_headers(&self) -> Vec<(String, String)> {
        self.config
            .forwarded
            .iter()
            .filter(|(n, _)| n.as_str() != "upstash-workflow-sdk-version")
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    fn next_id(&mut self, what: &str) -> String {
        self.made += 1;
        format!("msg_{}_{what}{}", self.ctx.run_id(), self.made)
    }

    /// Nothing is ready: wait for an event, a child's end, a sleep's or a
    /// wait's deadline, whichever comes first.
    async fn wait_for_something(&mut self) -> Result<()> {
        if !self.children.is_empty() && self.children_ended().await? {
            return Ok(());
        }
        let deadline = self.timed.iter().map(|(due, _)| *due).chain(self.waits.iter().map(|w| w.deadline_ms)).min();
        let mut keys: Vec<String> = Vec::new();
        let run_id = self.run_id();
        for wait in &self.waits {
            keys.push(event_key(&wait.event_id));
            keys.push(run_event_key(&run_id, &wait.event_id));
        }
        keys.extend(self.children.iter().map(|(child, _)| keel_worker::engine::child_event_key(child)));
        let got = if keys.is_empty() {
            let at = UNIX_EPOCH + Duration::from_millis(deadline.unwrap_or(0));
            self.ctx.sleep_until("sleep", at).await?;
            None
        } else {
            let timeout = deadline.map(|d| Duration::from_millis(d.saturating_sub(now_ms())));
            self.ctx.wait_for_any_with::<Value>("wait", keys, timeout, Lookback::SinceRunStart).await?
        };
        match got {
            Some((key, data)) => self.received(&key, data),
            None => {
                // The deadline came: what was due by then (in arrival order).
                let until = deadline.unwrap_or(0);
                let (due, later): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.timed).into_iter().partition(|(d, _)| *d <= until);
                self.timed = later;
                self.ready.extend(due.into_iter().map(|(_, p)| p));
                let (expired, waiting): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.waits).into_iter().partition(|w| w.deadline_ms <= until);
                self.waits = waiting;
                for wait in expired {
                    self.wait_result(wait, None)?;
                }
                Ok(())
            }
        }
    }

    /// An event or a child's outcome arrived on `key`.
    fn received(&mut self, key: &str, data: Value) -> Result<()> {
        let run_id = self.run_id();
        if let Some(i) =
            self.waits.iter().position(|w| event_key(&w.event_id) == key || run_event_key(&run_id, &w.event_id) == key)
        {
            let wait = self.waits.remove(i);
            let raw = match data {
                Value::String(text) => text,
                other => other.to_string(),
            };
            return self.wait_result(wait, Some(raw));
        }
        if let Some(i) = self.children.iter().position(|(child, _)| keel_worker::engine::child_event_key(child) == key)
        {
            let (_, request) = self.children.remove(i);
            let outcome: ChildOutcome = match data {
                Value::String(text) => serde_json::from_str(&text),
                other => serde_json::from_value(other),
            }
            .map_err(|e| Error::new("corrupt_event", format!("a child's outcome: {e}")))?;
            return self.invoke_result(request, outcome);
        }
        Ok(())
    }

    /// Children that ended while this run was busy (their outcome event may
    /// have left the lookback): asked of the store, as one step.
    async fn children_ended(&mut self) -> Result<bool> {
        let store = self.store.clone();
        let children: Vec<RunId> = self.children.iter().map(|(c, _)| c.clone()).collect();
        let ended: Vec<(String, ChildOutcome)> = self
            .ctx
            .step("children")
            .run(move || async move {
                let mut ended = Vec::new();
                for child in children {
                    let run = store.get_run(&child).await.map_err(|e| StepError::retryable(e.to_string()))?;
                    let Some(run) = run.filter(|r| r.status.is_final()) else { continue };
                    let outcome = match run.status {
                        keel_proto::RunStatus::Completed => {
                            ChildOutcome::Completed { output: run.output.unwrap_or(Value::Null) }
                        }
                        keel_proto::RunStatus::Failed => ChildOutcome::Failed {
                            error: run
                                .error
                                .unwrap_or_else(|| keel_proto::ErrorInfo::new("child_failed", "the child run failed")),
                        },
                        _ => ChildOutcome::Cancelled,
                    };
                    ended.push((child.to_string(), outcome));
                }
                Ok::<_, StepError>(ended)
            })
            .await?;
        let any = !ended.is_empty();
        for (child, outcome) in ended {
            if let Some(i) = self.children.iter().position(|(c, _)| c.as_str() == child) {
                let (_, request) = self.children.remove(i);
                self.invoke_result(request, outcome)?;
            }
        }
        Ok(any)
    }

    /// The server-made result of a `waitForEvent` step: the event's data, or a timeout.
    fn wait_result(&mut self, wait: PendingWait, data: Option<String>) -> Result<()> {
        let mut step = match wait.request.step {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let url = match &data {
            Some(raw) => {
                step.insert("out".into(), Value::String(B64.encode(raw)));
                step.insert("waitTimeout".into(), Value::Bool(false));
                wait.request.url.clone()
            }
            None => {
                step.insert("waitTimeout".into(), Value::Bool(true));
                wait.request.timeout_url.clone().unwrap_or_else(|| wait.request.url.clone())
            }
        };
        self.made_step(url, &wait.request.timeout_headers, Value::Object(step), "wait")
    }

    /// The server-made result of a `context.invoke` step: the child's outcome.
    fn invoke_result(&mut self, request: InvokeRequest, outcome: ChildOutcome) -> Result<()> {
        let (body, failed, canceled) = match outcome {
            ChildOutcome::Completed { output } => (output_text(&output), false, false),
            ChildOutcome::Failed { error } => (error.message, true, false),
            ChildOutcome::Cancelled => (String::new(), false, true),
        };
        let mut step = match request.step {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let out = json!({"body": body, "isFailed": failed, "isCanceled": canceled}).to_string();
        step.insert("out".into(), Value::String(out));
        self.made_step(request.workflow_url.clone(), &request.headers, Value::Object(step), "invoke")
    }

    fn made_step(
        &mut self,
        url: String,
        headers: &BTreeMap<String, Vec<String>>,
        step: Value,
        what: &str,
    ) -> Result<()> {
        let headers: BTreeMap<String, String> = headers
            .iter()
            .filter_map(|(name, values)| values.first().map(|v| (name.to_ascii_lowercase(), v.clone())))
            .collect();
        let view: StepView = serde_json::from_value(step.clone()).unwrap_or_default();
        if !self.seen.insert((view.step_id, view.target_step.unwrap_or(0))) {
            return Ok(());
        }
        let id = self.next_id(what);
        let message = BatchMessage { destination: url, headers, body: Some(step.to_string()), queue: None };
        self.ready.push_back(Pending::Step { id, message });
        Ok(())
    }

    /// A request failed for good: the failure callback (if the run has a
    /// failure URL), then the run fails in the step `give-up`. An operator's
    /// retry of the failed run (the DLQ's resume) gives that step a second
    /// attempt, which succeeds: `Ok`, and the caller tries its request again.
    async fn fail(&mut self, url: &str, answer: FailedAnswer) -> Result<()> {
        let reason = describe(&answer, url);
        if let Some(failure_url) = self.config.failure_url.clone() {
            let payload = CallbackBody {
                status: answer.status,
                header: answer.header.clone(),
                body: answer.body.clone(),
                retried: answer.retried,
                max_retries: self.config.retries,
                source_message_id: self.log.last().map(|s| s.message_id.clone()).unwrap_or_default(),
                url: url.to_owned(),
                method: "POST".into(),
                source_header: BTreeMap::new(),
                source_body: B64.encode(&self.run.body),
                created_at: self.run.created_ms,
                workflow_run_id: Some(self.run_id()),
                workflow_created_at: Some(self.run.created_ms),
            };
            let mut headers = self.user_headers();
            headers.extend(self.config.failure_headers.clone());
            headers.push(("content-type".into(), "application/json".into()));
            let message_id = self.next_id("failure");
            self.common_headers(&mut headers, &message_id);
            let body = serde_json::to_vec(&payload).map_err(|e| Error::new("encode_failed", e.to_string()))?;
            let request =
                Outgoing { method: "POST".into(), url: failure_url, headers, body, sign: true, timeout: None };
            let mut failure_config = self.config.clone();
            failure_config.retries = self.config.failure_retries;
            let runner_config = std::mem::replace(&mut self.config, failure_config);
            let outcome = self.send_with_retries("failure-callback", request, false, None).await;
            self.config = runner_config;
            if let Some(answer) = outcome?.failed {
                tracing::warn!(run_id = %self.ctx.run_id(), "the failure callback failed too: {}", describe(&answer, url));
            }
        }
        self.ctx
            .step("give-up")
            .retry(RetryPolicy::none())
            .run_with(move |info: StepInfo| async move {
                if info.attempt == 1 { Err(StepError::terminal_kind("delivery_failed", reason)) } else { Ok(()) }
            })
            .await
    }
}

/// A run's output as the text its invoker gets back.
fn output_text(output: &Value) -> String {
    match output {
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// When a submitted step becomes due: `upstash-delay` after it came, or `upstash-not-before`.
fn due_at(headers: &BTreeMap<String, String>, at_ms: u64) -> Option<u64> {
    if let Some(delay) = headers.get("upstash-delay").and_then(|d| parse_duration(d)) {
        return (!delay.is_zero()).then(|| at_ms.saturating_add(delay.as_millis() as u64));
    }
    headers.get("upstash-not-before").and_then(|t| t.trim().parse::<u64>().ok()).map(|s| s.saturating_mul(1000))
}

fn retry_after(response: &Incoming) -> Option<Duration> {
    (response.status == 429)
        .then(|| response.header("retry-after")?.trim().parse::<u64>().ok().map(Duration::from_secs))?
}

/// One attempt of a request to the app: `None` when it answered 2xx, the
/// answer when it failed for good (489, or no retries left), else an error
/// that retries after the run's delay (or the app's `Retry-After`).
async fn attempt(
    deliverer: &Deliverer,
    mut request: Outgoing,
    retried: u32,
    retries: u32,
    delay: impl Fn(u32) -> Duration,
) -> std::result::Result<Option<FailedAnswer>, StepError> {
    request.headers.push(("upstash-retried".into(), retried.to_string()));
    match deliverer.send(&request).await {
        Ok(response) if response.is_success() => Ok(None),
        Ok(response) => {
            let non_retryable = response.status == 489
                || response.header("upstash-nonretryable-error").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            if non_retryable || retried >= retries {
                return Ok(Some(answer_of(&response, retried)));
            }
            let answer = answer_of(&response, retried);
            Err(StepError::retry_after(
                describe(&answer, &request.url),
                retry_after(&response).unwrap_or_else(|| delay(retried)),
            ))
        }
        Err(no) if no.terminal || retried >= retries => Ok(Some(no_answer(&no.message, retried))),
        Err(no) => Err(StepError::retry_after(no.message, delay(retried))),
    }
}

async fn read_inbox(store: &dyn Store, run_id: &RunId, after: u64) -> std::result::Result<Vec<String>, StepError> {
    let mut messages = Vec::new();
    loop {
        let page = store
            .inbox_read(run_id, after + messages.len() as u64, READ_BATCH)
            .await
            .map_err(|e| StepError::retryable(format!("reading the run's inbox: {e}")))?;
        let got = page.messages.len();
        messages.extend(page.messages);
        if got < READ_BATCH || after + messages.len() as u64 >= page.total {
            return Ok(messages);
        }
    }
}
