//! How long a failed task waits before its next attempt: exponential, capped, with jitter.
//!
//! `delay(attempt) = min(max, base * 2^(attempt-1))`, then scaled into `[delay/2, delay]` by a
//! jitter drawn from the task id and attempt (a stable hash, so no RNG is needed and a retry
//! storm of many tasks still spreads out). Defaults: base 1 s, max 10 min: attempts 1..10 wait
//! about 1 s, 2 s, 4 s, ... 8.5 min; later ones 5-10 min.

use std::time::Duration;

use crate::task::fnv1a;

/// Exponential, capped, jittered retry delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// `WORKER_RETRY_BASE_DELAY`, default 1s.
    pub base: Duration,
    /// `WORKER_RETRY_MAX_DELAY`, default 10m.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (1-based) of task `task_id`.
    pub fn delay(&self, task_id: &str, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let full = self
            .base
            .checked_mul(1u32 << exponent.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let seed = fnv1a(format!("{task_id}/{attempt}").as_bytes());
        // A fraction in [0.5, 1.0] from the top 16 bits of the hash.
        let fraction =
            0.5 + f64::from(u16::try_from(seed >> 48).unwrap_or(0)) / f64::from(u16::MAX) / 2.0;
        full.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_and_is_capped() {
        let backoff = Backoff::default();
        for attempt in 1..=12 {
            let full = Duration::from_secs(1 << (attempt - 1)).min(Duration::from_secs(600));
            let delay = backoff.delay("task-1", attempt);
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempt}: {delay:?}"
            );
        }
        assert!(backoff.delay("task-1", 1000) <= Duration::from_secs(600));
    }

    #[test]
    fn jitter_differs_between_tasks_and_is_stable() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay("a", 5), backoff.delay("a", 5));
        let distinct: std::collections::HashSet<Duration> = (0..20)
            .map(|i| backoff.delay(&format!("task-{i}"), 5))
            .collect();
        assert!(distinct.len() > 10);
    }
}
