//! The sidecar's circuit breakers, one per tool.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use toolplane_core::circuit::{Admission, Breaker, BreakerConfig, State};
use uuid::Uuid;

use crate::upstream::Outcome;

#[derive(Default)]
pub struct Breakers {
    config: BreakerConfig,
    by_tool: Mutex<HashMap<Uuid, Breaker>>,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            by_tool: Mutex::default(),
        }
    }

    pub fn admit(&self, tool: Uuid) -> Admission {
        let mut map = self.by_tool.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(tool)
            .or_insert_with(|| Breaker::new(self.config))
            .admit(Instant::now())
    }

    /// Tools whose circuit is open (or half-open, probing) right now.
    pub fn open_count(&self) -> usize {
        let map = self.by_tool.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|b| !matches!(b.state(), State::Closed { .. }))
            .count()
    }

    pub fn record(&self, tool: Uuid, outcome: &Outcome) {
        let Some(healthy) = outcome.health() else { return };
        let mut map = self.by_tool.lock().unwrap_or_else(|e| e.into_inner());
        let breaker = map.entry(tool).or_insert_with(|| Breaker::new(self.config));
        let was_open = matches!(breaker.state(), State::Open { .. });
        breaker.record(healthy, Instant::now());
        if !was_open && matches!(breaker.state(), State::Open { .. }) {
            tracing::warn!(tool = %tool, "circuit opened after repeated failures");
        }
    }
}
