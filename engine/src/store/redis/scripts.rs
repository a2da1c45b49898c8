//! The Lua scripts, each with the shared prelude prepended.

use keel_proto::{JournalEntry, JournalEvent};
use redis::Script;

macro_rules! script {
    ($file:literal) => {
        Script::new(&format!(
            "{}{}\n{}",
            shared_constants(),
            include_str!("lua/prelude.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

/// What Lua and Rust share, written as Lua from the Rust side (the one place
/// each is spelled): the tables of store/mod.rs, and the journal entries
/// scripts write themselves, serialized by keel-proto (a constant entry, or a
/// template whose pieces go around the values only the script knows).
pub(super) fn shared_constants() -> String {
    use crate::store::{JOURNAL_HOOKS, JOURNAL_STATS, STEP_MS_BUCKETS};
    let hooks: Vec<String> = JOURNAL_HOOKS.iter().map(|(kind, hook)| format!("{kind} = '{}'", hook.as_str())).collect();
    let stats: Vec<String> = JOURNAL_STATS.iter().map(|(kind, stat)| format!("{kind} = '{stat}'")).collect();
    let buckets: Vec<String> = STEP_MS_BUCKETS.iter().map(u64::to_string).collect();
    let pieces: Vec<String> = event_received_pieces().iter().map(|p| lua_string(p)).collect();
    format!(
        "-- Generated from Rust (scripts.rs).\nlocal HOOKS = {{ {} }}\nlocal STATS = {{ {} }}\n\
         local STEP_MS_BUCKETS = {{ {} }}\nlocal RUN_PAUSED = {}\nlocal RUN_RESUMED = {}\nlocal RUN_RETRIED = {}\n\
         local EVENT_RECEIVED = {{ {} }}\n",
        hooks.join(", "),
        stats.join(", "),
        buckets.join(", "),
        lua_string(&entry(&JournalEvent::RunPaused {})),
        lua_string(&entry(&JournalEvent::RunResumed {})),
        lua_string(&entry(&JournalEvent::RunRetried {})),
        pieces.join(", "),
    )
}

fn entry(event: &JournalEvent) -> String {
    serde_json::to_string(&JournalEntry::new(event.clone())).unwrap_or_default()
}

/// `event_received` as keel-proto writes it, cut around its four values
/// (step id, event key, event id: JSON strings; data: JSON): five pieces.
pub(super) fn event_received_pieces() -> Vec<String> {
    let marks = ["\u{1}step", "\u{1}key", "\u{1}id", "\u{1}data"];
    let template = entry(&JournalEvent::EventReceived {
        step_id: marks[0].into(),
        event_key: marks[1].into(),
        event_id: marks[2].into(),
        data: serde_json::Value::String(marks[3].into()),
    });
    let mut pieces = Vec::new();
    let mut rest = template.as_str();
    for mark in marks {
        let quoted = serde_json::to_string(mark).unwrap_or_default();
        let (before, after) = rest.split_once(quoted.as_str()).unwrap_or((rest, ""));
        pieces.push(before.to_owned());
        rest = after;
    }
    pieces.push(rest.to_owned());
    pieces
}

/// A Lua string literal of `text` (long brackets need no escaping).
fn lua_string(text: &str) -> String {
    let mut level = String::new();
    while text.contains(&format!("]{level}]")) {
        level.push('=');
    }
    format!("[{level}[{text}]{level}]")
}

/// One compiled [`Script`] per atomic operation; each knows its SHA.
pub(super) struct Scripts {
    pub create: Script,
    pub claim: Script,
    pub renew: Script,
    pub append: Script,
    pub finish: Script,
    pub timers: Script,
    pub deliver: Script,
    pub cancel: Script,
    pub expire: Script,
    pub list: Script,
    pub reconcile: Script,
    #[cfg(feature = "testing")]
    pub key_names: Script,
    pub pause: Script,
    pub resume: Script,
    pub retry: Script,
    pub fanout: Script,
    pub jobs_due: Script,
    pub job_update: Script,
    pub claim_batch: Script,
    pub watch: Script,
    pub unpark: Script,
}

impl Scripts {
    /// Every script, for loading them all at start.
    pub fn all(&self) -> Vec<&Script> {
        let all = vec![
            &self.create,
            &self.claim,
            &self.renew,
            &self.append,
            &self.finish,
            &self.timers,
            &self.deliver,
            &self.cancel,
            &self.expire,
            &self.list,
            &self.reconcile,
            &self.pause,
            &self.resume,
            &self.retry,
            &self.fanout,
            &self.jobs_due,
            &self.job_update,
            &self.claim_batch,
            &self.watch,
            &self.unpark,
        ];
        #[cfg(feature = "testing")]
        let all = {
            let mut all = all;
            all.push(&self.key_names);
            all
        };
        all
    }

    pub fn new() -> Self {
        Self {
            create: script!("create.lua"),
            claim: script!("claim.lua"),
            renew: script!("renew.lua"),
            append: script!("append.lua"),
            finish: script!("finish.lua"),
            timers: script!("timers.lua"),
            deliver: script!("deliver.lua"),
            cancel: script!("cancel.lua"),
            expire: script!("expire.lua"),
            list: script!("list.lua"),
            reconcile: script!("reconcile.lua"),
            #[cfg(feature = "testing")]
            key_names: script!("key_names.lua"),
            pause: script!("pause.lua"),
            resume: script!("resume.lua"),
            retry: script!("retry.lua"),
            fanout: script!("fanout.lua"),
            jobs_due: script!("jobs_due.lua"),
            job_update: script!("job_update.lua"),
            claim_batch: script!("claim_batch.lua"),
            watch: script!("watch.lua"),
            unpark: script!("unpark.lua"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_received_template_puts_the_values_where_keel_proto_does() {
        let pieces = event_received_pieces();
        assert_eq!(pieces.len(), 5, "{pieces:?}");
        let (step, key, id, data) = ("wait-1@0.2", "order:\"7\"", "1700000000000-0", r#"{"paid":true}"#);
        let filled = format!(
            "{}{}{}{}{}{}{}{}{}",
            pieces[0],
            serde_json::to_string(step).unwrap(),
            pieces[1],
            serde_json::to_string(key).unwrap(),
            pieces[2],
            serde_json::to_string(id).unwrap(),
            pieces[3],
            data,
            pieces[4]
        );
        let expected = entry(&JournalEvent::EventReceived {
            step_id: step.into(),
            event_key: key.into(),
            event_id: id.into(),
            data: serde_json::json!({"paid": true}),
        });
        assert_eq!(filled, expected);
    }
}
