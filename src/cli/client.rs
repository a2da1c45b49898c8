//! The client commands: they talk to a running Keel over HTTP (`--url`,
//! `--token`, or KEEL_URL / KEEL_TOKEN).

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use keel_proto::http::{RunDetail, RunResult, StartRunRequest};
use keel_proto::{JournalEvent, JournalRecord, RunPage, RunStatus};
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct Server {
    /// The Keel API.
    #[arg(long, global = true, env = "KEEL_URL", default_value = "http://127.0.0.1:7400")]
    url: String,
    /// A bearer token, when the server requires one.
    #[arg(long, global = true, env = "KEEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Server {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let client = reqwest::Client::new();
        let mut request = client.request(method, format!("{}{path}", self.url.trim_end_matches('/')));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }
}

/// Turn a response into its JSON body, or an error that says what the server said.
async fn json<T: serde::de::DeserializeOwned>(response: reqwest::Result<reqwest::Response>) -> anyhow::Result<T> {
    let response =
        response.context("could not reach the Keel API (is `keel dev` or `keel server` running? see --url)")?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("the server answered {status}: {}", detail_of(text));
    }
    serde_json::from_str(&text).with_context(|| format!("unexpected answer: {text}"))
}

/// Send a DELETE; an error that says what the server said unless it succeeded.
async fn delete(server: &Server, path: &str) -> anyhow::Result<()> {
    let response = server
        .request(reqwest::Method::DELETE, path)
        .send()
        .await
        .context("could not reach the Keel API (is `keel dev` or `keel server` running? see --url)")?;
    let status = response.status();
    if !status.is_success() {
        bail!("the server answered {status}: {}", detail_of(response.text().await.unwrap_or_default()));
    }
    Ok(())
}

/// What a problem's `detail` says, or the whole answer.
fn detail_of(text: String) -> String {
    serde_json::from_str::<Value>(&text).ok().and_then(|v| v["detail"].as_str().map(str::to_owned)).unwrap_or(text)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow.
    workflow: String,
    /// The input: JSON, or @file with JSON.
    #[arg(long, default_value = "null")]
    input: String,
    /// Wait for the result, with a progress bar; exit 1 when the run fails.
    #[arg(long)]
    wait: bool,
    /// Make the start repeat-safe.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Choose the run's id.
    #[arg(long)]
    run_id: Option<String>,
    /// Start later (e.g. 30s).
    #[arg(long)]
    delay: Option<String>,
    /// 1 to 5 (default 3): among queued runs of the workflow, higher is claimed first.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    priority: Option<u8>,
    /// A label (repeatable): the run can be listed by it (`keel runs --label`, the dashboard).
    #[arg(long = "label", value_name = "NAME=VALUE")]
    labels: Vec<String>,
    #[command(flatten)]
    server: Server,
}

/// An `--input`: JSON, or `@file` with JSON.
fn read_json_arg(arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).context("--input is not JSON")
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let input = read_json_arg(&args.input)?;
    let labels = args
        .labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
            _ => Err(anyhow::anyhow!("--label takes NAME=VALUE, not {l:?}")),
        })
        .collect::<anyhow::Result<_>>()?;
    let body = StartRunRequest {
        input,
        run_id: args.run_id,
        delay: args.delay,
        callback_url: None,
        labels,
        priority: args.priority,
        flow_control: None,
    };
    let mut request =
        args.server.request(reqwest::Method::POST, &format!("/v1/workflows/{}/runs", args.workflow)).json(&body);
    if let Some(key) = &args.idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let started: RunResult = json(request.send().await).await?;
    if !args.wait {
        println!("{}", serde_json::to_string_pretty(&started)?);
        return Ok(0);
    }
    eprintln!("run {} started", started.run_id);
    let result = follow(&args.server, &started.run_id.to_string()).await?;
    match result.status {
        RunStatus::Completed => {
            println!("{}", serde_json::to_string_pretty(&result.output.unwrap_or(Value::Null))?);
            Ok(0)
        }
        status => {
            let error = result.error.map(|e| format!("{}: {}", e.kind, e.message)).unwrap_or_default();
            eprintln!("run {} {status}: {error}", result.run_id);
            Ok(1)
        }
    }
}

/// Follow a run's SSE stream with a progress bar until it ends, then fetch its result.
async fn follow(server: &Server, run_id: &str) -> anyhow::Result<RunResult> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut last_id: Option<String> = None;
    'reconnect: for _ in 0..100 {
        let mut request = server.request(reqwest::Method::GET, &format!("/v1/runs/{run_id}/events"));
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.context("following the run")?;
        if !response.status().is_success() {
            bail!("the server answered {} to the event stream", response.status());
        }
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { continue 'reconnect };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let message: String = buffer.drain(..end + 2).collect();
                let mut data = String::new();
                for line in message.lines() {
                    if let Some(id) = line.strip_prefix("id:") {
                        last_id = Some(id.trim().to_owned());
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                let Ok(record) = serde_json::from_str::<JournalRecord>(&data) else { continue };
                match &record.entry.event {
                    JournalEvent::ProgressDeclared { total_steps } => bar.set_length(u64::from(*total_steps)),
                    JournalEvent::StepStarted { step_id, .. } => bar.set_message(step_id.clone()),
                    JournalEvent::StepCompleted { .. }
                    | JournalEvent::TimerFired { .. }
                    | JournalEvent::EventReceived { .. } => {
                        bar.inc(1);
                        if bar.position() > bar.length().unwrap_or(0) {
                            bar.set_length(bar.position());
                        }
                    }
                    JournalEvent::TimerScheduled { step_id, .. } => bar.set_message(format!("{step_id}: sleeping")),
                    JournalEvent::WaitStarted { step_id, .. } => {
                        bar.set_message(format!("{step_id}: waiting for an event"))
                    }
                    _ => {}
                }
                if record.entry.event.is_final() {
                    bar.finish_and_clear();
                    break 'reconnect;
                }
            }
        }
    }
    json(server.request(reqwest::Method::GET, &format!("/v1/runs/{run_id}/result")).send().await).await
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[arg(long)]
    workflow: Option<String>,
    #[arg(long)]
    status: Option<String>,
    /// Only runs with this label.
    #[arg(long, value_name = "NAME=VALUE")]
    label: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    server: Server,
}

pub async fn runs(args: RunsArgs) -> anyhow::Result<()> {
    let mut query = vec![("limit", args.limit.to_string())];
    query.extend(args.workflow.map(|w| ("workflow", w)));
    query.extend(args.status.map(|s| ("status", s)));
    query.extend(args.label.map(|l| ("label", l)));
    let page: RunPage = json(args.server.request(reqwest::Method::GET, "/v1/runs").query(&query).send().await).await?;
    println!("{:<38} {:<16} {:<10} {:>9}", "RUN", "WORKFLOW", "STATUS", "STEPS");
    for run in page.runs {
        let total = run.total_steps.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
        println!(
            "{:<38} {:<16} {:<10} {:>9}",
            run.run_id,
            run.workflow,
            run.status,
            format!("{}/{total}", run.completed_steps)
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The run.
    run_id: String,
    #[command(flatten)]
    server: Server,
}

pub async fn status(args: IdArgs) -> anyhow::Result<()> {
    let detail: RunDetail =
        json(args.server.request(reqwest::Method::GET, &format!("/v1/runs/{}", args.run_id)).send().await).await?;
    println!("{}", serde_json::to_string_pretty(&detail)?);
    Ok(())
}

pub async fn action(args: IdArgs, verb: &str) -> anyhow::Result<()> {
    let answer: Value =
        json(args.server.request(reqwest::Method::POST, &format!("/v1/runs/{}/{verb}", args.run_id)).send().await)
            .await?;
    println!("{}", answer["outcome"].as_str().unwrap_or("done"));
    Ok(())
}

#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// The event key.
    key: String,
    /// The event's data (JSON).
    #[arg(long, default_value = "null")]
    data: String,
    #[command(flatten)]
    server: Server,
}

pub async fn notify(args: NotifyArgs) -> anyhow::Result<()> {
    let data: Value = serde_json::from_str(&args.data).context("--data is not JSON")?;
    let answer: Value =
        json(args.server.request(reqwest::Method::POST, &format!("/v1/events/{}", args.key)).json(&data).send().await)
            .await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    action: KeysAction,
    #[command(flatten)]
    server: Server,
}

#[derive(Debug, clap::Subcommand)]
enum KeysAction {
    /// List the deployment's active signing keys (public keys only).
    List,
    /// Add a new signing key: until the old one is retired, every webhook and
    /// signed call carries a signature by each.
    Rotate,
    /// Retire a signing key (default: the oldest), once the newest has been
    /// out long enough for every process to sign with it.
    Retire {
        /// The key's id (`k1`, …), as `keel keys list` shows it.
        #[arg(long)]
        id: Option<String>,
    },
}

pub async fn keys(args: KeysArgs) -> anyhow::Result<()> {
    let request = match &args.action {
        KeysAction::List => args.server.request(reqwest::Method::GET, "/v1/webhooks/signing-key"),
        KeysAction::Rotate => args.server.request(reqwest::Method::POST, "/v1/signing-keys/rotate"),
        KeysAction::Retire { id } => {
            let request = args.server.request(reqwest::Method::POST, "/v1/signing-keys/retire");
            match id {
                Some(id) => request.query(&[("id", id)]),
                None => request,
            }
        }
    };
    let answer: keel_proto::http::SigningKey = json(request.send().await).await?;
    for key in &answer.keys {
        println!("{}\t{}\tsince {}", key.id, key.standard_webhooks, utc_time(key.since_ms));
    }
    Ok(())
}

/// Ms since the epoch as an RFC 3339 time (UTC); 0 (a key of unknown age) as "the start".
fn utc_time(ms: u64) -> String {
    if ms == 0 {
        return "the start".into();
    }
    chrono::DateTime::from_timestamp_millis(ms as i64).map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}

#[derive(Debug, Args)]
pub struct SchedulesArgs {
    #[command(subcommand)]
    action: Option<SchedulesAction>,
    #[command(flatten)]
    server: Server,
}

#[derive(Debug, clap::Subcommand)]
enum SchedulesAction {
    /// List the schedules with their next ticks (the default).
    List,
    /// Show one schedule.
    Show { id: String },
    /// Create or replace a schedule.
    Set {
        id: String,
        /// The workflow each tick starts.
        #[arg(long)]
        workflow: String,
        /// Five fields, or six with seconds first (quote it).
        #[arg(long)]
        cron: String,
        /// An IANA time zone.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Each run's input: JSON, or @file with JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// skip, buffer_one or allow_all.
        #[arg(long, default_value = "skip")]
        overlap: String,
        /// skip or run_once.
        #[arg(long, default_value = "skip")]
        catch_up: String,
    },
    /// Stop a schedule's ticks.
    Pause { id: String },
    /// Let a paused schedule tick again.
    Resume { id: String },
    /// Start the schedule's workflow now.
    Trigger { id: String },
    /// Delete a schedule (its runs stay).
    Delete { id: String },
}

pub async fn schedules(args: SchedulesArgs) -> anyhow::Result<()> {
    let server = &args.server;
    let post = |path: String| server.request(reqwest::Method::POST, &path);
    match args.action.unwrap_or(SchedulesAction::List) {
        SchedulesAction::List => {
            let list: keel_proto::ScheduleList =
                json(server.request(reqwest::Method::GET, "/v1/schedules").send().await).await?;
            for s in &list.schedules {
                let next = s.next_fire_times.first().map_or_else(|| "-".to_owned(), |ms| utc_time(*ms));
                let state = if s.paused { "paused" } else { "active" };
                println!(
                    "{}\t{}\t{} ({})\t{state}\tnext {next}",
                    s.spec.id, s.spec.workflow, s.spec.cron, s.spec.timezone
                );
            }
        }
        SchedulesAction::Show { id } => {
            let one: Value =
                json(server.request(reqwest::Method::GET, &format!("/v1/schedules/{id}")).send().await).await?;
            println!("{}", serde_json::to_string_pretty(&one)?);
        }
        SchedulesAction::Set { id, workflow, cron, timezone, input, overlap, catch_up } => {
            let body = serde_json::json!({"id": id, "workflow": workflow, "cron": cron, "timezone": timezone,
                "input": read_json_arg(&input)?, "overlap": overlap, "catch_up": catch_up});
            let one: keel_proto::Schedule = json(post("/v1/schedules".into()).json(&body).send().await).await?;
            let next: Vec<String> = one.next_fire_times.iter().map(|ms| utc_time(*ms)).collect();
            println!("schedule {} set; next ticks: {}", one.spec.id, next.join(", "));
        }
        SchedulesAction::Pause { id } => {
            let _: Value = json(post(format!("/v1/schedules/{id}/pause")).send().await).await?;
            println!("schedule {id} paused");
        }
        SchedulesAction::Resume { id } => {
            let _: Value = json(post(format!("/v1/schedules/{id}/resume")).send().await).await?;
            println!("schedule {id} resumed");
        }
        SchedulesAction::Trigger { id } => {
            let started: Value = json(post(format!("/v1/schedules/{id}/trigger")).send().await).await?;
            println!("{}", started["run_id"].as_str().unwrap_or_default());
        }
        SchedulesAction::Delete { id } => {
            delete(server, &format!("/v1/schedules/{id}")).await?;
            println!("schedule {id} deleted");
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct FlowArgs {
    #[command(subcommand)]
    action: Option<FlowAction>,
    #[command(flatten)]
    server: Server,
}

#[derive(Debug, clap::Subcommand)]
enum FlowAction {
    /// Keys configured here or used today: limits, in flight, waiting (the default).
    List,
    /// One key as it stands.
    Show { key: String },
    /// Set the key's limits on the server (they win over what runs ask for).
    Set {
        key: String,
        /// At most this many steps under the key at once.
        #[arg(long)]
        parallelism: Option<u32>,
        /// At most this many step starts per --period.
        #[arg(long)]
        rate: Option<u32>,
        /// The rate's window (1s, 1m, 1h…; default 1s).
        #[arg(long)]
        period: Option<String>,
    },
    /// Clear the key's server limits (runs' own apply again).
    Clear { key: String },
    /// Start no step under the key until resumed.
    Pause { key: String },
    /// Let the key's waiting runs go on.
    Resume { key: String },
}

/// A flow-control key as one path segment (keys may hold `/`, `?`, `%`…).
fn key_segment(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn flow_line(k: &keel_proto::FlowKeyStatus) -> String {
    let limits = k.limits.as_ref().map(|l| ("server", l)).or(k.requested.as_ref().map(|l| ("asked", l)));
    let limits = match limits {
        Some((whose, l)) => {
            let mut parts = Vec::new();
            if let Some(p) = l.parallelism {
                parts.push(format!("parallelism {p}"));
            }
            if let Some(r) = l.rate {
                parts.push(format!("rate {r}/{}", l.period.as_deref().unwrap_or("1s")));
            }
            format!("{} ({whose})", parts.join(", "))
        }
        None => "no limits".into(),
    };
    let state = if k.paused { "paused" } else { "active" };
    format!(
        "{}\t{limits}\t{state}\tin flight {}\twaiting {}\tstarts this window {}",
        k.key, k.in_flight, k.waiting, k.starts_in_window
    )
}

pub async fn flow(args: FlowArgs) -> anyhow::Result<()> {
    let server = &args.server;
    let path = |key: &str, tail: &str| format!("/v1/flow-control/{}{tail}", key_segment(key));
    match args.action.unwrap_or(FlowAction::List) {
        FlowAction::List => {
            let list: keel_proto::FlowKeyList =
                json(server.request(reqwest::Method::GET, "/v1/flow-control").send().await).await?;
            for k in &list.keys {
                println!("{}", flow_line(k));
            }
        }
        FlowAction::Show { key } => {
            let one: keel_proto::FlowKeyStatus =
                json(server.request(reqwest::Method::GET, &path(&key, "")).send().await).await?;
            println!("{}", flow_line(&one));
        }
        FlowAction::Set { key, parallelism, rate, period } => {
            let body = keel_proto::FlowLimits { parallelism, rate, period };
            let one: keel_proto::FlowKeyStatus =
                json(server.request(reqwest::Method::PUT, &path(&key, "")).json(&body).send().await).await?;
            println!("{}", flow_line(&one));
        }
        FlowAction::Clear { key } => {
            delete(server, &path(&key, "")).await?;
            println!("flow-control key {key}: server limits cleared");
        }
        FlowAction::Pause { key } => {
            let one: keel_proto::FlowKeyStatus =
                json(server.request(reqwest::Method::POST, &path(&key, "/pause")).send().await).await?;
            println!("{}", flow_line(&one));
        }
        FlowAction::Resume { key } => {
            let one: keel_proto::FlowKeyStatus =
                json(server.request(reqwest::Method::POST, &path(&key, "/resume")).send().await).await?;
            println!("{}", flow_line(&one));
        }
    }
    Ok(())
}
