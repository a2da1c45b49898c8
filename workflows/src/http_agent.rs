//! `agent-http`: plan, execute and reflect are endpoints of the service that
//! started the run. Every call is a durable `ctx.call`, signed with the worker's
//! key (Standard Webhooks headers) and carrying an `idempotency-key`; timeouts,
//! 429 and 5xx are retried (honouring Retry-After), other 4xx fail the step.

use keel_proto::FlowControl;
use keel_proto::agent::{
    AgentEndpoints, AgentFlowControl, AgentHttpInput, ExecuteRequest, PlanRequest, PlanResponse, ReflectRequest,
    ReflectResponse,
};
use keel_worker::{CallRequest, Context, Error, Result, RetryPolicy, Workflow};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::agent::{AgentHandlers, AgentLimits, ExecuteInput, PlanInput, ReflectInput, run_agent};

/// The service's endpoints, called over HTTP.
#[derive(Debug, Clone)]
pub struct HttpHandlers {
    endpoints: AgentEndpoints,
    limits: AgentLimits,
    retry: RetryPolicy,
    flow: AgentFlowControl,
}

impl HttpHandlers {
    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        ctx: &Context,
        step_id: &str,
        url: &str,
        body: &B,
        flow: Option<&FlowControl>,
    ) -> Result<R> {
        let body = serde_json::to_value(body).map_err(|e| Error::new("encode_failed", e.to_string()))?;
        let mut request =
            CallRequest::post(url, body).signed().timeout(self.limits.step_timeout).retry(self.retry.clone());
        if let Some(fc) = flow {
            request = request.flow_control(fc.key.clone(), fc.limits.clone());
        }
        let response = ctx.call(step_id, request).await?;
        serde_json::from_value(response.body.clone()).map_err(|e| {
            Error::new(
                "bad_response",
                format!(
                    "{url} answered {} with a body that does not fit the agent contract ({e}): {}",
                    response.status, response.body
                ),
            )
        })
    }
}

impl AgentHandlers for HttpHandlers {
    async fn plan(&self, ctx: &Context, input: PlanInput) -> Result<Vec<Value>> {
        let body = PlanRequest {
            run_id: ctx.run_id().to_string(),
            step_id: input.step_id.clone(),
            goal: input.goal,
            round: input.round,
            feedback: input.feedback,
        };
        let plan: PlanResponse =
            self.post(ctx, &input.step_id, &self.endpoints.plan, &body, self.flow.plan.as_ref()).await?;
        Ok(plan.steps)
    }

    async fn execute(&self, ctx: &Context, input: ExecuteInput) -> Result<Value> {
        let body = ExecuteRequest {
            run_id: ctx.run_id().to_string(),
            step_id: input.step_id.clone(),
            goal: input.goal,
            round: input.round,
            step: input.step,
        };
        self.post(ctx, &input.step_id, &self.endpoints.execute, &body, self.flow.execute.as_ref()).await
    }

    async fn reflect(&self, ctx: &Context, input: ReflectInput) -> Result<ReflectResponse> {
        let body = ReflectRequest {
            run_id: ctx.run_id().to_string(),
            step_id: input.step_id.clone(),
            goal: input.goal,
            round: input.round,
            outcomes: input.outcomes,
        };
        self.post(ctx, &input.step_id, &self.endpoints.reflect, &body, self.flow.reflect.as_ref()).await
    }
}

/// The `agent-http` workflow. `retry` is each call's policy (the default: 5 attempts).
pub fn workflow(retry: RetryPolicy) -> Workflow {
    Workflow::new("agent-http", move |ctx: Context, input: AgentHttpInput| {
        let retry = retry.clone();
        async move {
            let limits = AgentLimits::new(input.max_rounds, input.max_parallel, input.step_timeout_s)?;
            let handlers = HttpHandlers { endpoints: input.endpoints, limits, retry, flow: input.flow_control };
            run_agent(&ctx, &handlers, input.goal, limits).await
        }
    })
}
