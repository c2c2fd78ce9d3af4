use std::process::{Child, Command, Stdio};

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

fn reservation(c: Consumed) -> Reservation {
    match c {
        Consumed::Admitted { reservation, .. } => reservation,
        other => panic!("refused: {other:?}"),
    }
}

async fn admitted(q: &Quotas, quotas: &[Quota]) -> Option<Reservation> {
    match q.consume(quotas).await {
        Consumed::Admitted { reservation, .. } => Some(reservation),
        Consumed::Exhausted { .. } => None,
    }
}

/// Admits until refused; how many were admitted.
async fn drain(q: &Quotas, quota: &Quota) -> u32 {
    let mut n = 0;
    while admitted(q, std::slice::from_ref(quota)).await.is_some() {
        n += 1;
        assert!(n <= 1000, "never refused");
    }
    n
}

#[tokio::test]
async fn the_first_budget_with_room_is_used_then_the_next() {
    let q = Quotas::local();
    let (a, b) = (quota(2), quota(1));
    let both = [a.clone(), b.clone()];
    for used in 1..=2 {
        match q.consume(&both).await {
            Consumed::Admitted {
                permission_id,
                used: u,
                limit,
                ..
            } => assert_eq!((permission_id, u, limit), (a.permission_id, used, 2)),
            other => panic!("{other:?}"),
        }
    }
    match q.consume(&both).await {
        Consumed::Admitted { permission_id, .. } => assert_eq!(permission_id, b.permission_id),
        other => panic!("{other:?}"),
    }
    match q.consume(&both).await {
        Consumed::Exhausted { resets_at, limits } => {
            assert_eq!(resets_at, a.resets_at);
            assert_eq!(limits, vec![2, 1]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refunded_call_gives_its_budget_back() {
    let q = Quotas::local();
    let a = quota(2);
    let first = reservation(q.consume(std::slice::from_ref(&a)).await);
    let _second = reservation(q.consume(std::slice::from_ref(&a)).await);
    assert!(admitted(&q, std::slice::from_ref(&a)).await.is_none());
    q.refund(first).await;
    assert!(
        admitted(&q, std::slice::from_ref(&a)).await.is_some(),
        "the refunded call's budget is used again"
    );
    assert!(admitted(&q, std::slice::from_ref(&a)).await.is_none());
}

/// A `redis-server` of the test's own on a free port (with an append-only file, so a
/// restart keeps the counters), killed when dropped.
pub(crate) struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl OwnRedis {
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("toolplane-quota-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = Self { child: None, port, dir };
        r.restart();
        r
    }

    pub(crate) fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn counter_in(redis: &OwnRedis, q: &Quota) -> i64 {
    use fred::prelude::*;
    let c = Client::new(Config::from_url(&redis.url()).expect("url"), None, None, None);
    c.init().await.expect("connect");
    let v: Option<i64> = c.get(redis_key(q)).await.expect("GET");
    let _ = c.quit().await;
    v.unwrap_or(0)
}

/// A client of `redis`, connected.
pub(crate) async fn client_of(redis: &OwnRedis) -> fred::prelude::Client {
    let url = redis.url();
    let client = crate::redis_conn::redis_client(crate::redis_conn::RedisSettings {
        url: &url,
        password_file: None,
        ca_file: None,
    })
    .expect("client");
    // The client connects in the background.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !fred::interfaces::ClientLike::is_connected(&client) {
        assert!(std::time::Instant::now() < until, "no connection to Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
}

async fn shared(redis: &OwnRedis, share: f64) -> Quotas {
    Quotas::shared(client_of(redis).await, share)
}

#[tokio::test]
async fn an_outage_admits_the_share_of_what_remained_and_the_charges_reach_redis_after() {
    let mut redis = OwnRedis::start();
    let q = shared(&redis, 0.5).await;
    let day = quota(10);
    let one = std::slice::from_ref(&day);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(reservation(q.consume(one).await));
    }
    q.refund(held.pop().expect("held")).await;
    assert_eq!(counter_in(&redis, &day).await, 3, "a refund reaches the shared counter");

    redis.stop();
    // 7 remained when Redis was last seen: this sidecar's half of it, not a fresh day.
    assert_eq!(drain(&q, &day).await, 3);
    assert_eq!(q.pending(), 3);
    // A call taken during the outage and refunded gives its place back.
    q.refund(Reservation {
        quota: day.clone(),
        shared: false,
    })
    .await;
    assert_eq!(drain(&q, &day).await, 1);

    redis.restart();
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while q.pending() != 0 {
        assert!(std::time::Instant::now() < until, "the charges never reached Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counter_in(&redis, &day).await,
        6,
        "the 3 calls admitted during the outage are in the shared counter"
    );
    assert_eq!(drain(&q, &day).await, 4, "and the rest of the day is what Redis says");
    assert_eq!(counter_in(&redis, &day).await, 10);
}

#[tokio::test]
async fn without_ever_seeing_redis_a_sidecar_admits_its_share_of_the_whole_day() {
    let mut redis = OwnRedis::start();
    let q = shared(&redis, 0.25).await;
    redis.stop();
    let day = quota(10);
    assert_eq!(drain(&q, &day).await, 2, "a quarter of 10, rounded down");
}
