//! The Redis store's schedules: four global keys (keys.rs `schedules*`),
//! changed only by `schedules.lua`, read with plain commands.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::{DueSchedule, ScheduleStore, StoredSchedule};
use keel_proto::{ScheduleSpec, ScheduleState};

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("schedules.lua")));

impl RedisStore {
    async fn schedules_script(&self, args: &[&str]) -> Result<i64> {
        let keys = self.keys();
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(keys.schedules())
            .key(keys.schedule_states())
            .key(keys.schedules_due())
            .key(keys.schedules_paused());
        for arg in args {
            invocation.arg(*arg);
        }
        Ok(invocation.invoke_async(&mut self.conn.clone()).await?)
    }
}

fn next_arg(next_ms: Option<u64>) -> String {
    next_ms.map(|n| n.to_string()).unwrap_or_default()
}

fn spec_of(text: &str) -> Result<ScheduleSpec> {
    from_json("schedule", text)
}

fn state_of(text: Option<&String>) -> Result<ScheduleState> {
    text.map(|t| from_json("schedule state", t)).transpose().map(Option::unwrap_or_default)
}

#[async_trait]
impl ScheduleStore for RedisStore {
    async fn put_schedule(&self, spec: &ScheduleSpec, next_ms: Option<u64>) -> Result<bool> {
        let json = to_json(spec)?;
        let max = crate::schedules::MAX_SCHEDULES.to_string();
        match self.schedules_script(&["put", &spec.id, &json, &next_arg(next_ms), &max]).await? {
            -1 => Err(crate::store::refusal("FULL_SCHEDULES", "")),
            n => Ok(n == 1),
        }
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<StoredSchedule>> {
        let keys = self.keys();
        let (spec, state, next, paused): (Option<String>, Option<String>, Option<f64>, bool) = redis::pipe()
            .cmd("HGET")
            .arg(keys.schedules())
            .arg(id)
            .cmd("HGET")
            .arg(keys.schedule_states())
            .arg(id)
            .cmd("ZSCORE")
            .arg(keys.schedules_due())
            .arg(id)
            .cmd("SISMEMBER")
            .arg(keys.schedules_paused())
            .arg(id)
            .query_async(&mut self.conn.clone())
            .await?;
        let Some(spec) = spec else { return Ok(None) };
        Ok(Some(StoredSchedule {
            spec: spec_of(&spec)?,
            paused,
            state: state_of(state.as_ref())?,
            next_ms: next.map(|n| n as u64),
        }))
    }

    async fn list_schedules(&self) -> Result<Vec<StoredSchedule>> {
        let keys = self.keys();
        let (specs, states, due, paused): (
            HashMap<String, String>,
            HashMap<String, String>,
            Vec<(String, f64)>,
            HashSet<String>,
        ) = redis::pipe()
            .cmd("HGETALL")
            .arg(keys.schedules())
            .cmd("HGETALL")
            .arg(keys.schedule_states())
            .cmd("ZRANGE")
            .arg(keys.schedules_due())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("SMEMBERS")
            .arg(keys.schedules_paused())
            .query_async(&mut self.conn.clone())
            .await?;
        let due: HashMap<String, f64> = due.into_iter().collect();
        let mut out: Vec<StoredSchedule> = specs
            .iter()
            .map(|(id, spec)| {
                Ok(StoredSchedule {
                    spec: spec_of(spec)?,
                    paused: paused.contains(id),
                    state: state_of(states.get(id))?,
                    next_ms: due.get(id).map(|n| *n as u64),
                })
            })
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok(out)
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        Ok(self.schedules_script(&["delete", id]).await? == 1)
    }

    async fn pause_schedule(&self, id: &str, paused: bool, next_ms: Option<u64>) -> Result<bool> {
        Ok(self.schedules_script(&["pause", id, if paused { "1" } else { "0" }, &next_arg(next_ms)]).await? == 1)
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<DueSchedule>> {
        let keys = self.keys();
        let mut conn = self.conn.clone();
        let due: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys.schedules_due())
            .arg("-inf")
            .arg(now_ms)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&String> = due.iter().map(|(id, _)| id).collect();
        let (specs, states): (Vec<Option<String>>, Vec<Option<String>>) = redis::pipe()
            .cmd("HMGET")
            .arg(keys.schedules())
            .arg(&ids)
            .cmd("HMGET")
            .arg(keys.schedule_states())
            .arg(&ids)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        for (((_, tick), spec), state) in due.iter().zip(specs).zip(states) {
            // Deleted between the two reads: nothing to fire.
            let Some(spec) = spec else { continue };
            out.push(DueSchedule { spec: spec_of(&spec)?, state: state_of(state.as_ref())?, tick_ms: *tick as u64 });
        }
        Ok(out)
    }

    async fn advance_schedule(
        &self,
        id: &str,
        from_tick_ms: u64,
        next_ms: Option<u64>,
        state: &ScheduleState,
    ) -> Result<bool> {
        let json = to_json(state)?;
        Ok(self.schedules_script(&["advance", id, &from_tick_ms.to_string(), &next_arg(next_ms), &json]).await? == 1)
    }
}
