//! Retry policies: how many attempts a step gets, and the back-off between them.

use std::time::Duration;

use backoff::backoff::Backoff;

/// Exponential back-off with jitter, computed with the `backoff` crate. The
/// delay is durable: a timer in the store, never a sleep in the worker.
///
/// ```
/// use std::time::Duration;
/// use keel_worker::RetryPolicy;
/// let policy = RetryPolicy::attempts(5).initial(Duration::from_millis(200)).max_delay(Duration::from_secs(10));
/// assert_eq!(policy.max_attempts(), 5);
/// let first = policy.delay_after(1);
/// assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(300));
/// // A number is a policy with that many attempts.
/// let five: RetryPolicy = 5.into();
/// assert_eq!(five.max_attempts(), 5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: f64,
}

impl Default for RetryPolicy {
    /// 3 attempts, 1 s then 2 s (±50 %).
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(60),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// The default back-off with this many attempts in all (1 = no retry).
    pub fn attempts(max_attempts: u32) -> Self {
        Self { max_attempts: max_attempts.max(1), ..Self::default() }
    }

    /// Never retry.
    pub fn none() -> Self {
        Self::attempts(1)
    }

    /// The first delay.
    pub fn initial(mut self, delay: Duration) -> Self {
        self.initial = delay;
        self
    }

    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier.max(1.0);
        self
    }

    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Randomization factor in `[0, 1]`: a delay `d` becomes one in `d·(1±jitter)`.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before the attempt after `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let mut backoff = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(self.initial)
            .with_multiplier(self.multiplier)
            .with_max_interval(self.max_delay)
            .with_randomization_factor(self.jitter)
            .with_max_elapsed_time(None)
            .build();
        let mut delay = self.initial;
        for _ in 0..attempt.max(1) {
            delay = backoff.next_backoff().unwrap_or(self.max_delay);
        }
        delay
    }
}

impl From<u32> for RetryPolicy {
    fn from(max_attempts: u32) -> Self {
        Self::attempts(max_attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_and_stay_bounded() {
        let policy = RetryPolicy::attempts(10)
            .initial(Duration::from_millis(100))
            .jitter(0.0)
            .max_delay(Duration::from_millis(500));
        let delays: Vec<u128> = (1..=5).map(|a| policy.delay_after(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        let jittery = RetryPolicy::default();
        for _ in 0..50 {
            let d = jittery.delay_after(2).as_millis();
            assert!((1000..=3000).contains(&d), "{d}");
        }
    }
}
