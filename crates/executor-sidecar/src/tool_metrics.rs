//! The per-tool series every call records (`tool` label), as kept handles.
//!
//! `metrics::counter!(NAME, "tool" => name.clone(), ...)` copies the tool's name into a
//! new key and hashes it into the recorder's registry on every call, two to three times
//! per call. Here each tool's series are registered once, on first use, and a call
//! finds them with one hash of the name it already has. Handles are kept only once the
//! recorder is installed ([`toolplane_runtime::metrics::recording`]): one registered
//! before would record nothing for good; until then the macros are used as before.
//!
//! Series appear when first recorded, as with the macros (no zero series per status).
//! A tool's entry stays for the life of the process; there is one per tool name ever
//! called, as there is one series per name in the recorder anyway.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use metrics::{Counter, Histogram};
use toolplane_core::model::ExecutionStatus;
use toolplane_runtime::metrics as m;

/// Every status, in the order of [`slot`].
const STATUSES: usize = 8;

fn slot(s: ExecutionStatus) -> usize {
    match s {
        ExecutionStatus::Success => 0,
        ExecutionStatus::PartialSuccess => 1,
        ExecutionStatus::ValidationError => 2,
        ExecutionStatus::ExecutionError => 3,
        ExecutionStatus::Timeout => 4,
        ExecutionStatus::RateLimited => 5,
        ExecutionStatus::PermissionDenied => 6,
        ExecutionStatus::CircuitOpen => 7,
    }
}

/// One tool's series, each registered when first recorded.
#[derive(Default)]
struct Series {
    invocations: [OnceLock<Counter>; STATUSES],
    seconds: OnceLock<Histogram>,
    circuit_rejections: OnceLock<Counter>,
    cache_hits: OnceLock<Counter>,
    cache_misses: OnceLock<Counter>,
    rate_limited: OnceLock<Counter>,
}

#[derive(Default)]
pub struct ToolMetrics {
    tools: RwLock<HashMap<String, Arc<Series>>>,
}

impl ToolMetrics {
    /// `tool`'s series; `None` while no recorder is installed.
    fn series(&self, tool: &str) -> Option<Arc<Series>> {
        if !toolplane_runtime::metrics::recording() {
            return None;
        }
        if let Some(s) = self.tools.read().unwrap_or_else(|e| e.into_inner()).get(tool) {
            return Some(s.clone());
        }
        let mut tools = self.tools.write().unwrap_or_else(|e| e.into_inner());
        Some(tools.entry(tool.to_owned()).or_default().clone())
    }

    /// A finished call: `toolplane_invocations_total` by status, and its duration.
    pub fn invoked(&self, tool: &str, status: ExecutionStatus, seconds: f64) {
        let Some(s) = self.series(tool) else {
            metrics::counter!(m::INVOCATIONS, "tool" => tool.to_owned(), "status" => status.as_str()).increment(1);
            metrics::histogram!(m::INVOCATION_SECONDS, "tool" => tool.to_owned()).record(seconds);
            return;
        };
        s.invocations[slot(status)]
            .get_or_init(|| metrics::counter!(m::INVOCATIONS, "tool" => tool.to_owned(), "status" => status.as_str()))
            .increment(1);
        s.seconds
            .get_or_init(|| metrics::histogram!(m::INVOCATION_SECONDS, "tool" => tool.to_owned()))
            .record(seconds);
    }

    /// A call refused by the tool's open circuit.
    pub fn circuit_rejected(&self, tool: &str) {
        self.count(
            tool,
            |s| &s.circuit_rejections,
            || metrics::counter!(m::CIRCUIT_REJECTIONS, "tool" => tool.to_owned()),
        );
    }

    /// A result-cache lookup of a cacheable tool: answered from the cache, or not.
    pub fn cache_lookup(&self, tool: &str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        let register = || metrics::counter!(m::CACHE_LOOKUPS, "tool" => tool.to_owned(), "result" => result);
        if hit {
            self.count(tool, |s| &s.cache_hits, register);
        } else {
            self.count(tool, |s| &s.cache_misses, register);
        }
    }

    /// A call refused by a rate limit.
    pub fn rate_limited(&self, tool: &str) {
        self.count(
            tool,
            |s| &s.rate_limited,
            || metrics::counter!(m::RATE_LIMITED, "tool" => tool.to_owned()),
        );
    }

    fn count(&self, tool: &str, which: impl Fn(&Series) -> &OnceLock<Counter>, register: impl Fn() -> Counter) {
        match self.series(tool) {
            Some(s) => which(&s).get_or_init(&register).increment(1),
            None => register().increment(1),
        }
    }
}
