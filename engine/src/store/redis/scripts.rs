//! The Lua operations: one library of Redis Functions (generated constants,
//! the shared prelude, every operation), and the same code as one EVALSHA
//! script per operation for a Redis without FUNCTION. Their arguments and
//! replies are typed in `ops/`.

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
         local DEFAULT_PRIORITY = '{}'\nlocal HOOKS = {{ {} }}\nlocal STATS = {{ {} }}\nlocal STEP_MS_BUCKETS = {{ {} }}\n\
         local RUN_PAUSED = {}\nlocal RUN_RESUMED = {}\nlocal RUN_RETRIED = {}\nlocal EVENT_RECEIVED = {{ {} }}\n",
        lua_string(GROUP),
        lua_string(DISPATCH_GROUP),
        lua_string(CHILD_EVENT_KEY_PREFIX),
        lua_string(&cancelled),
        keel_proto::DEFAULT_PRIORITY,
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
const SOURCES: [(&str, &str); 21] = [
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
    ("nudge.lua", include_str!("lua/nudge.lua")),
    ("pause.lua", include_str!("lua/pause.lua")),
    ("read.lua", include_str!("lua/read.lua")),
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
    let constants = shared_constants(check_keys);
    Script::new(&format!(
        "{shebang}{constants}{PRELUDE}\nbegin(KEYS, ARGV)\nreturn reply({{ v = call('GET', A.key) }})"
    ))
}

/// One operation: a registered function of the library, and the same code as
/// an EVALSHA script for a Redis without FUNCTION.
pub(super) struct Op {
    pub function: String,
    pub script: Script,
}

/// Every operation, and the library they are registered in.
pub(super) struct Scripts {
    pub append: Op,
    pub cancel: Op,
    pub claim: Op,
    pub create: Op,
    pub deliver: Op,
    pub due: Op,
    pub expire: Op,
    pub fanout: Op,
    pub finish: Op,
    pub job_update: Op,
    pub jobs_due: Op,
    pub pause: Op,
    pub reconcile: Op,
    pub renew: Op,
    pub resume: Op,
    pub retry: Op,
    pub timers: Op,
    pub nudge: Op,
    pub read: Op,
    pub unpark: Op,
    pub watch: Op,
    /// The library's source (`FUNCTION LOAD`).
    pub library: String,
}

impl Scripts {
    /// Every EVALSHA script, for loading them all where Redis has no FUNCTION.
    pub fn all(&self) -> Vec<&Script> {
        [
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
            &self.nudge,
            &self.read,
            &self.unpark,
            &self.watch,
        ]
        .into_iter()
        .map(|op| &op.script)
        .collect()
    }

    /// The library is named after a hash of its text, so processes of two
    /// Keel versions sharing a Redis (a rolling upgrade) each call their own.
    /// With `check_keys`, every call checks each key it touches against KEYS
    /// (what the tests run); `#!lua` also makes Redis refuse another slot.
    pub fn new(check_keys: bool) -> Self {
        let constants = shared_constants(check_keys);
        let mut ops = String::new();
        for (file, body) in SOURCES {
            let name = file.trim_end_matches(".lua");
            ops.push_str(&format!("local function op_{name}()\n{body}\nend\n"));
        }
        let code = format!("{constants}{PRELUDE}\n{ops}");
        let library = format!("keel_{:016x}", fnv1a64(&code));
        let function = |file: &str| format!("{library}_{}", file.trim_end_matches(".lua"));
        let mut registrations = String::new();
        for (file, _) in SOURCES {
            let name = file.trim_end_matches(".lua");
            registrations.push_str(&format!(
                "redis.register_function('{}', function(keys, args) begin(keys, args) return op_{name}() end)\n",
                function(file)
            ));
        }
        let shebang = if check_keys { "#!lua\n" } else { "" };
        let op = |file: &str| {
            let body = SOURCES.iter().find(|(name, _)| *name == file).map_or("", |(_, body)| *body);
            Op {
                function: function(file),
                script: Script::new(&format!("{shebang}{constants}{PRELUDE}\nbegin(KEYS, ARGV)\n{body}")),
            }
        };
        Self {
            append: op("append.lua"),
            cancel: op("cancel.lua"),
            claim: op("claim.lua"),
            create: op("create.lua"),
            deliver: op("deliver.lua"),
            due: op("due.lua"),
            expire: op("expire.lua"),
            fanout: op("fanout.lua"),
            finish: op("finish.lua"),
            job_update: op("job_update.lua"),
            jobs_due: op("jobs_due.lua"),
            pause: op("pause.lua"),
            reconcile: op("reconcile.lua"),
            renew: op("renew.lua"),
            resume: op("resume.lua"),
            retry: op("retry.lua"),
            timers: op("timers.lua"),
            nudge: op("nudge.lua"),
            read: op("read.lua"),
            unpark: op("unpark.lua"),
            watch: op("watch.lua"),
            library: format!("#!lua name={library}\n{code}{registrations}"),
        }
    }
}

/// FNV-1a, 64 bits: a stable name for a library text.
fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
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
                assert!(
                    !code.contains("ARGV") && !code.contains("KEYS["),
                    "the prelude reads its call's keys and args"
                );
                assert!(!code.contains("P .."), "the prelude builds no key from the prefix");
            }
        }
        assert_eq!(SOURCES.len(), Scripts::new(false).all().len(), "every source is a script");
    }

    /// A claim of a run with a long journal must not re-read (and JSON-encode)
    /// that journal inside Lua, where it blocks every other client: the
    /// journal is read by XRANGE from the caller (claim.rs). One entry by its
    /// id (`XRANGE k, seq, seq`: a replayed write's answer) is a point read.
    #[test]
    fn no_script_reads_a_journal() {
        for (name, body) in SOURCES.iter().chain([("prelude.lua", PRELUDE)].iter()) {
            for line in body.lines().filter(|l| !l.trim_start().starts_with("--")) {
                let point_read = line.contains("k_journal(id), seq, seq)");
                assert!(
                    point_read
                        || !((line.contains("XRANGE") || line.contains("XREVRANGE")) && line.contains("k_journal")),
                    "{name} reads a journal: {line}"
                );
            }
        }
    }
}
