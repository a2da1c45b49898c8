//! A workflow author's own worker binary, as the README describes it: a typed
//! input, settings from the environment (as `keel worker` reads them), and the
//! Rust client starting a run on a Keel server. It names no crate but
//! `keel-worker` and `tokio`.
//!
//! ```sh
//! keel server &                                   # or: keel dev
//! KEEL_REDIS_URL=redis://127.0.0.1:6379 KEEL_URL=http://127.0.0.1:7400 \
//!   cargo run -p keel-worker --example author
//! ```

use std::time::Duration;

use keel_worker::{Client, Context, Deserialize, JsonSchema, Result, StepError, Worker, Workflow, json};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(crate = "keel_worker::serde")]
#[schemars(crate = "keel_worker::schemars")]
struct Greeting {
    name: String,
    times: u32,
}

async fn greet(ctx: Context, input: Greeting) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for i in 0..input.times {
        let name = input.name.clone();
        let line: String = ctx
            .step(format!("line-{i}"))
            .run(move || async move { Ok::<_, StepError>(format!("hello {name}")) })
            .await?;
        lines.push(line);
    }
    Ok(lines)
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let worker = Worker::builder().from_env()?.register(Workflow::new("greet", greet)).build().await?;
    if let Ok(url) = std::env::var("KEEL_URL") {
        tokio::spawn(async move {
            let keel = Client::new(url);
            // The server accepts the start once this worker has registered `greet`.
            tokio::time::sleep(Duration::from_secs(1)).await;
            match keel.start("greet", &json!({"name": "Ada", "times": 2})).await {
                Ok(started) => match keel.result::<Vec<String>>(&started.run_id, Duration::from_secs(30)).await {
                    Ok(lines) => println!("{}: {lines:?}", started.run_id),
                    Err(e) => eprintln!("the run did not complete: {e}"),
                },
                Err(e) => eprintln!("starting a run failed: {e}"),
            }
        });
    }
    worker.run_until_signal().await?;
    Ok(())
}
