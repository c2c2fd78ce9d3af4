//! What the fleet learns reaches every decision without an admin change: a tool's
//! learned reliability and latency reach the sidecars (their fallback order) and
//! selection (its latency limit), and a spent daily budget keeps selection from
//! proposing a tool the agent cannot use today. Real control plane on PostgreSQL, real
//! sidecar, real HTTP tools.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use tonic::Code;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, Authed, channel, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane_with, sidecar, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;

const WAIT: Duration = Duration::from_secs(30);

type Ex = pb::executor_client::ExecutorClient<Authed>;
type Selector = pb::tool_selector_client::ToolSelectorClient<Authed>;

async fn invoke(ex: &Ex, tool: &str) -> pb::ToolResult {
    ex.clone()
        .invoke(invoke_request(tool, &json!({"text": "a b c"})))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap()
}

/// Waits until the sidecar answers calls from a snapshot (`tool` must be granted).
async fn until_serving(ex: &Ex, tool: &str) {
    eventually("the sidecar to serve from a snapshot", WAIT, || {
        let mut ex = ex.clone();
        async move {
            match ex.invoke(invoke_request(tool, &json!({"text": "warm up"}))).await {
                Err(s) if matches!(s.code(), Code::Unavailable | Code::Unauthenticated) => None,
                other => Some(other.unwrap()),
            }
        }
    })
    .await;
}

/// The tool as the registry holds it now (its learned statistics as stored).
async fn stored(admin: &mut Admin, id: &str) -> pb::Tool {
    admin
        .registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Id(id.to_owned())),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap()
}

/// Waits until the registry holds learned statistics of `tools` for which `check`
/// holds (the database learned them; no admin change is made).
async fn until_stored(admin: &Admin, tools: &[&pb::Tool], what: &str, check: impl Fn(&[pb::Tool]) -> bool) {
    let ids: Vec<String> = tools.iter().map(|t| t.id.clone()).collect();
    let check = &check;
    eventually(what, WAIT, || {
        let (mut admin, ids) = (admin.clone(), ids.clone());
        async move {
            let mut now = Vec::new();
            for id in &ids {
                now.push(stored(&mut admin, id).await);
            }
            check(&now).then_some(())
        }
    })
    .await;
}

/// Calls `primary` until the fallback that answers is `answering` and no other
/// candidate was tried before it (`others`' call counts did not move): the sidecar's
/// fallback order puts `answering` first. Breakers are off in this test, so a tried
/// candidate always shows in its count.
async fn until_first_fallback(ex: &Ex, tools: &ToolServer, primary: &pb::Tool, answering: &pb::Tool, others: &[&str]) {
    eventually(
        &format!("{} to be the first fallback", answering.name),
        WAIT,
        || async move {
            let before: Vec<usize> = others.iter().map(|p| tools.hits(p)).collect();
            let r = invoke(ex, &primary.name).await;
            assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{r:?}");
            assert_eq!(r.fallback_from_tool_id, primary.id);
            let after: Vec<usize> = others.iter().map(|p| tools.hits(p)).collect();
            (r.tool_id == answering.id && before == after).then_some(())
        },
    )
    .await;
}

fn names(r: &pb::SelectToolResponse) -> Vec<String> {
    r.primary
        .iter()
        .chain(&r.alternatives)
        .map(|s| s.tool.as_ref().unwrap().name.clone())
        .collect()
}

fn within(max_latency_ms: u32, capability: &str) -> pb::SelectToolRequest {
    pb::SelectToolRequest {
        task_description: "look the word up".to_owned(),
        required_capabilities: vec![capability.to_owned()],
        constraints: Some(pb::SelectionConstraints {
            max_latency_ms,
            ..Default::default()
        }),
        max_alternatives: 5,
        ..Default::default()
    }
}

#[tokio::test]
async fn learned_reliability_and_latency_reach_fallback_order_and_selection() {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    // The change-revision poll (the admin changes' safety net) slowed right down, so
    // nothing but the statistics push can refresh the snapshot during the test.
    let cp = control_plane_with(
        Some(&db.url),
        &[
            ("TOOLPLANE_STATS_PUSH_SECS", "1"),
            ("TOOLPLANE_CHANGE_POLL_MS", "3600000"),
        ],
    )
    .await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("learning-agent").await;
    let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
    let mut register = async |name: &str, path: &str, mode: pb::DegradationMode| {
        let mut t = http_tool(name, &tools.url(path));
        t.capabilities = vec!["lookup".to_owned()];
        let t = admin.register(t).await.unwrap();
        admin.grant_full(&agent.id, &t.id).await;
        admin
            .registry
            .set_fallback_strategy(pb::SetFallbackStrategyRequest {
                strategy: Some(pb::FallbackStrategy {
                    tool_id: t.id.clone(),
                    mode: mode as i32,
                    max_attempts: 1,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        t
    };
    // The primary always fails; its FULL strategy lists no fallback, so the sidecar
    // tries the tools sharing its capability, most reliable first.
    let primary = register("lookup", "/unavailable/lookup", pb::DegradationMode::Full).await;
    let alpha = register("alpha_lookup", "/switch/alpha", pb::DegradationMode::Abort).await;
    let beta = register("beta_lookup", "/switch/beta", pb::DegradationMode::Abort).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    // Breakers off: a candidate tried shows in its call count, never skipped silently.
    let sc = sidecar_with(
        &cp,
        &sidecar_token,
        &spool_dir(),
        &[("TOOLPLANE_BREAKER_FAILURES", "1000")],
    )
    .await;
    let ex = executor(&sc.url(), Some(&agent_token)).await;
    let mut selector: Selector =
        pb::tool_selector_client::ToolSelectorClient::new(channel(&cp.url(), Some(&agent_token)).await);
    until_serving(&ex, "alpha_lookup").await;

    // Learned: alpha always answered (1.0), beta failed once of two (0.9).
    assert_eq!(
        invoke(&ex, "beta_lookup").await.status,
        pb::ToolExecutionStatus::Success as i32
    );
    tools.set_failing("/switch/beta", true);
    assert_ne!(
        invoke(&ex, "beta_lookup").await.status,
        pb::ToolExecutionStatus::Success as i32
    );
    tools.set_failing("/switch/beta", false);
    until_stored(&admin, &[&alpha, &beta], "alpha 1.0 and beta 0.9 stored", |t| {
        t[0].reliability_score > 0.99 && (t[1].reliability_score - 0.9).abs() < 0.01
    })
    .await;
    until_first_fallback(&ex, &tools, &primary, &alpha, &["/switch/beta"]).await;
    let ranked = names(&selector.select_tool(within(60, "lookup")).await.unwrap().into_inner());
    assert!(ranked.contains(&"alpha_lookup".to_owned()), "{ranked:?}");

    // Alpha turns slow and failing; nothing is changed by an admin.
    tools.set_failing("/switch/alpha", true);
    for _ in 0..3 {
        let r = invoke(&ex, "alpha_lookup").await;
        assert_eq!(r.status, pb::ToolExecutionStatus::ExecutionError as i32, "{r:?}");
    }
    until_stored(
        &admin,
        &[&alpha, &beta],
        "alpha's reliability below beta's and its latency above 60 ms",
        |t| {
            t[0].reliability_score < t[1].reliability_score
                && t[0].average_latency_ms > 60
                && t[1].average_latency_ms < 60
        },
    )
    .await;

    // Selection's latency limit follows: alpha is over 60 ms now, beta is not.
    let ranked = eventually("selection to leave out the slow alpha", WAIT, || {
        let mut s = selector.clone();
        async move {
            let ranked = names(&s.select_tool(within(60, "lookup")).await.unwrap().into_inner());
            (!ranked.contains(&"alpha_lookup".to_owned())).then_some(ranked)
        }
    })
    .await;
    assert!(ranked.contains(&"beta_lookup".to_owned()), "{ranked:?}");

    // The sidecar's fallback order follows: beta first, alpha not even tried.
    until_first_fallback(&ex, &tools, &primary, &beta, &["/switch/alpha"]).await;
    let ranked = names(&selector.select_tool(within(0, "lookup")).await.unwrap().into_inner());
    assert!(
        ranked.contains(&"alpha_lookup".to_owned()),
        "without a limit it stays a candidate: {ranked:?}"
    );
}

#[tokio::test]
async fn a_spent_daily_budget_keeps_selection_from_proposing_the_tool() {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp = control_plane_with(Some(&db.url), &[]).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let spender = admin.agent("spender").await;
    let saver = admin.agent("saver").await;
    let mut metered = http_tool("metered_translate", &tools.url("/count/metered"));
    metered.capabilities = vec!["translate".to_owned()];
    metered.description = "Translates a text, best quality".to_owned();
    let metered = admin.register(metered).await.unwrap();
    let mut free = http_tool("free_translate", &tools.url("/count/free"));
    free.capabilities = vec!["translate".to_owned()];
    let free = admin.register(free).await.unwrap();
    for (agent, tz) in [(&spender, "Pacific/Kiritimati"), (&saver, "America/Los_Angeles")] {
        admin.grant_full(&agent.id, &free.id).await;
        admin
            .permissions
            .grant(pb::GrantRequest {
                permission: Some(pb::Permission {
                    agent_id: agent.id.clone(),
                    tool_id: metered.id.clone(),
                    r#type: pb::PermissionType::LimitedInvocations as i32,
                    max_invocations_per_day: 2,
                    time_zone: tz.to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let spender_token = admin.token(pb::Role::Agent, &spender.id).await;
    let saver_token = admin.token(pb::Role::Agent, &saver.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar(&cp, &sidecar_token).await;
    let ex = executor(&sc.url(), Some(&spender_token)).await;
    until_serving(&ex, "free_translate").await;
    let selector = async |token: &str| -> Selector {
        pb::tool_selector_client::ToolSelectorClient::new(channel(&cp.url(), Some(token)).await)
    };
    let (mut spender_sel, mut saver_sel) = (selector(&spender_token).await, selector(&saver_token).await);
    let ask = || pb::SelectToolRequest {
        task_description: "translate a text".to_owned(),
        required_capabilities: vec!["translate".to_owned()],
        max_alternatives: 5,
        ..Default::default()
    };
    let metered_name = "metered_translate".to_owned();
    assert!(names(&spender_sel.select_tool(ask()).await.unwrap().into_inner()).contains(&metered_name));

    // The spender uses up today's budget; the sidecar refuses the next call.
    for _ in 0..2 {
        let r = invoke(&ex, "metered_translate").await;
        assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{r:?}");
    }
    let refused = ex
        .clone()
        .invoke(invoke_request("metered_translate", &json!({"text": "a"})))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // Once the calls are reported, selection stops proposing it to the spender...
    let ranked = eventually("selection to leave out the spent tool", WAIT, || {
        let mut s = spender_sel.clone();
        async move {
            let ranked = names(&s.select_tool(ask()).await.unwrap().into_inner());
            (!ranked.contains(&"metered_translate".to_owned())).then_some(ranked)
        }
    })
    .await;
    assert_eq!(ranked, vec!["free_translate".to_owned()]);
    // ...while the other agent, whose budget is untouched, still gets it.
    let ranked = names(&saver_sel.select_tool(ask()).await.unwrap().into_inner());
    assert!(ranked.contains(&metered_name), "{ranked:?}");
    assert_eq!(tools.hits("/count/metered"), 2);
}

#[tokio::test]
async fn another_replica_selects_with_the_statistics_a_sidecar_reported_elsewhere() {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    // Only the statistics push (by NOTIFY) can refresh the other replica's snapshot.
    let env = [
        ("TOOLPLANE_STATS_PUSH_SECS", "1"),
        ("TOOLPLANE_CHANGE_POLL_MS", "3600000"),
    ];
    let cp1 = control_plane_with(Some(&db.url), &env).await;
    let cp2 = control_plane_with(Some(&db.url), &env).await;
    let mut admin = Admin::connect(&cp1.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("roaming-agent").await;
    let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
    let mut t = http_tool("drifting_lookup", &tools.url("/switch/drifting"));
    t.capabilities = vec!["lookup".to_owned()];
    let drifting = admin.register(t).await.unwrap();
    admin.grant_full(&agent.id, &drifting.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar_with(
        &cp1,
        &sidecar_token,
        &spool_dir(),
        &[("TOOLPLANE_BREAKER_FAILURES", "1000")],
    )
    .await;
    let ex = executor(&sc.url(), Some(&agent_token)).await;
    until_serving(&ex, "drifting_lookup").await;
    let mut on_cp2: Selector =
        pb::tool_selector_client::ToolSelectorClient::new(channel(&cp2.url(), Some(&agent_token)).await);
    // The second replica has the tool, fast, in the snapshot it selects from.
    let ranked = eventually("the second replica to know the tool", WAIT, || {
        let mut s = on_cp2.clone();
        async move {
            let r = s.select_tool(within(60, "lookup")).await.ok()?;
            Some(names(&r.into_inner()))
        }
    })
    .await;
    assert_eq!(ranked, vec!["drifting_lookup".to_owned()]);

    tools.set_failing("/switch/drifting", true);
    for _ in 0..3 {
        invoke(&ex, "drifting_lookup").await;
    }
    until_stored(&admin, &[&drifting], "its latency above 60 ms", |t| {
        t[0].average_latency_ms > 60
    })
    .await;
    let e = eventually("the second replica to leave the slow tool out", WAIT, || {
        let mut s = on_cp2.clone();
        async move { s.select_tool(within(60, "lookup")).await.err() }
    })
    .await;
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let ranked = names(&on_cp2.select_tool(within(0, "lookup")).await.unwrap().into_inner());
    assert_eq!(
        ranked,
        vec!["drifting_lookup".to_owned()],
        "without a limit it is still proposed"
    );
}
