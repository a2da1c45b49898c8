//! The Lua scripts, each with the shared prelude prepended.

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

/// The tables Lua and Rust share, written as Lua from the Rust constants (the
/// one place they are spelled).
pub(super) fn shared_constants() -> String {
    use crate::store::{JOURNAL_HOOKS, JOURNAL_STATS, STEP_MS_BUCKETS};
    let hooks: Vec<String> = JOURNAL_HOOKS.iter().map(|(kind, hook)| format!("{kind} = '{}'", hook.as_str())).collect();
    let stats: Vec<String> = JOURNAL_STATS.iter().map(|(kind, stat)| format!("{kind} = '{stat}'")).collect();
    let buckets: Vec<String> = STEP_MS_BUCKETS.iter().map(u64::to_string).collect();
    format!(
        "-- Generated from store/mod.rs.\nlocal HOOKS = {{ {} }}\nlocal STATS = {{ {} }}\nlocal STEP_MS_BUCKETS = {{ {} }}\n",
        hooks.join(", "),
        stats.join(", "),
        buckets.join(", ")
    )
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
