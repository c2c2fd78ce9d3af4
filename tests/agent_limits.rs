//! Per-agent limits across sidecars, end to end: an agent's own calls-per-minute limit
//! (every tool together) shared by two sidecars through Redis, and its daily spend
//! budget in the tools' `cost_per_call` units, exact across two sidecars. The real
//! binaries, real HTTP tools, real Redis.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tonic::Code;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, Authed, executor, http_tool, invoke_request};
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, test_redis};

const WAIT: Duration = Duration::from_secs(30);

struct Fleet {
    tools: ToolServer,
    _cp: Proc,
    admin: Admin,
    agent: pb::Agent,
    token: String,
    sidecars: Vec<Proc>,
}

/// A control plane, `tools` (name, cost) registered and granted to one agent created
/// with `agent`'s limits, and two sidecars sharing Redis.
async fn fleet(agent: pb::CreateAgentRequest, tools: &[(&str, &str)]) -> Fleet {
    let server = ToolServer::start().await;
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let created = admin
        .identity
        .create_agent(agent)
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    for (name, cost) in tools {
        let mut t = http_tool(name, &server.url("/word_count"));
        t.cost_per_call = (*cost).to_owned();
        let t = admin.register(t).await.unwrap();
        admin.grant_full(&created.id, &t.id).await;
    }
    let token = admin.token(pb::Role::Agent, &created.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let redis = test_redis();
    let mut sidecars = Vec::new();
    // What is under test is the sharing, not the fallback when Redis answers late (a
    // loaded test machine can delay an answer past the 100 ms default).
    let env = [
        ("REDIS_URL", redis.as_str()),
        ("TOOLPLANE_REDIS_DECISION_TIMEOUT_MS", "2000"),
    ];
    for _ in 0..2 {
        sidecars.push(sidecar_with(&cp, &sidecar_token, &spool_dir(), &env).await);
    }
    for sc in &sidecars {
        ready(sc, &token, tools[0].0).await;
    }
    Fleet {
        tools: server,
        _cp: cp,
        admin,
        agent: created,
        token,
        sidecars,
    }
}

/// Waits until the sidecar serves `tool` without spending anything: parameters that
/// break the schema are refused before any limit or budget is asked.
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

#[derive(Default)]
struct Tally {
    success: AtomicUsize,
    rate_limited: AtomicUsize,
    exhausted: AtomicUsize,
}

/// `calls` invocations, 16 at a time, spread over the sidecars and round-robin over
/// `tools`; every call must be answered, admitted or refused for `expect_refusal`.
async fn hammer(sidecars: &[Proc], token: &str, tools: &[&str], calls: usize) -> Arc<Tally> {
    let mut clients: Vec<pb::executor_client::ExecutorClient<Authed>> = Vec::new();
    for sc in sidecars {
        clients.push(executor(&sc.url(), Some(token)).await);
    }
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let tools: Arc<Vec<String>> = Arc::new(tools.iter().map(|t| (*t).to_owned()).collect());
    let mut workers = Vec::new();
    for w in 0..16 {
        let (ex, tally, next, tools) = (
            clients[w % clients.len()].clone(),
            tally.clone(),
            next.clone(),
            tools.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= calls {
                    return;
                }
                let tool = &tools[i % tools.len()];
                match ex.clone().invoke(invoke_request(tool, &json!({"text": "x"}))).await {
                    Ok(r) => {
                        let r = r.into_inner().result.unwrap();
                        match pb::ToolExecutionStatus::try_from(r.status).unwrap() {
                            pb::ToolExecutionStatus::Success => tally.success.fetch_add(1, Ordering::SeqCst),
                            pb::ToolExecutionStatus::RateLimited => {
                                assert!(r.error.contains("this agent"), "{}", r.error);
                                assert!(r.retry_after_ms > 0);
                                tally.rate_limited.fetch_add(1, Ordering::SeqCst)
                            }
                            other => panic!("unexpected {other:?}: {}", r.error),
                        };
                    }
                    Err(s) if s.code() == Code::ResourceExhausted => {
                        assert!(s.message().contains("spend budget"), "{}", s.message());
                        tally.exhausted.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(s) => panic!("unexpected refusal {s:?}"),
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    tally
}

#[tokio::test]
async fn an_agents_own_rate_limit_is_shared_by_two_sidecars_across_its_tools() {
    const N: u32 = 600;
    let f = fleet(
        pb::CreateAgentRequest {
            name: "busy".to_owned(),
            calls_per_minute: N,
            ..Default::default()
        },
        &[("first", "0"), ("second", "0")],
    )
    .await;
    let started = Instant::now();
    let tally = hammer(&f.sidecars, &f.token, &["first", "second"], 2 * N as usize).await;
    let elapsed = started.elapsed();
    let admitted = tally.success.load(Ordering::SeqCst);
    let n = N as usize;
    // GCRA refills one call every 60/N s: a slow run may admit those refills too.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let refilled = (elapsed.as_secs_f64() * f64::from(N) / 60.0).ceil() as usize;
    println!(
        "admitted {admitted} of {} calls (limit {N}/min, {refilled} refilled in {elapsed:?}), {} rate limited",
        2 * n,
        tally.rate_limited.load(Ordering::SeqCst)
    );
    for sc in &f.sidecars {
        assert!(!sc.logs().contains("Redis unavailable"), "{}", sc.logs());
    }
    assert!(
        admitted + n / 100 >= n && admitted <= n + refilled + n / 100,
        "admitted {admitted}: limit {n} (±1 %) plus {refilled} refilled"
    );
    let reached = f.tools.hits("/word_count");
    assert_eq!(
        reached, admitted,
        "every admitted call reached a tool, and no refused one"
    );
    for sc in &f.sidecars {
        assert!(!sc.logs().contains("Redis unavailable"), "{}", sc.logs());
    }

    // The limit is the agent's: another agent with the same tools is not held back.
    let mut admin = f.admin.clone();
    let other = admin.agent("idle").await;
    let tool = admin
        .registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name("first".to_owned())),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap();
    admin.grant_full(&other.id, &tool.id).await;
    let token = admin.token(pb::Role::Agent, &other.id).await;
    let ex = executor(&f.sidecars[0].url(), Some(&token)).await;
    let r = eventually("the other agent's call", WAIT, || {
        let mut ex = ex.clone();
        async move { ex.invoke(invoke_request("first", &json!({"text": "x"}))).await.ok() }
    })
    .await;
    assert_eq!(
        r.into_inner().result.unwrap().status,
        pb::ToolExecutionStatus::Success as i32
    );
}

/// The agent's spend today in millionths, as Redis holds it (0 when absent).
fn spent_micros(agent: &str) -> i64 {
    let key = format!("toolplane:spend:{agent}:{}", chrono::Utc::now().date_naive());
    let out = Command::new("redis-cli")
        .args(["-u", &test_redis(), "GET", &key])
        .output()
        .unwrap();
    assert!(out.status.success(), "redis-cli: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[tokio::test]
async fn a_daily_spend_budget_is_exact_across_two_sidecars() {
    let f = fleet(
        pb::CreateAgentRequest {
            name: "spender".to_owned(),
            daily_spend_budget: "0.1000".to_owned(),
            ..Default::default()
        },
        &[("pricey", "0.0030"), ("cheap", "0.0010")],
    )
    .await;
    // 0.1000 / 0.0030: 33 calls fit (0.0990), the 34th would pass the budget.
    let tally = hammer(&f.sidecars, &f.token, &["pricey"], 80).await;
    let admitted = tally.success.load(Ordering::SeqCst);
    println!(
        "admitted {admitted} of 80 calls at 0.0030 against 0.1000 over two sidecars; {} refused; Redis holds {} millionths",
        tally.exhausted.load(Ordering::SeqCst),
        spent_micros(&f.agent.id)
    );
    for sc in &f.sidecars {
        assert!(!sc.logs().contains("Redis unavailable"), "{}", sc.logs());
    }
    assert_eq!(admitted, 33);
    assert_eq!(tally.exhausted.load(Ordering::SeqCst), 80 - 33);
    assert_eq!(spent_micros(&f.agent.id), 99_000);
    assert_eq!(f.tools.hits("/word_count"), 33, "no refused call reached the tool");

    // What is left (0.0010) fits one cheaper call exactly, and then nothing more.
    let call = |sc: usize, tool: &'static str| {
        let url = f.sidecars[sc].url();
        let token = f.token.clone();
        async move {
            let mut ex = executor(&url, Some(&token)).await;
            ex.invoke(invoke_request(tool, &json!({"text": "x"})))
                .await
                .map(|r| r.into_inner().result.unwrap().status)
                .map_err(|s| s.code())
        }
    };
    assert_eq!(call(1, "cheap").await, Ok(pb::ToolExecutionStatus::Success as i32));
    assert_eq!(spent_micros(&f.agent.id), 100_000);
    assert_eq!(call(0, "cheap").await, Err(Code::ResourceExhausted));
    assert_eq!(call(1, "pricey").await, Err(Code::ResourceExhausted));

    // Raising the budget reaches both sidecars with the next delta.
    let mut admin = f.admin.clone();
    admin
        .identity
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: f.agent.id.clone(),
                daily_spend_budget: "0.1030".to_owned(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["daily_spend_budget".to_owned()],
            }),
        })
        .await
        .unwrap();
    eventually("the raised budget at the sidecar", WAIT, || async {
        (call(0, "pricey").await == Ok(pb::ToolExecutionStatus::Success as i32)).then_some(())
    })
    .await;
    assert_eq!(call(1, "cheap").await, Err(Code::ResourceExhausted));
    assert_eq!(spent_micros(&f.agent.id), 103_000);
    assert_eq!(f.tools.hits("/word_count"), 35);
}
