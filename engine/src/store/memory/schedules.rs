//! The memory store's schedules: one map, changed under the store's lock.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::{DueSchedule, ScheduleStore, StoredSchedule};
use keel_proto::{ScheduleSpec, ScheduleState};

#[async_trait]
impl ScheduleStore for MemoryStore {
    async fn put_schedule(&self, spec: &ScheduleSpec, next_ms: Option<u64>) -> Result<bool> {
        let mut state = self.state();
        match state.schedules.get_mut(&spec.id) {
            Some(existing) => {
                existing.spec = spec.clone();
                if !existing.paused {
                    existing.next_ms = next_ms;
                }
                Ok(false)
            }
            None => {
                if state.schedules.len() >= crate::schedules::MAX_SCHEDULES {
                    return Err(crate::store::refusal("FULL_SCHEDULES", ""));
                }
                let schedule =
                    StoredSchedule { spec: spec.clone(), paused: false, state: ScheduleState::default(), next_ms };
                state.schedules.insert(spec.id.clone(), schedule);
                Ok(true)
            }
        }
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<StoredSchedule>> {
        Ok(self.state().schedules.get(id).cloned())
    }

    async fn list_schedules(&self) -> Result<Vec<StoredSchedule>> {
        Ok(self.state().schedules.values().cloned().collect())
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        Ok(self.state().schedules.remove(id).is_some())
    }

    async fn pause_schedule(&self, id: &str, paused: bool, next_ms: Option<u64>) -> Result<bool> {
        let mut state = self.state();
        let Some(schedule) = state.schedules.get_mut(id) else { return Ok(false) };
        schedule.paused = paused;
        schedule.next_ms = if paused { None } else { next_ms };
        Ok(true)
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<DueSchedule>> {
        let state = self.state();
        let mut due: Vec<DueSchedule> = state
            .schedules
            .values()
            .filter_map(|s| {
                let tick_ms = s.next_ms.filter(|t| *t <= now_ms)?;
                Some(DueSchedule { spec: s.spec.clone(), state: s.state.clone(), tick_ms })
            })
            .collect();
        due.sort_by_key(|d| (d.tick_ms, d.spec.id.clone()));
        due.truncate(limit.max(1));
        Ok(due)
    }

    async fn advance_schedule(
        &self,
        id: &str,
        from_tick_ms: u64,
        next_ms: Option<u64>,
        schedule_state: &ScheduleState,
    ) -> Result<bool> {
        let mut state = self.state();
        let Some(schedule) = state.schedules.get_mut(id) else { return Ok(false) };
        if schedule.paused || schedule.next_ms != Some(from_tick_ms) {
            return Ok(false);
        }
        schedule.next_ms = next_ms;
        schedule.state = schedule_state.clone();
        Ok(true)
    }
}
