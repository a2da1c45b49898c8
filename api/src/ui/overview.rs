//! The overview: throughput per minute, step latency percentiles and failure
//! rates over the last hour, queues now. Keel's counters are running totals
//! (the store's stats, as /metrics reads them); a server samples them every
//! 15 s into a bounded ring (an hour's worth), and the charts are the
//! differences between samples.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use keel_engine::{STEP_MS_BUCKETS, Stats};
use maud::{Markup, html};
use tokio_util::sync::CancellationToken;

use super::page::{duration, fragment};
use crate::AppState;
use crate::error::ApiResult;

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);
/// Samples kept: one hour's, and one more to difference the first against.
const KEPT: usize = 241;
const MINUTE_MS: u64 = 60_000;

/// One reading of the counters.
#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    /// workflow -> stat -> running total
    counters: BTreeMap<String, BTreeMap<String, u64>>,
    step_ms_buckets: BTreeMap<Option<u64>, u64>,
}

/// The ring of samples a server keeps (bounded: `KEPT`).
#[derive(Debug, Default)]
pub struct Samples(Mutex<VecDeque<Sample>>);

impl Sample {
    fn of(stats: &Stats, at_ms: u64) -> Self {
        let mut counters: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((workflow, stat), n) in &stats.counters {
            counters.entry(workflow.clone()).or_default().insert(stat.clone(), *n);
        }
        Self { at_ms, counters, step_ms_buckets: stats.step_ms_buckets.clone() }
    }
}

impl Samples {
    /// Keep a reading, unless the newest is younger than `SAMPLE_EVERY`: the
    /// ring holds an hour however often the overview is asked for.
    fn push(&self, stats: &Stats, at_ms: u64) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ring.back().is_some_and(|last| at_ms < last.at_ms + SAMPLE_EVERY.as_millis() as u64) {
            return;
        }
        ring.push_back(Sample::of(stats, at_ms));
        while ring.len() > KEPT {
            ring.pop_front();
        }
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// Sample the counters every `SAMPLE_EVERY` until `stop` (a server runs one).
pub async fn sample(state: AppState, stop: CancellationToken) {
    loop {
        match state.store().stats(&[]).await {
            Ok(stats) => state.samples().push(&stats, state.store().wall_ms()),
            Err(e) => tracing::debug!(error = %e, "could not read the counters for the dashboard"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// Per workflow over the window: (started, completed, failed, steps completed, steps failed).
type Totals = BTreeMap<String, [u64; 5]>;
const STATS: [&str; 5] = ["started", "completed", "failed", "steps_completed", "steps_failed"];

fn get(sample: &Sample, workflow: &str, stat: &str) -> u64 {
    sample.counters.get(workflow).and_then(|c| c.get(stat)).copied().unwrap_or(0)
}

/// What changed between the oldest and the newest sample.
fn totals(first: &Sample, last: &Sample) -> Totals {
    let mut out = Totals::new();
    for workflow in last.counters.keys() {
        let row = out.entry(workflow.clone()).or_default();
        for (i, stat) in STATS.iter().enumerate() {
            row[i] = get(last, workflow, stat).saturating_sub(get(first, workflow, stat));
        }
    }
    out
}

/// Started / completed / failed runs per minute (all workflows), oldest first,
/// from consecutive samples, each difference counted in the minute it ended.
fn per_minute(samples: &[Sample], now_ms: u64) -> Vec<[u64; 3]> {
    let first_minute = now_ms / MINUTE_MS - 59;
    let mut minutes = vec![[0u64; 3]; 60];
    for pair in samples.windows(2) {
        let Some(i) = (pair[1].at_ms / MINUTE_MS).checked_sub(first_minute) else { continue };
        let Some(slot) = minutes.get_mut(i as usize) else { continue };
        for (j, stat) in ["started", "completed", "failed"].iter().enumerate() {
            let sum = |s: &Sample| s.counters.keys().map(|w| get(s, w, stat)).sum::<u64>();
            slot[j] += sum(&pair[1]).saturating_sub(sum(&pair[0]));
        }
    }
    minutes
}

/// The step-duration percentiles (upper bounds of histogram buckets) over the window.
fn percentiles(first: &Sample, last: &Sample) -> Option<[Option<u64>; 3]> {
    let mut counts: Vec<(Option<u64>, u64)> = STEP_MS_BUCKETS
        .iter()
        .map(|b| Some(*b))
        .chain([None])
        .map(|b| {
            let n = last.step_ms_buckets.get(&b).copied().unwrap_or(0);
            (b, n.saturating_sub(first.step_ms_buckets.get(&b).copied().unwrap_or(0)))
        })
        .collect();
    counts.sort_by_key(|(b, _)| b.unwrap_or(u64::MAX));
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let at = |q: f64| {
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        counts.iter().find(|(_, n)| {
            seen += n;
            seen >= want
        })
    };
    Some([0.5, 0.95, 0.99].map(|q| at(q).and_then(|(b, _)| *b)))
}

/// `GET /ui/f/overview`.
pub(super) async fn page(State(state): State<AppState>) -> ApiResult<Response> {
    let now = state.store().wall_ms();
    let mut samples: Vec<Sample> = state
        .samples()
        .snapshot()
        .into_iter()
        .filter(|s| s.at_ms + 3_600_000 + SAMPLE_EVERY.as_millis() as u64 >= now)
        .collect();
    // One read of the counters and the queues, of the workflows the last
    // reading knew; again only when a new workflow shows up in it.
    let workflows_of = |stats: &Stats| -> Vec<String> {
        stats.counters.keys().map(|(w, _)| w.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect()
    };
    let known: Vec<String> = samples.last().map(|s| s.counters.keys().cloned().collect()).unwrap_or_default();
    let mut stats = state.store().stats(&known).await?;
    let workflows = workflows_of(&stats);
    if workflows != known {
        stats = state.store().stats(&workflows).await?;
    }
    // The readings of the last hour, then this one (kept only when due).
    if samples.last().is_none_or(|last| last.at_ms < now) {
        samples.push(Sample::of(&stats, now));
    }
    state.samples().push(&stats, now);
    let live = &stats;
    let window = samples.first().zip(samples.last());
    let since = window.map_or(0, |(f, l)| l.at_ms - f.at_ms);
    let totals = window.map(|(f, l)| totals(f, l)).unwrap_or_default();
    let latency = window.and_then(|(f, l)| percentiles(f, l));
    let minutes = per_minute(&samples, now);
    Ok(fragment(html! {
        h1 { "Overview" }
        section id="overview-live" data-live="5000" {
            p class="muted" { "Over the last " (duration(since.max(1))) " this server has watched (up to an hour), from Keel's counters sampled every 15 s." }
            h2 { "Runs per minute" }
            (chart(&minutes))
            h2 { "Step latency" }
            @match latency {
                Some([p50, p95, p99]) => p class="latency" {
                    "p50 " strong { (bound(p50)) } " · p95 " strong { (bound(p95)) } " · p99 " strong { (bound(p99)) }
                    span class="muted" { " (all workflows; upper bounds of the histogram's buckets)" }
                },
                None => p class="empty" { "No steps finished in the window." },
            }
            h2 { "Per workflow" }
            table class="overview" {
                thead { tr { th { "Workflow" } th { "Started" } th { "Completed" } th { "Failed" } th { "Failure rate" }
                    th { "Steps done" } th { "Steps failed" } th { "Queued now" } th { "In flight now" } } }
                tbody {
                    @for workflow in &workflows {
                        @let t = totals.get(workflow).copied().unwrap_or_default();
                        tr {
                            td { a href={ "#/runs?workflow=" (super::page::encode(workflow)) } { (workflow) } }
                            td { (t[0]) } td { (t[1]) } td { (t[2]) }
                            td { (rate(t[2], t[1] + t[2])) }
                            td { (t[3]) } td { (t[4]) }
                            td { (live.queued.get(workflow).copied().unwrap_or(0)) }
                            td { (live.in_flight.get(workflow).copied().unwrap_or(0)) }
                        }
                    }
                }
            }
            p { "Dead letters: " a href="#/system" { (stats.dead_letters) } }
        }
    }))
}

fn bound(b: Option<u64>) -> String {
    match b {
        Some(ms) => format!("≤ {}", duration(ms)),
        None => format!("> {}", duration(*STEP_MS_BUCKETS.last().unwrap_or(&0))),
    }
}

fn rate(failed: u64, finished: u64) -> String {
    if finished == 0 { "–".into() } else { format!("{:.1} %", failed as f64 * 100.0 / finished as f64) }
}

/// Three bars a minute (started, completed, failed) over 60 minutes, as SVG.
fn chart(minutes: &[[u64; 3]]) -> Markup {
    let top = minutes.iter().flat_map(|m| m.iter()).copied().max().unwrap_or(0).max(1);
    let (w, h) = (960.0, 160.0);
    let slot = w / minutes.len().max(1) as f64;
    let bar = (slot / 3.0 - 1.0).max(1.0);
    let y = |n: u64| h - (n as f64 / top as f64) * (h - 14.0);
    html! {
        figure class="chart" {
            svg viewBox={ "0 0 " (w + 40.0) " " (h + 18.0) } role="img"
                aria-label={ "Runs started, completed and failed per minute over the last hour; the busiest minute had " (top) } {
                line class="tick" x1="0" x2=(w) y1=(h) y2=(h) {}
                text class="tick" x=(w + 4.0) y="12" { (top) "/min" }
                text class="tick" x="0" y=(h + 14.0) { "−60 min" }
                text class="tick" x=(w) y=(h + 14.0) text-anchor="end" { "now" }
                @for (i, m) in minutes.iter().enumerate() {
                    @for (j, class) in ["started", "completed", "failed"].iter().enumerate() {
                        @if m[j] > 0 {
                            rect class={ "c-" (class) } x=(i as f64 * slot + j as f64 * (bar + 1.0)) y=(y(m[j])) width=(bar) height=(h - y(m[j])) {
                                title { (m[j]) " " (class) }
                            }
                        }
                    }
                }
            }
            figcaption { span class="key c-started" { "started" } " " span class="key c-completed" { "completed" } " " span class="key c-failed" { "failed" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, started: u64, completed: u64, fast: u64, slow: u64) -> Sample {
        let mut counters = BTreeMap::new();
        counters.insert(
            "demo".to_owned(),
            BTreeMap::from([("started".to_owned(), started), ("completed".to_owned(), completed)]),
        );
        Sample { at_ms, counters, step_ms_buckets: BTreeMap::from([(Some(5), fast), (Some(1000), slow)]) }
    }

    #[test]
    fn charts_and_percentiles_are_differences_of_running_totals() {
        let now = 10 * 3_600_000 + 45_000;
        let samples = [sample(now - 120_000, 100, 90, 50, 0), sample(now - 30_000, 130, 100, 140, 10)];
        let minutes = per_minute(&samples, now);
        assert_eq!(minutes.len(), 60);
        assert_eq!(minutes[59], [30, 10, 0], "counted in the minute the difference ended");
        assert_eq!(totals(&samples[0], &samples[1])["demo"][..2], [30, 10]);
        // 90 fast steps and 10 slow ones: p50 and p95... within the buckets.
        assert_eq!(percentiles(&samples[0], &samples[1]), Some([Some(5), Some(1000), Some(1000)]));
    }

    #[test]
    fn the_ring_keeps_an_hour_and_no_more_however_often_it_is_asked() {
        let samples = Samples::default();
        let every = SAMPLE_EVERY.as_millis() as u64;
        for i in 0..10_000 {
            samples.push(&Stats::default(), i * every / 10);
        }
        let kept = samples.snapshot();
        assert_eq!(kept.len(), KEPT);
        assert!(kept.windows(2).all(|w| w[1].at_ms - w[0].at_ms >= every), "readings 15 s apart");
    }
}
