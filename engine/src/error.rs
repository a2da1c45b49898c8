use keel_proto::{IdError, RunId, RunStatus};

/// Everything a store operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's lease was taken over (it stalled past its expiry and another
    /// worker claimed the run) or the run is gone. Nothing was written.
    #[error("lease on run {run_id} (epoch {epoch}) is no longer held; nothing was written")]
    LeaseLost { run_id: RunId, epoch: u64 },
    /// The same idempotency key (or client-chosen run id) was used with other input.
    #[error(
        "run {run_id} already exists for this {what} with a different request (workflow, input, labels, delay or callback URL)"
    )]
    IdempotencyConflict { run_id: RunId, what: &'static str },
    #[error("run {0} not found")]
    RunNotFound(RunId),
    #[error("run {run_id} is already {status}")]
    RunFinal { run_id: RunId, status: RunStatus },
    #[error("run {run_id} is {status}, not failed: only a failed run can be retried")]
    NotFailed { run_id: RunId, status: RunStatus },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("cursor {0:?} is not one this store issued")]
    BadCursor(String),
    /// Data in the store could not be decoded (a newer format, or corruption).
    #[error("corrupt or unsupported data for {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A queue's consumer group is missing (Redis restarted empty); the store recreates it.
    #[error("a queue's consumer group is missing")]
    NoGroup,
    #[error("redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The write was made on the master but fewer replicas than asked for
    /// acknowledged it in time: not acknowledged as durable.
    #[error("the write reached {acked} of the {wanted} replicas asked for (KEEL_REDIS_WAIT_REPLICAS) in time")]
    NotReplicated { wanted: u32, acked: u32 },
    /// An operation kept finding what it had read changed when its script
    /// ran (many writers on the same runs); trying again later may succeed.
    #[error("too much contention: {0}")]
    Contended(String),
    /// A signing-key rotation or retirement that would break verification.
    #[error("{0}")]
    SigningKeys(String),
    /// A value over [`StoreConfig::max_value_bytes`](crate::StoreConfig). Nothing was written.
    #[error("the {what} is {size} bytes of JSON, over the limit of {limit} bytes (KEEL_MAX_VALUE_BYTES)")]
    PayloadTooLarge { what: String, size: usize, limit: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The size of `value` as JSON text, without building the text.
pub fn json_size(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Refuse `value` when its JSON is over `limit` bytes.
pub fn check_value_size(what: &str, value: &serde_json::Value, limit: usize) -> Result<()> {
    let size = json_size(value);
    if size > limit {
        return Err(Error::PayloadTooLarge { what: what.to_owned(), size, limit });
    }
    Ok(())
}

impl Error {
    /// Whether the same call may succeed later: Redis was unreachable, slow,
    /// failing over, loading, or lost a queue's group. Refusals (bad input, a
    /// lost lease, a conflict, a final run) and corrupt data are not transient.
    /// The worker abandons an execution on a transient error (replay decides
    /// later); the API answers 503.
    pub fn is_transient(&self) -> bool {
        use redis::{ErrorKind, ServerErrorKind as S};
        match self {
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || matches!(
                        e.kind(),
                        ErrorKind::Server(
                            S::TryAgain
                                | S::ClusterDown
                                | S::BusyLoading
                                | S::MasterDown
                                | S::ReadOnly
                                | S::Moved
                                | S::Ask
                        )
                    )
            }
            Self::Timeout(_) | Self::NoGroup | Self::NotReplicated { .. } | Self::Contended(_) => true,
            _ => false,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, detail: impl ToString) -> Self {
        Self::Corrupt { what: what.into(), detail: detail.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_the_ones_worth_trying_again() {
        let io = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(Error::Redis(io).is_transient());
        assert!(Error::Timeout(std::time::Duration::from_secs(1)).is_transient());
        let refused = Error::RunNotFound(RunId::new("r").unwrap());
        assert!(!refused.is_transient());
        assert!(!Error::Invalid("no".into()).is_transient());
        assert!(!Error::LeaseLost { run_id: RunId::new("r").unwrap(), epoch: 1 }.is_transient());
    }
}
