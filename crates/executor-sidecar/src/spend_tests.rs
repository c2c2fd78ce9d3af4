use std::time::Duration;

use super::*;
use crate::quota::tests::{OwnRedis, client_of};

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

async fn counter_in(redis: &OwnRedis, agent: Uuid) -> i64 {
    use fred::prelude::*;
    let c = Client::new(Config::from_url(&redis.url()).expect("url"), None, None, None);
    c.init().await.expect("connect");
    let v: Option<i64> = c.get(counter_key(agent, Utc::now().date_naive())).await.expect("GET");
    let _ = c.quit().await;
    v.unwrap_or(0)
}

fn reservation(s: Spend) -> SpendReservation {
    match s {
        Spend::Admitted(Some(r)) => r,
        other => panic!("{other:?}"),
    }
}

/// Admits `cost` until refused; how many were admitted.
async fn drain(b: &SpendBudgets, agent: Uuid, budget: &str, cost: &str) -> u32 {
    let mut n = 0;
    while let Spend::Admitted(_) = b.reserve(agent, Some(d(budget)), d(cost), Utc::now()).await {
        n += 1;
        assert!(n <= 1000, "never refused");
    }
    n
}

#[tokio::test]
async fn a_local_budget_admits_exactly_what_fits_and_takes_refunds_back() {
    let b = SpendBudgets::local();
    let agent = Uuid::new_v4();
    let now = Utc::now();
    let budget = Some(d("0.0100"));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(reservation(b.reserve(agent, budget, d("0.003"), now).await));
    }
    match b.reserve(agent, budget, d("0.003"), now).await {
        Spend::Exhausted { spent, .. } => assert_eq!(spent, d("0.009")),
        other => panic!("0.012 > 0.010 yet {other:?}"),
    }
    reservation(b.reserve(agent, budget, d("0.001"), now).await);
    b.refund(held.pop().expect("held")).await;
    reservation(b.reserve(agent, budget, d("0.003"), now).await);
    assert_eq!(b.reserve(agent, None, d("5"), now).await, Spend::Admitted(None));
    assert_eq!(b.reserve(agent, budget, d("0"), now).await, Spend::Admitted(None));
}

#[tokio::test]
async fn an_operation_sent_again_is_counted_once() {
    let redis = OwnRedis::start();
    let b = SpendBudgets::shared(client_of(&redis).await, 0.5);
    let agent = Uuid::new_v4();
    let now = Utc::now();
    // A first decision sets the counter's budget.
    reservation(b.reserve(agent, Some(d("1")), d("0.25"), now).await);
    let key = counter_key(agent, now.date_naive());
    let resets_at = b.inner.lock().get(&key).and_then(|c| c.resets_at).expect("counter");
    let op = Op {
        id: Uuid::new_v4(),
        delta: 0,
        cost: 250_000,
        force: false,
    };
    // As if the first answer were lost: the replay must not charge again.
    assert_eq!(b.inner.apply(&key, resets_at, &op).await, Some((true, 500_000)));
    assert_eq!(b.inner.apply(&key, resets_at, &op).await, Some((true, 500_000)));
    assert_eq!(counter_in(&redis, agent).await, 500_000);
    // An exact fit is admitted, one millionth more is not.
    reservation(b.reserve(agent, Some(d("1")), d("0.5"), now).await);
    assert!(matches!(
        b.reserve(agent, Some(d("1")), d("0.000001"), now).await,
        Spend::Exhausted { .. }
    ));
    assert_eq!(counter_in(&redis, agent).await, 1_000_000);
}

#[tokio::test]
async fn an_outage_admits_the_share_of_what_remained_and_the_count_is_exact_after() {
    let mut redis = OwnRedis::start();
    let b = SpendBudgets::shared(client_of(&redis).await, 0.5);
    let agent = Uuid::new_v4();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(reservation(b.reserve(agent, Some(d("10")), d("1"), Utc::now()).await));
    }
    b.refund(held.pop().expect("held")).await;
    assert_eq!(
        counter_in(&redis, agent).await,
        3_000_000,
        "a refund reaches the shared counter"
    );

    redis.stop();
    // 7 remained when Redis was last seen: this sidecar's half of it, not a fresh day.
    let mut during = Vec::new();
    while let Spend::Admitted(Some(r)) = b.reserve(agent, Some(d("10")), d("1"), Utc::now()).await {
        during.push(r);
        assert!(during.len() <= 10, "never refused");
    }
    assert_eq!(during.len(), 3);
    // A call admitted during the outage and given back frees its place.
    b.refund(during.pop().expect("during")).await;
    assert_eq!(drain(&b, agent, "10", "1").await, 1);

    redis.restart();
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while b.unsettled() != (0, 0) {
        assert!(
            std::time::Instant::now() < until,
            "the outage's charges never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counter_in(&redis, agent).await,
        6_000_000,
        "the 3 calls admitted during the outage are in the shared counter, once each"
    );
    assert_eq!(
        drain(&b, agent, "10", "1").await,
        4,
        "and the rest of the day is what Redis says"
    );
    assert_eq!(counter_in(&redis, agent).await, 10_000_000);
}
