//! `agent-llm`: plan, execute and reflect are completions from any
//! OpenAI-compatible chat-completions API (base URL, model and key from
//! KEEL_LLM_BASE_URL, KEEL_LLM_MODEL, KEEL_LLM_API_KEY). Each phase is one
//! durable step that calls the model and parses its answer, so a malformed
//! answer is a retryable step error (the model gets another try), never a panic.
//! Token usage is recorded in each step's output.

use std::fmt;

use keel_proto::agent::{AgentLlmInput, ReflectResponse};
use keel_worker::{CallRequest, Context, Result, RetryPolicy, StepError, StepInfo, Workflow};
use serde_json::{Value, json};

use crate::agent::{AgentHandlers, AgentLimits, ExecuteInput, PlanInput, ReflectInput, check_plan, run_agent};

/// Where the model is.
#[derive(Clone)]
pub struct LlmConfig {
    /// e.g. `https://api.openai.com/v1` (the `/chat/completions` path is appended).
    pub base_url: Option<String>,
    pub model: String,
    api_key: Option<String>,
}

impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key never reaches a log.
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl LlmConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>, api_key: Option<String>) -> Self {
        Self { base_url: Some(base_url.into()), model: model.into(), api_key }
    }

    /// From KEEL_LLM_BASE_URL, KEEL_LLM_MODEL (default `gpt-4o-mini`), KEEL_LLM_API_KEY.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            base_url: var("KEEL_LLM_BASE_URL"),
            model: var("KEEL_LLM_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()),
            api_key: var("KEEL_LLM_API_KEY"),
        }
    }
}

/// The handlers: three prompts to one model.
#[derive(Debug, Clone)]
pub struct LlmHandlers {
    config: LlmConfig,
    limits: AgentLimits,
    retry: RetryPolicy,
    flow: keel_proto::agent::AgentFlowControl,
}

const PLAN_PROMPT: &str = "You are the planner of an agent. Break the goal into a few independent steps that can \
    run in parallel. Answer with JSON only, no prose: {\"steps\": [{\"id\": \"short-unique-id\", \"task\": \"what to do\"}]}";
const EXECUTE_PROMPT: &str = "You carry out one step of a plan towards a goal. Answer with the step's result.";
const REFLECT_PROMPT: &str = "You review the results of a plan against its goal. Answer with JSON only, no prose: \
    {\"done\": true, \"summary\": \"the answer\"} when the goal is met, or {\"done\": false, \"feedback\": \"what the next plan must do differently\"}.";

/// The JSON object in a model's answer (which may wrap it in prose or a code fence).
fn json_in(content: &str) -> Option<Value> {
    let start = content.find('{')?;
    let end = content.rfind('}')?;
    serde_json::from_str(content.get(start..=end)?).ok().filter(Value::is_object)
}

fn excerpt(text: &str) -> String {
    text.chars().take(200).collect()
}

impl LlmHandlers {
    /// One completion inside the step `info`: the answer's text and token usage.
    async fn complete(
        &self,
        ctx: &Context,
        info: &StepInfo,
        system: &str,
        user: String,
    ) -> Result<(String, Value), StepError> {
        let base = self.config.base_url.as_deref().ok_or_else(|| {
            StepError::terminal(
                "agent-llm has no model: set KEEL_LLM_BASE_URL (and KEEL_LLM_MODEL, KEEL_LLM_API_KEY) for the worker",
            )
        })?;
        let body = json!({
            "model": self.config.model,
            "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        });
        let mut request = CallRequest::post(format!("{}/chat/completions", base.trim_end_matches('/')), body)
            .timeout(self.limits.step_timeout);
        if let Some(key) = &self.config.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = keel_worker::send_call(ctx.call_settings(), info, &request).await?;
        let content = response.body["choices"][0]["message"]["content"].as_str().ok_or_else(|| {
            StepError::retryable(format!(
                "the model's response has no choices[0].message.content: {}",
                excerpt(&response.body.to_string())
            ))
        })?;
        Ok((content.to_owned(), response.body.get("usage").cloned().unwrap_or(Value::Null)))
    }

    fn step<'a>(
        &'a self,
        ctx: &'a Context,
        step_id: &str,
        flow: Option<&keel_proto::FlowControl>,
    ) -> keel_worker::Step {
        let step = ctx
            .step(step_id)
            .retry(self.retry.clone())
            .timeout(self.limits.step_timeout + std::time::Duration::from_secs(5));
        match flow {
            Some(fc) => step.flow_control(fc.key.clone(), fc.limits.clone()),
            None => step,
        }
    }
}

impl AgentHandlers for LlmHandlers {
    async fn plan(&self, ctx: &Context, input: PlanInput) -> Result<Vec<Value>> {
        let user =
            format!("Goal: {}\nRound: {}\nFeedback from the last review: {}", input.goal, input.round, input.feedback);
        let planned: Value = self
            .step(ctx, &input.step_id, self.flow.plan.as_ref())
            .run_with(|info| async move {
                let (content, usage) = self.complete(ctx, &info, PLAN_PROMPT, user).await?;
                let parsed = json_in(&content).ok_or_else(|| {
                    StepError::retryable(format!("the model's plan is not JSON: {:?}", excerpt(&content)))
                })?;
                let steps = parsed["steps"].as_array().cloned().ok_or_else(|| {
                    StepError::retryable(format!("the model's plan has no \"steps\" list: {:?}", excerpt(&content)))
                })?;
                check_plan(&steps)
                    .map_err(|e| StepError::retryable(format!("the model's plan is unusable: {}", e.message())))?;
                Ok::<_, StepError>(json!({"steps": steps, "usage": usage}))
            })
            .await?;
        Ok(planned["steps"].as_array().cloned().unwrap_or_default())
    }

    async fn execute(&self, ctx: &Context, input: ExecuteInput) -> Result<Value> {
        let user = format!("Goal: {}\nStep: {}", input.goal, input.step);
        self.step(ctx, &input.step_id, self.flow.execute.as_ref())
            .run_with(|info| async move {
                let (content, usage) = self.complete(ctx, &info, EXECUTE_PROMPT, user).await?;
                Ok::<_, StepError>(json!({"result": content, "usage": usage}))
            })
            .await
    }

    async fn reflect(&self, ctx: &Context, input: ReflectInput) -> Result<ReflectResponse> {
        let outcomes = serde_json::to_string(&input.outcomes).unwrap_or_default();
        let user = format!("Goal: {}\nRound: {}\nResults: {outcomes}", input.goal, input.round);
        let reflected: Value = self
            .step(ctx, &input.step_id, self.flow.reflect.as_ref())
            .run_with(|info| async move {
                let (content, usage) = self.complete(ctx, &info, REFLECT_PROMPT, user).await?;
                let parsed = json_in(&content).ok_or_else(|| {
                    StepError::retryable(format!("the model's review is not JSON: {:?}", excerpt(&content)))
                })?;
                let done = parsed["done"].as_bool().ok_or_else(|| {
                    StepError::retryable(format!("the model's review has no boolean \"done\": {:?}", excerpt(&content)))
                })?;
                Ok::<_, StepError>(json!({
                    "done": done,
                    "summary": parsed.get("summary").cloned().unwrap_or(Value::Null),
                    "feedback": parsed.get("feedback").cloned().unwrap_or(Value::Null),
                    "usage": usage,
                }))
            })
            .await?;
        Ok(ReflectResponse {
            done: reflected["done"].as_bool().unwrap_or(false),
            summary: reflected["summary"].clone(),
            feedback: reflected["feedback"].clone(),
        })
    }
}

/// The `agent-llm` workflow on `config`'s model. `retry` is each phase's policy.
pub fn workflow(config: LlmConfig, retry: RetryPolicy) -> Workflow {
    Workflow::new("agent-llm", move |ctx: Context, input: AgentLlmInput| {
        let (config, retry) = (config.clone(), retry.clone());
        async move {
            let limits = AgentLimits::new(input.max_rounds, input.max_parallel, input.step_timeout_s)?;
            let handlers = LlmHandlers { config, limits, retry, flow: input.flow_control };
            run_agent(&ctx, &handlers, input.goal, limits).await
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_found_in_prose_and_fences() {
        assert_eq!(json_in("```json\n{\"steps\": []}\n```"), Some(json!({"steps": []})));
        assert_eq!(json_in("Sure! {\"done\": true} Hope that helps."), Some(json!({"done": true})));
        assert_eq!(json_in("I cannot do that."), None);
        assert_eq!(json_in("{not json}"), None);
        assert!(!format!("{:?}", LlmConfig::new("http://x", "m", Some("sk-secret".into()))).contains("sk-secret"));
    }
}
