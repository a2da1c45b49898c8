//! Log lines carry the right run id: the run's span follows its execution
//! across awaits (instrumented), never entered on a thread and left there while
//! other runs are polled.

// Test helpers outside #[test] functions unwrap too (clippy.toml allows it only inside them).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{spawn_worker, start, wait_final};
use keel_engine::proto::RunStatus;
use keel_worker::{Context, StepError, Workflow};
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span's `run_id`, kept in its extensions.
struct RunIdField(String);

#[derive(Default)]
struct Fields {
    run_id: Option<String>,
    expected: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "run_id" => self.run_id = Some(format!("{value:?}").trim_matches('"').to_owned()),
            "expected_run" => self.expected = Some(format!("{value:?}").trim_matches('"').to_owned()),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "run_id" => self.run_id = Some(value.to_owned()),
            "expected_run" => self.expected = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// Every event that names the run it expects: (expected, the run id of the span it is in).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct Capture(Seen);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(run_id), Some(span)) = (fields.run_id, ctx.span(id)) {
            span.extensions_mut().insert(RunIdField(run_id));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(expected) = fields.expected else { return };
        let in_span = ctx.event_scope(event).and_then(|scope| {
            scope.from_root().filter_map(|span| span.extensions().get::<RunIdField>().map(|f| f.0.clone())).last()
        });
        self.0.lock().unwrap().push((expected, in_span));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_inside_a_run_carry_that_runs_id() {
    let seen: Seen = Arc::default();
    let subscriber = tracing_subscriber::registry().with(Capture(seen.clone()));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let workflow = Workflow::new("chatty", |ctx: Context, _: serde_json::Value| async move {
        for i in 0..5 {
            let run = ctx.run_id().to_string();
            tracing::info!(expected_run = %run, "before step {i}");
            ctx.step(format!("s{i}"))
                .run(move || async move {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    Ok::<_, StepError>(i)
                })
                .await?;
            tracing::info!(expected_run = %run, "after step {i}");
        }
        Ok(json!(null))
    });
    let b = common::memory().await;
    let worker = spawn_worker(&b.store, vec![workflow], Duration::from_secs(5)).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(start(&b.store, "chatty", json!(null)).await);
    }
    for id in &ids {
        assert_eq!(wait_final(&b.store, id, Duration::from_secs(30)).await.status, RunStatus::Completed);
    }
    worker.stop().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6 * 10, "every log line was seen");
    for (expected, in_span) in &seen {
        assert_eq!(Some(expected), in_span.as_ref(), "a log line of run {expected} carried another run's id");
    }
}
