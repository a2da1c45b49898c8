//! Workflows and their workers, webhooks and their delivery log, schedules,
//! flow-control keys and dead letters: what runs the runs.

use axum::extract::State;
use axum::response::Response;
use keel_proto::FlowLimits;
use maud::{Markup, html};

use super::page::{encode, fragment, time};
use crate::AppState;
use crate::error::ApiResult;
use crate::routes::workflows::live_workflows;

/// Delivery attempts shown per webhook subscription.
const DELIVERIES_SHOWN: usize = 10;
const DEAD_LETTERS_SHOWN: usize = 100;

/// `GET /ui/f/system`.
pub(super) async fn page(State(state): State<AppState>) -> ApiResult<Response> {
    let store = state.store();
    let now = store.wall_ms();
    let workflows = live_workflows(&state).await?;
    let mut workers = store.list_workers().await?;
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    let hooks: Vec<_> = store.list_webhooks().await?.into_iter().map(crate::routes::webhooks::shown).collect();
    let mut logs = Vec::with_capacity(hooks.len());
    for hook in &hooks {
        logs.push(store.deliveries(&hook.id, DELIVERIES_SHOWN).await?);
    }
    let schedules = store.list_schedules().await?;
    let flow_keys = store.flow_keys(false).await?;
    let dead = store.dead_letters(DEAD_LETTERS_SHOWN).await?;
    Ok(fragment(html! {
        h1 { "System" }
        section id="system-live" data-live="5000" {
            h2 id="workflows" { "Workflows" }
            @if workflows.is_empty() { p class="empty" { "No live worker has registered a workflow." } }
            @else {
                table {
                    thead { tr { th { "Workflow" } th { "Versions" } th { "Live workers" } th { "Input schema" } } }
                    tbody { @for w in &workflows {
                        tr {
                            td { a href={ "#/runs?workflow=" (encode(&w.name)) } { (w.name) } }
                            td { @for v in &w.versions { "v" (v) " " } }
                            td { (w.workers) }
                            td { @match &w.input_schema {
                                Some(schema) => details { summary { "schema" } pre class="value" { (serde_json::to_string_pretty(schema).unwrap_or_default()) } },
                                None => span class="muted" { "none" },
                            } }
                        }
                    } }
                }
            }
            h2 id="workers" { "Workers" }
            @if workers.is_empty() { p class="empty" { "No live workers." } }
            @else {
                table {
                    thead { tr { th { "Worker" } th { "Runs" } th { "Started" } th { "Last heartbeat" } } }
                    tbody { @for w in &workers {
                        tr {
                            td { code { (w.worker_id) } }
                            td { @for (name, versions) in &w.workflows { (name) " " span class="muted" { @for v in versions { "v" (v) " " } } br; } }
                            td { (time(w.started_at_ms)) }
                            td { (time(w.heartbeat_at_ms)) " " span class="muted" { "(" (now.saturating_sub(w.heartbeat_at_ms) / 1000) " s ago)" } }
                        }
                    } }
                }
            }
            h2 id="webhooks" { "Webhooks" }
            @if hooks.is_empty() { p class="empty" { "No webhook subscriptions." } }
            @for (hook, log) in hooks.iter().zip(&logs) {
                article class="hook" {
                    h3 { code { (hook.url) } }
                    p class="muted" {
                        "id " code { (hook.id) } " · "
                        @if hook.event_types.is_empty() { "every event" } @else { @for t in &hook.event_types { (t.as_str()) " " } }
                        @if let Some(w) = &hook.workflow { " · workflow " (w) }
                        " · since " (time(hook.created_at_ms))
                    }
                    @if let Some(why) = &hook.disabled { p class="warn" { "Disabled: " (why) } }
                    @if log.is_empty() { p class="empty" { "No deliveries yet." } }
                    @else {
                        table class="deliveries" {
                            thead { tr { th { "At" } th { "Event" } th { "Run" } th { "Attempt" } th { "Status" } th { "Outcome" } th { "Next try" } } }
                            tbody { @for d in log {
                                tr {
                                    td { (time(d.at_ms)) }
                                    td { (d.event_type.as_str()) }
                                    td { a href={ "#/runs/" (encode(d.run_id.as_str())) } { code { (d.run_id) } } }
                                    td { (d.attempt) }
                                    td { @if let Some(s) = d.status { (s) } }
                                    td { span class={ "badge o-" (d.outcome) } { (d.outcome) } @if let Some(e) = &d.error { " " span class="muted" { (e) } } }
                                    td { @if let Some(at) = d.next_attempt_at_ms { (time(at)) } }
                                }
                            } }
                        }
                    }
                }
            }
            h2 id="schedules" { "Schedules" }
            @if schedules.is_empty() { p class="empty" { "No schedules." } }
            @else {
                table {
                    thead { tr { th { "Schedule" } th { "Workflow" } th { "Cron" } th { "Next" } th { "Last tick" } th { "Last run" } } }
                    tbody { @for s in &schedules {
                        tr {
                            td { a href={ "#/runs?schedule=" (encode(&s.spec.id)) } { (s.spec.id) } @if s.paused { " " span class="badge s-paused" { "paused" } } }
                            td { (s.spec.workflow) }
                            td { code { (s.spec.cron) } " " span class="muted" { (s.spec.timezone) } }
                            td { @if let Some(at) = s.next_ms { (time(at)) } }
                            td { @if let Some(at) = s.state.last_tick_ms { (time(at)) } @if let Some(skip) = &s.state.last_skip { " " span class="muted" { "skipped: " (skip) } } }
                            td { @if let Some(id) = &s.state.last_run_id { a href={ "#/runs/" (encode(id.as_str())) } { code { (id) } } } }
                        }
                    } }
                }
            }
            h2 id="flow-control" { "Flow-control keys" }
            @if flow_keys.is_empty() { p class="empty" { "No flow-control keys." } }
            @else {
                table {
                    thead { tr { th { "Key" } th { "Limits" } th { "In flight" } th { "Waiting" } th { "Starts in window" } th { "Last used" } } }
                    tbody { @for k in &flow_keys {
                        tr {
                            td { code { (k.key) } @if k.paused { " " span class="badge s-paused" { "paused" } } }
                            td { (limits(k.limits.as_ref())) }
                            td { (k.in_flight) } td { (k.waiting) } td { (k.starts_in_window) }
                            td { @if let Some(at) = k.last_used_ms { (time(at)) } }
                        }
                    } }
                }
            }
            h2 id="dead-letters" { "Dead letters" }
            @if dead.is_empty() { p class="empty" { "No dead letters." } }
            @else {
                table {
                    thead { tr { th { "At" } th { "Run" } th { "Workflow" } th { "Deliveries" } th { "Reason" } } }
                    tbody { @for d in &dead {
                        tr {
                            td { (time(d.at_ms)) }
                            td { a href={ "#/runs/" (encode(d.run_id.as_str())) } { code { (d.run_id) } } }
                            td { (d.workflow) } td { (d.deliveries) } td { (d.reason) }
                        }
                    } }
                }
                @if dead.len() == DEAD_LETTERS_SHOWN { p class="muted" { "The newest " (DEAD_LETTERS_SHOWN) " are shown." } }
            }
        }
    }))
}

fn limits(limits: Option<&FlowLimits>) -> Markup {
    html! {
        @match limits {
            None => span class="muted" { "none" },
            Some(l) => {
                @if let Some(p) = l.parallelism { (p) " at once " }
                @if let Some(r) = l.rate { (r) " per " (l.period.as_deref().unwrap_or("1s")) }
            }
        }
    }
}
