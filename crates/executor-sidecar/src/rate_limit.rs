//! Per-tool rate limits (`rate_limit_rpm`) and per-agent ones (`calls_per_minute`) with
//! GCRA, each in its own key space. With Redis every sidecar draws
//! from one budget: one atomic script call per decision, timed by Redis's clock. Without
//! Redis each sidecar limits itself. When Redis stops answering, each sidecar falls back
//! to a local limiter sized to its share of the budget (`local_share`), logs it once and
//! counts the decisions it made that way, and returns to Redis when Redis answers again.
//!
//! "N per minute" is GCRA with emission interval 60 s / N and a burst of N: a full
//! minute's budget may be used at once, then it refills at N per minute.
//!
//! The state in Redis (the theoretical arrival time, TAT) cannot carry a MAC, as Redis
//! does the arithmetic; the Redis ACL keeps agents away from it. What can be checked
//! cheaply is that it never goes backwards: while the TAT this sidecar last saw is
//! still in the future, Redis keeps the key and other sidecars only move it forward,
//! so finding less means it was deleted or rewritten outside toolplane (or Redis lost
//! it). That is logged and counted in `toolplane_redis_state_regressions_total`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use toolplane_runtime::metrics as m;
use uuid::Uuid;

pub use crate::shared_redis::REDIS_DECISION_TIMEOUT;
use crate::shared_redis::SharedRedis;

const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local stored = tonumber(redis.call('GET', KEYS[1]))
local tat = stored
if not tat or tat < now then tat = now end
if tat - now > tolerance then
  return {0, math.ceil((tat - tolerance - now) / 1000), stored or -1, now, tat}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tolerance + interval) / 1000) + 1)
return {1, 0, stored or -1, now, tat + interval}
"#;

/// What a limit is about: a tool (all agents' calls to it) or an agent (its calls to
/// every tool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Tool,
    Agent,
}

impl Scope {
    fn key(self, id: Uuid) -> String {
        match self {
            Scope::Tool => format!("toolplane:ratelimit:{id}"),
            Scope::Agent => format!("toolplane:ratelimit:agent:{id}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited { retry_after: Duration },
}

pub struct RateLimiter {
    redis: Option<SharedRedis>,
    local: Mutex<HashMap<(Scope, Uuid, u32), Arc<DefaultDirectRateLimiter>>>,
    /// This sidecar's share of a tool's budget while Redis is away (0..1].
    local_share: f64,
    /// Per tool or agent, the TAT (Redis's clock, µs) this sidecar last saw or wrote.
    seen: Mutex<HashMap<(Scope, Uuid), i64>>,
}

impl RateLimiter {
    /// In-process limits only.
    pub fn local() -> Self {
        Self {
            redis: None,
            local: Mutex::default(),
            local_share: 1.0,
            seen: Mutex::default(),
        }
    }

    /// Limits shared through Redis.
    pub fn shared(client: Client, local_share: f64) -> Self {
        Self {
            redis: Some(SharedRedis::new(client, GCRA_LUA, "rate limits")),
            local: Mutex::default(),
            local_share: local_share.clamp(0.0001, 1.0),
            seen: Mutex::default(),
        }
    }

    /// Decisions made locally because Redis did not answer.
    pub fn degraded_decisions(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(0, |r| r.degraded_decisions.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A tool's limit: `rpm` calls per minute to it, from every agent.
    pub async fn check(&self, tool: Uuid, rpm: u32) -> Decision {
        self.check_scoped(Scope::Tool, tool, rpm).await
    }

    /// An agent's limit: `rpm` calls per minute from it, to every tool.
    pub async fn check_agent(&self, agent: Uuid, rpm: u32) -> Decision {
        self.check_scoped(Scope::Agent, agent, rpm).await
    }

    async fn check_scoped(&self, scope: Scope, id: Uuid, rpm: u32) -> Decision {
        let subject = (scope, id);
        if rpm == 0 {
            return Decision::Allowed;
        }
        let Some(redis) = &self.redis else {
            return self.check_local(subject, rpm);
        };
        let interval_us = 60_000_000.0 / f64::from(rpm);
        let tolerance_us = interval_us * f64::from(rpm - 1);
        let key = scope.key(id);
        let args = vec![interval_us.round().to_string(), tolerance_us.round().to_string()];
        let reply = redis.eval(vec![key], args).await;
        if let Some([_, _, stored, now, after, ..]) = reply.as_deref() {
            self.check_forward(subject, *stored, *now, *after);
        }
        match reply.as_deref() {
            Some([1, ..]) => Decision::Allowed,
            Some([_, retry_ms, ..]) => Decision::Limited {
                retry_after: Duration::from_millis(u64::try_from(*retry_ms).unwrap_or(0)),
            },
            _ => self.check_degraded(subject, rpm),
        }
    }

    /// Flags a TAT that went backwards (`stored`, -1 when the key was gone) while the
    /// one this sidecar last saw was still ahead of `now`; remembers `after`.
    fn check_forward(&self, subject: (Scope, Uuid), stored: i64, now: i64, after: i64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&prev) = seen.get(&subject)
            && prev > now
            && stored < prev
        {
            tracing::warn!(
                scope = ?subject.0,
                id = %subject.1,
                behind_ms = (prev - stored.max(now)) / 1000,
                "rate-limit state in Redis went backwards: deleted or rewritten outside toolplane, or Redis lost it"
            );
            metrics::counter!(m::REDIS_REGRESSIONS, "kind" => "rate_limit").increment(1);
        }
        seen.insert(subject, after);
    }

    /// Redis is away: this sidecar's share of the budget, locally.
    fn check_degraded(&self, subject: (Scope, Uuid), rpm: u32) -> Decision {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let share = (f64::from(rpm) * self.local_share).floor().max(1.0) as u32;
        self.check_local(subject, share)
    }

    fn check_local(&self, (scope, id): (Scope, Uuid), rpm: u32) -> Decision {
        let limiter = {
            let mut map = self.local.lock().unwrap_or_else(|e| e.into_inner());
            map.entry((scope, id, rpm))
                .or_insert_with(|| {
                    let n = NonZeroU32::new(rpm).unwrap_or(NonZeroU32::MIN);
                    Arc::new(DefaultDirectRateLimiter::direct(Quota::per_minute(n).allow_burst(n)))
                })
                .clone()
        };
        match limiter.check() {
            Ok(()) => Decision::Allowed,
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_limits_admit_the_budget_then_say_when() {
        let l = RateLimiter::local();
        let tool = Uuid::new_v4();
        for _ in 0..3 {
            assert_eq!(l.check(tool, 3).await, Decision::Allowed);
        }
        match l.check(tool, 3).await {
            Decision::Limited { retry_after } => {
                assert!(
                    retry_after > Duration::from_secs(15) && retry_after <= Duration::from_secs(20),
                    "{retry_after:?}"
                )
            }
            Decision::Allowed => panic!("over budget"),
        }
        assert_eq!(
            l.check(Uuid::new_v4(), 3).await,
            Decision::Allowed,
            "budgets are per tool"
        );
        assert_eq!(l.check(tool, 0).await, Decision::Allowed, "0 means unlimited");
        assert_eq!(
            l.check_agent(tool, 3).await,
            Decision::Allowed,
            "an agent's limit is apart from a tool's, even under the same id"
        );
    }
}
