//! Flow control in process: flow_control.lua's rules on plain maps.

use std::collections::{HashMap, VecDeque};

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::flow::{FlowRule, MAX_CONFIGURED_KEYS, Slot, SlotAnswer, SlotRequest, holder_run};
use crate::store::FlowStore;
use keel_proto::FlowKeyStatus;

/// How often a waiter for a slot looks again when no release wakes it first.
const POLL_MS: u64 = 2000;
/// How long a key nobody configured is remembered after its last use.
const FORGET_MS: u64 = 86_400_000;
/// At most this many keys used lately are listed (configured ones always are).
const LISTED: usize = 1000;

/// One key's state (flow_control.lua keeps the same in five Redis keys).
#[derive(Default)]
pub(super) struct FlowKey {
    server: Option<FlowRule>,
    requested: Option<FlowRule>,
    paused: bool,
    last_used: Option<u64>,
    /// Holder -> lease deadline.
    slots: HashMap<String, u64>,
    /// Start times in the window, oldest first.
    starts: VecDeque<u64>,
    /// Waiters in arrival order, each with the time it keeps its place until.
    queue: Vec<(String, u64)>,
}

impl FlowKey {
    fn rule(&self, own: Option<FlowRule>) -> Option<FlowRule> {
        self.server.or(own)
    }

    fn purge(&mut self, now: u64, period_ms: u64) {
        self.slots.retain(|_, deadline| *deadline > now);
        while self.starts.front().is_some_and(|t| *t <= now.saturating_sub(period_ms)) {
            self.starts.pop_front();
        }
        self.queue.retain(|(_, alive)| *alive > now);
    }

    /// Room now: free slots and starts left (None: unlimited).
    fn room(&self, rule: Option<FlowRule>) -> Option<i64> {
        let rule = rule?;
        let mut free = rule.parallelism.map(|p| i64::from(p) - self.slots.len() as i64);
        if let Some(r) = rule.rate {
            let left = i64::from(r) - self.starts.len() as i64;
            free = Some(free.map_or(left, |f| f.min(left)));
        }
        free
    }

    fn heads(&self, free: Option<i64>) -> Vec<RunId> {
        let n = free.map_or(self.queue.len(), |f| f.max(0) as usize);
        self.queue.iter().take(n).filter_map(|(h, _)| holder_run(h)).collect()
    }

    fn status(&self, key: &str, now: u64) -> FlowKeyStatus {
        let period = self.server.or(self.requested).map_or(1000, |r| r.period_ms);
        FlowKeyStatus {
            key: key.to_owned(),
            limits: self.server.map(|r| r.limits()),
            requested: self.requested.map(|r| r.limits()),
            paused: self.paused,
            in_flight: self.slots.values().filter(|d| **d > now).count() as u32,
            waiting: self.queue.iter().filter(|(_, alive)| *alive > now).count() as u32,
            starts_in_window: self.starts.iter().filter(|t| **t > now.saturating_sub(period)).count() as u32,
            last_used_ms: self.last_used,
        }
    }

    fn forgotten(&self, now: u64) -> bool {
        self.server.is_none() && !self.paused && self.last_used.is_none_or(|t| t + FORGET_MS <= now)
    }
}

#[async_trait]
impl FlowStore for MemoryStore {
    async fn acquire_slot(&self, req: &SlotRequest<'_>) -> Result<SlotAnswer> {
        let now = self.now_ms();
        let lease_ms = req.lease.as_millis().max(1) as u64;
        let grace_ms = crate::flow::place_kept(req.lease).as_millis().max(1) as u64;
        let mut state = self.state();
        let key = state.flow.entry(req.key.to_owned()).or_default();
        for h in req.releases {
            key.slots.remove(h);
        }
        let own = (req.rule.parallelism.is_some() || req.rule.rate.is_some()).then_some(req.rule);
        let rule = key.rule(own);
        key.requested = own;
        key.last_used = Some(now);
        key.purge(now, rule.map_or(1000, |r| r.period_ms));
        if let Some(deadline) = key.slots.get_mut(req.holder) {
            *deadline = now + lease_ms;
            return Ok(SlotAnswer { slot: Slot::Acquired, wake: Vec::new() });
        }
        let free = key.room(rule);
        let place = key.queue.iter().position(|(h, _)| h == req.holder).unwrap_or(key.queue.len()) as i64;
        if !key.paused && free.is_none_or(|f| place < f) {
            if rule.is_some_and(|r| r.parallelism.is_some()) {
                key.slots.insert(req.holder.to_owned(), now + lease_ms);
            }
            if rule.is_some_and(|r| r.rate.is_some()) {
                key.starts.push_back(now);
            }
            key.queue.retain(|(h, _)| h != req.holder);
            let wake = key.heads(free.map(|f| f - 1));
            return Ok(SlotAnswer { slot: Slot::Acquired, wake });
        }
        let mut retry = now + POLL_MS;
        if !key.paused
            && let Some(rule) = rule
        {
            if let (Some(r), Some(oldest)) = (rule.rate, key.starts.front())
                && key.starts.len() >= r as usize
            {
                retry = (now + 1).max(oldest + rule.period_ms);
            }
            if let Some(p) = rule.parallelism
                && key.slots.len() >= p as usize
                && let Some(first) = key.slots.values().min()
            {
                retry = retry.min(*first);
            }
        }
        let alive = retry + grace_ms;
        match key.queue.iter_mut().find(|(h, _)| h == req.holder) {
            Some(entry) => entry.1 = alive,
            None => key.queue.push((req.holder.to_owned(), alive)),
        }
        let paused = key.paused;
        let wake = if paused { Vec::new() } else { key.heads(free) };
        Ok(SlotAnswer { slot: Slot::Wait { retry_at_ms: retry, paused }, wake })
    }

    async fn release_slots(&self, key: &str, holders: &[String]) -> Result<Vec<RunId>> {
        let now = self.now_ms();
        let mut state = self.state();
        let Some(k) = state.flow.get_mut(key) else { return Ok(Vec::new()) };
        for h in holders {
            k.slots.remove(h);
        }
        let rule = k.rule(k.requested);
        k.purge(now, rule.map_or(1000, |r| r.period_ms));
        if k.paused {
            return Ok(Vec::new());
        }
        Ok(k.heads(k.room(rule)))
    }

    async fn renew_slots(&self, key: &str, holders: &[String], lease: Duration) -> Result<()> {
        let now = self.now_ms();
        let mut state = self.state();
        if let Some(k) = state.flow.get_mut(key) {
            for h in holders {
                if let Some(deadline) = k.slots.get_mut(h) {
                    *deadline = now + lease.as_millis().max(1) as u64;
                }
            }
        }
        Ok(())
    }

    async fn wake_flow_waiter(&self, run_id: &RunId) -> Result<()> {
        let now = self.now_ms();
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(run) = state.runs.get_mut(run_id) else { return Ok(()) };
        let flow_waiting = matches!(run.status, RunStatus::Waiting | RunStatus::Sleeping)
            && run.blocked.as_deref().is_some_and(|b| b.starts_with(crate::flow::WAITING_MARK));
        if flow_waiting {
            if let Some(old) = run.wake.replace(now) {
                state.timers.remove(&(old, run_id.clone()));
            }
            state.timers.insert((now, run_id.clone()));
        }
        Ok(())
    }

    async fn set_flow_limits(&self, key: &str, rule: Option<FlowRule>) -> Result<()> {
        let mut state = self.state();
        let configured = state.flow.values().filter(|k| k.server.is_some()).count();
        let k = state.flow.entry(key.to_owned()).or_default();
        if rule.is_some() && k.server.is_none() && configured >= MAX_CONFIGURED_KEYS {
            return Err(crate::store::refusal("FULL_FLOW_KEYS", ""));
        }
        k.server = rule;
        Ok(())
    }

    async fn pause_flow_key(&self, key: &str, paused: bool) -> Result<Vec<RunId>> {
        let now = self.now_ms();
        let mut state = self.state();
        let k = state.flow.entry(key.to_owned()).or_default();
        k.paused = paused;
        if paused {
            return Ok(Vec::new());
        }
        let rule = k.rule(k.requested);
        k.purge(now, rule.map_or(1000, |r| r.period_ms));
        Ok(k.heads(k.room(rule)))
    }

    async fn flow_key(&self, key: &str) -> Result<Option<FlowKeyStatus>> {
        let now = self.now_ms();
        let state = self.state();
        Ok(state.flow.get(key).filter(|k| !k.forgotten(now)).map(|k| k.status(key, now)))
    }

    async fn flow_keys(&self, configured_only: bool) -> Result<Vec<FlowKeyStatus>> {
        let now = self.now_ms();
        let mut state = self.state();
        state.flow.retain(|_, k| !k.forgotten(now));
        let mut used: Vec<(u64, &String)> = state
            .flow
            .iter()
            .filter(|(_, k)| k.server.is_none() && !k.paused)
            .map(|(key, k)| (k.last_used.unwrap_or(0), key))
            .collect();
        used.sort_by(|a, b| b.cmp(a));
        let recent: std::collections::HashSet<&String> =
            if configured_only { Default::default() } else { used.into_iter().take(LISTED).map(|(_, k)| k).collect() };
        Ok(state
            .flow
            .iter()
            .filter(|(key, k)| k.server.is_some() || k.paused || recent.contains(key))
            .map(|(key, k)| k.status(key, now))
            .collect())
    }
}
