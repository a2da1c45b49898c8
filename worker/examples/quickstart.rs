//! A first workflow, run end to end on the in-memory store: no Redis needed.
//!
//! ```sh
//! cargo run -p keel-worker --example quickstart
//! ```
//!
//! It starts a worker, starts a run, waits for its result and prints the run's
//! journal: what Keel recorded, step by step.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::{CreateRun, MemoryStore, Store, StoreConfig};
use keel_worker::{Context, Result, StepError, Worker, Workflow};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Order {
    id: u32,
    items: Vec<String>,
}

async fn fulfil(ctx: Context, order: Order) -> Result<String> {
    ctx.progress(order.items.len() as u32 + 2).await?;
    let id = order.id;
    let reserved = ctx
        .all(order.items.iter().map(|item| {
            let item = item.clone();
            ctx.step(format!("reserve-{item}"))
                .retry(3)
                .run(move || async move { Ok::<_, StepError>(format!("{item} reserved")) })
        }))
        .await?;
    ctx.sleep("let-it-settle", Duration::from_millis(300)).await?;
    let receipt: String = ctx
        .step("charge")
        .run_with(|info| async move {
            // Pass info.idempotency_key to the payment API: a retry never charges twice.
            Ok::<_, StepError>(format!("order {id} charged (key {})", info.idempotency_key))
        })
        .await?;
    Ok(format!("{receipt}; {}", reserved.join(", ")))
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(StoreConfig::default()));
    let worker = Worker::builder()
        .store(store.clone())
        .register(Workflow::new("fulfil", fulfil))
        .timer_tick(Duration::from_millis(20))
        .build()
        .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));

    let input = serde_json::json!({"id": 42, "items": ["book", "lamp"]});
    let run_id = store
        .create_run(CreateRun { workflow: "fulfil".into(), version: 1, input, ..Default::default() })
        .await?
        .run_id;
    println!("started run {run_id}");
    let run = loop {
        let run = store.get_run(&run_id).await?.ok_or("the run vanished")?;
        if run.status.is_final() {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("{}: {}", run.status, run.output.unwrap_or_default());
    for record in store.read_journal(&run_id, None, 100).await? {
        println!("  {} {}", record.seq, serde_json::to_string(&record.entry)?);
    }
    let _ = stop.send(());
    running.await??;
    Ok(())
}
