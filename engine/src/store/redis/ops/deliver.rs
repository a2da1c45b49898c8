//! deliver.lua: one partition's part of delivering an event.

use std::collections::BTreeMap;

use super::*;
use crate::store::Delivered;

#[derive(Serialize)]
struct Args<'a> {
    key: &'a str,
    data: &'a str,
    lookback_ms: u64,
    max_len: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<&'a str>,
    once: bool,
    /// `once` is this call's own id, not a client's: a repeat is this call
    /// sent again and gets the first answer.
    resent: bool,
    once_ttl_ms: u64,
    runs: BTreeMap<&'a str, Seen<'a>>,
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "SCREAMING_SNAKE_CASE")]
enum Reply {
    Ok {
        id: String,
        #[serde(deserialize_with = "list")]
        woken: Vec<String>,
        duplicate: bool,
    },
    Retry,
}

/// How long a call's own id is kept (see `resent`).
const RESEND_WINDOW_MS: u64 = 30_000;

/// Deliver `data` on `key` in partition `keys`: with `client_id`, once per
/// that id; with `event_id`, under the id another partition gave the event.
pub(in crate::store::redis) async fn call(
    store: &RedisStore,
    keys: &Keys,
    key: &str,
    data: &str,
    client_id: Option<&str>,
    event_id: Option<&str>,
) -> Result<Delivered> {
    let config = &store.config;
    // Without a client's id, one of this call's own (a space: a client's id
    // cannot have one), kept 30 s: long enough for a client library to
    // send the call again after a dropped connection.
    let own_id = format!("keel call {}", uuid::Uuid::now_v7());
    let (once_id, resent) = match client_id {
        Some(id) => (id, false),
        None => (own_id.as_str(), true),
    };
    let once_id = &once_id;
    retrying("deliver an event", || async move {
        // The waiters now, and what their keys need: the script checks them.
        let members: Vec<String> =
            redis::cmd("SMEMBERS").arg(keys.waiters(key)).query_async(&mut store.conn.clone()).await?;
        let ids = run_ids(members)?;
        let facts = read_fields(store, keys, &ids, &SEEN_FIELDS).await?;
        let mut d = Declared::new(keys);
        d.named("waiters", key, keys.waiters(key)).named("events", key, keys.events(key));
        d.one("event_id", keys.event_id(key, once_id));
        d.one("timers", keys.timers()).journal_writes();
        for (id, f) in ids.iter().zip(&facts) {
            d.waking(id, &Seen::of(f), &[RunStatus::Waiting, RunStatus::Pending, RunStatus::Paused]);
        }
        let args = Args {
            key,
            data,
            lookback_ms: config.event_lookback.as_millis().max(1) as u64,
            max_len: config.event_lookback_max.max(1),
            gid: event_id,
            once: true,
            resent,
            once_ttl_ms: if resent { RESEND_WINDOW_MS } else { config.idempotency_ttl.as_millis().max(1) as u64 },
            runs: ids.iter().zip(&facts).map(|(id, f)| (id.as_str(), Seen::of(f))).collect(),
        };
        Ok(match run_script(store, &store.scripts.deliver, &d, args, true).await? {
            Reply::Ok { id, woken, duplicate } => Some(Delivered { event_id: id, woken: run_ids(woken)?, duplicate }),
            Reply::Retry => None,
        })
    })
    .await
}
