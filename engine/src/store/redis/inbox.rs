//! The Redis store's run inboxes: per run two keys under a hash tag of their
//! own (keys.rs `inbox`), changed only by `inbox.lua`; and the QStash signing
//! key pair on one global hash.

use std::sync::LazyLock;

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::{InboxPage, InboxPush, InboxStore, MAX_INBOX_MESSAGES};

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("inbox.lua")));

/// An open inbox unused this long is dropped (its run is long abandoned).
const OPEN_TTL_MS: u64 = 35 * 86_400_000;

impl RedisStore {
    async fn inbox_script(&self, keys: &[String], args: &[String]) -> Result<Value> {
        let mut invocation = SCRIPT.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for arg in args {
            invocation.arg(arg);
        }
        // Through `invoke_on`: with KEEL_REDIS_WAIT_REPLICAS a push is
        // acknowledged (to the app, as a 2xx) only once a replica has it.
        invocation.invoke_on(self).await
    }
}

fn full_error(run_id: &RunId) -> Error {
    Error::Invalid(format!("run {run_id} has more than {MAX_INBOX_MESSAGES} messages: no more are taken"))
}

#[async_trait]
impl InboxStore for RedisStore {
    async fn inbox_push(&self, run_id: &RunId, messages: &[String], close: bool) -> Result<InboxPush> {
        let mut args = vec![
            "push".to_owned(),
            OPEN_TTL_MS.to_string(),
            MAX_INBOX_MESSAGES.to_string(),
            u8::from(close).to_string(),
        ];
        args.extend(messages.iter().cloned());
        match self.inbox_script(&self.keys().inbox(run_id.as_str()), &args).await? {
            Value::Int(n) => Ok(InboxPush::Added(n as u64)),
            reply => match opt_text(&reply)?.as_deref() {
                Some("closed") => Ok(InboxPush::Closed),
                Some("full") => Err(full_error(run_id)),
                _ => Err(Error::corrupt("inbox push reply", format!("{reply:?}"))),
            },
        }
    }

    async fn inbox_read(&self, run_id: &RunId, after: u64, limit: usize) -> Result<InboxPage> {
        let args = ["read".to_owned(), OPEN_TTL_MS.to_string(), after.to_string(), limit.max(1).to_string()];
        let reply = self.inbox_script(&self.keys().inbox(run_id.as_str()), &args).await?;
        if matches!(&reply, Value::BulkString(b) if b.as_slice() == b"lost") {
            return Err(Error::corrupt(
                "run inbox",
                format!("the inbox of run {run_id} was read up to {after} and is gone (it expired)"),
            ));
        }
        let items = array(&reply)?;
        let (Some(total), Some(closed)) = (items.first(), items.get(1)) else {
            return Err(Error::corrupt("inbox read reply", format!("{reply:?}")));
        };
        let messages = items[2..].iter().map(text).collect::<Result<Vec<_>>>()?;
        Ok(InboxPage { messages, total: int(total)? as u64, closed: int(closed)? == 1 })
    }

    async fn inbox_close(&self, run_id: &RunId, keep: Duration) -> Result<()> {
        let args = ["close".to_owned(), (keep.as_millis().max(1) as u64).to_string()];
        self.inbox_script(&self.keys().inbox(run_id.as_str()), &args).await?;
        Ok(())
    }

    async fn dlq_delete(&self, run_ids: &[RunId], keep: Duration) -> Result<u64> {
        let mut args = vec!["dlq-delete".to_owned(), (keep.as_millis().max(1) as u64).to_string()];
        args.extend(run_ids.iter().map(ToString::to_string));
        Ok(int(&self.inbox_script(&[self.keys().qstash_dlq_deleted()], &args).await?)? as u64)
    }

    async fn dlq_deleted(&self, run_ids: &[RunId]) -> Result<Vec<bool>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["dlq-deleted".to_owned()];
        args.extend(run_ids.iter().map(ToString::to_string));
        let reply = self.inbox_script(&[self.keys().qstash_dlq_deleted()], &args).await?;
        array(&reply)?.iter().map(|v| Ok(int(v)? == 1)).collect()
    }

    async fn qstash_signing_keys(&self, offer: (&str, &str), replace: bool) -> Result<(String, String)> {
        let args = ["keys".to_owned(), offer.0.to_owned(), offer.1.to_owned(), u8::from(replace).to_string()];
        let reply = self.inbox_script(&[self.keys().qstash_signing_keys()], &args).await?;
        match array(&reply)? {
            [current, next] => Ok((text(current)?, text(next)?)),
            _ => Err(Error::corrupt("QStash signing keys", format!("{reply:?}"))),
        }
    }
}
