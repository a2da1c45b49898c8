//! The plan / execute / reflect agent's wire formats: the `agent-http` run input,
//! the three requests Keel POSTs to the starting service and what it answers,
//! and the run's output.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The service's three endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentEndpoints {
    pub plan: String,
    pub execute: String,
    pub reflect: String,
}

/// Input of the `agent-http` workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentHttpInput {
    pub goal: Value,
    pub endpoints: AgentEndpoints,
    /// Plan / execute / reflect rounds at most (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
    /// Planned steps executed at once (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Each call's timeout in seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_timeout_s: Option<u64>,
    /// Flow-control keys per handler (e.g. the model provider's limits).
    #[serde(default, skip_serializing_if = "AgentFlowControl::is_empty")]
    pub flow_control: AgentFlowControl,
}

/// The flow-control key each of an agent's handlers calls under (none: the
/// run's own key, if it has one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentFlowControl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::FlowControl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execute: Option<crate::FlowControl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reflect: Option<crate::FlowControl>,
}

impl AgentFlowControl {
    pub fn is_empty(&self) -> bool {
        self.plan.is_none() && self.execute.is_none() && self.reflect.is_none()
    }
}

/// Input of the `agent-llm` workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentLlmInput {
    pub goal: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_timeout_s: Option<u64>,
    /// Flow-control keys per handler (e.g. the model provider's limits).
    #[serde(default, skip_serializing_if = "AgentFlowControl::is_empty")]
    pub flow_control: AgentFlowControl,
}

/// POSTed to the plan endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct PlanRequest {
    pub run_id: String,
    pub step_id: String,
    pub goal: Value,
    pub round: u32,
    /// The last reflection's feedback (null in round 1).
    pub feedback: Value,
}

/// The plan endpoint's answer: the steps to execute, each with a unique string `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct PlanResponse {
    pub steps: Vec<Value>,
}

/// POSTed to the execute endpoint, once per planned step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ExecuteRequest {
    pub run_id: String,
    pub step_id: String,
    pub goal: Value,
    pub round: u32,
    pub step: Value,
}

/// A planned step and what executing it gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct StepOutcome {
    pub step: Value,
    pub outcome: Value,
}

/// POSTed to the reflect endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ReflectRequest {
    pub run_id: String,
    pub step_id: String,
    pub goal: Value,
    pub round: u32,
    pub outcomes: Vec<StepOutcome>,
}

/// The reflect endpoint's answer: `{"done": true, "summary": …}` or
/// `{"done": false, "feedback": …}` (another round, with this feedback to plan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ReflectResponse {
    pub done: bool,
    #[serde(default)]
    pub summary: Value,
    #[serde(default)]
    pub feedback: Value,
}

/// One round of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct AgentRound {
    pub round: u32,
    pub plan: Vec<Value>,
    pub outcomes: Vec<StepOutcome>,
    pub reflection: ReflectResponse,
}

/// The agent run's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct AgentOutput {
    pub rounds: Vec<AgentRound>,
    /// The final reflection's summary (null when the rounds ran out first).
    pub summary: Value,
    /// Whether a reflection said done (false: the round limit stopped it).
    pub done: bool,
}
