//! Per-tool rate limits (`rate_limit_rpm`) with GCRA. With Redis every sidecar draws
//! from one budget: one atomic script call per decision, timed by Redis's clock. Without
//! Redis each sidecar limits itself. When Redis stops answering, each sidecar falls back
//! to a local limiter sized to its share of the budget (`local_share`), logs it once and
//! counts the decisions it made that way, and returns to Redis when Redis answers again.
//!
//! "N per minute" is GCRA with emission interval 60 s / N and a burst of N: a full
//! minute's budget may be used at once, then it refills at N per minute.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use uuid::Uuid;

pub use crate::shared_redis::REDIS_DECISION_TIMEOUT;
use crate::shared_redis::SharedRedis;

const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
if tat - now > tolerance then
  return {0, math.ceil((tat - tolerance - now) / 1000)}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tolerance + interval) / 1000) + 1)
return {1, 0}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited { retry_after: Duration },
}

pub struct RateLimiter {
    redis: Option<SharedRedis>,
    local: Mutex<HashMap<(Uuid, u32), Arc<DefaultDirectRateLimiter>>>,
    /// This sidecar's share of a tool's budget while Redis is away (0..1].
    local_share: f64,
}

impl RateLimiter {
    /// In-process limits only.
    pub fn local() -> Self {
        Self {
            redis: None,
            local: Mutex::default(),
            local_share: 1.0,
        }
    }

    /// Limits shared through Redis.
    pub fn shared(client: Client, local_share: f64) -> Self {
        Self {
            redis: Some(SharedRedis::new(client, GCRA_LUA, "rate limits")),
            local: Mutex::default(),
            local_share: local_share.clamp(0.0001, 1.0),
        }
    }

    /// Decisions made locally because Redis did not answer.
    pub fn degraded_decisions(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(0, |r| r.degraded_decisions.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub async fn check(&self, tool: Uuid, rpm: u32) -> Decision {
        if rpm == 0 {
            return Decision::Allowed;
        }
        let Some(redis) = &self.redis else {
            return self.check_local(tool, rpm);
        };
        let interval_us = 60_000_000.0 / f64::from(rpm);
        let tolerance_us = interval_us * f64::from(rpm - 1);
        let key = format!("toolplane:ratelimit:{tool}");
        let args = vec![interval_us.round().to_string(), tolerance_us.round().to_string()];
        match redis.eval(vec![key], args).await.as_deref() {
            Some([1, ..]) => Decision::Allowed,
            Some([_, retry_ms, ..]) => Decision::Limited {
                retry_after: Duration::from_millis(u64::try_from(*retry_ms).unwrap_or(0)),
            },
            _ => self.check_degraded(tool, rpm),
        }
    }

    /// Redis is away: this sidecar's share of the budget, locally.
    fn check_degraded(&self, tool: Uuid, rpm: u32) -> Decision {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let share = (f64::from(rpm) * self.local_share).floor().max(1.0) as u32;
        self.check_local(tool, share)
    }

    fn check_local(&self, tool: Uuid, rpm: u32) -> Decision {
        let limiter = {
            let mut map = self.local.lock().unwrap_or_else(|e| e.into_inner());
            map.entry((tool, rpm))
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
    }
}
