//! A run's steps as bars on a time axis (SVG), so where the time went shows
//! at a glance: each bar from the step's first entry to its last, an open
//! one running on to now.

use keel_proto::RunSummary;
use keel_proto::http::StepView;
use maud::{Markup, html};

use super::page::duration;

const WIDTH: f64 = 1000.0;
const LABELS: f64 = 200.0;
const ROW: f64 = 24.0;
const AXIS: f64 = 22.0;
/// Beyond this many steps the bars are left out (the table still lists all).
const MAX_BARS: usize = 200;

pub(super) fn draw(run: &RunSummary, steps: &[StepView], now_ms: u64) -> Markup {
    if steps.is_empty() {
        return html! { p class="empty" { "No steps yet." } };
    }
    let start = run.created_at_ms;
    let end = run.finished_at_ms.unwrap_or(now_ms).max(start + 1);
    let span = (end - start) as f64;
    let x = |ms: u64| LABELS + (ms.saturating_sub(start) as f64 / span).min(1.0) * (WIDTH - LABELS - 10.0);
    let shown = &steps[..steps.len().min(MAX_BARS)];
    let height = AXIS + ROW * shown.len() as f64 + 4.0;
    html! {
        figure class="timeline" {
            svg viewBox={ "0 0 " (WIDTH) " " (height) } role="img"
                aria-label={ "Steps on a time axis of " (duration(end - start)) } {
                @for i in 0..=4u64 {
                    @let at = start + (end - start) * i / 4;
                    line class="tick" x1=(x(at)) x2=(x(at)) y1="16" y2=(height) {}
                    text class="tick" x=(x(at)) y="12" text-anchor=(if i == 4 { "end" } else { "middle" }) {
                        (duration(at - start))
                    }
                }
                @for (i, step) in shown.iter().enumerate() {
                    @let y = AXIS + ROW * i as f64;
                    @let open = step.finished_at_ms.is_none();
                    @let to = step.finished_at_ms.unwrap_or(end);
                    @let x0 = x(step.started_at_ms);
                    @let w = (x(to) - x0).max(2.0);
                    g class={ "bar s-" (step.status) } data-step=(step.step_id) {
                        title { (step.step_id) ": " (step.status) ", " (duration(to.saturating_sub(step.started_at_ms)))
                            @if step.attempts > 1 { ", " (step.attempts) " attempts" } }
                        text class="name" x=(LABELS - 8.0) y=(y + 15.0) text-anchor="end" { (clip(&step.step_id)) }
                        rect x=(x0) y=(y + 4.0) width=(w) height=(ROW - 8.0) rx="3" class=[open.then_some("open")] {}
                    }
                }
            }
            @if steps.len() > MAX_BARS {
                figcaption class="muted" { "The first " (MAX_BARS) " of " (steps.len()) " steps are drawn; the table lists all." }
            }
        }
    }
}

/// A step name short enough for the label column.
fn clip(name: &str) -> String {
    if name.chars().count() <= 26 {
        name.to_owned()
    } else {
        format!("{}…", name.chars().take(25).collect::<String>())
    }
}
