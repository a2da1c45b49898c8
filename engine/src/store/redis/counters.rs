//! The /metrics counters (runs and steps per workflow, step durations), kept
//! in process and added to each partition's stats hash about once a second.
//!
//! The scripts count what they journal (`count_stats` in prelude.lua) and hand
//! the counts back beside their reply instead of bumping the hash themselves:
//! three HINCRBYs per step inside the script were a fifth of the commands a
//! run cost Redis. The price: a process that dies loses at most its last
//! second of counts (the journal, the truth, loses nothing), and a count shows
//! in /metrics up to about a second after its transition.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::conn::ROUND_TRIPS;
use super::{Conn, Keys, now_wall_ms};
use crate::error::Result;

/// How long counts wait in process before they are flushed.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Counts not yet in Redis, per partition index, per stats-hash field.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pending: Mutex<HashMap<u16, HashMap<String, i64>>>,
    /// Whether `pending` holds anything (read on every script call: no lock).
    dirty: AtomicBool,
    /// When the last flush started, ms since the Unix epoch.
    flushed_at_ms: AtomicU64,
}

/// This process's round trips (conn.rs) already added to the stats. Process
/// wide like the count itself: a process holds more than one store (a
/// worker's heartbeat thread has its own), and each trip is reported once,
/// by whichever flushes first.
static REPORTED_ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

/// The stats-hash field of the round-trip count (no workflow is named "").
pub(super) const ROUND_TRIPS_FIELD: &str = "|redis_round_trips";

impl Counters {
    /// Add a script's counts (the JSON object after its reply's newline).
    pub(super) fn add(&self, partition: u16, counts: &str) {
        let Ok(counts) = serde_json::from_str::<HashMap<String, i64>>(counts) else {
            tracing::warn!(counts, "a script's counts were not a JSON object of integers; dropped");
            return;
        };
        self.merge(partition, counts);
    }

    /// Add `counts` to what waits for the next flush.
    fn merge(&self, partition: u16, counts: HashMap<String, i64>) {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let part = pending.entry(partition).or_default();
        for (field, n) in counts {
            *part.entry(field).or_default() += n;
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Whether any count waits to be flushed.
    pub(super) fn has_pending(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
            || ROUND_TRIPS.load(Ordering::Relaxed) != REPORTED_ROUND_TRIPS.load(Ordering::Relaxed)
    }

    /// Whether a second has passed since the last flush (and if so, the
    /// caller is the one to flush: the clock is moved on now).
    pub(super) fn due(&self) -> bool {
        let now = now_wall_ms();
        let last = self.flushed_at_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= FLUSH_EVERY.as_millis() as u64
            && self.flushed_at_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Add everything pending to the partitions' stats hashes (one pipeline
    /// per partition). On failure the counts are kept for the next flush.
    pub(super) async fn flush(&self, conn: &Conn, parts: &[Keys]) -> Result<()> {
        let taken = {
            let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.dirty.store(false, Ordering::Relaxed);
            // Round trips until now, this flush's own included (counted as it is sent).
            let sent = ROUND_TRIPS.load(Ordering::Relaxed) + 1;
            let trips = sent.saturating_sub(REPORTED_ROUND_TRIPS.fetch_max(sent, Ordering::Relaxed));
            if trips > 0 {
                *pending.entry(0).or_default().entry(ROUND_TRIPS_FIELD.to_owned()).or_default() += trips as i64;
            }
            std::mem::take(&mut *pending)
        };
        let mut failed = None;
        for (partition, counts) in taken {
            let Some(keys) = parts.get(usize::from(partition)) else { continue };
            if counts.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (field, n) in &counts {
                pipe.cmd("HINCRBY").arg(keys.stats()).arg(field).arg(*n).ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut conn.clone()).await {
                self.merge(partition, counts);
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), |e| Err(e.into()))
    }
}
