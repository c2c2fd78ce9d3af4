//! Per-agent daily spend budgets (`Agent.daily_spend_budget`), in the tools'
//! `cost_per_call` units, per UTC day.
//!
//! A call reserves its tool's cost when it is admitted and gives it back
//! ([`SpendBudgets::refund`]) when it is not sent to the tool after all, exactly like a
//! `LIMITED_INVOCATIONS` budget (see `quota`): a call is refused when its cost would
//! take the day's spend past the budget. Amounts are counted in millionths as integers
//! (costs and budgets have at most six decimal places, checked at registration), so
//! the count is exact: with Redis every sidecar adds into one counter per agent and day
//! (one atomic script call per decision, the key expiring when the day ends); without
//! Redis each sidecar counts for itself. When Redis stops answering, the sidecar spends
//! at most its share (`local_share`) of what remained when Redis last answered, keeps
//! those charges, and adds them to the shared counter with its next decision on it.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Days, NaiveDate, Utc};
use fred::prelude::Client;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use uuid::Uuid;

use crate::shared_redis::SharedRedis;

/// Millionths per unit.
const SCALE: i64 = 1_000_000;

/// Applies a delta (charges made while Redis was away, or a refund), never below zero,
/// then takes ARGV[4] millionths if the budget ARGV[1] has room for them. Returns
/// `{taken, spent}`. Numbers are written back with `%d`: Lua would write large ones in
/// exponent notation.
const SPEND_LUA: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[3])
if n < 0 then n = 0 end
local cost = tonumber(ARGV[4])
local taken = 1
if cost > 0 then
  if n + cost <= tonumber(ARGV[1]) then n = n + cost else taken = 0 end
end
redis.call('SET', KEYS[1], string.format('%d', n))
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return {taken, n}
"#;

/// Counters kept before those of past days are dropped.
const MAX_LOCAL_COUNTERS: usize = 10_000;

/// An amount in millionths, rounded up (an amount with more places is charged, or
/// budgeted, conservatively).
fn micros(d: Decimal) -> i64 {
    (d * Decimal::from(SCALE)).ceil().to_i64().unwrap_or(i64::MAX)
}

fn units(micros: i64) -> Decimal {
    Decimal::new(micros, 6).normalize()
}

/// The cost of one call, reserved against an agent's budget for the day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendReservation {
    key: String,
    resets_at: DateTime<Utc>,
    micros: i64,
    /// Taken from the shared counter (else from this sidecar's local count).
    shared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spend {
    /// Within budget (or nothing to count); give the reservation back if the call is
    /// not sent.
    Admitted(Option<SpendReservation>),
    /// The call's cost would take the day's spend past the budget.
    Exhausted {
        budget: Decimal,
        spent: Decimal,
        cost: Decimal,
        resets_at: DateTime<Utc>,
    },
}

#[derive(Debug, Default)]
struct Counter {
    resets_at: Option<DateTime<Utc>>,
    /// Charges not yet in the shared counter (without Redis: the day's whole spend).
    pending: i64,
    /// What remained of the budget when Redis last answered.
    remaining: Option<i64>,
}

pub struct SpendBudgets {
    redis: Option<SharedRedis>,
    counters: Mutex<HashMap<String, Counter>>,
    local_share: f64,
}

/// The counter's key for `agent` on `day` (UTC).
pub fn counter_key(agent: Uuid, day: NaiveDate) -> String {
    format!("toolplane:spend:{agent}:{day}")
}

impl SpendBudgets {
    pub fn local() -> Self {
        Self {
            redis: None,
            counters: Mutex::default(),
            local_share: 1.0,
        }
    }

    /// Budgets counted in Redis.
    pub fn shared(client: Client, local_share: f64) -> Self {
        Self {
            redis: Some(SharedRedis::new(client, SPEND_LUA, "spend budgets")),
            counters: Mutex::default(),
            local_share: local_share.clamp(0.0001, 1.0),
        }
    }

    /// Decisions made locally because Redis did not answer.
    pub fn degraded_decisions(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(0, |r| r.degraded_decisions.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counter>> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `cost` from `agent`'s budget for today (UTC). No budget, or a free
    /// call, reserves nothing.
    pub async fn reserve(&self, agent: Uuid, budget: Option<Decimal>, cost: Decimal, now: DateTime<Utc>) -> Spend {
        let Some(budget) = budget else {
            return Spend::Admitted(None);
        };
        let cost_micros = micros(cost);
        if cost_micros <= 0 {
            return Spend::Admitted(None);
        }
        let day = now.date_naive();
        let resets_at = day
            .checked_add_days(Days::new(1))
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(now, |t| t.and_utc());
        let key = counter_key(agent, day);
        let limit = micros(budget);
        let exhausted = |spent: i64| Spend::Exhausted {
            budget,
            spent: units(spent),
            cost,
            resets_at,
        };
        let Some(redis) = &self.redis else {
            return match self.take_local(&key, resets_at, limit, cost_micros) {
                Ok(()) => Spend::Admitted(Some(SpendReservation {
                    key,
                    resets_at,
                    micros: cost_micros,
                    shared: false,
                })),
                Err(spent) => exhausted(spent),
            };
        };
        let pending = self.take_pending(&key, resets_at);
        let args = vec![
            limit.to_string(),
            resets_at.timestamp().to_string(),
            pending.to_string(),
            cost_micros.to_string(),
        ];
        match redis.eval(vec![key.clone()], args).await.as_deref() {
            Some([taken, spent, ..]) => {
                self.answered(&key, limit, *spent);
                if *taken == 1 {
                    Spend::Admitted(Some(SpendReservation {
                        key,
                        resets_at,
                        micros: cost_micros,
                        shared: true,
                    }))
                } else {
                    exhausted(*spent)
                }
            }
            _ => {
                self.unsent(&key, pending);
                // This sidecar's share of what remained when Redis last answered.
                let remaining = self.lock().get(&key).and_then(|c| c.remaining).unwrap_or(limit);
                #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
                let share = (remaining as f64 * self.local_share).floor() as i64;
                match self.take_local(&key, resets_at, share, cost_micros) {
                    Ok(()) => Spend::Admitted(Some(SpendReservation {
                        key,
                        resets_at,
                        micros: cost_micros,
                        shared: false,
                    })),
                    Err(_) => exhausted(limit - remaining),
                }
            }
        }
    }

    /// Gives back a reservation whose call was not sent to the tool.
    pub async fn refund(&self, r: SpendReservation) {
        let refund_local = |this: &Self| {
            let mut map = this.lock();
            let c = map.entry(r.key.clone()).or_default();
            c.pending -= r.micros;
        };
        let Some(redis) = self.redis.as_ref().filter(|_| r.shared) else {
            // Taken locally: not in Redis yet, so the local count gives it back.
            refund_local(self);
            return;
        };
        let pending = self.take_pending(&r.key, r.resets_at) - r.micros;
        let args = vec![
            "0".to_owned(),
            r.resets_at.timestamp().to_string(),
            pending.to_string(),
            "0".to_owned(),
        ];
        if redis.eval(vec![r.key.clone()], args).await.is_none() {
            self.unsent(&r.key, pending);
        }
    }

    /// Charges (less refunds) waiting for Redis, in millionths, across counters.
    pub fn pending(&self) -> i64 {
        self.lock().values().map(|c| c.pending).sum()
    }

    /// Takes `cost` from a budget of `allowance` counted at this sidecar; the spend
    /// so far when refused.
    fn take_local(&self, key: &str, resets_at: DateTime<Utc>, allowance: i64, cost: i64) -> Result<(), i64> {
        let mut map = self.lock();
        if map.len() > MAX_LOCAL_COUNTERS {
            let now = Utc::now();
            map.retain(|_, c| c.resets_at.is_none_or(|t| t > now));
        }
        let c = map.entry(key.to_owned()).or_default();
        c.resets_at = Some(resets_at);
        if c.pending + cost > allowance {
            return Err(c.pending);
        }
        c.pending += cost;
        Ok(())
    }

    /// Takes the counter's pending charges to send them to Redis.
    fn take_pending(&self, key: &str, resets_at: DateTime<Utc>) -> i64 {
        let mut map = self.lock();
        let c = map.entry(key.to_owned()).or_default();
        c.resets_at = Some(resets_at);
        std::mem::take(&mut c.pending)
    }

    /// Redis did not take `sent` pending charges: they wait for the next answer.
    fn unsent(&self, key: &str, sent: i64) {
        self.lock().entry(key.to_owned()).or_default().pending += sent;
    }

    fn answered(&self, key: &str, limit: i64, spent: i64) {
        self.lock().entry(key.to_owned()).or_default().remaining = Some((limit - spent).max(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap_or_default()
    }

    #[tokio::test]
    async fn a_local_budget_admits_exactly_what_fits_and_takes_refunds_back() {
        let b = SpendBudgets::local();
        let agent = Uuid::new_v4();
        let now = Utc::now();
        let budget = Some(d("0.0100"));
        let mut held = Vec::new();
        for _ in 0..3 {
            match b.reserve(agent, budget, d("0.003"), now).await {
                Spend::Admitted(Some(r)) => held.push(r),
                other => panic!("{other:?}"),
            }
        }
        match b.reserve(agent, budget, d("0.003"), now).await {
            Spend::Exhausted { spent, .. } => assert_eq!(spent, d("0.009")),
            other => panic!("0.012 > 0.010 yet {other:?}"),
        }
        assert!(matches!(
            b.reserve(agent, budget, d("0.001"), now).await,
            Spend::Admitted(Some(_))
        ));
        b.refund(held.pop().unwrap()).await;
        assert!(matches!(
            b.reserve(agent, budget, d("0.003"), now).await,
            Spend::Admitted(Some(_))
        ));
        assert_eq!(b.reserve(agent, None, d("5"), now).await, Spend::Admitted(None));
        assert_eq!(b.reserve(agent, budget, d("0"), now).await, Spend::Admitted(None));
    }
}
