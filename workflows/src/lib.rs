//! keel-workflows: the workflows every `keel worker` and `keel dev` runs.
//!
//! - `bench`: `{"steps": S}`, S no-op steps; what `keel bench` measures.
//! - `demo`: a small workflow to try Keel with: steps, an optional sleep, an
//!   optional wait for an event, and an optional failure.
//!
//! - `agent-http` and `agent-llm`: the plan / execute / reflect agent (see
//!   [`agent`]) with the starting service's endpoints or an OpenAI-compatible
//!   model as its handlers.

use std::time::Duration;

pub mod agent;
pub mod http_agent;
pub mod llm_agent;
pub mod upstash;

/// The guide in README.md, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeGuide;

use keel_worker::{Context, RetryPolicy, StepError, Workflow};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// The built-in workflows, with the agent's model from the environment. (Not
/// `chaos`: `keel chaos` registers it on the workers it starts.)
pub fn all() -> Vec<Workflow> {
    all_with(llm_agent::LlmConfig::from_env(), RetryPolicy::attempts(5))
}

/// The built-in workflows, with this model and this retry policy for the agents' calls.
pub fn all_with(llm: llm_agent::LlmConfig, agent_retry: RetryPolicy) -> Vec<Workflow> {
    vec![bench(), demo(), http_agent::workflow(agent_retry.clone()), llm_agent::workflow(llm, agent_retry)]
}

/// Input of `chaos`.
#[derive(Debug, Clone, serde::Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChaosInput {
    /// Steps (1–20), each a durable call to `effects_url` (which counts it).
    #[schemars(range(min = 1, max = 20))]
    pub steps: u32,
    pub effects_url: String,
    #[serde(default)]
    pub sleep_ms: Option<u64>,
    #[serde(default)]
    pub wait_key: Option<String>,
    /// Also run a small child run.
    #[serde(default)]
    pub child: bool,
    /// A misbehaving step after the calls: `panic-step` (panics on its first
    /// attempt), `block` (blocks its thread for 2.5 s, past keel chaos's 2 s
    /// lease), `panic-body` (the workflow panics: the run fails as `panicked`).
    #[serde(default)]
    pub hazard: Option<String>,
}

/// How many attempts the chaos hazard step may take.
pub const CHAOS_HAZARD_ATTEMPTS: u32 = 5;

/// `chaos`: the workload of `keel chaos`. Every step is a durable HTTP call whose
/// side effect the harness counts by idempotency key; then an optional sleep, an
/// optional event wait and an optional child run.
pub fn chaos() -> Workflow {
    Workflow::new("chaos", |ctx: Context, input: ChaosInput| async move {
        let extra = u32::from(input.sleep_ms.is_some()) + u32::from(input.wait_key.is_some()) + u32::from(input.child);
        ctx.progress(input.steps.min(20) + extra).await?;
        let retry = RetryPolicy::attempts(20).initial(Duration::from_millis(200)).max_delay(Duration::from_secs(2));
        let mut counts = Vec::new();
        for i in 0..input.steps.min(20) {
            let request = keel_worker::CallRequest::post(input.effects_url.clone(), json!({"i": i}))
                .timeout(Duration::from_secs(5))
                .retry(retry.clone());
            let response = ctx.call(format!("s{i}"), request).await?;
            counts.push(response.body["n"].clone());
        }
        let hazard_policy = RetryPolicy::attempts(CHAOS_HAZARD_ATTEMPTS).initial(Duration::from_millis(100));
        match input.hazard.as_deref() {
            Some("panic-step") => {
                ctx.step("hazard")
                    .retry(hazard_policy)
                    .run_with(|info| async move {
                        if info.attempt == 1 {
                            panic!("chaos: a step that panics on its first attempt");
                        }
                        Ok::<_, StepError>(info.attempt)
                    })
                    .await?;
            }
            Some("block") => {
                ctx.step("hazard")
                    .retry(hazard_policy)
                    .run(|| async {
                        // Blocks the worker's thread past the lease: renewals must go on.
                        std::thread::sleep(Duration::from_millis(2500));
                        Ok::<_, StepError>(0)
                    })
                    .await?;
            }
            Some("panic-body") => panic!("chaos: a workflow body that panics"),
            _ => {}
        }
        if let Some(ms) = input.sleep_ms {
            ctx.sleep("nap", Duration::from_millis(ms)).await?;
        }
        let event: Option<Value> = match &input.wait_key {
            Some(key) => ctx.wait_for_event("event", key.clone(), Some(Duration::from_secs(120))).await?,
            None => None,
        };
        let child: Option<Value> = if input.child {
            let child_input = ChaosInput {
                steps: 2,
                effects_url: input.effects_url.clone(),
                sleep_ms: None,
                wait_key: None,
                child: false,
                hazard: None,
            };
            Some(ctx.invoke("child", "chaos", &child_input).await?)
        } else {
            None
        };
        Ok(json!({"steps": counts.len(), "event": event, "child": child}))
    })
}

/// Input of `bench`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BenchInput {
    /// How many no-op steps (1–10000: long runs are part of what it measures).
    #[schemars(range(min = 1, max = 10000))]
    pub steps: u32,
    /// Make each step take this long (ms), to measure the engine's overhead around it.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub step_ms: u64,
}

/// `bench`: S steps, each a no-op returning a small JSON value.
pub fn bench() -> Workflow {
    Workflow::new("bench", |ctx: Context, input: BenchInput| async move {
        let pause = Duration::from_millis(input.step_ms.min(10_000));
        for i in 0..input.steps {
            ctx.step(format!("step-{i}"))
                .run(move || async move {
                    if !pause.is_zero() {
                        // Precise, not a timer tick: the bench measures the engine around it.
                        std::thread::sleep(pause);
                    }
                    Ok::<_, StepError>(json!({"i": i}))
                })
                .await?;
        }
        Ok(json!({"steps": input.steps}))
    })
}

/// Input of `demo`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoInput {
    /// How many steps (default 3, at most 100).
    #[serde(default = "three")]
    #[schemars(range(max = 100))]
    pub steps: u32,
    /// Sleep this long (ms) after the steps.
    #[serde(default)]
    pub sleep_ms: Option<u64>,
    /// Then wait for an event on this key (at most an hour).
    #[serde(default)]
    pub wait_for: Option<String>,
    /// Make this step (1-based) fail for good.
    #[serde(default)]
    pub fail_at: Option<u32>,
}

fn three() -> u32 {
    3
}

/// `demo`: `steps` steps (each returns its number), then an optional sleep and
/// event wait; `fail_at` makes that step fail for good, failing the run.
pub fn demo() -> Workflow {
    Workflow::new("demo", |ctx: Context, input: DemoInput| async move {
        let extra = u32::from(input.sleep_ms.is_some()) + u32::from(input.wait_for.is_some());
        ctx.progress(input.steps + extra).await?;
        let mut outputs = Vec::new();
        for i in 1..=input.steps {
            let fail = input.fail_at == Some(i);
            let out: u32 = ctx
                .step(format!("step-{i}"))
                .retry(RetryPolicy::none())
                .run(move || async move {
                    if fail { Err(StepError::terminal(format!("step {i} fails, as asked"))) } else { Ok(i) }
                })
                .await?;
            outputs.push(out);
        }
        if let Some(ms) = input.sleep_ms {
            ctx.sleep("nap", Duration::from_millis(ms)).await?;
        }
        let event: Option<Value> = match &input.wait_for {
            Some(key) => ctx.wait_for_event("event", key.clone(), Some(Duration::from_secs(3600))).await?,
            None => None,
        };
        Ok(json!({"steps": outputs, "event": event}))
    })
}

#[cfg(test)]
mod tests {
    use keel_engine::proto::RunStatus;
    use keel_worker::testing::TestEnv;
    use serde_json::json;

    #[tokio::test]
    async fn the_built_in_workflows_run() {
        let env = TestEnv::new(super::all()).await;
        let bench = env.run_to_end("bench", json!({"steps": 3})).await;
        assert_eq!((bench.status, bench.output), (RunStatus::Completed, Some(json!({"steps": 3}))));
        let demo = env.run_to_end("demo", json!({"steps": 2, "sleep_ms": 10})).await;
        assert_eq!(demo.output, Some(json!({"steps": [1, 2], "event": null})));
        let failing = env.run_to_end("demo", json!({"fail_at": 2})).await;
        assert_eq!(failing.status, RunStatus::Failed);
        assert_eq!(failing.error.unwrap().step_id.as_deref(), Some("step-2"));
        let id = env.start("demo", json!({"steps": 1, "wait_for": "go"})).await;
        env.run_until_idle().await;
        env.send_event("go", json!("went")).await;
        assert_eq!(env.run(&id).await.output, Some(json!({"steps": [1], "event": "went"})));
    }
}
