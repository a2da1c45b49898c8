//! Run inboxes in process: inbox.lua's rules on a map.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::{InboxPage, InboxPush, InboxStore, MAX_INBOX_MESSAGES};

#[derive(Default)]
pub(super) struct Inbox {
    messages: Vec<String>,
    closed: bool,
    /// A closed inbox is dropped at this time (ms, the store's clock).
    drop_at: Option<u64>,
}

impl MemoryStore {
    fn purge_inboxes(state: &mut State, now: u64) {
        state.inboxes.retain(|_, inbox| inbox.drop_at.is_none_or(|at| at > now));
    }
}

#[async_trait]
impl InboxStore for MemoryStore {
    async fn inbox_push(&self, run_id: &RunId, messages: &[String], close: bool) -> Result<InboxPush> {
        let now = self.clock.now_ms();
        let mut state = self.state();
        Self::purge_inboxes(&mut state, now);
        let inbox = state.inboxes.entry(run_id.clone()).or_default();
        if inbox.closed {
            return Ok(InboxPush::Closed);
        }
        if (inbox.messages.len() + messages.len()) as u64 > MAX_INBOX_MESSAGES {
            return Err(Error::Invalid(format!(
                "run {run_id} has more than {MAX_INBOX_MESSAGES} messages: no more are taken"
            )));
        }
        inbox.messages.extend(messages.iter().cloned());
        inbox.closed = close;
        Ok(InboxPush::Added(inbox.messages.len() as u64))
    }

    async fn inbox_read(&self, run_id: &RunId, after: u64, limit: usize) -> Result<InboxPage> {
        let state = self.state();
        let Some(inbox) = state.inboxes.get(run_id) else {
            if after > 0 {
                return Err(Error::corrupt("run inbox", format!("the inbox of run {run_id} is gone")));
            }
            return Ok(InboxPage::default());
        };
        let messages = inbox.messages.iter().skip(after as usize).take(limit.max(1)).cloned().collect();
        Ok(InboxPage { messages, total: inbox.messages.len() as u64, closed: inbox.closed })
    }

    async fn inbox_close(&self, run_id: &RunId, keep: Duration) -> Result<()> {
        let now = self.clock.now_ms();
        let mut state = self.state();
        let inbox = state.inboxes.entry(run_id.clone()).or_default();
        inbox.closed = true;
        inbox.drop_at = Some(now.saturating_add(keep.as_millis() as u64));
        Ok(())
    }

    async fn dlq_delete(&self, run_ids: &[RunId], keep: Duration) -> Result<u64> {
        let now = self.clock.now_ms();
        let mut state = self.state();
        state.dlq_deleted.retain(|_, until| *until > now);
        let mut added = 0;
        for id in run_ids {
            if !state.dlq_deleted.contains_key(id) {
                state.dlq_deleted.insert(id.clone(), now.saturating_add(keep.as_millis() as u64));
                added += 1;
            }
        }
        Ok(added)
    }

    async fn dlq_deleted(&self, run_ids: &[RunId]) -> Result<Vec<bool>> {
        let now = self.clock.now_ms();
        let state = self.state();
        Ok(run_ids.iter().map(|id| state.dlq_deleted.get(id).is_some_and(|until| *until > now)).collect())
    }

    async fn qstash_signing_keys(&self, offer: (&str, &str), replace: bool) -> Result<(String, String)> {
        let mut state = self.state();
        if replace || state.qstash_keys.is_none() {
            state.qstash_keys = Some((offer.0.to_owned(), offer.1.to_owned()));
        }
        Ok(state.qstash_keys.clone().unwrap_or_default())
    }
}
