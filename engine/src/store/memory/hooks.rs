//! The memory store's webhooks: subscriptions, the outbox, delivery jobs and logs.

#[allow(clippy::wildcard_imports)]
use super::*;

#[async_trait]
impl HookStore for MemoryStore {
    async fn put_webhook(&self, subscription: &WebhookSubscription) -> Result<()> {
        self.state().webhooks.insert(subscription.id.clone(), subscription.clone());
        Ok(())
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookSubscription>> {
        let mut subs: Vec<WebhookSubscription> = self.state().webhooks.values().cloned().collect();
        subs.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(subs)
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        let mut state = self.state();
        state.delivery_logs.remove(id);
        Ok(state.webhooks.remove(id).is_some())
    }

    async fn claim_outbox(
        &self,
        _consumer: &str,
        max: usize,
        block: Duration,
        stale: Duration,
    ) -> Result<Vec<OutboxItem>> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let now = self.now_ms();
                let mut state = self.state();
                let taken_before = now.saturating_sub(stale.as_millis() as u64);
                let free: Vec<Sid> = state
                    .outbox
                    .keys()
                    .filter(|sid| state.outbox_taken.get(sid).is_none_or(|at| *at <= taken_before))
                    .take(max.max(1))
                    .copied()
                    .collect();
                if !free.is_empty() {
                    let mut items = Vec::new();
                    for sid in free {
                        state.outbox_taken.insert(sid, now);
                        items.extend(state.outbox.get(&sid).cloned());
                    }
                    return Ok(items);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn fan_out(&self, item: &OutboxItem, jobs: &[DeliveryJob]) -> Result<()> {
        let item_id = item.id.as_str();
        let sid = parse_sid(item_id)?;
        let now = self.now_ms();
        let mut state = self.state();
        state.outbox_taken.remove(&sid);
        // Fanned out already (by a dispatcher that took it before us): nothing to add.
        if state.outbox.remove(&sid).is_none() {
            return Ok(());
        }
        for job in jobs {
            let member = serde_json::to_string(job).map_err(|e| Error::Invalid(e.to_string()))?;
            state.jobs.entry(member).or_insert(now);
        }
        Ok(())
    }

    async fn due_jobs(&self, max: usize, visibility: Duration) -> Result<Vec<DeliveryJob>> {
        let now = self.now_ms();
        let mut state = self.state();
        let mut due: Vec<(u64, String)> =
            state.jobs.iter().filter(|(_, at)| **at <= now).map(|(job, at)| (*at, job.clone())).collect();
        due.sort();
        due.truncate(max.max(1));
        let mut out = Vec::new();
        for (_, member) in due {
            state.jobs.insert(member.clone(), now + visibility.as_millis() as u64);
            out.push(serde_json::from_str(&member).map_err(|e| Error::corrupt("delivery job", e))?);
        }
        Ok(out)
    }

    async fn update_job(&self, job: &DeliveryJob, next: Option<(&DeliveryJob, Duration)>) -> Result<()> {
        let now = self.now_ms();
        let mut state = self.state();
        state.jobs.remove(&serde_json::to_string(job).map_err(|e| Error::Invalid(e.to_string()))?);
        if let Some((next, delay)) = next {
            let member = serde_json::to_string(next).map_err(|e| Error::Invalid(e.to_string()))?;
            state.jobs.insert(member, now + delay.as_millis() as u64);
        }
        Ok(())
    }

    async fn log_delivery(&self, log: &str, delivery: &WebhookDelivery) -> Result<()> {
        let mut state = self.state();
        let entries = state.delivery_logs.entry(log.to_owned()).or_default();
        entries.push_front(delivery.clone());
        entries.truncate(crate::store::DELIVERY_LOG_LEN);
        Ok(())
    }

    async fn deliveries(&self, log: &str, limit: usize) -> Result<Vec<WebhookDelivery>> {
        let state = self.state();
        Ok(state.delivery_logs.get(log).map(|l| l.iter().take(limit.max(1)).cloned().collect()).unwrap_or_default())
    }
}
