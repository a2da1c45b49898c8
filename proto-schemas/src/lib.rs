//! Every Keel type that crosses a process boundary: journal entries, tasks and run
//! summaries (and, later, HTTP bodies and webhook payloads).
//!
//! These are wire formats. Changing one is a versioned, deliberate act: journal
//! entries carry `v`, and `json-schema/*.json` beside this crate is generated from
//! these types and checked for drift by `tests/schemas.rs`. Regenerate it with
//! `KEEL_BLESS=1 cargo test -p keel-proto --test schemas`.

pub mod agent;
pub mod flow;
pub mod http;
mod ids;
mod journal;
pub mod qstash;
mod run;
mod schedule;
mod task;
mod webhook;
mod worker;

pub use flow::{
    FLOW_KEY_MAX, FlowControl, FlowKeyList, FlowKeyStatus, FlowLimits, PARALLELISM_MAX, RATE_MAX, validate_flow_key,
};
pub use ids::{IdError, RunId, validate_event_key, validate_idempotency_key, validate_workflow_name};
pub use journal::{ChildOutcome, JOURNAL_VERSION, JournalEntry, JournalEvent, JournalRecord};
pub use run::{DEFAULT_PRIORITY, ErrorInfo, PRIORITIES, ParentRef, RunPage, RunStatus, RunSummary, validate_priority};
pub use schedule::{
    CatchUp, Overlap, Schedule, ScheduleList, ScheduleSpec, ScheduleState, TriggeredRun, scheduled_run_id,
    validate_schedule_id,
};
pub use task::{TASK_VERSION, Task};
pub use webhook::{
    DeliveryJob, DeliveryTarget, WebhookDelivery, WebhookEventType, WebhookPayload, WebhookSubscription,
};
pub use worker::WorkerInfo;

/// The JSON Schemas of the wire formats, by file name under `json-schema/`.
pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("journal-entry.json", schemars::schema_for!(JournalEntry)),
        ("journal-record.json", schemars::schema_for!(JournalRecord)),
        ("task.json", schemars::schema_for!(Task)),
        ("run-summary.json", schemars::schema_for!(RunSummary)),
        ("run-page.json", schemars::schema_for!(RunPage)),
        ("worker-info.json", schemars::schema_for!(WorkerInfo)),
        ("webhook-payload.json", schemars::schema_for!(WebhookPayload)),
        ("webhook-subscription.json", schemars::schema_for!(WebhookSubscription)),
        ("webhook-delivery.json", schemars::schema_for!(WebhookDelivery)),
        ("delivery-job.json", schemars::schema_for!(DeliveryJob)),
        ("http/start-run-request.json", schemars::schema_for!(http::StartRunRequest)),
        ("http/run-result.json", schemars::schema_for!(http::RunResult)),
        ("http/run-detail.json", schemars::schema_for!(http::RunDetail)),
        ("http/journal-page.json", schemars::schema_for!(http::JournalPage)),
        ("http/problem.json", schemars::schema_for!(http::Problem)),
        ("http/signing-key.json", schemars::schema_for!(http::SigningKey)),
        ("http/schedule-spec.json", schemars::schema_for!(ScheduleSpec)),
        ("http/schedule.json", schemars::schema_for!(Schedule)),
        ("schedule-state.json", schemars::schema_for!(ScheduleState)),
        ("http/triggered-run.json", schemars::schema_for!(TriggeredRun)),
        ("http/flow-limits.json", schemars::schema_for!(FlowLimits)),
        ("http/flow-key.json", schemars::schema_for!(FlowKeyStatus)),
        ("http/flow-key-list.json", schemars::schema_for!(FlowKeyList)),
        ("agent/http-input.json", schemars::schema_for!(agent::AgentHttpInput)),
        ("agent/llm-input.json", schemars::schema_for!(agent::AgentLlmInput)),
        ("agent/plan-request.json", schemars::schema_for!(agent::PlanRequest)),
        ("agent/plan-response.json", schemars::schema_for!(agent::PlanResponse)),
        ("agent/execute-request.json", schemars::schema_for!(agent::ExecuteRequest)),
        ("agent/reflect-request.json", schemars::schema_for!(agent::ReflectRequest)),
        ("agent/reflect-response.json", schemars::schema_for!(agent::ReflectResponse)),
        ("agent/output.json", schemars::schema_for!(agent::AgentOutput)),
        ("qstash/batch.json", schemars::schema_for!(Vec<qstash::BatchMessage>)),
        ("qstash/publish-answer.json", schemars::schema_for!(qstash::PublishAnswer)),
        ("qstash/delivery.json", schemars::schema_for!(Vec<qstash::RawStep>)),
        ("qstash/step.json", schemars::schema_for!(qstash::StepView)),
        ("qstash/wait-request.json", schemars::schema_for!(qstash::WaitRequest)),
        ("qstash/invoke-request.json", schemars::schema_for!(qstash::InvokeRequest)),
        ("qstash/callback-body.json", schemars::schema_for!(qstash::CallbackBody)),
        ("qstash/notify-response.json", schemars::schema_for!(Vec<qstash::NotifyResponse>)),
        ("qstash/submission.json", schemars::schema_for!(qstash::Submission)),
        ("qstash/upstash-run.json", schemars::schema_for!(qstash::UpstashRun)),
        ("qstash/delivery-outcome.json", schemars::schema_for!(qstash::DeliveryOutcome)),
    ]
}
