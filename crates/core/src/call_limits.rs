//! Which tools may answer a call in place of the one asked for. A fallback keeps the
//! request's promises: `ExecuteTask`'s constraints (latency, cost, data sensitivity)
//! hold for whichever tool answers, and a fallback never touches more sensitive data
//! than the primary the caller chose.

use rust_decimal::Decimal;

use crate::Violations;
use crate::convert::{parse_decimal, sensitivity_from_pb};
use crate::model::{DataSensitivity, Tool};

/// The caller's limits on the tool that answers; the default limits nothing (`Invoke`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallLimits {
    /// 0: no limit. Compared with the tool's learned average latency.
    pub max_latency_ms: u32,
    pub max_cost: Option<Decimal>,
    pub max_sensitivity: Option<DataSensitivity>,
}

impl CallLimits {
    /// `ExecuteTask`'s (and `SelectTool`'s) constraints, read the way selection reads them.
    pub fn from_pb(c: Option<&toolplane_proto::v1::SelectionConstraints>) -> Result<Self, Violations> {
        let Some(c) = c else {
            return Ok(Self::default());
        };
        let max_cost = if c.max_cost.is_empty() {
            None
        } else {
            Some(parse_decimal("constraints.max_cost", &c.max_cost)?)
        };
        Ok(Self {
            max_latency_ms: c.max_latency_ms,
            max_cost,
            max_sensitivity: sensitivity_from_pb(c.max_data_sensitivity),
        })
    }

    /// Why `tool` breaks these limits, or `None` when it keeps them.
    pub fn breach(&self, tool: &Tool) -> Option<String> {
        let s = &tool.spec;
        if self.max_latency_ms > 0 && s.average_latency_ms > self.max_latency_ms {
            return Some(format!(
                "its average latency {} ms is above the request's {} ms",
                s.average_latency_ms, self.max_latency_ms
            ));
        }
        if let Some(max) = self.max_cost.filter(|m| s.cost_per_call > *m) {
            return Some(format!(
                "its cost per call {} is above the request's {max}",
                s.cost_per_call
            ));
        }
        if let Some(max) = self.max_sensitivity.filter(|m| s.requirements.data_sensitivity > *m) {
            return Some(format!(
                "its data sensitivity {} is above the request's {max}",
                s.requirements.data_sensitivity
            ));
        }
        None
    }

    /// Why `candidate` may not answer in place of `primary`, or `None` when it may:
    /// it must keep these limits and touch no more sensitive data than `primary`.
    pub fn refuses_fallback(&self, primary: &Tool, candidate: &Tool) -> Option<String> {
        let (mine, theirs) = (
            primary.spec.requirements.data_sensitivity,
            candidate.spec.requirements.data_sensitivity,
        );
        if theirs > mine {
            return Some(format!("its data sensitivity {theirs} is above the primary's {mine}"));
        }
        self.breach(candidate)
    }
}

#[cfg(test)]
#[path = "call_limits_tests.rs"]
mod tests;
