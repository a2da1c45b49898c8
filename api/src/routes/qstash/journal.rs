//! What an `upstash` run's journal says in the protocol's terms: its Init
//! message, its log (the entries its deliveries ended with, in order) and the
//! answer of a delivery that failed for good.

use keel_proto::qstash::{DeliveryOutcome, FailedAnswer, RawStep, UpstashRun};
use keel_proto::{JournalEvent, RunId};

use crate::AppState;
use crate::error::ApiResult;

/// The most journal entries read for one run.
const MAX_ENTRIES: usize = 100_000;
const PAGE: usize = 1000;

#[derive(Debug, Default)]
pub(crate) struct RunRecord {
    pub input: Option<UpstashRun>,
    /// The log: each entry with when it was delivered (ms).
    pub log: Vec<(RawStep, u64)>,
    /// The last request that failed for good.
    pub failed: Option<FailedAnswer>,
}

pub(crate) async fn read(state: &AppState, run_id: &RunId) -> ApiResult<RunRecord> {
    let mut record = RunRecord::default();
    let mut after: Option<String> = None;
    let mut read = 0;
    while read < MAX_ENTRIES {
        let page = state.store().read_journal(run_id, after.as_deref(), PAGE).await?;
        read += page.len();
        for entry in &page {
            match &entry.entry.event {
                JournalEvent::RunStarted { input, .. } => record.input = serde_json::from_value(input.clone()).ok(),
                JournalEvent::StepCompleted { output, .. } => {
                    let Ok(outcome) = serde_json::from_value::<DeliveryOutcome>(output.clone()) else { continue };
                    if let Some(step) = outcome.entry
                        && !record.log.iter().any(|(s, _)| s.message_id == step.message_id)
                    {
                        record.log.push((step, entry.at_ms));
                    }
                    if outcome.failed.is_some() {
                        record.failed = outcome.failed;
                    }
                }
                _ => {}
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.seq.clone()),
            _ => break,
        }
    }
    Ok(record)
}
