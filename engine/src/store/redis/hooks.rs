//! The Redis store's webhooks: subscriptions, the outbox, delivery jobs and logs.

#[allow(clippy::wildcard_imports)]
use super::*;

#[async_trait]
impl HookStore for RedisStore {
    async fn put_webhook(&self, subscription: &WebhookSubscription) -> Result<()> {
        let mut conn = self.conn.clone();
        // The partition's flag first, so no event of a stored subscription can
        // miss the outbox. It is never removed (a later delete could race a
        // concurrent put across slots): with no subscription left, fan-out
        // finds no receiver, at the cost of an outbox entry per event.
        for keys in &self.parts {
            let _: () = redis::cmd("SET").arg(keys.hooks_flag()).arg(1).query_async(&mut conn).await?;
        }
        let _: () = redis::cmd("HSET")
            .arg(self.keys().webhooks())
            .arg(&subscription.id)
            .arg(to_json(subscription)?)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookSubscription>> {
        let mut conn = self.conn.clone();
        let all: Vec<String> = redis::cmd("HVALS").arg(self.keys().webhooks()).query_async(&mut conn).await?;
        let mut subs: Vec<WebhookSubscription> =
            all.iter().map(|text| from_json("webhook subscription", text)).collect::<Result<_>>()?;
        subs.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(subs)
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let (removed,): (i64,) = redis::pipe()
            .atomic()
            .cmd("HDEL")
            .arg(self.keys().webhooks())
            .arg(id)
            .cmd("DEL")
            .arg(self.keys().webhook_log(id))
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    /// Every partition's outbox in turn, without blocking, up to `max`; if all
    /// are empty, a blocking read on one of them (on a single partition, for the
    /// whole `block`; with more, for at most `SWEEP_BLOCK`: the dispatcher calls
    /// again at once, sweeping them all).
    async fn claim_outbox(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
        stale: Duration,
    ) -> Result<Vec<OutboxItem>> {
        let max = max.max(1);
        let order: Vec<&Keys> = self.sweep_order().collect();
        let mut items = Vec::new();
        for keys in &order {
            items.extend(self.claim_outbox_in(keys, consumer, max - items.len(), Duration::ZERO, stale).await?);
            if items.len() >= max {
                return Ok(items);
            }
        }
        if items.is_empty() && !block.is_zero() {
            items = self.claim_outbox_in(order[0], consumer, max, self.sweep_block(block), stale).await?;
        }
        Ok(items)
    }

    async fn fan_out(&self, item: &OutboxItem, jobs: &[DeliveryJob]) -> Result<()> {
        ops::fanout::call(self, self.keys_of(&item.run_id), &item.id, jobs).await
    }

    async fn due_jobs(&self, max: usize, visibility: Duration) -> Result<Vec<DeliveryJob>> {
        let mut jobs = Vec::new();
        for keys in self.sweep_order() {
            if jobs.len() >= max.max(1) {
                break;
            }
            jobs.extend(ops::jobs_due::call(self, keys, max.max(1) - jobs.len(), visibility).await?);
        }
        Ok(jobs)
    }

    async fn update_job(&self, job: &DeliveryJob, next: Option<(&DeliveryJob, Duration)>) -> Result<()> {
        ops::job_update::call(self, job, next).await
    }

    async fn log_delivery(&self, log: &str, delivery: &WebhookDelivery) -> Result<()> {
        let key = self.keys().webhook_log(log);
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(&key)
            .arg(to_json(delivery)?)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(0)
            .arg(crate::store::DELIVERY_LOG_LEN - 1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(self.config.retention.as_millis() as u64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn deliveries(&self, log: &str, limit: usize) -> Result<Vec<WebhookDelivery>> {
        let mut conn = self.conn.clone();
        let all: Vec<String> = redis::cmd("LRANGE")
            .arg(self.keys().webhook_log(log))
            .arg(0)
            .arg(limit.clamp(1, crate::store::DELIVERY_LOG_LEN) as i64 - 1)
            .query_async(&mut conn)
            .await?;
        all.iter().map(|text| from_json("webhook delivery", text)).collect()
    }
}

impl RedisStore {
    /// One partition's outbox: stale entries first, else new ones.
    async fn claim_outbox_in(
        &self,
        keys: &Keys,
        consumer: &str,
        max: usize,
        block: Duration,
        stale: Duration,
    ) -> Result<Vec<OutboxItem>> {
        let outbox = keys.outbox();
        self.ensure_group(&outbox, DISPATCH_GROUP).await?;
        let mut conn = self.conn.clone();
        // Events a dispatcher took and never finished (it died) come back.
        let stale: redis::RedisResult<Value> = redis::cmd("XAUTOCLAIM")
            .arg(&outbox)
            .arg(DISPATCH_GROUP)
            .arg(consumer)
            .arg(stale.as_millis().max(1) as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(max.max(1))
            .query_async(&mut conn)
            .await;
        let stale = match stale {
            Ok(stale) => stale,
            Err(e) if e.code() == Some("NOGROUP") => {
                // Redis restarted empty: recreate the group on the next round.
                self.forget_groups();
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let mut entries: Vec<Value> =
            array(&stale)?.get(1).map(|v| array(v).map(<[Value]>::to_vec)).transpose()?.unwrap_or_default();
        if entries.is_empty() {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP").arg(DISPATCH_GROUP).arg(consumer).arg("COUNT").arg(max.max(1));
            if !block.is_zero() {
                cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
            }
            cmd.arg("STREAMS").arg(&outbox).arg(">");
            let reply = self.blocking_query(cmd, block).await?;
            for stream in array(&reply)? {
                entries.extend(array(array(stream)?.get(1).unwrap_or(&Value::Nil))?.iter().cloned());
            }
        }
        entries
            .iter()
            .filter(|e| !matches!(e, Value::Nil))
            .map(|entry| {
                let entry = array(entry)?;
                let id = text(&entry[0])?;
                let f = pairs(entry.get(1).unwrap_or(&Value::Nil))?;
                let get =
                    |name: &str| f.get(name).cloned().ok_or_else(|| Error::corrupt(format!("outbox entry {id}"), name));
                let kind = get("type")?;
                Ok(OutboxItem {
                    run_id: RunId::new(get("run_id")?)?,
                    sequence: get("seq")?,
                    event_type: WebhookEventType::parse(&kind).ok_or_else(|| Error::corrupt("outbox entry", kind))?,
                    id,
                })
            })
            .collect()
    }
}
