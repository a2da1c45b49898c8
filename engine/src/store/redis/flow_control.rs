//! The Redis store's flow control: per key five keys under the key's own
//! hash tag (keys.rs `flow_*`), changed only by `flow_control.lua`; a global
//! sorted set of the keys in use (by last use) for the listing.

use std::sync::LazyLock;

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::flow::{FlowRule, MAX_CONFIGURED_KEYS, Slot, SlotAnswer, SlotRequest, holder_run};
use crate::store::FlowStore;
use keel_proto::FlowKeyStatus;
use serde::Deserialize;

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("flow_control.lua")));

/// How long a key nobody configured stays listed after its last use.
const FORGET_MS: u64 = 86_400_000;
/// At most this many keys used lately are listed (configured ones always are).
const LISTED: usize = 1000;

#[derive(Deserialize, Default)]
struct Reply {
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    wait: Option<u64>,
    #[serde(default)]
    why: String,
    #[serde(default, deserialize_with = "ops::list")]
    wake: Vec<String>,
    #[serde(default)]
    in_flight: u32,
    #[serde(default)]
    waiting: u32,
    #[serde(default)]
    starts: u32,
    #[serde(default)]
    paused: bool,
    p: Option<u32>,
    r: Option<u32>,
    pm: Option<u64>,
    rp: Option<u32>,
    rr: Option<u32>,
    rpm: Option<u64>,
    lu: Option<u64>,
}

fn opt(n: Option<impl ToString>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

fn rule_of(p: Option<u32>, r: Option<u32>, pm: Option<u64>) -> Option<FlowRule> {
    (p.is_some() || r.is_some()).then(|| FlowRule { parallelism: p, rate: r, period_ms: pm.unwrap_or(1000) })
}

fn woken(holders: &[String]) -> Vec<RunId> {
    holders.iter().filter_map(|h| holder_run(h)).collect()
}

impl RedisStore {
    async fn flow_script(&self, key: &str, args: &[&str]) -> Result<Reply> {
        let keys = self.keys();
        let mut invocation = SCRIPT.prepare_invoke();
        for k in keys.flow(key) {
            invocation.key(k);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let text: String = invocation.invoke_async(&mut self.conn.clone()).await?;
        serde_json::from_str(&text).map_err(|e| Error::corrupt("flow-control reply", format!("{e}: {text}")))
    }

    /// Note the key as in use (for the listing), at most once a minute per process.
    async fn note_flow_key(&self, key: &str) -> Result<()> {
        let now = now_wall_ms();
        {
            let mut noted = self.flow_noted.lock().map_err(|_| Error::Invalid("flow cache poisoned".into()))?;
            if noted.get(key).is_some_and(|at| now < at + 60_000) {
                return Ok(());
            }
            if noted.len() >= 10_000 {
                noted.clear();
            }
            noted.insert(key.to_owned(), now);
        }
        let _: () = redis::cmd("ZADD")
            .arg(self.keys().flow_keys())
            .arg(now)
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    fn flow_status(key: &str, r: Reply) -> FlowKeyStatus {
        FlowKeyStatus {
            key: key.to_owned(),
            limits: rule_of(r.p, r.r, r.pm).map(|x| x.limits()),
            requested: rule_of(r.rp, r.rr, r.rpm).map(|x| x.limits()),
            paused: r.paused,
            in_flight: r.in_flight,
            waiting: r.waiting,
            starts_in_window: r.starts,
            last_used_ms: r.lu,
        }
    }
}

#[async_trait]
impl FlowStore for RedisStore {
    async fn acquire_slot(&self, req: &SlotRequest<'_>) -> Result<SlotAnswer> {
        self.note_flow_key(req.key).await?;
        let lease_ms = (req.lease.as_millis().max(1) as u64).to_string();
        let rule = req.rule;
        let own = rule.parallelism.is_some() || rule.rate.is_some();
        let (p, r, pm) =
            if own { (opt(rule.parallelism), opt(rule.rate), rule.period_ms.to_string()) } else { Default::default() };
        let releases = req.releases.join("\n");
        let grace_ms = (crate::flow::place_kept(req.lease).as_millis().max(1) as u64).to_string();
        let reply =
            self.flow_script(req.key, &["acquire", req.holder, &p, &r, &pm, &lease_ms, &grace_ms, &releases]).await?;
        let slot = match reply.wait {
            Some(retry_at_ms) if !reply.ok => Slot::Wait { retry_at_ms, paused: reply.why == "paused" },
            _ => Slot::Acquired,
        };
        Ok(SlotAnswer { slot, wake: woken(&reply.wake) })
    }

    async fn release_slots(&self, key: &str, holders: &[String]) -> Result<Vec<RunId>> {
        Ok(woken(&self.flow_script(key, &["release", &holders.join("\n")]).await?.wake))
    }

    async fn renew_slots(&self, key: &str, holders: &[String], lease: Duration) -> Result<()> {
        let lease_ms = (lease.as_millis().max(1) as u64).to_string();
        self.flow_script(key, &["renew", &holders.join("\n"), &lease_ms]).await?;
        Ok(())
    }

    async fn wake_flow_waiter(&self, run_id: &RunId) -> Result<()> {
        ops::nudge::call(self, run_id).await
    }

    async fn set_flow_limits(&self, key: &str, rule: Option<FlowRule>) -> Result<()> {
        let keys = self.keys();
        let mut conn = self.conn.clone();
        match rule {
            Some(rule) => {
                // The configured keys: a set of their own, bounded.
                let added: i64 = redis::cmd("SADD").arg(keys.flow_configured()).arg(key).query_async(&mut conn).await?;
                if added == 1 {
                    let n: usize = redis::cmd("SCARD").arg(keys.flow_configured()).query_async(&mut conn).await?;
                    if n > MAX_CONFIGURED_KEYS {
                        let _: () =
                            redis::cmd("SREM").arg(keys.flow_configured()).arg(key).query_async(&mut conn).await?;
                        return Err(crate::store::refusal("FULL_FLOW_KEYS", ""));
                    }
                }
                let (p, r, pm) = (opt(rule.parallelism), opt(rule.rate), rule.period_ms.to_string());
                self.flow_script(key, &["limits", &p, &r, &pm]).await?;
            }
            None => {
                self.flow_script(key, &["limits", "", "", ""]).await?;
                let _: () = redis::cmd("SREM").arg(keys.flow_configured()).arg(key).query_async(&mut conn).await?;
            }
        }
        self.note_flow_key(key).await
    }

    async fn pause_flow_key(&self, key: &str, paused: bool) -> Result<Vec<RunId>> {
        let reply = self.flow_script(key, &["pause", if paused { "1" } else { "0" }]).await?;
        let keys = self.keys();
        let cmd = if paused { "SADD" } else { "SREM" };
        let _: () = redis::cmd(cmd).arg(keys.flow_paused()).arg(key).query_async(&mut self.conn.clone()).await?;
        self.note_flow_key(key).await?;
        Ok(woken(&reply.wake))
    }

    async fn flow_key(&self, key: &str) -> Result<Option<FlowKeyStatus>> {
        let reply = self.flow_script(key, &["status"]).await?;
        let known = reply.lu.is_some() || reply.p.is_some() || reply.r.is_some() || reply.paused;
        Ok(known.then(|| Self::flow_status(key, reply)))
    }

    async fn flow_keys(&self, configured_only: bool) -> Result<Vec<FlowKeyStatus>> {
        let keys = self.keys();
        let mut conn = self.conn.clone();
        let mut names: Vec<String> =
            redis::cmd("SUNION").arg(keys.flow_configured()).arg(keys.flow_paused()).query_async(&mut conn).await?;
        if !configured_only {
            let cutoff = now_wall_ms().saturating_sub(FORGET_MS);
            let _: () = redis::cmd("ZREMRANGEBYSCORE")
                .arg(keys.flow_keys())
                .arg("-inf")
                .arg(cutoff)
                .query_async(&mut conn)
                .await?;
            // The most recently used first, at most LISTED of them.
            let used: Vec<String> =
                redis::cmd("ZREVRANGE").arg(keys.flow_keys()).arg(0).arg(LISTED - 1).query_async(&mut conn).await?;
            names.extend(used);
        }
        names.sort();
        names.dedup();
        // One pipeline-free script call per key, all at once on the multiplexed connection.
        let statuses = futures::future::try_join_all(names.iter().map(|name| self.flow_key(name))).await?;
        Ok(statuses.into_iter().flatten().collect())
    }
}
