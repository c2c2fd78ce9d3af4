//! Registry statistics learned from real invocation outcomes: reliability (share of
//! calls that succeeded) and average latency, as exponentially weighted averages so
//! they follow a tool that changes, seeded by the first observation.

use crate::model::ExecutionStatus;

/// Weight of the newest observation.
pub const ALPHA: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToolStats {
    pub reliability_score: f64,
    pub average_latency_ms: u32,
    pub outcomes: u64,
}

/// Whether an outcome says anything about the tool's reliability: calls refused before
/// reaching it (permission, open circuit) and rate limiting do not.
pub fn counts(status: ExecutionStatus) -> bool {
    !matches!(
        status,
        ExecutionStatus::PermissionDenied | ExecutionStatus::CircuitOpen | ExecutionStatus::RateLimited
    )
}

pub fn observe(prev: ToolStats, status: ExecutionStatus, duration_ms: u32) -> ToolStats {
    let success = matches!(status, ExecutionStatus::Success | ExecutionStatus::PartialSuccess);
    let s = if success { 1.0 } else { 0.0 };
    if prev.outcomes == 0 {
        return ToolStats {
            reliability_score: s,
            average_latency_ms: duration_ms,
            outcomes: 1,
        };
    }
    let latency = f64::from(prev.average_latency_ms) * (1.0 - ALPHA) + f64::from(duration_ms) * ALPHA;
    ToolStats {
        reliability_score: prev.reliability_score * (1.0 - ALPHA) + s * ALPHA,
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        average_latency_ms: latency.round().clamp(0.0, f64::from(u32::MAX)) as u32,
        outcomes: prev.outcomes + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_outcome_seeds_then_averages_move_gradually() {
        let fresh = ToolStats {
            reliability_score: 0.0,
            average_latency_ms: 0,
            outcomes: 0,
        };
        let one = observe(fresh, ExecutionStatus::Success, 100);
        assert_eq!(
            one,
            ToolStats {
                reliability_score: 1.0,
                average_latency_ms: 100,
                outcomes: 1
            }
        );
        let two = observe(one, ExecutionStatus::Timeout, 1100);
        assert!((two.reliability_score - 0.9).abs() < 1e-9);
        assert_eq!(two.average_latency_ms, 200);
        let mut s = two;
        for _ in 0..200 {
            s = observe(s, ExecutionStatus::ExecutionError, 50);
        }
        assert!(s.reliability_score < 0.01);
        assert!(!counts(ExecutionStatus::PermissionDenied));
    }
}
