//! The Redis store's signing keys: one hash per deployment (keys.rs
//! `signing_keys`), changed only by `signing_keys.lua`, so concurrent offers,
//! rotations and retirements each happen whole.

use std::sync::LazyLock;
use std::time::Duration;

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::{MAX_SIGNING_KEYS, StoredSigningKey, refusal};

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("signing_keys.lua")));

impl RedisStore {
    async fn signing_keys_script(&self, args: &[&str]) -> Result<Vec<StoredSigningKey>> {
        let keys = self.keys();
        let mut invocation = SCRIPT.prepare_invoke();
        invocation.key(keys.signing_keys()).key(keys.signing_key());
        for arg in args {
            invocation.arg(*arg);
        }
        let reply: Vec<String> = invocation.invoke_async(&mut self.conn.clone()).await?;
        match reply.split_first() {
            Some((status, ring)) if status == "OK" => ring_of(ring),
            Some((status, detail)) => Err(refusal(status, detail.first().map_or("", String::as_str))),
            None => Err(Error::corrupt("signing keys", "an empty answer")),
        }
    }

    pub(super) async fn read_signing_keys(&self, offer: Option<&str>) -> Result<Vec<StoredSigningKey>> {
        match offer {
            Some(offer) => self.signing_keys_script(&["init", offer]).await,
            None => {
                let ring: Vec<String> =
                    redis::cmd("HGETALL").arg(self.keys().signing_keys()).query_async(&mut self.conn.clone()).await?;
                ring_of(&ring)
            }
        }
    }

    pub(super) async fn add_signing_key_to_ring(&self, secret: &str) -> Result<Vec<StoredSigningKey>> {
        self.signing_keys_script(&["add", secret, &MAX_SIGNING_KEYS.to_string()]).await
    }

    pub(super) async fn retire_signing_key_from_ring(
        &self,
        id: Option<&str>,
        settle: Duration,
    ) -> Result<Vec<StoredSigningKey>> {
        self.signing_keys_script(&["retire", id.unwrap_or(""), &settle.as_millis().to_string()]).await
    }
}

/// The ring's hash (HGETALL's field/value list) as keys, oldest first.
fn ring_of(fields: &[String]) -> Result<Vec<StoredSigningKey>> {
    let mut keys = Vec::new();
    for pair in fields.chunks(2) {
        let [id, value] = pair else { return Err(Error::corrupt("signing keys", "an odd field list")) };
        if !id.starts_with('k') {
            continue;
        }
        let (since, secret) =
            value.split_once(' ').ok_or_else(|| Error::corrupt("signing keys", format!("key {id} has no time")))?;
        let since_ms = since.parse().map_err(|e| Error::corrupt("signing keys", format!("key {id}: {e}")))?;
        keys.push(StoredSigningKey { id: id.clone(), since_ms, secret: secret.to_owned() });
    }
    keys.sort_by_key(|k| (k.since_ms, key_number(&k.id)));
    Ok(keys)
}

fn key_number(id: &str) -> u64 {
    id.trim_start_matches('k').parse().unwrap_or(u64::MAX)
}
