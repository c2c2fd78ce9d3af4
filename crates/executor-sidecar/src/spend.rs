//! Per-agent daily spend budgets (`Agent.daily_spend_budget`), in the tools'
//! `cost_per_call` units, per UTC day.
//!
//! A call reserves its tool's cost when it is admitted and gives it back
//! ([`SpendBudgets::refund`]) when it is not sent to the tool after all, like a
//! `LIMITED_INVOCATIONS` budget (see `quota`): a call is refused when its cost would take
//! the day's spend past the budget. Amounts are counted in millionths, as integers
//! (costs and budgets have at most six decimal places, checked when they are set), so
//! the count is exact.
//!
//! With Redis every sidecar counts into one counter per agent and day (the key expiring
//! when the day ends). Every change to it is an operation with an id, applied by one
//! atomic script at most once (the script remembers applied ids for an hour), so an
//! operation whose answer was lost (a timeout) is sent again with the same id and never
//! counted twice: that is what keeps the counter exact across sidecars even when Redis
//! answers late. While Redis does not answer, the sidecar spends at most its share
//! (`local_share`) of what remained when Redis last answered; when Redis answers again
//! the operations in doubt are replayed and reconciled with what the sidecar decided
//! meanwhile (a call admitted locally is charged, one refused locally but charged in
//! Redis is given back), with the next decision on that counter or within a second by
//! the background flush. Without Redis each sidecar counts for itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use fred::prelude::Client;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use uuid::Uuid;

use crate::shared_redis::SharedRedis;

/// Millionths per unit.
const SCALE: i64 = 1_000_000;
/// How long Redis remembers an applied operation's id (an operation in doubt for
/// longer than this, across a Redis outage that long, could be counted twice).
const OP_MEMORY_SECS: i64 = 3600;
/// The least a spend decision waits for Redis (its client's command timeout): longer
/// than rate limits do, as a decision made locally may pass the budget (by at most
/// this sidecar's share).
pub const MIN_SPEND_DECISION_TIMEOUT: Duration = Duration::from_secs(1);
/// How often operations in doubt are offered to Redis again.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Counters kept before those of past days are dropped.
const MAX_LOCAL_COUNTERS: usize = 10_000;

/// One operation on a counter, applied at most once by id (ARGV[5]): adds the delta
/// ARGV[3] (never below zero), then takes the cost ARGV[4] if the budget ARGV[1] has
/// room (or anyway when ARGV[7] is "1": a charge for a call already made). Returns
/// `{taken, spent}`; for an id applied before, its first answer's `taken` and the spend
/// now. Numbers are written with `%d`: Lua would write large ones in exponent notation.
const SPEND_LUA: &str = r#"
local op = KEYS[1] .. ':op:' .. ARGV[5]
local done = redis.call('GET', op)
if done then
  return {tonumber(done), tonumber(redis.call('GET', KEYS[1]) or '0')}
end
local n = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[3])
if n < 0 then n = 0 end
local cost = tonumber(ARGV[4])
local taken = 1
if cost > 0 then
  if ARGV[7] == '1' or n + cost <= tonumber(ARGV[1]) then n = n + cost else taken = 0 end
end
redis.call('SET', KEYS[1], string.format('%d', n))
redis.call('EXPIREAT', KEYS[1], ARGV[2])
redis.call('SET', op, taken)
redis.call('EXPIREAT', op, ARGV[6])
return {taken, n}
"#;

/// An amount in millionths, rounded up (an amount with more places is charged, or
/// budgeted, conservatively).
fn micros(d: Decimal) -> i64 {
    (d * Decimal::from(SCALE)).ceil().to_i64().unwrap_or(i64::MAX)
}

fn units(micros: i64) -> Decimal {
    Decimal::new(micros, 6).normalize()
}

/// The counter's key for `agent` on `day` (UTC).
pub fn counter_key(agent: Uuid, day: NaiveDate) -> String {
    format!("toolplane:spend:{agent}:{day}")
}

/// The cost of one call, reserved against an agent's budget for the day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendReservation {
    key: String,
    resets_at: DateTime<Utc>,
    micros: i64,
    /// Decided by Redis (else by this sidecar: without Redis, or while it was away).
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

/// One change to a shared counter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Op {
    id: Uuid,
    /// Added first (charges and refunds decided here).
    delta: i64,
    /// Taken if the budget has room.
    cost: i64,
    /// Charge the cost whatever the budget says (the call was made).
    force: bool,
}

/// An operation whose answer never came, and what this sidecar did meanwhile: for a
/// reservation, whether it admitted the call itself.
#[derive(Debug, Clone)]
struct Doubt {
    op: Op,
    admitted_locally: Option<bool>,
}

#[derive(Debug, Default)]
struct Counter {
    resets_at: Option<DateTime<Utc>>,
    /// The budget, as of the latest decision.
    limit: i64,
    /// Millionths not yet in any operation: charges (or, negative, refunds) to send.
    /// Without Redis: the day's whole spend.
    local: i64,
    /// Millionths admitted by this sidecar since Redis last answered.
    outage: i64,
    /// What remained of the budget when Redis last answered.
    remaining: Option<i64>,
    doubts: Vec<Doubt>,
}

struct Inner {
    redis: Option<SharedRedis>,
    counters: Mutex<HashMap<String, Counter>>,
    local_share: f64,
}

pub struct SpendBudgets {
    inner: Arc<Inner>,
}

impl SpendBudgets {
    pub fn local() -> Self {
        Self {
            inner: Arc::new(Inner {
                redis: None,
                counters: Mutex::default(),
                local_share: 1.0,
            }),
        }
    }

    /// Budgets counted in Redis (`client` made with a command timeout of at least
    /// [`MIN_SPEND_DECISION_TIMEOUT`]). Starts the background flush of operations in doubt
    /// (it ends when the `SpendBudgets` is dropped).
    pub fn shared(client: Client, local_share: f64) -> Self {
        let inner = Arc::new(Inner {
            redis: Some(SharedRedis::new(client, SPEND_LUA, "spend budgets")),
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
        let (admitted, spent, shared) = self.inner.reserve(&key, resets_at, limit, cost_micros).await;
        if admitted {
            Spend::Admitted(Some(SpendReservation {
                key,
                resets_at,
                micros: cost_micros,
                shared,
            }))
        } else {
            Spend::Exhausted {
                budget,
                spent: units(spent),
                cost,
                resets_at,
            }
        }
    }

    /// Gives back a reservation whose call was not sent to the tool.
    pub async fn refund(&self, r: SpendReservation) {
        self.inner.refund(r).await;
    }

    /// Millionths not yet in the shared counter, and operations in doubt, across
    /// counters (for tests and diagnostics).
    pub fn unsettled(&self) -> (i64, usize) {
        let map = self.inner.lock();
        (
            map.values().map(|c| c.local).sum(),
            map.values().map(|c| c.doubts.len()).sum(),
        )
    }

    /// Replays operations in doubt and sends charges made while Redis was away.
    pub async fn flush(&self) {
        self.inner.flush().await;
    }
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

    fn with<T>(&self, key: &str, resets_at: DateTime<Utc>, f: impl FnOnce(&mut Counter) -> T) -> T {
        let mut map = self.lock();
        if map.len() > MAX_LOCAL_COUNTERS {
            let now = Utc::now();
            map.retain(|_, c| c.resets_at.is_none_or(|t| t > now));
        }
        let c = map.entry(key.to_owned()).or_default();
        c.resets_at = Some(resets_at);
        f(c)
    }

    /// Runs `op` on the counter; `None` when Redis did not answer.
    async fn apply(&self, key: &str, resets_at: DateTime<Utc>, op: &Op) -> Option<(bool, i64)> {
        let redis = self.redis.as_ref()?;
        let op_expires = resets_at.timestamp().min(Utc::now().timestamp() + OP_MEMORY_SECS);
        let limit = self.with(key, resets_at, |c| c.limit);
        let args = vec![
            limit.to_string(),
            resets_at.timestamp().to_string(),
            op.delta.to_string(),
            op.cost.to_string(),
            op.id.simple().to_string(),
            op_expires.to_string(),
            if op.force { "1" } else { "0" }.to_owned(),
        ];
        match redis.eval(vec![key.to_owned()], args).await.as_deref() {
            Some([taken, spent, ..]) => {
                self.with(key, resets_at, |c| {
                    c.remaining = Some((c.limit - spent).max(0));
                    // Everything this sidecar decided is in Redis now.
                    if c.local == 0 && c.doubts.is_empty() {
                        c.outage = 0;
                    }
                });
                Some((*taken == 1, *spent))
            }
            _ => None,
        }
    }

    /// Replays the counter's operations in doubt, reconciling each with what this
    /// sidecar decided meanwhile; `false` when Redis still does not answer.
    async fn settle(&self, key: &str, resets_at: DateTime<Utc>) -> bool {
        loop {
            let Some(doubt) = self.with(key, resets_at, |c| c.doubts.first().cloned()) else {
                return true;
            };
            let Some((taken, _)) = self.apply(key, resets_at, &doubt.op).await else {
                return false;
            };
            self.with(key, resets_at, |c| {
                c.doubts.retain(|d| d.op.id != doubt.op.id);
                match (doubt.admitted_locally, taken) {
                    // Made, but Redis refused it: charge it.
                    (Some(true), false) => c.local += doubt.op.cost,
                    // Refused here, but Redis took it: give it back.
                    (Some(false), true) => c.local -= doubt.op.cost,
                    _ => {}
                }
            });
        }
    }

    /// `(admitted, spent so far, decided by Redis)`.
    async fn reserve(&self, key: &str, resets_at: DateTime<Utc>, limit: i64, cost: i64) -> (bool, i64, bool) {
        if self.redis.is_none() {
            return self.with(key, resets_at, |c| {
                if c.local + cost > limit {
                    return (false, c.local, false);
                }
                c.local += cost;
                (true, c.local, false)
            });
        }
        self.with(key, resets_at, |c| c.limit = limit);
        if self.settle(key, resets_at).await {
            let op = Op {
                id: Uuid::new_v4(),
                delta: self.with(key, resets_at, |c| std::mem::take(&mut c.local)),
                cost,
                force: false,
            };
            if let Some((taken, spent)) = self.apply(key, resets_at, &op).await {
                return (taken, spent, true);
            }
            // In doubt: decided here now, reconciled when Redis answers.
            let admitted = self.decide_locally(key, resets_at, limit, cost);
            self.with(key, resets_at, |c| {
                c.doubts.push(Doubt {
                    op,
                    admitted_locally: Some(admitted),
                })
            });
            let spent = self.spent_locally(key, resets_at, limit);
            return (admitted, spent, false);
        }
        // Redis is away: this sidecar's share of what remained, charged later.
        let admitted = self.decide_locally(key, resets_at, limit, cost);
        if admitted {
            self.with(key, resets_at, |c| c.local += cost);
        }
        (admitted, self.spent_locally(key, resets_at, limit), false)
    }

    /// While Redis is away: admits at most this sidecar's share of what remained when
    /// it last answered (of the whole budget if it never did).
    fn decide_locally(&self, key: &str, resets_at: DateTime<Utc>, limit: i64, cost: i64) -> bool {
        let share = self.local_share;
        self.with(key, resets_at, |c| {
            let remaining = c.remaining.unwrap_or(limit);
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            let allowance = (remaining as f64 * share).floor() as i64;
            if c.outage + cost > allowance {
                return false;
            }
            c.outage += cost;
            true
        })
    }

    fn spent_locally(&self, key: &str, resets_at: DateTime<Utc>, limit: i64) -> i64 {
        self.with(key, resets_at, |c| limit - c.remaining.unwrap_or(limit) + c.outage)
    }

    async fn refund(&self, r: SpendReservation) {
        if self.redis.is_none() {
            self.with(&r.key, r.resets_at, |c| c.local -= r.micros);
            return;
        }
        if !r.shared {
            // Decided here: its charge is not (or not surely) in Redis; the refund
            // travels with the next operation and cancels it when it is.
            self.with(&r.key, r.resets_at, |c| {
                c.local -= r.micros;
                c.outage -= r.micros;
            });
            return;
        }
        self.with(&r.key, r.resets_at, |c| c.local -= r.micros);
        self.send_local(&r.key, r.resets_at).await;
    }

    /// Sends the counter's local charges and refunds as one operation (after the
    /// operations in doubt).
    async fn send_local(&self, key: &str, resets_at: DateTime<Utc>) {
        if !self.settle(key, resets_at).await {
            return;
        }
        let delta = self.with(key, resets_at, |c| std::mem::take(&mut c.local));
        if delta == 0 {
            return;
        }
        // Charges go as a forced cost (the calls were made, whatever the budget says
        // now); refunds as a negative delta.
        let op = Op {
            id: Uuid::new_v4(),
            delta: delta.min(0),
            cost: delta.max(0),
            force: true,
        };
        if self.apply(key, resets_at, &op).await.is_none() {
            self.with(key, resets_at, |c| {
                c.doubts.push(Doubt {
                    op,
                    admitted_locally: None,
                })
            });
        }
    }

    async fn flush(&self) {
        if self.redis.is_none() {
            return;
        }
        let waiting: Vec<(String, DateTime<Utc>)> = {
            let now = Utc::now();
            let mut map = self.lock();
            map.retain(|_, c| c.resets_at.is_none_or(|t| t > now) || (c.local == 0 && c.doubts.is_empty()));
            map.iter()
                .filter(|(_, c)| c.local != 0 || !c.doubts.is_empty())
                .filter_map(|(k, c)| c.resets_at.map(|t| (k.clone(), t)))
                .collect()
        };
        for (key, resets_at) in waiting {
            if resets_at <= Utc::now() {
                self.lock().remove(&key);
                continue;
            }
            self.send_local(&key, resets_at).await;
        }
    }
}

#[cfg(test)]
#[path = "spend_tests.rs"]
mod tests;
