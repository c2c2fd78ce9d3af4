//! A circuit breaker per tool: closed (calls flow; consecutive failures counted) →
//! open after `failure_threshold` failures (calls refused at once, for `open_for`) →
//! half-open (one probe call; success closes, failure opens again).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; other calls are refused until it reports.
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Refused; the circuit may let a probe through after this long.
    Refused {
        retry_after: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Admission::Allowed
            }
            State::Open { until } => Admission::Refused {
                retry_after: until - now,
            },
            State::HalfOpen => Admission::Refused {
                retry_after: Duration::from_secs(1),
            },
        }
    }

    pub fn record(&mut self, success: bool, now: Instant) {
        self.state = match (self.state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.config.failure_threshold => {
                State::Closed { failures: failures + 1 }
            }
            (_, false) => State::Open {
                until: now + self.config.open_for,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_when_due_and_closes_on_success() {
        let cfg = BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        };
        let mut b = Breaker::new(cfg);
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admission::Allowed);
            b.record(false, t0);
        }
        b.record(true, t0);
        assert_eq!(b.state(), State::Closed { failures: 0 }, "a success resets the count");
        for _ in 0..3 {
            b.record(false, t0);
        }
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)),
            Admission::Refused {
                retry_after: Duration::from_secs(6)
            }
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(later), Admission::Allowed, "the probe");
        assert_eq!(b.state(), State::HalfOpen);
        assert!(
            matches!(b.admit(later), Admission::Refused { .. }),
            "one probe at a time"
        );
        b.record(false, later);
        assert!(matches!(b.state(), State::Open { .. }), "a failed probe opens again");
        let again = later + Duration::from_secs(10);
        assert_eq!(b.admit(again), Admission::Allowed);
        b.record(true, again);
        assert_eq!(b.state(), State::Closed { failures: 0 });
    }
}
