//! The pure core of replay: what the journal says about each step, and what a
//! workflow's request for a step should do given that (return the recorded
//! result, execute an attempt, wait, record a timer…). No tokio, no store, no
//! clock: "now" is an argument. Tested by tables below.

use std::collections::HashMap;

use keel_proto::{ChildOutcome, ErrorInfo, JournalEvent, JournalRecord, RunId};
use serde_json::Value;

/// A failed attempt as journaled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub attempt: u32,
    pub error: ErrorInfo,
    /// Set when another attempt follows; `None` means the step failed for good.
    pub retry_at_ms: Option<u64>,
}

/// A wait as journaled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WaitRecord {
    pub keys: Vec<String>,
    pub timeout_at_ms: Option<u64>,
    /// When the wait began: the `wait_started` entry's time.
    pub since_ms: u64,
}

/// Everything the journal says about one step id.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StepRecord {
    /// The highest attempt started.
    pub attempts: u32,
    pub completed: Option<Value>,
    pub failure: Option<Failure>,
    pub timer_fire_at_ms: Option<u64>,
    pub timer_fired: bool,
    pub wait: Option<WaitRecord>,
    pub received: Option<(String, Value)>,
    pub timed_out: bool,
    pub child: Option<(RunId, u64)>,
    pub child_outcome: Option<ChildOutcome>,
}

/// The journal, folded by step.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    /// Where the workflow first reached each step (`<branch>:<index>`), both ways:
    /// replay must reach the same steps at the same places.
    step_at: HashMap<String, String>,
    pos_of: HashMap<String, String>,
    steps: HashMap<String, StepRecord>,
    pub progress: Option<u32>,
}

impl History {
    pub fn new(journal: &[JournalRecord]) -> Self {
        let mut history = Self::default();
        for record in journal {
            history.apply(record);
        }
        history
    }

    pub fn apply(&mut self, record: &JournalRecord) {
        let event = &record.entry.event;
        if let JournalEvent::ProgressDeclared { total_steps } = event {
            self.progress = Some(*total_steps);
        }
        if let JournalEvent::RunRetried {} = event {
            // An operator retried the failed run: every step that failed for good
            // gets another attempt now; recorded results stay.
            for step in self.steps.values_mut() {
                if step.completed.is_none()
                    && let Some(failure) = step.failure.as_mut()
                    && failure.retry_at_ms.is_none()
                {
                    failure.retry_at_ms = Some(record.at_ms);
                }
            }
        }
        let Some(step_id) = event.step_id() else { return };
        if let Some(pos) = event.pos()
            && !self.pos_of.contains_key(step_id)
        {
            self.pos_of.insert(step_id.to_owned(), pos.to_owned());
            self.step_at.entry(pos.to_owned()).or_insert_with(|| step_id.to_owned());
        }
        let step = self.steps.entry(step_id.to_owned()).or_default();
        match event {
            JournalEvent::StepStarted { attempt, .. } => step.attempts = step.attempts.max(*attempt),
            JournalEvent::StepCompleted { output, attempt, .. } => {
                step.attempts = step.attempts.max(*attempt);
                step.completed = Some(output.clone());
            }
            JournalEvent::StepFailed { attempt, error, retry_at_ms, .. } => {
                step.attempts = step.attempts.max(*attempt);
                step.failure = Some(Failure { attempt: *attempt, error: error.clone(), retry_at_ms: *retry_at_ms });
            }
            JournalEvent::TimerScheduled { fire_at_ms, .. } => step.timer_fire_at_ms = Some(*fire_at_ms),
            JournalEvent::TimerFired { .. } => step.timer_fired = true,
            JournalEvent::WaitStarted { event_keys, timeout_at_ms, .. } => {
                step.wait = Some(WaitRecord {
                    keys: event_keys.clone(),
                    timeout_at_ms: *timeout_at_ms,
                    since_ms: record.at_ms,
                });
            }
            JournalEvent::EventReceived { event_key, data, .. } => {
                // A child's outcome arrives as an event on its reserved key.
                if step.child.is_some() {
                    step.child_outcome = serde_json::from_value(data.clone()).ok();
                }
                step.received = Some((event_key.clone(), data.clone()));
            }
            JournalEvent::WaitTimedOut { .. } => step.timed_out = true,
            JournalEvent::ChildStarted { child_run_id, .. } => step.child = Some((child_run_id.clone(), record.at_ms)),
            JournalEvent::ChildCompleted { outcome, .. } => step.child_outcome = Some(outcome.clone()),
            _ => {}
        }
    }

    pub fn step(&self, step_id: &str) -> Option<&StepRecord> {
        self.steps.get(step_id)
    }

    /// The determinism guard: replay must reach the same step at the same place
    /// (`pos` is `<branch>:<index>`, where branch is the path through `ctx.all`
    /// / `ctx.join` and index counts the primitives the branch reached). Places
    /// past the journal's are new and free.
    pub fn check_position(&self, pos: &str, step_id: &str) -> Result<(), ErrorInfo> {
        let mismatch = |detail: String| {
            Err(ErrorInfo::new(
                "non_determinism",
                format!(
                    "{detail}: the workflow's code changed the order or names of its steps since this run \
                     started. Deploy such a change under a new workflow version, or cancel and restart the run"
                ),
            )
            .in_step(step_id))
        };
        if let Some(recorded) = self.step_at.get(pos)
            && recorded != step_id
        {
            return mismatch(format!(
                "replay reached step {step_id:?} where the journal has step {recorded:?} (position {pos})"
            ));
        }
        if let Some(recorded_pos) = self.pos_of.get(step_id)
            && recorded_pos != pos
        {
            let there = self.step_at.get(pos).map_or(String::new(), |s| format!(" (where the journal has {s:?})"));
            return mismatch(format!(
                "replay reached step {step_id:?} at position {pos}{there}, but the journal has it at {recorded_pos}"
            ));
        }
        Ok(())
    }
}

/// What `step(..).run(..)` does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StepDecision {
    /// The journal has the result: return it without running.
    Replay(Value),
    /// The step failed for good earlier: return the same error.
    ReplayFailure(ErrorInfo),
    /// A retry back-off is pending: suspend until then.
    WaitUntil(u64),
    /// Run this attempt.
    Execute { attempt: u32 },
    /// The previous attempt started and never finished (its worker died or
    /// lost the lease): it counts; run this one, if the policy allows it.
    AfterInterruption { attempt: u32 },
}

pub(crate) fn decide_step(record: Option<&StepRecord>, now_ms: u64) -> StepDecision {
    let Some(r) = record else { return StepDecision::Execute { attempt: 1 } };
    if let Some(output) = &r.completed {
        return StepDecision::Replay(output.clone());
    }
    match &r.failure {
        Some(f) if f.attempt == r.attempts => match f.retry_at_ms {
            None => StepDecision::ReplayFailure(f.error.clone()),
            Some(at) if now_ms < at => StepDecision::WaitUntil(at),
            Some(_) => StepDecision::Execute { attempt: r.attempts + 1 },
        },
        // Started and never finished: the worker was lost mid-attempt. That
        // attempt counts against the step's retry policy; run the next one.
        _ if r.attempts > 0 => StepDecision::AfterInterruption { attempt: r.attempts + 1 },
        _ => StepDecision::Execute { attempt: 1 },
    }
}

/// What `sleep` does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SleepDecision {
    Done,
    /// First time here: record the timer.
    Schedule,
    /// The time has come: record that the timer fired.
    Fire,
    WaitUntil(u64),
}

pub(crate) fn decide_sleep(record: Option<&StepRecord>, now_ms: u64) -> SleepDecision {
    match record {
        Some(r) if r.timer_fired => SleepDecision::Done,
        Some(StepRecord { timer_fire_at_ms: Some(at), .. }) if now_ms >= *at => SleepDecision::Fire,
        Some(StepRecord { timer_fire_at_ms: Some(at), .. }) => SleepDecision::WaitUntil(*at),
        _ => SleepDecision::Schedule,
    }
}

/// What `wait_for_event` does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WaitDecision {
    Received(String, Value),
    TimedOut,
    /// First time here: record the wait.
    Start,
    /// The timeout passed without an event: record that.
    TimeOut,
    Wait(WaitRecord),
}

pub(crate) fn decide_wait(record: Option<&StepRecord>, now_ms: u64) -> WaitDecision {
    let Some(r) = record else { return WaitDecision::Start };
    if let Some((key, data)) = &r.received {
        return WaitDecision::Received(key.clone(), data.clone());
    }
    if r.timed_out {
        return WaitDecision::TimedOut;
    }
    match &r.wait {
        None => WaitDecision::Start,
        Some(w) if w.timeout_at_ms.is_some_and(|t| now_ms >= t) => WaitDecision::TimeOut,
        Some(w) => WaitDecision::Wait(w.clone()),
    }
}

/// What `invoke` does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChildDecision {
    Done(ChildOutcome),
    /// First time here: start the child.
    Start,
    /// Started: wait for its outcome (since the child was started).
    Wait {
        child: RunId,
        since_ms: u64,
    },
}

pub(crate) fn decide_child(record: Option<&StepRecord>) -> ChildDecision {
    match record {
        Some(StepRecord { child_outcome: Some(outcome), .. }) => ChildDecision::Done(outcome.clone()),
        Some(StepRecord { child: Some((child, since_ms)), .. }) => {
            ChildDecision::Wait { child: child.clone(), since_ms: *since_ms }
        }
        _ => ChildDecision::Start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::JournalEntry;
    use serde_json::json;

    fn journal(events: Vec<(u64, JournalEvent)>) -> Vec<JournalRecord> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, (at_ms, event))| JournalRecord {
                seq: format!("{at_ms}-{i}"),
                at_ms,
                entry: JournalEntry::new(event),
            })
            .collect()
    }

    fn started(step: &str, attempt: u32) -> JournalEvent {
        JournalEvent::StepStarted { step_id: step.into(), attempt, pos: None }
    }

    fn started_at(step: &str, pos: &str) -> JournalEvent {
        JournalEvent::StepStarted { step_id: step.into(), attempt: 1, pos: Some(pos.into()) }
    }

    fn failed(step: &str, attempt: u32, retry_at_ms: Option<u64>) -> JournalEvent {
        JournalEvent::StepFailed {
            step_id: step.into(),
            attempt,
            error: ErrorInfo::new("step_failed", "boom"),
            retry_at_ms,
            pos: None,
        }
    }

    #[test]
    fn step_decisions() {
        let done = JournalEvent::StepCompleted {
            step_id: "s".into(),
            attempt: 2,
            output: json!(7),
            pos: None,
            duration_ms: None,
        };
        let cases: Vec<(&str, Vec<JournalEvent>, u64, StepDecision)> = vec![
            ("never seen", vec![], 0, StepDecision::Execute { attempt: 1 }),
            ("completed", vec![started("s", 1), done.clone()], 0, StepDecision::Replay(json!(7))),
            ("lost mid-attempt", vec![started("s", 1)], 0, StepDecision::AfterInterruption { attempt: 2 }),
            ("back-off pending", vec![started("s", 1), failed("s", 1, Some(500))], 499, StepDecision::WaitUntil(500)),
            (
                "back-off over",
                vec![started("s", 1), failed("s", 1, Some(500))],
                500,
                StepDecision::Execute { attempt: 2 },
            ),
            (
                "retry lost mid-attempt",
                vec![started("s", 1), failed("s", 1, Some(5)), started("s", 2)],
                9,
                StepDecision::AfterInterruption { attempt: 3 },
            ),
            (
                "failed for good, then retried by an operator",
                vec![started("s", 1), failed("s", 1, None), JournalEvent::RunRetried {}],
                5,
                StepDecision::Execute { attempt: 2 },
            ),
            (
                "failed for good",
                vec![started("s", 1), failed("s", 1, None)],
                0,
                StepDecision::ReplayFailure(ErrorInfo::new("step_failed", "boom")),
            ),
        ];
        for (name, events, now, expected) in cases {
            let history = History::new(&journal(events.into_iter().map(|e| (1, e)).collect()));
            assert_eq!(decide_step(history.step("s"), now), expected, "{name}");
        }
    }

    #[test]
    fn sleep_wait_and_child_decisions() {
        let timer = JournalEvent::TimerScheduled { step_id: "s".into(), fire_at_ms: 100, pos: None };
        let h = History::new(&journal(vec![(1, timer.clone())]));
        assert_eq!(decide_sleep(None, 0), SleepDecision::Schedule);
        assert_eq!(decide_sleep(h.step("s"), 99), SleepDecision::WaitUntil(100));
        assert_eq!(decide_sleep(h.step("s"), 100), SleepDecision::Fire);
        let h = History::new(&journal(vec![(1, timer), (2, JournalEvent::TimerFired { step_id: "s".into() })]));
        assert_eq!(decide_sleep(h.step("s"), 0), SleepDecision::Done);

        let wait = JournalEvent::WaitStarted {
            step_id: "s".into(),
            event_keys: vec!["k".into()],
            timeout_at_ms: Some(50),
            pos: None,
        };
        let h = History::new(&journal(vec![(10, wait.clone())]));
        assert_eq!(decide_wait(None, 0), WaitDecision::Start);
        assert_eq!(
            decide_wait(h.step("s"), 49),
            WaitDecision::Wait(WaitRecord { keys: vec!["k".into()], timeout_at_ms: Some(50), since_ms: 10 })
        );
        assert_eq!(decide_wait(h.step("s"), 50), WaitDecision::TimeOut);
        let got = JournalEvent::EventReceived {
            step_id: "s".into(),
            event_key: "k".into(),
            event_id: "1-0".into(),
            data: json!("hi"),
        };
        let h = History::new(&journal(vec![(10, wait.clone()), (20, got)]));
        assert_eq!(decide_wait(h.step("s"), 99), WaitDecision::Received("k".into(), json!("hi")));
        let h = History::new(&journal(vec![(10, wait), (60, JournalEvent::WaitTimedOut { step_id: "s".into() })]));
        assert_eq!(decide_wait(h.step("s"), 99), WaitDecision::TimedOut);

        let child = RunId::new("c").unwrap();
        let start = JournalEvent::ChildStarted {
            step_id: "s".into(),
            child_run_id: child.clone(),
            workflow: "w".into(),
            pos: Some(":0".into()),
        };
        let h = History::new(&journal(vec![(7, start.clone())]));
        assert_eq!(decide_child(None), ChildDecision::Start);
        assert_eq!(decide_child(h.step("s")), ChildDecision::Wait { child: child.clone(), since_ms: 7 });
        let outcome = JournalEvent::EventReceived {
            step_id: "s".into(),
            event_key: "keel.child:c".into(),
            event_id: "1-0".into(),
            data: json!({"status": "completed", "output": 3}),
        };
        let h = History::new(&journal(vec![(7, start), (9, outcome)]));
        assert_eq!(decide_child(h.step("s")), ChildDecision::Done(ChildOutcome::Completed { output: json!(3) }));
    }

    #[test]
    fn the_determinism_guard_names_both_steps() {
        let h = History::new(&journal(vec![
            (1, started_at("plan", ":0")),
            (2, started_at("fetch-a@0", "0:0")),
            (2, started_at("fetch-b@1", "1:0")),
            (3, started("plan", 2)),
        ]));
        assert!(h.check_position(":0", "plan").is_ok());
        assert!(h.check_position("1:0", "fetch-b@1").is_ok(), "branches are checked on their own");
        assert!(h.check_position(":1", "anything-new").is_ok(), "past the journal, anything goes");
        let err = h.check_position(":0", "reflect").unwrap_err();
        assert_eq!(err.kind, "non_determinism");
        assert!(err.message.contains("\"reflect\"") && err.message.contains("\"plan\""), "{}", err.message);
        let moved = h.check_position(":1", "plan").unwrap_err();
        assert!(moved.message.contains("at :0"), "{}", moved.message);
    }
}
