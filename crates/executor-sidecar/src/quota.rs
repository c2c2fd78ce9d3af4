//! Daily budgets of `LIMITED_INVOCATIONS` grants. With Redis every sidecar counts into
//! one counter per grant and local day (one atomic script call per decision, the key
//! expiring when the day ends); without Redis each sidecar counts for itself. When Redis
//! stops answering, a sidecar counts locally up to its share of the budget
//! (`local_share`, as for rate limits), so the fleet never admits much more than the
//! limit while Redis is away.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use fred::prelude::Client;
use toolplane_core::permission::Quota;

use crate::shared_redis::SharedRedis;

/// Counts one call unless the budget is spent; a refused call is not counted.
const CONSUME_LUA: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return {0, n - 1}
end
return {1, n}
"#;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// Counted against this grant; `used` calls of `limit` so far today.
    Admitted {
        permission_id: uuid::Uuid,
        used: u32,
        limit: u32,
    },
    /// Every budget is spent; the earliest reset.
    Exhausted { resets_at: DateTime<Utc>, limits: Vec<u32> },
}

pub struct Quotas {
    redis: Option<SharedRedis>,
    local: Mutex<HashMap<String, (u32, DateTime<Utc>)>>,
    local_share: f64,
}

impl Quotas {
    pub fn local() -> Self {
        Self {
            redis: None,
            local: Mutex::default(),
            local_share: 1.0,
        }
    }

    pub fn shared(client: Client, local_share: f64) -> Self {
        Self {
            redis: Some(SharedRedis::new(client, CONSUME_LUA, "daily quotas")),
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

    /// Takes one call from the first quota with budget left.
    pub async fn consume(&self, quotas: &[Quota]) -> Consumed {
        for q in quotas {
            if let Some(used) = self.take(q).await {
                return Consumed::Admitted {
                    permission_id: q.permission_id,
                    used,
                    limit: q.limit,
                };
            }
        }
        Consumed::Exhausted {
            resets_at: quotas.iter().map(|q| q.resets_at).min().unwrap_or_else(Utc::now),
            limits: quotas.iter().map(|q| q.limit).collect(),
        }
    }

    /// `Some(used)` when admitted.
    async fn take(&self, q: &Quota) -> Option<u32> {
        let Some(redis) = &self.redis else {
            return self.take_local(q, q.limit);
        };
        let key = format!("toolplane:quota:{}", q.counter_key());
        let args = vec![q.limit.to_string(), q.resets_at.timestamp().to_string()];
        match redis.eval(vec![key], args).await.as_deref() {
            Some([1, used, ..]) => Some(u32::try_from(*used).unwrap_or(u32::MAX)),
            Some([_, ..]) => None,
            _ => {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let share = (f64::from(q.limit) * self.local_share).floor().max(1.0) as u32;
                self.take_local(q, share)
            }
        }
    }

    fn take_local(&self, q: &Quota, limit: u32) -> Option<u32> {
        let now = Utc::now();
        let mut map = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (_, resets)| *resets > now);
        }
        let (used, _) = map.entry(q.counter_key()).or_insert((0, q.resets_at));
        if *used >= limit {
            return None;
        }
        *used += 1;
        Some(*used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(limit: u32) -> Quota {
        let utc = toolplane_core::permission::parse_time_zone("").expect("utc");
        let (day, resets_at) = toolplane_core::permission::local_day(Utc::now(), utc);
        Quota {
            permission_id: uuid::Uuid::new_v4(),
            limit,
            day,
            resets_at,
        }
    }

    #[tokio::test]
    async fn the_first_budget_with_room_is_used_then_the_next() {
        let q = Quotas::local();
        let (a, b) = (quota(2), quota(1));
        let both = [a.clone(), b.clone()];
        for used in 1..=2 {
            assert_eq!(
                q.consume(&both).await,
                Consumed::Admitted {
                    permission_id: a.permission_id,
                    used,
                    limit: 2
                }
            );
        }
        assert_eq!(
            q.consume(&both).await,
            Consumed::Admitted {
                permission_id: b.permission_id,
                used: 1,
                limit: 1
            }
        );
        match q.consume(&both).await {
            Consumed::Exhausted { resets_at, limits } => {
                assert_eq!(resets_at, a.resets_at);
                assert_eq!(limits, vec![2, 1]);
            }
            other => panic!("{other:?}"),
        }
    }
}
