//! The plan / execute / reflect loop, written once over [`AgentHandlers`].
//!
//! Round after round: plan (one durable step) -> execute every planned step (each
//! its own durable step, in parallel under a bound) -> reflect (one durable step)
//! -> done, or another round with the reflection's feedback, up to a limit.
//! `total_steps` is declared as soon as a plan exists and grows with each round.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use keel_proto::agent::{AgentOutput, AgentRound, ReflectResponse, StepOutcome};
use keel_worker::{Context, Error, Result};
use serde_json::Value;

/// What `plan` gets.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// The step id to take: the handler makes exactly one durable step with it.
    pub step_id: String,
    pub goal: Value,
    pub round: u32,
    /// The previous reflection's feedback (null in round 1).
    pub feedback: Value,
}

/// What `execute` gets.
#[derive(Debug, Clone)]
pub struct ExecuteInput {
    pub step_id: String,
    pub goal: Value,
    pub round: u32,
    /// One planned step, as the plan gave it (an object with a string `id`).
    pub step: Value,
}

/// What `reflect` gets.
#[derive(Debug, Clone)]
pub struct ReflectInput {
    pub step_id: String,
    pub goal: Value,
    pub round: u32,
    pub outcomes: Vec<StepOutcome>,
}

/// The three phases. Each method makes exactly one durable step named by its
/// input's `step_id` (with `ctx.step(..)` or `ctx.call(..)`), so its result is
/// journaled and replay never calls it again.
pub trait AgentHandlers: Send + Sync + 'static {
    /// The steps to execute: objects with a unique string `id`.
    fn plan(&self, ctx: &Context, input: PlanInput) -> impl Future<Output = Result<Vec<Value>>> + Send;
    fn execute(&self, ctx: &Context, input: ExecuteInput) -> impl Future<Output = Result<Value>> + Send;
    fn reflect(&self, ctx: &Context, input: ReflectInput) -> impl Future<Output = Result<ReflectResponse>> + Send;
}

/// How far the loop goes.
#[derive(Debug, Clone, Copy)]
pub struct AgentLimits {
    pub max_rounds: u32,
    pub max_parallel: u32,
    pub step_timeout: Duration,
}

impl AgentLimits {
    pub fn new(max_rounds: Option<u32>, max_parallel: Option<u32>, step_timeout_s: Option<u64>) -> Result<Self> {
        let limits = Self {
            max_rounds: max_rounds.unwrap_or(3),
            max_parallel: max_parallel.unwrap_or(8),
            step_timeout: Duration::from_secs(step_timeout_s.unwrap_or(60)),
        };
        if !(1..=20).contains(&limits.max_rounds) || !(1..=256).contains(&limits.max_parallel) {
            return Err(Error::new("invalid_input", "max_rounds must be 1-20 and max_parallel 1-256"));
        }
        if limits.step_timeout.is_zero() || limits.step_timeout > Duration::from_secs(3600) {
            return Err(Error::new("invalid_input", "step_timeout_s must be 1-3600"));
        }
        Ok(limits)
    }
}

/// The planned steps, checked: objects with unique, usable string ids.
pub(crate) fn check_plan(steps: &[Value]) -> Result<()> {
    let mut seen = HashSet::new();
    for step in steps {
        let id = step.get("id").and_then(Value::as_str).ok_or_else(|| {
            Error::new("plan_invalid", format!("every planned step needs a string \"id\"; got {step}"))
        })?;
        if id.is_empty() || id.len() > 100 || id.contains(char::is_control) {
            return Err(Error::new("plan_invalid", format!("step id {id:?} must be 1-100 printable characters")));
        }
        if !seen.insert(id.to_owned()) {
            return Err(Error::new("plan_invalid", format!("step id {id:?} appears twice in the plan")));
        }
    }
    Ok(())
}

/// Run the loop to its end.
pub async fn run_agent<H: AgentHandlers>(
    ctx: &Context,
    handlers: &H,
    goal: Value,
    limits: AgentLimits,
) -> Result<AgentOutput> {
    let mut rounds = Vec::new();
    let mut feedback = Value::Null;
    let mut declared = 0u32;
    for round in 1..=limits.max_rounds {
        let plan = handlers
            .plan(
                ctx,
                PlanInput { step_id: format!("plan-{round}"), goal: goal.clone(), round, feedback: feedback.clone() },
            )
            .await?;
        check_plan(&plan)?;
        // plan + its steps + reflect, on top of the earlier rounds'.
        declared += plan.len() as u32 + 2;
        ctx.progress(declared).await?;
        let mut outcomes = Vec::with_capacity(plan.len());
        for chunk in plan.chunks(limits.max_parallel as usize) {
            let executed = ctx
                .all(chunk.iter().map(|step| {
                    let id = step.get("id").and_then(Value::as_str).unwrap_or_default();
                    let input = ExecuteInput {
                        step_id: format!("execute-{round}-{id}"),
                        goal: goal.clone(),
                        round,
                        step: step.clone(),
                    };
                    handlers.execute(ctx, input)
                }))
                .await?;
            outcomes.extend(chunk.iter().cloned().zip(executed).map(|(step, outcome)| StepOutcome { step, outcome }));
        }
        let reflection = handlers
            .reflect(
                ctx,
                ReflectInput {
                    step_id: format!("reflect-{round}"),
                    goal: goal.clone(),
                    round,
                    outcomes: outcomes.clone(),
                },
            )
            .await?;
        let done = reflection.done;
        feedback = reflection.feedback.clone();
        let summary = reflection.summary.clone();
        rounds.push(AgentRound { round, plan, outcomes, reflection });
        if done {
            return Ok(AgentOutput { rounds, summary, done: true });
        }
    }
    Ok(AgentOutput { rounds, summary: Value::Null, done: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plans_need_unique_string_ids() {
        assert!(check_plan(&[json!({"id": "a"}), json!({"id": "b", "x": 1})]).is_ok());
        assert!(check_plan(&[json!({"id": "a"}), json!({"id": "a"})]).is_err());
        assert!(check_plan(&[json!({"name": "a"})]).is_err());
        assert!(check_plan(&[json!({"id": 7})]).is_err());
        assert!(check_plan(&[json!({"id": "a\nb"})]).is_err());
    }
}
