//! Per tool, agent and UTC day usage (the sketch's `tool_usage_statistics` and
//! `cache_performance`), folded from invocation records as they arrive.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::model::{ExecutionStatus, InvocationRecord};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    pub tool_id: Uuid,
    pub agent_id: Uuid,
    pub day: NaiveDate,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageCounts {
    pub invocations: u64,
    pub successes: u64,
    pub failures: u64,
    pub cache_hits: u64,
    pub total_duration_ms: u64,
    pub total_cost: Decimal,
}

impl UsageCounts {
    pub fn add(&mut self, o: &UsageCounts) {
        self.invocations += o.invocations;
        self.successes += o.successes;
        self.failures += o.failures;
        self.cache_hits += o.cache_hits;
        self.total_duration_ms += o.total_duration_ms;
        self.total_cost += o.total_cost;
    }

    pub fn average_duration_ms(&self) -> f64 {
        if self.invocations == 0 {
            0.0
        } else {
            self.total_duration_ms as f64 / self.invocations as f64
        }
    }

    pub fn cache_hit_rate(&self) -> f64 {
        if self.invocations == 0 {
            0.0
        } else {
            self.cache_hits as f64 / self.invocations as f64
        }
    }
}

/// What one invocation adds, and where. The tool is the one that answered (a
/// fallback's, when one did); the day is the UTC day it completed.
pub fn contribution(i: &InvocationRecord) -> (UsageKey, UsageCounts) {
    let r = &i.result;
    let ok = matches!(r.status, ExecutionStatus::Success | ExecutionStatus::PartialSuccess);
    (
        UsageKey {
            tool_id: r.tool_id,
            agent_id: i.agent_id,
            day: r.completed_at.date_naive(),
        },
        UsageCounts {
            invocations: 1,
            successes: u64::from(ok),
            failures: u64::from(!ok),
            cache_hits: u64::from(r.cache_hit),
            total_duration_ms: u64::from(r.duration_ms),
            total_cost: r.cost,
        },
    )
}
