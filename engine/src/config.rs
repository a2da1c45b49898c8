use std::time::Duration;

/// How a store behaves; the same for both stores.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub namespace: String,
    /// How long a finished run (summary, journal, indexes) is kept.
    pub retention: Duration,
    /// How long an idempotency key maps to its run.
    pub idempotency_ttl: Duration,
    /// How long a delivered event is kept for runs that start waiting just after it.
    pub event_lookback: Duration,
    /// How many recent events per key are kept for the lookback.
    pub event_lookback_max: usize,
    /// A task delivered more often than this goes to the dead-letter list.
    pub max_deliveries: u32,
    /// The largest value stored (an input, a step's output, an event's data, a
    /// run's output), in bytes of JSON.
    pub max_value_bytes: usize,
    /// Redis: how many partitions a new namespace gets (`None`: 1, or what the
    /// namespace recorded at its first start). A namespace keeps the count it
    /// was created with; asking for another is refused.
    pub partitions: Option<u16>,
    /// Redis: replicas that must acknowledge each write before it counts
    /// (`WAIT` after every script; 0: none, the single-Redis default). With
    /// Redis Cluster failover, 1 keeps an acknowledged result through the loss
    /// of its master.
    pub wait_replicas: u32,
    /// Redis: every script checks that each key it touches is one it was
    /// given in KEYS, and fails if not (what the tests run; a little slower).
    pub check_keys: bool,
}

/// 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            namespace: "keel".into(),
            retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            event_lookback: Duration::from_secs(300),
            event_lookback_max: 1000,
            max_deliveries: 10,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            partitions: None,
            wait_replicas: 0,
            check_keys: false,
        }
    }
}

impl StoreConfig {
    pub fn with_namespace(namespace: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), ..Self::default() }
    }
}

/// A duration as settings spell it: `250ms`, `30s`, `5m`, `2h`, `7d` (a bare
/// number is seconds). Shared by `keel` and `Worker::builder().from_env()`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 30s, 5m, 2h, 7d)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => return Err(format!("{text:?}: unknown unit {other:?} (use ms, s, m, h or d)")),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("{text:?} is too long"))
}

/// A boolean as settings spell it: 1/0, true/false, yes/no, on/off.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        "0" | "false" | "no" | "off" | "n" | "f" | "" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (use 1/0, true/false or yes/no)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_as_documented() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        for yes in ["1", "true", "YES", "on"] {
            assert_eq!(parse_bool(yes), Ok(true), "{yes}");
        }
        for no in ["0", "false", "No", "off"] {
            assert_eq!(parse_bool(no), Ok(false), "{no}");
        }
        assert!(parse_bool("maybe").is_err());
    }
}
