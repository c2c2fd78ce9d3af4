//! Exact daily budgets, end to end: a `LIMITED_INVOCATIONS` budget counts only calls
//! that reached the tool (not calls refused for their parameters, by the rate limit or
//! by an open circuit, nor cache hits), and stays exact across two sidecars while
//! Redis is stopped and started again. The real binaries, a real HTTP tool, real Redis
//! (the shared one, and for the outage a `redis-server` of the test's own).

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tonic::Code;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, executor, http_tool, invoke_request};
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, free_port, test_redis};

const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    tools: ToolServer,
    cp: Proc,
    admin: Admin,
    agent: pb::Agent,
    token: String,
    sidecar_token: String,
}

async fn setup() -> Setup {
    let tools = ToolServer::start().await;
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("agent-on-a-budget").await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    Setup {
        tools,
        cp,
        admin,
        agent,
        token,
        sidecar_token,
    }
}

impl Setup {
    /// Registers `tool` and grants the agent `per_day` calls of it a day (UTC days);
    /// the grant's id.
    async fn budgeted(&mut self, tool: pb::Tool, per_day: u32) -> String {
        self.budgeted_tool(tool, per_day).await.1
    }

    /// [`Self::budgeted`], with the registered tool.
    async fn budgeted_tool(&mut self, tool: pb::Tool, per_day: u32) -> (pb::Tool, String) {
        let tool = self.admin.register(tool).await.unwrap();
        let p = pb::Permission {
            agent_id: self.agent.id.clone(),
            tool_id: tool.id.clone(),
            r#type: pb::PermissionType::LimitedInvocations as i32,
            max_invocations_per_day: per_day,
            time_zone: "UTC".to_owned(),
            ..Default::default()
        };
        let r = self
            .admin
            .permissions
            .grant(pb::GrantRequest { permission: Some(p) })
            .await;
        (tool, r.unwrap().into_inner().permission.unwrap().id)
    }
}

/// The shared counter of `grant` for today, as Redis at `url` holds it (0 when absent).
fn counter(url: &str, grant: &str) -> u32 {
    let key = format!("toolplane:quota:{grant}:{}", chrono::Utc::now().date_naive());
    let out = Command::new("redis-cli")
        .args(["-u", url, "GET", &key])
        .output()
        .unwrap();
    assert!(out.status.success(), "redis-cli: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// Waits until the sidecar serves `tool` (an unknown tool is NOT_FOUND, not
/// UNAVAILABLE), without touching any budget: the parameters break the schema.
async fn ready(sidecar: &Proc, token: &str, tool: &str) {
    let ex = executor(&sidecar.url(), Some(token)).await;
    eventually("the sidecar to serve", WAIT, || {
        let mut ex = ex.clone();
        async move {
            let r = ex.invoke(invoke_request(tool, &json!({"text": 1}))).await;
            matches!(r, Err(s) if s.code() == Code::InvalidArgument).then_some(())
        }
    })
    .await;
}

/// One call: `Ok(status)` when the sidecar answered with a result, `Err(code)` when it
/// refused.
async fn call(sidecar: &Proc, token: &str, tool: &str, params: serde_json::Value) -> Result<i32, Code> {
    let mut ex = executor(&sidecar.url(), Some(token)).await;
    match ex.invoke(invoke_request(tool, &params)).await {
        Ok(r) => Ok(r.into_inner().result.unwrap().status),
        Err(s) => Err(s.code()),
    }
}

const SUCCESS: i32 = pb::ToolExecutionStatus::Success as i32;
const RATE_LIMITED: i32 = pb::ToolExecutionStatus::RateLimited as i32;
const CIRCUIT_OPEN: i32 = pb::ToolExecutionStatus::CircuitOpen as i32;
const EXECUTION_ERROR: i32 = pb::ToolExecutionStatus::ExecutionError as i32;

#[tokio::test]
async fn calls_refused_before_the_tool_or_answered_from_cache_leave_the_budget_intact() {
    let mut s = setup().await;
    let redis = test_redis();

    // Rate limited at 3 a minute, 5 calls a day.
    let mut limited = http_tool("budget_limited", &s.tools.url("/word_count"));
    limited.requirements.as_mut().unwrap().rate_limit_rpm = 3;
    let limited_grant = s.budgeted(limited, 5).await;
    // Always failing: its circuit opens after 2 failures.
    let failing_grant = s.budgeted(http_tool("budget_failing", &s.tools.url("/fail")), 10).await;
    // Cacheable, 2 calls a day.
    let mut cached = http_tool("budget_cached", &s.tools.url("/echo"));
    cached.cacheable = true;
    cached.cache_ttl_seconds = 300;
    let cached_grant = s.budgeted(cached, 2).await;

    let sc = sidecar_with(
        &s.cp,
        &s.sidecar_token,
        &spool_dir(),
        &[("REDIS_URL", &redis), ("TOOLPLANE_BREAKER_FAILURES", "2")],
    )
    .await;
    ready(&sc, &s.token, "budget_cached").await;
    let t = &s.token;

    // 5 calls that break the schema: refused, and nothing is spent.
    for _ in 0..5 {
        let r = call(&sc, t, "budget_limited", json!({"text": 42})).await;
        assert_eq!(r, Err(Code::InvalidArgument));
    }
    assert_eq!(counter(&redis, &limited_grant), 0, "invalid calls spend nothing");
    // The rate limit's burst of 3 goes through, the next 2 are refused by it.
    for _ in 0..3 {
        assert_eq!(
            call(&sc, t, "budget_limited", json!({"text": "a b"})).await,
            Ok(SUCCESS)
        );
    }
    for _ in 0..2 {
        assert_eq!(
            call(&sc, t, "budget_limited", json!({"text": "a b"})).await,
            Ok(RATE_LIMITED)
        );
    }
    assert_eq!(s.tools.hits("/word_count"), 3);
    assert_eq!(
        counter(&redis, &limited_grant),
        3,
        "only the 3 calls that reached the tool are spent (the 2 rate-limited ones are given back)"
    );

    // The circuit: 2 failures are real calls, then it opens and refuses.
    for _ in 0..2 {
        assert_eq!(
            call(&sc, t, "budget_failing", json!({"text": "x"})).await,
            Ok(EXECUTION_ERROR)
        );
    }
    for _ in 0..3 {
        assert_eq!(
            call(&sc, t, "budget_failing", json!({"text": "x"})).await,
            Ok(CIRCUIT_OPEN)
        );
    }
    assert_eq!(s.tools.hits("/fail"), 2);
    assert_eq!(
        counter(&redis, &failing_grant),
        2,
        "calls the open circuit refused are given back"
    );

    // Cache hits need budget left but do not spend it.
    for _ in 0..4 {
        assert_eq!(
            call(&sc, t, "budget_cached", json!({"text": "same"})).await,
            Ok(SUCCESS)
        );
    }
    assert_eq!(s.tools.hits("/echo"), 1);
    assert_eq!(counter(&redis, &cached_grant), 1, "3 cache hits spent nothing");
    assert_eq!(
        call(&sc, t, "budget_cached", json!({"text": "other"})).await,
        Ok(SUCCESS)
    );
    assert_eq!(
        call(&sc, t, "budget_cached", json!({"text": "third"})).await,
        Err(Code::ResourceExhausted),
        "the budget of 2 is spent by the 2 calls that reached the tool"
    );
    assert_eq!(
        call(&sc, t, "budget_cached", json!({"text": "same"})).await,
        Err(Code::ResourceExhausted),
        "with the budget spent, even a cached answer is refused"
    );
}

#[tokio::test]
async fn a_fallback_is_charged_to_its_own_grant_and_a_call_the_circuit_refuses_to_none() {
    let mut s = setup().await;
    let redis = test_redis();
    let (primary, primary_grant) = s
        .budgeted_tool(http_tool("budget_primary", &s.tools.url("/fail")), 10)
        .await;
    let (backup, backup_grant) = s
        .budgeted_tool(http_tool("budget_backup", &s.tools.url("/word_count")), 2)
        .await;
    let strategy = pb::FallbackStrategy {
        tool_id: primary.id.clone(),
        fallback_tool_ids: vec![backup.id.clone()],
        conditions: vec![pb::FallbackCondition::Always as i32],
        mode: pb::DegradationMode::Full as i32,
        ..Default::default()
    };
    s.admin
        .registry
        .set_fallback_strategy(pb::SetFallbackStrategyRequest {
            strategy: Some(strategy),
        })
        .await
        .unwrap();
    let sc = sidecar_with(
        &s.cp,
        &s.sidecar_token,
        &spool_dir(),
        &[("REDIS_URL", &redis), ("TOOLPLANE_BREAKER_FAILURES", "2")],
    )
    .await;
    ready(&sc, &s.token, "budget_primary").await;
    let mut ex = executor(&sc.url(), Some(&s.token)).await;
    let mut invoke = async || {
        let r = ex
            .invoke(invoke_request("budget_primary", &json!({"text": "a b"})))
            .await;
        r.unwrap().into_inner().result.unwrap()
    };
    // Twice: the primary fails (a real call, charged to its grant) and the backup
    // answers (charged to the backup's grant). The primary's circuit opens.
    for _ in 0..2 {
        let r = invoke().await;
        assert_eq!(r.status, SUCCESS, "{}", r.error);
        assert_eq!(r.tool_id, backup.id);
    }
    // Then the circuit refuses the primary (given back) and the backup's budget is spent.
    let r = invoke().await;
    assert_eq!(r.status, CIRCUIT_OPEN, "{}", r.error);
    assert_eq!((s.tools.hits("/fail"), s.tools.hits("/word_count")), (2, 2));
    assert_eq!(
        counter(&redis, &primary_grant),
        2,
        "the primary's grant: its 2 real calls"
    );
    assert_eq!(counter(&redis, &backup_grant), 2, "the backup's grant: its 2 calls");
}

/// A `redis-server` of the test's own on a free port, its counters in an append-only
/// file so a restart keeps them; killed when dropped (never the shared instance).
struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl OwnRedis {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("toolplane-budget-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self {
            child: None,
            port: free_port(),
            dir,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let until = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: Redis vanishes without a word.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Calls until the sidecar refuses for the budget; how many succeeded.
async fn drain(sidecar: &Proc, token: &str) -> u32 {
    let mut ok = 0;
    loop {
        match call(sidecar, token, "budget_shared", json!({"text": "a b"})).await {
            Ok(SUCCESS) => ok += 1,
            Err(Code::ResourceExhausted) => return ok,
            other => panic!("unexpected {other:?}"),
        }
        assert!(ok <= 100, "never refused");
    }
}

#[tokio::test]
async fn a_budget_stays_exact_across_two_sidecars_while_redis_is_stopped_and_started() {
    const LIMIT: u32 = 10;
    const SHARE: f64 = 0.5;
    let mut s = setup().await;
    let grant = s
        .budgeted(http_tool("budget_shared", &s.tools.url("/word_count")), LIMIT)
        .await;
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let share = SHARE.to_string();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("TOOLPLANE_RATE_LIMIT_LOCAL_SHARE", share.as_str()),
    ];
    let a = sidecar_with(&s.cp, &s.sidecar_token, &spool_dir(), &env).await;
    let b = sidecar_with(&s.cp, &s.sidecar_token, &spool_dir(), &env).await;
    let t = s.token.clone();
    for sc in [&a, &b] {
        ready(sc, &t, "budget_shared").await;
    }

    // Redis up: 3 calls through each sidecar.
    for sc in [&a, &a, &a, &b, &b, &b] {
        assert_eq!(call(sc, &t, "budget_shared", json!({"text": "a b"})).await, Ok(SUCCESS));
    }
    assert_eq!(counter(&url, &grant), 6);

    // Redis gone: each sidecar admits its share of what remained when it last saw
    // Redis (a: 7 then, b: 4), not a fresh day.
    redis.stop();
    let during_a = drain(&a, &t).await;
    let during_b = drain(&b, &t).await;
    let admitted = 6 + during_a + during_b;
    println!("admitted with Redis up: 6; during the outage: a {during_a}, b {during_b}; total {admitted} of {LIMIT}");
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bound = LIMIT + (f64::from(LIMIT) * SHARE) as u32;
    assert!(
        admitted <= bound,
        "at most the configured share over the budget: {admitted} > {bound}"
    );
    assert!(during_a <= 3 && during_b <= 2, "a {during_a}, b {during_b}");
    assert!(
        a.logs().contains("Redis unavailable"),
        "the outage is logged:\n{}",
        a.logs()
    );

    // Redis back: the calls admitted meanwhile reach the shared counter, and the
    // budget, spent, holds at both sidecars.
    redis.restart();
    eventually("the outage's calls in the shared counter", WAIT, || {
        let n = counter(&url, &grant);
        async move { (n == admitted).then_some(()) }
    })
    .await;
    for sc in [&a, &b, &a, &b] {
        assert_eq!(
            call(sc, &t, "budget_shared", json!({"text": "a b"})).await,
            Err(Code::ResourceExhausted)
        );
    }
    assert_eq!(counter(&url, &grant), admitted);
    assert_eq!(
        s.tools.hits("/word_count") as u32,
        admitted,
        "every admitted call reached the tool, and no refused one"
    );
}
