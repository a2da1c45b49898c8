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
        }
    }
}

impl StoreConfig {
    pub fn with_namespace(namespace: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), ..Self::default() }
    }
}
