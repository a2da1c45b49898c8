//! Flow control's rules (keel-proto's `FlowLimits`, checked and in
//! milliseconds) and the answers of the store's slot operations.

use std::time::Duration;

use keel_proto::{FlowLimits, RunId, validate_flow_key};

use crate::{Error, Result};

/// At most this many keys with limits set on the server (`PUT
/// /v1/flow-control/{key}`): each is a gauge on /metrics.
pub const MAX_CONFIGURED_KEYS: usize = 1000;
/// The longest window a rate may have.
pub const MAX_PERIOD: Duration = Duration::from_secs(86_400);
/// The window of a rate given without one.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);

/// A key's limits, checked: the period in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowRule {
    pub parallelism: Option<u32>,
    pub rate: Option<u32>,
    pub period_ms: u64,
}

impl FlowRule {
    /// Check `limits`: at least one of parallelism and rate, each in range, a
    /// period of 1 ms to a day.
    pub fn of(limits: &FlowLimits) -> Result<Self> {
        let bad = |m: String| Err(Error::Invalid(m));
        if limits.parallelism.is_none() && limits.rate.is_none() {
            return bad("a flow-control key needs a parallelism, a rate, or both".into());
        }
        if let Some(p) = limits.parallelism
            && !(1..=keel_proto::PARALLELISM_MAX).contains(&p)
        {
            return bad(format!("parallelism must be 1 to {}, got {p}", keel_proto::PARALLELISM_MAX));
        }
        if let Some(r) = limits.rate
            && !(1..=keel_proto::RATE_MAX).contains(&r)
        {
            return bad(format!("rate must be 1 to {}, got {r}", keel_proto::RATE_MAX));
        }
        let period = match &limits.period {
            Some(text) => crate::parse_duration(text).map_err(|e| Error::Invalid(format!("period: {e}")))?,
            None => DEFAULT_PERIOD,
        };
        if period.is_zero() || period > MAX_PERIOD {
            return bad(format!("period must be 1ms to 1d, got {period:?}"));
        }
        if limits.period.is_some() && limits.rate.is_none() {
            return bad("a period needs a rate (at most `rate` step starts per `period`)".into());
        }
        Ok(Self { parallelism: limits.parallelism, rate: limits.rate, period_ms: period.as_millis() as u64 })
    }

    /// Back to the wire form (the period in the largest whole unit).
    pub fn limits(&self) -> FlowLimits {
        FlowLimits {
            parallelism: self.parallelism,
            rate: self.rate,
            period: self.rate.map(|_| period_text(self.period_ms)),
        }
    }
}

fn period_text(ms: u64) -> String {
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Check a key and the limits a run or step asks for under it.
pub fn check(key: &str, limits: &FlowLimits) -> Result<FlowRule> {
    validate_flow_key(key).map_err(Error::Invalid)?;
    FlowRule::of(limits)
}

/// The holder of a slot: one step of one run.
pub fn holder(run_id: &RunId, step_id: &str) -> String {
    format!("{run_id}/{step_id}")
}

/// The run a holder names.
pub fn holder_run(holder: &str) -> Option<RunId> {
    RunId::new(holder.split_once('/')?.0).ok()
}

/// A step asks for a slot of `key`.
#[derive(Debug, Clone)]
pub struct SlotRequest<'a> {
    pub key: &'a str,
    /// [`holder`] of the step.
    pub holder: &'a str,
    /// The limits the step (or its run) asks for; the server's win.
    pub rule: FlowRule,
    /// The slot lapses this long after the last renewal (the worker's lease).
    pub lease: Duration,
    /// Holders of this key whose attempts ended: released first, in the same call.
    pub releases: &'a [String],
}

/// The answer to a [`SlotRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Go on: the step holds a slot (and counts as a start in the window).
    Acquired,
    /// No room: ask again at `retry_at_ms` (store time) or when woken. `paused`:
    /// the key is paused.
    Wait { retry_at_ms: u64, paused: bool },
}

/// A slot answer and the waiting runs the call made room for (the caller wakes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotAnswer {
    pub slot: Slot,
    pub wake: Vec<RunId>,
}

/// Why a run waits for a key: what its status shows.
pub fn waiting_reason(key: &str, paused: bool) -> String {
    if paused {
        format!("waiting for flow-control key {key:?} (paused)")
    } else {
        format!("waiting for flow-control key {key:?}")
    }
}

/// How long after it was told to ask again a waiter keeps its place in a
/// key's queue (at most): long enough for a woken run to be claimed and
/// replayed on a busy deployment, short enough that a waiter that never
/// comes back (its run was cancelled) does not hold the key up for long.
pub fn place_kept(lease: Duration) -> Duration {
    lease.min(Duration::from_secs(10))
}

/// The marker of [`waiting_reason`]: a run blocked on a key can be woken by a release.
pub const WAITING_MARK: &str = "waiting for flow-control key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_checked_and_printed_back() {
        let ok = |p: Option<u32>, r: Option<u32>, period: Option<&str>| {
            FlowRule::of(&FlowLimits { parallelism: p, rate: r, period: period.map(str::to_owned) })
        };
        assert_eq!(ok(Some(4), None, None).unwrap(), FlowRule { parallelism: Some(4), rate: None, period_ms: 1000 });
        assert_eq!(ok(None, Some(60), Some("1m")).unwrap().period_ms, 60_000);
        assert_eq!(ok(None, Some(60), Some("1m")).unwrap().limits().period.as_deref(), Some("1m"));
        for (p, r, period, says) in [
            (None, None, None, "needs a parallelism"),
            (Some(0), None, None, "parallelism must be"),
            (None, Some(0), None, "rate must be"),
            (None, Some(1), Some("2d"), "period must be"),
            (None, Some(1), Some("soon"), "period:"),
            (Some(1), None, Some("1s"), "a period needs a rate"),
        ] {
            let err = ok(p, r, period).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        assert!(check("openai:team-7", &FlowLimits { parallelism: Some(1), ..Default::default() }).is_ok());
        assert!(check("a{b}", &FlowLimits { parallelism: Some(1), ..Default::default() }).is_err());
        let id = RunId::new("r-1").unwrap();
        assert_eq!(holder_run(&holder(&id, "plan/2")), Some(id));
    }
}
