//! The memory store's worker registry, dead letters and the counters /metrics reads.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::{MAX_SIGNING_KEYS, StoredSigningKey, refusal};

#[async_trait]
impl RegistryStore for MemoryStore {
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.state().dead.iter().rev().take(limit.max(1)).cloned().collect())
    }

    async fn stats(&self, workflows: &[String]) -> Result<Stats> {
        let state = self.state();
        let mut stats = state.stats.clone();
        stats.dead_letters = state.dead.len() as u64;
        for status in RunStatus::ALL {
            stats.runs_by_status.insert(status, state.runs.values().filter(|r| r.status == status).count() as u64);
        }
        for workflow in workflows {
            let (queued, in_flight) = keel_proto::PRIORITIES
                .filter_map(|pr| state.queues.get(&super::queue_name(workflow, pr)))
                .map(|q| ((q.entries.len() - q.pending.len()) as u64, q.pending.len() as u64))
                .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
            stats.queued.insert(workflow.clone(), queued);
            stats.in_flight.insert(workflow.clone(), in_flight);
        }
        Ok(stats)
    }

    async fn register_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<()> {
        let now = self.now_ms();
        let mut info = info.clone();
        info.heartbeat_at_ms = now;
        self.state().workers.insert(info.worker_id.clone(), (info, now + ttl.as_millis() as u64));
        Ok(())
    }

    async fn unregister_worker(&self, worker_id: &str) -> Result<()> {
        self.state().workers.remove(worker_id);
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        let now = self.now_ms();
        let mut state = self.state();
        state.workers.retain(|_, (_, expires)| *expires > now);
        let mut workers: Vec<WorkerInfo> = state.workers.values().map(|(info, _)| info.clone()).collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(workers)
    }

    async fn signing_keys(&self, offer: Option<&str>) -> Result<Vec<StoredSigningKey>> {
        let now = self.now_ms();
        let mut state = self.state();
        let ring = &mut state.signing_keys;
        if let Some(offer) = offer
            && ring.keys.is_empty()
        {
            ring.add(offer, now);
        }
        Ok(ring.keys.clone())
    }

    async fn add_signing_key(&self, secret: &str) -> Result<Vec<StoredSigningKey>> {
        let now = self.now_ms();
        let mut state = self.state();
        let ring = &mut state.signing_keys;
        if ring.keys.len() >= MAX_SIGNING_KEYS {
            return Err(refusal("FULL", ""));
        }
        ring.add(secret, now);
        Ok(ring.keys.clone())
    }

    async fn retire_signing_key(&self, id: Option<&str>, settle: Duration) -> Result<Vec<StoredSigningKey>> {
        let now = self.now_ms();
        let mut state = self.state();
        let ring = &mut state.signing_keys;
        // Kept oldest first: the oldest is the first.
        let index = match id {
            Some(id) => ring.keys.iter().position(|k| k.id == id).ok_or_else(|| refusal("UNKNOWN", id))?,
            None => 0,
        };
        if ring.keys.len() <= 1 {
            return Err(refusal("LAST", ""));
        }
        let newest = ring.keys.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, k)| k.since_ms).max();
        let age = now.saturating_sub(newest.unwrap_or(0));
        if u128::from(age) < settle.as_millis() {
            return Err(refusal("SOON", &age.to_string()));
        }
        ring.keys.remove(index);
        Ok(ring.keys.clone())
    }
}
