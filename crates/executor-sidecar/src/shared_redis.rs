//! Decisions shared across sidecars through Redis scripts (rate limits, daily quotas),
//! and what happens when Redis stops answering: the caller decides locally, this logs
//! it once, counts those decisions, and asks Redis again at most once a second until it
//! answers, so calls do not each wait out a timeout.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scripts::Script;

/// How long one Redis decision may take before the local fallback decides instead, by
/// default (`TOOLPLANE_REDIS_DECISION_TIMEOUT_MS`).
pub const REDIS_DECISION_TIMEOUT: Duration = Duration::from_millis(100);
/// While Redis is away, how often one decision tries it again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

pub struct SharedRedis {
    client: Client,
    /// How long one decision waits for Redis.
    timeout: Duration,
    script: Script,
    /// What the decisions are about, for the log lines.
    what: &'static str,
    degraded: AtomicBool,
    last_probe: Mutex<Option<Instant>>,
    /// Decisions made locally because Redis did not answer.
    pub degraded_decisions: AtomicU64,
}

impl SharedRedis {
    /// Decisions wait for Redis as long as `client`'s command timeout (see
    /// [`crate::redis_conn::redis_client_with_timeout`]).
    pub fn new(client: Client, lua: &str, what: &'static str) -> Self {
        let timeout = match client.perf_config().default_command_timeout {
            t if t.is_zero() => REDIS_DECISION_TIMEOUT,
            t => t,
        };
        Self {
            client,
            timeout,
            script: Script::from_lua(lua),
            what,
            degraded: AtomicBool::new(false),
            last_probe: Mutex::new(None),
            degraded_decisions: AtomicU64::new(0),
        }
    }

    /// Runs the script; `None` means Redis is away and the caller must decide locally
    /// (the decision is counted as degraded).
    pub async fn eval(&self, keys: Vec<String>, args: Vec<String>) -> Option<Vec<i64>> {
        if self.degraded.load(Ordering::Relaxed) {
            let mut last = self.last_probe.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < PROBE_INTERVAL) {
                drop(last);
                self.degraded_decisions.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            *last = Some(Instant::now());
        }
        let call = self
            .script
            .evalsha_with_reload::<Vec<i64>, _, _>(&self.client, keys, args);
        let why = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) if !v.is_empty() => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(what = self.what, "Redis answers again; shared across sidecars again");
                }
                return Some(v);
            }
            Ok(Ok(v)) => format!("unexpected reply {v:?}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %why, what = self.what, "Redis unavailable; deciding locally at this sidecar's share");
        }
        *self.last_probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.degraded_decisions.fetch_add(1, Ordering::Relaxed);
        None
    }
}
