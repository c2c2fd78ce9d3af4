//! Daily budgets of `LIMITED_INVOCATIONS` grants.
//!
//! A call reserves one unit of budget when it is admitted and gives it back
//! ([`Quotas::refund`]) when it is not sent to the tool after all (invalid parameters
//! are refused before any reservation; rate limits, open circuits and cache hits
//! refund), so the budget counts calls that reached the tool. A cache hit therefore
//! needs budget left but does not spend it.
//!
//! With Redis every sidecar counts into one counter per grant and local day (one atomic
//! script call per decision, the key expiring when the day ends); without Redis each
//! sidecar counts for itself. Every answer from Redis tells this sidecar how much of the
//! budget remained. When Redis stops answering, the sidecar admits at most its share
//! (`local_share`) of what remained when Redis was last seen (of the whole budget if it
//! never saw this counter), and keeps those charges as pending: when Redis answers
//! again they are added to the shared counter (with the next decision on that counter,
//! or within a second by the background flush), so the fleet admits at most about its
//! share more than the budget while Redis is away, and the counter stays exact after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fred::prelude::Client;
use toolplane_core::permission::Quota;

use crate::shared_redis::SharedRedis;

/// Applies a delta (charges made while Redis was away, or refunds), never below zero,
/// then takes one call if ARGV[4] is "1" and the budget has room. Returns
/// `{taken, count}`; with nothing to take, `taken` is 1.
const CONSUME_LUA: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[3])
if n < 0 then n = 0 end
local taken = 1
if ARGV[4] == '1' then
  if n < tonumber(ARGV[1]) then n = n + 1 else taken = 0 end
end
redis.call('SET', KEYS[1], n)
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return {taken, n}
"#;

/// How often charges made while Redis was away are offered to it again.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Counters kept before those of past days are dropped.
const MAX_LOCAL_COUNTERS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// Reserved against this grant; `used` calls of `limit` so far today (as far as
    /// this sidecar knows). Give it back with [`Quotas::refund`] if the call is not sent.
    Admitted {
        permission_id: uuid::Uuid,
        used: u32,
        limit: u32,
        reservation: Reservation,
    },
    /// Every budget is spent; the earliest reset.
    Exhausted { resets_at: DateTime<Utc>, limits: Vec<u32> },
}

/// One unit of budget taken for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    quota: Quota,
    /// Taken from the shared counter (else from this sidecar's local count).
    shared: bool,
}

/// This sidecar's view of one counter (grant × day).
#[derive(Debug)]
struct Counter {
    quota: Quota,
    /// What remained of the budget when Redis last answered about it.
    remaining: Option<u32>,
    /// Charges not yet in the shared counter: taken while Redis was away, less refunds
    /// that could not reach it. Without Redis, the whole day's count.
    pending: i64,
    /// Pending charges on their way to Redis (still counted against the local share
    /// until Redis takes them).
    in_flight: i64,
}

struct Inner {
    redis: Option<SharedRedis>,
    counters: Mutex<HashMap<String, Counter>>,
    local_share: f64,
}

pub struct Quotas {
    inner: Arc<Inner>,
}

fn redis_key(q: &Quota) -> String {
    format!("toolplane:quota:{}", q.counter_key())
}

impl Quotas {
    pub fn local() -> Self {
        Self {
            inner: Arc::new(Inner {
                redis: None,
                counters: Mutex::default(),
                local_share: 1.0,
            }),
        }
    }

    /// Budgets counted in Redis. Starts the background flush of charges made while
    /// Redis was away (it ends when the `Quotas` is dropped).
    pub fn shared(client: Client, local_share: f64) -> Self {
        let inner = Arc::new(Inner {
            redis: Some(SharedRedis::new(client, CONSUME_LUA, "daily quotas")),
            counters: Mutex::default(),
            local_share: local_share.clamp(0.0001, 1.0),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(flush_forever(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// Decisions made locally because Redis did not answer.
    pub fn degraded_decisions(&self) -> u64 {
        self.inner
            .redis
            .as_ref()
            .map_or(0, |r| r.degraded_decisions.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Reserves one call from the first quota with budget left.
    pub async fn consume(&self, quotas: &[Quota]) -> Consumed {
        for q in quotas {
            if let Some((used, shared)) = self.inner.take(q).await {
                return Consumed::Admitted {
                    permission_id: q.permission_id,
                    used,
                    limit: q.limit,
                    reservation: Reservation {
                        quota: q.clone(),
                        shared,
                    },
                };
            }
        }
        Consumed::Exhausted {
            resets_at: quotas.iter().map(|q| q.resets_at).min().unwrap_or_else(Utc::now),
            limits: quotas.iter().map(|q| q.limit).collect(),
        }
    }

    /// Gives back a reservation whose call was not sent to the tool.
    pub async fn refund(&self, r: Reservation) {
        self.inner.refund(r).await;
    }

    /// Charges waiting for Redis, across counters (for tests and diagnostics).
    pub fn pending(&self) -> i64 {
        self.inner.lock().values().map(|c| c.pending).sum()
    }

    /// Offers charges made while Redis was away to Redis now.
    pub async fn flush(&self) {
        self.inner.flush().await;
    }
}

/// The counter of `q`, made on first use (dropping those of past days when there are
/// many).
fn counter<'a>(map: &'a mut HashMap<String, Counter>, q: &Quota) -> &'a mut Counter {
    if map.len() > MAX_LOCAL_COUNTERS {
        let now = Utc::now();
        map.retain(|_, c| c.quota.resets_at > now);
    }
    map.entry(q.counter_key()).or_insert_with(|| Counter {
        quota: q.clone(),
        remaining: None,
        pending: 0,
        in_flight: 0,
    })
}

async fn flush_forever(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(FLUSH_INTERVAL).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.flush().await;
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counter>> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the counter's pending charges to send them to Redis (so two decisions
    /// never send the same ones); [`Inner::answered`] or [`Inner::unsent`] settles them.
    fn take_pending(&self, q: &Quota) -> i64 {
        let mut map = self.lock();
        let c = counter(&mut map, q);
        let sent = std::mem::take(&mut c.pending);
        c.in_flight += sent;
        sent
    }

    /// Redis took `sent` pending charges: `count` calls are in the shared counter.
    fn answered(&self, q: &Quota, sent: i64, count: i64) {
        let mut map = self.lock();
        let c = counter(&mut map, q);
        c.in_flight -= sent;
        let count = u32::try_from(count.max(0)).unwrap_or(u32::MAX);
        c.remaining = Some(q.limit.saturating_sub(count));
    }

    /// Redis did not take `sent` pending charges: they wait for the next answer.
    fn unsent(&self, q: &Quota, sent: i64) {
        let mut map = self.lock();
        let c = counter(&mut map, q);
        c.in_flight -= sent;
        c.pending += sent;
    }

    /// `Some((used, shared))` when admitted.
    async fn take(&self, q: &Quota) -> Option<(u32, bool)> {
        let Some(redis) = &self.redis else {
            return self.take_local(q, q.limit).map(|used| (used, false));
        };
        let pending = self.take_pending(q);
        let args = vec![
            q.limit.to_string(),
            q.resets_at.timestamp().to_string(),
            pending.to_string(),
            "1".to_owned(),
        ];
        match redis.eval(vec![redis_key(q)], args).await.as_deref() {
            Some([taken, count, ..]) => {
                self.answered(q, pending, *count);
                (*taken == 1).then(|| (u32::try_from(*count).unwrap_or(u32::MAX), true))
            }
            _ => {
                self.unsent(q, pending);
                let remaining = self.lock().get(&q.counter_key()).and_then(|c| c.remaining);
                let base = remaining.unwrap_or(q.limit);
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let share = (f64::from(base) * self.local_share).floor() as u32;
                let used_before = q.limit - base.min(q.limit);
                self.take_local(q, share).map(|n| (used_before + n, false))
            }
        }
    }

    /// Takes one of `allowance` calls counted at this sidecar; `Some(count)` when
    /// admitted.
    fn take_local(&self, q: &Quota, allowance: u32) -> Option<u32> {
        let mut map = self.lock();
        let c = counter(&mut map, q);
        let taken = c.pending + c.in_flight;
        if taken >= i64::from(allowance) {
            return None;
        }
        c.pending += 1;
        Some(u32::try_from(taken + 1).unwrap_or(u32::MAX))
    }

    async fn refund(&self, r: Reservation) {
        let q = &r.quota;
        if r.shared
            && let Some(redis) = &self.redis
        {
            // The refund travels with the pending charges, as one more in flight.
            counter(&mut self.lock(), q).pending -= 1;
            let pending = self.take_pending(q);
            let args = vec![
                q.limit.to_string(),
                q.resets_at.timestamp().to_string(),
                pending.to_string(),
                "0".to_owned(),
            ];
            if let Some([_, count, ..]) = redis.eval(vec![redis_key(q)], args).await.as_deref() {
                self.answered(q, pending, *count);
            } else {
                self.unsent(q, pending);
            }
            return;
        }
        // Taken locally: not in Redis yet, so the local count is what gives it back.
        counter(&mut self.lock(), q).pending -= 1;
    }

    /// Sends every counter's pending charges to Redis.
    async fn flush(&self) {
        let Some(redis) = &self.redis else { return };
        let waiting: Vec<Quota> = {
            let map = self.lock();
            map.values()
                .filter(|c| c.pending != 0)
                .map(|c| c.quota.clone())
                .collect()
        };
        for q in waiting {
            if q.resets_at <= Utc::now() {
                self.lock().remove(&q.counter_key());
                continue;
            }
            let pending = self.take_pending(&q);
            if pending == 0 {
                continue;
            }
            let args = vec![
                q.limit.to_string(),
                q.resets_at.timestamp().to_string(),
                pending.to_string(),
                "0".to_owned(),
            ];
            match redis.eval(vec![redis_key(&q)], args).await.as_deref() {
                Some([_, count, ..]) => {
                    tracing::info!(grant = %q.permission_id, charges = pending, count, "daily budget charges made while Redis was away are in the shared counter");
                    self.answered(&q, pending, *count);
                }
                _ => {
                    self.unsent(&q, pending);
                    // Redis is still away: the rest can wait for the next round.
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "quota_tests.rs"]
pub(crate) mod tests;
