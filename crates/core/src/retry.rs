//! Retry policy: exponential backoff with equal jitter, only for failures worth
//! retrying, only for idempotent tools, never past the caller's deadline.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the wait before retry number `attempt` (0-based):
    /// `initial * 2^attempt`, capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max_backoff)
    }

    /// Equal jitter: uniformly random in `[ceiling / 2, ceiling]`, so retries of many
    /// callers spread out instead of arriving together, yet the backoff an admin
    /// configured is a real pause (full jitter may retry a struggling tool at once).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = u64::try_from(self.ceiling(attempt).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::rng().random_range(cap / 2..=cap))
    }

    /// The wait before the next attempt, or `None` when there is none: attempts used
    /// up, or the wait (at least the upstream's `Retry-After`) would end past the
    /// deadline (`remaining`, with `reserve` kept for the call itself).
    pub fn next_delay(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        remaining: Option<Duration>,
        reserve: Duration,
    ) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let delay = self.backoff(attempts_made - 1).max(retry_after.unwrap_or_default());
        match remaining {
            Some(left) if delay + reserve >= left => None,
            _ => Some(delay),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_below_the_ceiling() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(0), Duration::from_millis(50));
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(3), Duration::from_millis(400));
        assert_eq!(p.ceiling(30), Duration::from_secs(2));
        for attempt in 0..10 {
            let b = p.backoff(attempt);
            assert!(b <= p.ceiling(attempt) && b >= p.ceiling(attempt) / 2, "{b:?}");
        }
        let spread: std::collections::HashSet<Duration> = (0..50).map(|_| p.backoff(5)).collect();
        assert!(spread.len() > 10, "jittered");
    }

    #[test]
    fn no_retry_past_attempts_or_deadline_and_retry_after_is_honoured() {
        let p = RetryPolicy::default();
        assert!(p.next_delay(3, None, None, Duration::ZERO).is_none());
        let d = p
            .next_delay(1, Some(Duration::from_millis(700)), None, Duration::ZERO)
            .unwrap();
        assert!(d >= Duration::from_millis(700));
        let tight = p.next_delay(
            1,
            Some(Duration::from_millis(700)),
            Some(Duration::from_millis(500)),
            Duration::ZERO,
        );
        assert!(tight.is_none(), "would end past the deadline");
        assert!(
            p.next_delay(1, None, Some(Duration::from_secs(10)), Duration::from_millis(10))
                .is_some()
        );
    }

    #[test]
    fn a_strategy_sets_attempts_and_backoff_and_defaults_fill_only_unset_fields() {
        let strategy = |max_attempts, initial_backoff_ms, max_backoff_ms| crate::model::FallbackStrategy {
            tool_id: uuid::Uuid::nil(),
            fallback_tool_ids: vec![],
            max_attempts,
            initial_backoff_ms,
            max_backoff_ms,
            conditions: vec![],
            mode: crate::model::DegradationMode::Full,
        };
        let d = RetryPolicy::default();
        assert_eq!(strategy(0, 0, 0).retry_policy(d), d);
        let p = strategy(5, 100, 200).retry_policy(d);
        assert_eq!(
            p,
            RetryPolicy {
                max_attempts: 5,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(200),
            }
        );
        assert_eq!(p.ceiling(3), Duration::from_millis(200), "capped by the strategy");
        assert!(p.next_delay(5, None, None, Duration::ZERO).is_none());
        assert!(p.next_delay(4, None, None, Duration::ZERO).is_some());
        let one = strategy(1, 0, 0).retry_policy(d);
        assert!(
            one.next_delay(1, None, None, Duration::ZERO).is_none(),
            "one attempt, no retry"
        );
        let partial = strategy(0, 300, 0).retry_policy(d);
        assert_eq!(
            (partial.max_attempts, partial.initial_backoff, partial.max_backoff),
            (d.max_attempts, Duration::from_millis(300), d.max_backoff)
        );
    }
}
