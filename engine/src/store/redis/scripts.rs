//! The Lua scripts, each with the generated constants and the shared prelude
//! prepended. Their arguments and replies are typed in `ops/`.

use keel_proto::{ChildOutcome, JournalEntry, JournalEvent};
use redis::Script;

/// What Lua and Rust share, written as Lua from the Rust side (the one place
/// each is spelled): the tables of store/mod.rs, names of consumer groups and
/// reserved event keys, and the journal entries scripts write themselves,
/// serialized by keel-proto (a constant entry, or a template whose pieces go
/// around the values only the script knows). `check_keys`: every Redis call
/// checks that the keys it touches were declared (see prelude.lua).
pub(super) fn shared_constants(check_keys: bool) -> String {
    use crate::keys::{DISPATCH_GROUP, GROUP};
    use crate::store::{CHILD_EVENT_KEY_PREFIX, JOURNAL_HOOKS, JOURNAL_STATS, STEP_MS_BUCKETS};
    let hooks: Vec<String> = JOURNAL_HOOKS.iter().map(|(kind, hook)| format!("{kind} = '{}'", hook.as_str())).collect();
    let stats: Vec<String> = JOURNAL_STATS.iter().map(|(kind, stat)| format!("{kind} = '{stat}'")).collect();
    let buckets: Vec<String> = STEP_MS_BUCKETS.iter().map(u64::to_string).collect();
    let pieces: Vec<String> = event_received_pieces().iter().map(|p| lua_string(p)).collect();
    let cancelled = serde_json::to_string(&ChildOutcome::Cancelled).unwrap_or_default();
    format!(
        "-- Generated from Rust (scripts.rs).\nlocal CHECK_KEYS = {check_keys}\nlocal GROUP = {}\n\
         local DISPATCH_GROUP = {}\nlocal CHILD_KEY_PREFIX = {}\nlocal CHILD_CANCELLED = {}\n\
         local HOOKS = {{ {} }}\nlocal STATS = {{ {} }}\nlocal STEP_MS_BUCKETS = {{ {} }}\n\
         local RUN_PAUSED = {}\nlocal RUN_RESUMED = {}\nlocal RUN_RETRIED = {}\nlocal EVENT_RECEIVED = {{ {} }}\n",
        lua_string(GROUP),
        lua_string(DISPATCH_GROUP),
        lua_string(CHILD_EVENT_KEY_PREFIX),
        lua_string(&cancelled),
        hooks.join(", "),
        stats.join(", "),
        buckets.join(", "),
        lua_entry(&JournalEvent::RunPaused {}),
        lua_entry(&JournalEvent::RunResumed {}),
        lua_entry(&JournalEvent::RunRetried {}),
        pieces.join(", "),
    )
}

fn entry(event: &JournalEvent) -> String {
    serde_json::to_string(&JournalEntry::new(event.clone())).unwrap_or_default()
}

/// A constant entry as `journal_add` takes it: `{ e = <text>, t = <type> }`.
fn lua_entry(event: &JournalEvent) -> String {
    format!("{{ e = {}, t = '{}' }}", lua_string(&entry(event)), event.kind())
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

/// The scripts' sources, by file name.
const SOURCES: [(&str, &str); 19] = [
    ("append.lua", include_str!("lua/append.lua")),
    ("cancel.lua", include_str!("lua/cancel.lua")),
    ("claim.lua", include_str!("lua/claim.lua")),
    ("create.lua", include_str!("lua/create.lua")),
    ("deliver.lua", include_str!("lua/deliver.lua")),
    ("due.lua", include_str!("lua/due.lua")),
    ("expire.lua", include_str!("lua/expire.lua")),
    ("fanout.lua", include_str!("lua/fanout.lua")),
    ("finish.lua", include_str!("lua/finish.lua")),
    ("job_update.lua", include_str!("lua/job_update.lua")),
    ("jobs_due.lua", include_str!("lua/jobs_due.lua")),
    ("pause.lua", include_str!("lua/pause.lua")),
    ("reconcile.lua", include_str!("lua/reconcile.lua")),
    ("renew.lua", include_str!("lua/renew.lua")),
    ("resume.lua", include_str!("lua/resume.lua")),
    ("retry.lua", include_str!("lua/retry.lua")),
    ("timers.lua", include_str!("lua/timers.lua")),
    ("unpark.lua", include_str!("lua/unpark.lua")),
    ("watch.lua", include_str!("lua/watch.lua")),
];

/// The prelude every script starts with.
const PRELUDE: &str = include_str!("lua/prelude.lua");

/// A probe for the key check's test: reads `A.key`, declared or not.
#[cfg(feature = "testing")]
pub(super) fn probe(check_keys: bool) -> Script {
    let shebang = if check_keys { "#!lua\n" } else { "" };
    Script::new(&format!(
        "{shebang}{}{PRELUDE}\nreturn reply({{ v = call('GET', A.key) }})",
        shared_constants(check_keys)
    ))
}

/// One compiled [`Script`] per atomic operation; each knows its SHA.
pub(super) struct Scripts {
    pub append: Script,
    pub cancel: Script,
    pub claim: Script,
    pub create: Script,
    pub deliver: Script,
    pub due: Script,
    pub expire: Script,
    pub fanout: Script,
    pub finish: Script,
    pub job_update: Script,
    pub jobs_due: Script,
    pub pause: Script,
    pub reconcile: Script,
    pub renew: Script,
    pub resume: Script,
    pub retry: Script,
    pub timers: Script,
    pub unpark: Script,
    pub watch: Script,
}

impl Scripts {
    /// Every script, for loading them all at start.
    pub fn all(&self) -> Vec<&Script> {
        vec![
            &self.append,
            &self.cancel,
            &self.claim,
            &self.create,
            &self.deliver,
            &self.due,
            &self.expire,
            &self.fanout,
            &self.finish,
            &self.job_update,
            &self.jobs_due,
            &self.pause,
            &self.reconcile,
            &self.renew,
            &self.resume,
            &self.retry,
            &self.timers,
            &self.unpark,
            &self.watch,
        ]
    }

    /// With `check_keys`, each script also starts with `#!lua` (Redis 7 then
    /// refuses a key outside the declared keys' slot) and checks every key it
    /// touches against KEYS: what the tests run.
    pub fn new(check_keys: bool) -> Self {
        let constants = shared_constants(check_keys);
        let script = |file: &str| {
            let body = SOURCES.iter().find(|(name, _)| *name == file).map_or("", |(_, body)| *body);
            let shebang = if check_keys { "#!lua\n" } else { "" };
            Script::new(&format!("{shebang}{constants}{PRELUDE}\n{body}"))
        };
        Self {
            append: script("append.lua"),
            cancel: script("cancel.lua"),
            claim: script("claim.lua"),
            create: script("create.lua"),
            deliver: script("deliver.lua"),
            due: script("due.lua"),
            expire: script("expire.lua"),
            fanout: script("fanout.lua"),
            finish: script("finish.lua"),
            job_update: script("job_update.lua"),
            jobs_due: script("jobs_due.lua"),
            pause: script("pause.lua"),
            reconcile: script("reconcile.lua"),
            renew: script("renew.lua"),
            resume: script("resume.lua"),
            retry: script("retry.lua"),
            timers: script("timers.lua"),
            unpark: script("unpark.lua"),
            watch: script("watch.lua"),
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

    /// The rules of the boundary, held on the sources: Redis is called only
    /// through the prelude's `call`/`pcall_` (which the key check wraps), only
    /// the prelude reads KEYS (by declared index) or ARGV (its one argument),
    /// no script writes a key name or journal JSON of its own.
    #[test]
    fn scripts_build_no_keys_and_read_one_argument() {
        for (name, body) in SOURCES.iter().chain([("prelude.lua", PRELUDE)].iter()) {
            let code: Vec<&str> = body.lines().filter(|l| !l.trim_start().starts_with("--")).collect();
            let code = code.join("\n");
            if *name != "prelude.lua" {
                for banned in ["redis.call", "redis.pcall", "KEYS[", "ARGV", "P ..", "'{\"", "\"type\""] {
                    assert!(!code.contains(banned), "{name} uses {banned:?}");
                }
            } else {
                assert_eq!(code.matches("ARGV").count(), 1, "the prelude reads ARGV[1] only");
                assert!(!code.contains("P .."), "the prelude builds no key from the prefix");
            }
        }
        assert_eq!(SOURCES.len(), Scripts::new(false).all().len(), "every source is a script");
    }
}
