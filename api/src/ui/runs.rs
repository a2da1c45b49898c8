//! The runs list and a run's page.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_engine::RunQuery;
use keel_proto::{JournalEvent, RunId, RunStatus, RunSummary};
use maud::{Markup, html};
use serde::Deserialize;

use super::page::{self, fragment, problem, query, status_badge, step_badge, time};
use super::{Access, timeline};
use crate::AppState;
use crate::error::ApiResult;
use crate::routes::runs::{ListQuery, shown, steps_of};

/// Steps listed on a run's page at most (a run's journal holds up to 100,000 entries).
const MAX_STEP_ROWS: usize = 500;

/// The list's filters, as the shell passes them on from its address.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    workflow: Option<String>,
    status: Option<String>,
    /// `name=value`
    label: Option<String>,
    schedule: Option<String>,
    /// Created at or after / before (Unix ms; the script turns the form's local times into these).
    created_after: Option<u64>,
    created_before: Option<u64>,
    /// A run id to find.
    q: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

impl Filters {
    fn nonempty(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    /// The store's query, or what is wrong with the filters (the API's rules:
    /// an empty form field is no filter).
    fn to_query(&self) -> Result<RunQuery, String> {
        let text = |v: &Option<String>| Self::nonempty(v).map(str::to_owned);
        ListQuery {
            workflow: text(&self.workflow),
            status: text(&self.status),
            label: text(&self.label),
            schedule: text(&self.schedule),
            created_after: self.created_after,
            created_before: self.created_before,
            limit: self.limit,
            cursor: text(&self.cursor),
        }
        .into_store_query()
    }

    /// The address of this list with another cursor (`None`: the first page).
    fn with_cursor(&self, cursor: Option<&str>) -> String {
        format!(
            "#/runs{}",
            query(&[
                ("workflow", Self::nonempty(&self.workflow)),
                ("status", Self::nonempty(&self.status)),
                ("label", Self::nonempty(&self.label)),
                ("schedule", Self::nonempty(&self.schedule)),
                ("created_after", self.created_after.map(|t| t.to_string()).as_deref()),
                ("created_before", self.created_before.map(|t| t.to_string()).as_deref()),
                ("cursor", cursor),
            ])
        )
    }

    fn with_status(&self, status: Option<RunStatus>) -> String {
        let status = status.map(|s| s.to_string());
        format!(
            "#/runs{}",
            query(&[
                ("workflow", Self::nonempty(&self.workflow)),
                ("status", status.as_deref()),
                ("label", Self::nonempty(&self.label)),
                ("schedule", Self::nonempty(&self.schedule)),
                ("created_after", self.created_after.map(|t| t.to_string()).as_deref()),
                ("created_before", self.created_before.map(|t| t.to_string()).as_deref()),
            ])
        )
    }
}

/// `GET /ui/f/runs`: counts per status, the filters, a page of runs.
pub(super) async fn list(State(state): State<AppState>, Query(filters): Query<Filters>) -> ApiResult<Response> {
    let counts = state.store().stats(&[]).await?.runs_by_status;
    let body = match (Filters::nonempty(&filters.q), filters.to_query()) {
        (Some(q), _) => found(&state, q).await?,
        (None, Err(why)) => {
            let markup = html! { (form(&filters)) (problem("Bad filter:", &why)) };
            return Ok((StatusCode::BAD_REQUEST, fragment(markup)).into_response());
        }
        (None, Ok(q)) => {
            let page = state.store().list_runs(&q).await?;
            html! {
                (table(&page.runs))
                nav class="pager" aria-label="pages" {
                    @if q.cursor.is_some() { a href=(filters.with_cursor(None)) { "← Newest" } }
                    @if let Some(next) = &page.next_cursor {
                        a href=(filters.with_cursor(Some(next))) rel="next" { "Older →" }
                    }
                }
            }
        }
    };
    let current = Filters::nonempty(&filters.status);
    let total: u64 = counts.values().sum();
    Ok(fragment(html! {
        h1 { "Runs" }
        (form(&filters))
        section id="runs-live" data-live="2000" aria-live="polite" {
            nav class="counts" aria-label="runs by status" {
                a href=(filters.with_status(None)) aria-current=[current.is_none().then_some("true")] {
                    "all " span class="n" { (total) }
                }
                @for status in RunStatus::ALL {
                    a href=(filters.with_status(Some(status)))
                        aria-current=[(current == Some(status.as_str())).then_some("true")] {
                        (status_badge(status)) " " span class="n" { (counts.get(&status).copied().unwrap_or(0)) }
                    }
                }
            }
            (body)
        }
    }))
}

/// The one run a search names, or why there is none.
async fn found(state: &AppState, q: &str) -> ApiResult<Markup> {
    let Ok(id) = RunId::new(q.to_owned()) else {
        return Ok(problem("Not a run id:", q));
    };
    Ok(match state.store().get_run(&id).await? {
        Some(run) => table(&[run]),
        None => problem("No run", &format!("with id {q}.")),
    })
}

fn form(filters: &Filters) -> Markup {
    let v = |f: &Option<String>| f.clone().unwrap_or_default();
    html! {
        form id="run-filters" class="filters" data-route="/runs" role="search" {
            label { "Workflow " input name="workflow" value=(v(&filters.workflow)) size="12"; }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for status in RunStatus::ALL {
                        option value=(status) selected[filters.status.as_deref() == Some(status.as_str())] { (status) }
                    }
                }
            }
            label { "Label " input name="label" value=(v(&filters.label)) placeholder="name=value" size="14"; }
            label { "Schedule " input name="schedule" value=(v(&filters.schedule)) size="10"; }
            label { "Created from " input type="datetime-local" name="created_after" data-ms=[filters.created_after]; }
            label { "to " input type="datetime-local" name="created_before" data-ms=[filters.created_before]; }
            label { "Run id " input name="q" value=(v(&filters.q)) size="20"; }
            button type="submit" { "Filter" }
            a href="#/runs" { "Clear" }
        }
    }
}

fn table(runs: &[RunSummary]) -> Markup {
    html! {
        @if runs.is_empty() {
            p class="empty" { "No runs." }
        } @else {
            table class="runs" {
                thead { tr { th { "Run" } th { "Workflow" } th { "Status" } th { "Progress" } th { "Labels" } th { "Created" } } }
                tbody {
                    @for run in runs {
                        tr data-run=(run.run_id) {
                            td { a href={ "#/runs/" (page::encode(run.run_id.as_str())) } { code { (run.run_id) } } }
                            td { (run.workflow) " " span class="muted" { "v" (run.version) } }
                            td { (status_badge(run.status)) @if let Some(why) = &run.blocked { " " span class="muted" title=(why) { "blocked" } } }
                            td { (progress(run)) }
                            td { (labels(&run.labels)) }
                            td { (time(run.created_at_ms)) }
                        }
                    }
                }
            }
        }
    }
}

fn progress(run: &RunSummary) -> Markup {
    html! {
        (run.completed_steps) @if let Some(total) = run.total_steps { " / " (total) } " steps"
        @if let Some(step) = &run.current_step { @if !run.status.is_final() { br; span class="muted" { (step) } } }
    }
}

fn labels(labels: &BTreeMap<String, String>) -> Markup {
    html! {
        @for (k, v) in labels {
            a class="label" href={ "#/runs" (query(&[("label", Some(&format!("{k}={v}")))])) } { (k) "=" (v) }
            " "
        }
    }
}

/// `GET /ui/f/runs/{id}`: the run, its steps on a time axis, its journal.
pub(super) async fn detail(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> ApiResult<Response> {
    let access = Access::of(&req);
    let Ok(id) = RunId::new(id.clone()) else {
        return Ok((StatusCode::NOT_FOUND, fragment(problem("Not a run id:", &id))).into_response());
    };
    let Some(mut run) = state.store().get_run(&id).await? else {
        return Ok((StatusCode::NOT_FOUND, fragment(problem("No run", &format!("with id {id}.")))).into_response());
    };
    shown(&mut run);
    let journal = state.store().read_journal(&id, None, 100_000).await?;
    let steps = steps_of(&journal);
    let input = journal.iter().find_map(|r| match &r.entry.event {
        JournalEvent::RunStarted { input, .. } => Some(input.clone()),
        _ => None,
    });
    let children: Vec<(String, RunId, String)> = journal
        .iter()
        .filter_map(|r| match &r.entry.event {
            JournalEvent::ChildStarted { step_id, child_run_id, workflow, .. } => {
                Some((step_id.clone(), child_run_id.clone(), workflow.clone()))
            }
            _ => None,
        })
        .collect();
    let now = state.store().wall_ms();
    let value_path = |what: &str| format!("/ui/f/runs/{}/value?{what}", page::encode(id.as_str()));
    let disabled = !access.can_act();
    let why = disabled.then_some("a read token cannot act");
    let final_ = run.status.is_final();
    Ok(fragment(html! {
        p class="crumbs" { a href="#/runs" { "Runs" } " / " code { (id) } }
        section id="run-live" data-live="sse" data-run=(id) {
            header class="run-head" {
                h1 { (run.workflow) " " span class="muted" { "v" (run.version) } " " (status_badge(run.status)) }
                div class="actions" role="group" aria-label="actions" {
                    button data-action="cancel" data-run=(id) disabled[disabled || final_] title=[why] { "Cancel" }
                    @if run.status == RunStatus::Paused || run.pause_requested {
                        button data-action="resume" data-run=(id) disabled[disabled || final_] title=[why] { "Resume" }
                    } @else {
                        button data-action="pause" data-run=(id) disabled[disabled || final_] title=[why] { "Pause" }
                    }
                    button data-action="retry" data-run=(id)
                        disabled[disabled || run.status != RunStatus::Failed] title=[why] { "Retry" }
                }
            }
            div id="action-result" role="status" aria-live="polite" {}
            dl class="facts" {
                dt { "Run id" } dd { code { (id) } }
                dt { "Created" } dd { (time(run.created_at_ms)) }
                @if let Some(at) = run.finished_at_ms {
                    dt { "Finished" } dd { (time(at)) " (" (page::duration(at.saturating_sub(run.created_at_ms))) ")" }
                }
                dt { "Progress" } dd { (progress(&run)) }
                dt { "Claims" } dd { (run.epoch) @if run.epoch == 1 { " claim" } @else { " claims" } " by a worker" }
                dt { "Priority" } dd { (run.priority) }
                @if !run.labels.is_empty() { dt { "Labels" } dd { (labels(&run.labels)) } }
                @if let Some(parent) = &run.parent {
                    dt { "Parent" } dd { a href={ "#/runs/" (page::encode(parent.run_id.as_str())) } { code { (parent.run_id) } } " (step " (parent.step_id) ")" }
                }
                @if !children.is_empty() {
                    dt { "Children" }
                    dd { ul class="plain" { @for (step, child, workflow) in &children {
                        li { a href={ "#/runs/" (page::encode(child.as_str())) } { code { (child) } } " " (workflow) " (step " (step) ")" }
                    } } }
                }
                @if let Some(at) = run.wake_at_ms { dt { "Wakes" } dd { (time(at)) } }
                @if !run.waiting_for.is_empty() {
                    dt { "Waits for" } dd { @for key in &run.waiting_for { code { (key) } " " } }
                }
                @if let Some(flow) = &run.flow_control { dt { "Flow control" } dd { code { (flow.key) } } }
                @if let Some(why) = &run.blocked { dt { "Blocked" } dd class="warn" { (why) } }
                @if run.cancel_requested && !final_ { dt { "Cancel" } dd { "requested" } }
                @if run.pause_requested && run.status != RunStatus::Paused { dt { "Pause" } dd { "requested: at the next step" } }
                @if let Some(url) = &run.callback_url { dt { "Callback" } dd { code { (url) } } }
            }
            @if let Some(error) = &run.error {
                section class="error" aria-label="error" {
                    h2 { "Error" }
                    p { code { (error.kind) } " " (error.message) @if let Some(step) = &error.step_id { " (step " (step) ")" } }
                }
            }
            @if let Some(output) = &run.output {
                section aria-label="output" { h2 { "Output" } (page::value(output, &value_path("of=output"))) }
            }
            @if let Some(input) = &input {
                section aria-label="input" { h2 { "Input" } (page::value(input, &value_path("of=input"))) }
            }
            section aria-label="timeline" {
                h2 { "Steps" }
                (timeline::draw(&run, &steps, now))
                @if !steps.is_empty() {
                    table class="steps" {
                        thead { tr { th { "Step" } th { "Status" } th { "Attempts" } th { "Started" } th { "Took" } th { "Output or error" } } }
                        tbody {
                            @for step in steps.iter().take(MAX_STEP_ROWS) {
                                tr data-step=(step.step_id) {
                                    td { code { (step.step_id) } }
                                    td { (step_badge(&step.status)) }
                                    td { (step.attempts) }
                                    td { (time(step.started_at_ms)) }
                                    td { @if let Some(ms) = step.duration_ms.or(step.finished_at_ms.map(|f| f.saturating_sub(step.started_at_ms))) { (page::duration(ms)) } }
                                    td {
                                        @if let Some(error) = &step.error { span class="err" { code { (error.kind) } " " (error.message) } }
                                        @if let Some(output) = &step.output {
                                            (page::value(output, &value_path(&format!("step={}", page::encode(&step.step_id)))))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if steps.len() > MAX_STEP_ROWS {
                p class="muted" { "The first " (MAX_STEP_ROWS) " of " (steps.len()) " steps are listed; the API's journal pages through all of them." }
            }
            details class="journal" {
                summary { "Journal (" (journal.len()) " entries)" }
                ol class="journal" {
                    @for record in journal.iter().rev().take(500) {
                        li { (time(record.at_ms)) " " code { (record.entry.event.kind()) }
                            @if let Some(step) = record.entry.event.step_id() { " " (step) } }
                    }
                }
                @if journal.len() > 500 { p class="muted" { "The newest 500 are shown; the API pages through all of them." } }
            }
        }
        @if !final_ {
            section aria-label="send an event" {
                h2 { "Send an event" }
                form id="send-event" class="filters" {
                    label { "Key " input name="key" required value=[run.waiting_for.first()]; }
                    label { "Data (JSON) " input name="data" value="null" size="30"; }
                    button type="submit" disabled[disabled] title=[why] { "Send" }
                }
            }
        }
    }))
}

#[derive(Debug, Deserialize)]
pub(super) struct ValueQuery {
    of: Option<String>,
    step: Option<String>,
}

/// `GET /ui/f/runs/{id}/value?of=input|output` or `?step=<id>`: a collapsed
/// value, in full.
pub(super) async fn value(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ValueQuery>,
) -> ApiResult<Response> {
    let missing = || (StatusCode::NOT_FOUND, fragment(problem("No such value.", ""))).into_response();
    let Ok(id) = RunId::new(id) else { return Ok(missing()) };
    let Some(run) = state.store().get_run(&id).await? else { return Ok(missing()) };
    let value = match (q.of.as_deref(), q.step.as_deref()) {
        (Some("output"), None) => run.output,
        (Some("input"), None) => {
            let journal = state.store().read_journal(&id, None, 1).await?;
            journal.into_iter().find_map(|r| match r.entry.event {
                JournalEvent::RunStarted { input, .. } => Some(input),
                _ => None,
            })
        }
        (None, Some(step)) => {
            let journal = state.store().read_journal(&id, None, 100_000).await?;
            steps_of(&journal).into_iter().find(|s| s.step_id == step).and_then(|s| s.output)
        }
        _ => None,
    };
    Ok(match value {
        Some(v) => fragment(html! { (serde_json::to_string_pretty(&v).unwrap_or_default()) }),
        None => missing(),
    })
}
