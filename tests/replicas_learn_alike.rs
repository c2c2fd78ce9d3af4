//! Two control plane replicas on one PostgreSQL database, a sidecar on each: what
//! selection learned is the database's, so both replicas answer `GetEffectiveness`,
//! `GetRecommendations` and `SelectTool` alike within 2 s of the outcomes being stored,
//! a restarted replica loads the same state instead of relearning a different one, and
//! a batch resent after a lost ack changes no count.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use toolplane_core::convert::ts;
use toolplane_core::json::json_to_struct;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::fake_sidecar::FakeSidecar;
use toolplane_tests::grpc::{Admin, Authed, channel, executor, http_tool};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane, sidecar};
use toolplane_tests::tool_server::ToolServer;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);
/// How soon every replica must agree once the outcomes are stored.
const ALIKE: Duration = Duration::from_secs(2);
const CATEGORY: &str = "word counting";

type Learning = pb::learning_client::LearningClient<Authed>;
type Selector = pb::tool_selector_client::ToolSelectorClient<Authed>;

/// What a replica answers, in the parts that must not depend on the replica.
#[derive(Debug, PartialEq)]
struct Answers {
    effectiveness: Vec<pb::Effectiveness>,
    /// Tool and score of each recommendation.
    recommendations: Vec<(String, f64)>,
    /// Tool, suitability and combined score of the primary and the alternatives.
    selection: Vec<(String, f64, f64)>,
}

async fn answers(url: &str, agent_token: &str) -> Answers {
    let mut learning = Learning::new(channel(url, Some(ADMIN_TOKEN)).await);
    let mut effectiveness = learning
        .get_effectiveness(pb::GetEffectivenessRequest::default())
        .await
        .unwrap()
        .into_inner()
        .rows;
    effectiveness
        .sort_by(|a, b| (&a.tool_id, &a.task_category, &a.agent_id).cmp(&(&b.tool_id, &b.task_category, &b.agent_id)));
    let recommendations = learning
        .get_recommendations(pb::GetRecommendationsRequest {
            task_category: CATEGORY.to_owned(),
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner()
        .recommendations
        .into_iter()
        .map(|r| (r.tool_id, r.score))
        .collect();
    let mut selector = Selector::new(channel(url, Some(agent_token)).await);
    let r = selector
        .select_tool(pb::SelectToolRequest {
            task_description: "count the words of a text".to_owned(),
            task_category: CATEGORY.to_owned(),
            max_alternatives: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let selection = r
        .primary
        .iter()
        .chain(&r.alternatives)
        .map(|s| {
            (
                s.tool.as_ref().unwrap().id.clone(),
                s.suitability_score,
                s.combined_score,
            )
        })
        .collect();
    Answers {
        effectiveness,
        recommendations,
        selection,
    }
}

/// Outcomes learned fleet-wide for `tool` as `url` answers.
fn fleet_count(a: &Answers, tool: &str) -> u64 {
    a.effectiveness
        .iter()
        .find(|r| r.tool_id == tool && r.task_category.is_empty() && r.agent_id.is_empty())
        .map_or(0, |r| r.invocations)
}

/// Waits until both replicas answer alike with `expected` outcomes of `tool`; returns
/// the answers and how long agreement took.
async fn alike(a: &str, b: &str, agent_token: &str, tool: &str, expected: u64) -> (Answers, Duration) {
    let started = Instant::now();
    let answers = eventually("both replicas to answer alike", WAIT, || async move {
        let (x, y) = (answers(a, agent_token).await, answers(b, agent_token).await);
        (fleet_count(&x, tool) == expected && x == y).then_some(x)
    })
    .await;
    (answers, started.elapsed())
}

/// Invocations of `tool` stored.
async fn stored_invocations(db: &tokio_postgres::Client, tool: &str) -> u64 {
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM invocations WHERE tool_id = $1",
            &[&Uuid::parse_str(tool).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    u64::try_from(n).unwrap()
}

/// Calls `tool` through a sidecar; returns the invocation id and whether it succeeded.
async fn call(ex: &mut pb::executor_client::ExecutorClient<Authed>, tool: &str) -> (String, bool) {
    try_call(ex, tool).await.unwrap()
}

async fn try_call(
    ex: &mut pb::executor_client::ExecutorClient<Authed>,
    tool: &str,
) -> Result<(String, bool), tonic::Status> {
    let r = ex
        .invoke(pb::InvokeRequest {
            tool: Some(pb::invoke_request::Tool::ToolName(tool.to_owned())),
            parameters: json_to_struct(&json!({"text": "one two three"})),
            task_id: "t".to_owned(),
            task_category: CATEGORY.to_owned(),
            selection_id: String::new(),
        })
        .await?
        .into_inner()
        .result
        .unwrap();
    Ok((r.invocation_id, r.status == pb::ToolExecutionStatus::Success as i32))
}

/// An invocation record as a sidecar reports it.
fn invocation(agent: &str, tool: &str, ok: bool) -> pb::SyncEvent {
    let id = Uuid::now_v7().to_string();
    let now = ts(chrono::Utc::now());
    let status = if ok {
        pb::ToolExecutionStatus::Success
    } else {
        pb::ToolExecutionStatus::ExecutionError
    };
    pb::SyncEvent {
        event_id: id.clone(),
        payload: Some(pb::sync_event::Payload::Invocation(pb::InvocationRecord {
            invocation_id: id.clone(),
            agent_id: agent.to_owned(),
            task_id: "resent".to_owned(),
            requested_tool_id: tool.to_owned(),
            invoked_at: Some(now),
            result: Some(pb::ToolResult {
                invocation_id: id,
                tool_id: tool.to_owned(),
                tool_version: 1,
                status: status as i32,
                duration_ms: 40,
                cost: "0.002".to_owned(),
                completed_at: Some(now),
                attempts: 1,
                ..Default::default()
            }),
            sidecar_id: "fake".to_owned(),
            task_category: CATEGORY.to_owned(),
            selection_id: String::new(),
            caller_cancelled: false,
            parameters: None,
        })),
    }
}

#[tokio::test]
async fn replicas_learn_alike_survive_a_restart_and_count_a_resent_batch_once() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let server = ToolServer::start().await;
    let cp_a = control_plane(Some(&db.url)).await;
    let cp_b = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp_a.url(), ADMIN_TOKEN).await;
    let good = admin
        .register(http_tool("word_count", &server.url("/word_count")))
        .await
        .unwrap();
    let bad = admin
        .register(http_tool("word_count_broken", &server.url("/fail")))
        .await
        .unwrap();
    let agent = admin.agent("counter").await;
    admin.grant_full(&agent.id, &good.id).await;
    admin.grant_full(&agent.id, &bad.id).await;
    let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
    let sc_a = sidecar(&cp_a, &admin.token(pb::Role::Sidecar, "").await).await;
    let sc_b = sidecar(&cp_b, &admin.token(pb::Role::Sidecar, "").await).await;
    let mut ex_a = executor(&sc_a.url(), Some(&agent_token)).await;
    let mut ex_b = executor(&sc_b.url(), Some(&agent_token)).await;
    // Both sidecars serve (these calls are outcomes too).
    for ex in [&ex_a, &ex_b] {
        eventually("the sidecar to serve", WAIT, || {
            let mut ex = ex.clone();
            async move { try_call(&mut ex, "word_count").await.ok().filter(|(_, ok)| *ok) }
        })
        .await;
    }

    // Calls through both sidecars, the broken tool's failing.
    let mut reported = String::new();
    for i in 0..6 {
        let ex = if i % 2 == 0 { &mut ex_a } else { &mut ex_b };
        let (id, ok) = call(ex, "word_count").await;
        assert!(ok);
        reported = id;
        let (_, ok) = call(ex, "word_count_broken").await;
        assert!(!ok);
    }
    // Each sidecar's last call failed, and sidecars send in order.
    eventually("all outcomes stored", WAIT, || {
        let (pg, bad) = (&pg, &bad.id);
        async move { (stored_invocations(pg, bad).await == 6).then_some(()) }
    })
    .await;
    let good_calls = stored_invocations(&pg, &good.id).await;
    assert!(good_calls >= 8);
    let (first, took) = alike(&cp_a.url(), &cp_b.url(), &agent_token, &good.id, good_calls).await;
    assert!(took <= ALIKE, "replicas agreed only after {took:?}");
    assert_eq!(fleet_count(&first, &bad.id), 6);
    assert_eq!(first.selection[0].0, good.id, "the working tool is selected: {first:?}");
    assert_eq!(first.recommendations[0].0, good.id);

    // A verdict through replica B (sent twice, as after a lost reply) is learned once,
    // task_succeeded included, and replica A sees it too.
    let mut learning_b = Learning::new(channel(&cp_b.url(), Some(&agent_token)).await);
    for _ in 0..2 {
        learning_b
            .report_outcome(pb::ReportOutcomeRequest {
                invocation_id: reported.clone(),
                quality: 0.3,
                task_succeeded: false,
                comment: String::new(),
            })
            .await
            .unwrap();
    }
    let started = Instant::now();
    let verdict = eventually("both replicas to learn the verdict", WAIT, || {
        let (a, b, token, tool) = (cp_a.url(), cp_b.url(), agent_token.clone(), good.id.clone());
        async move {
            let (x, y) = (answers(&a, &token).await, answers(&b, &token).await);
            let q = x
                .effectiveness
                .iter()
                .find(|r| r.tool_id == tool && r.task_category.is_empty() && r.agent_id.is_empty())
                .map_or(0.0, |r| r.quality);
            (x == y && (q - 0.3).abs() < 1e-9).then_some(x)
        }
    })
    .await;
    assert!(started.elapsed() <= ALIKE, "took {:?}", started.elapsed());
    assert_ne!(
        verdict.selection, first.selection,
        "a failed task lowers the tool's suitability"
    );

    // A killed and restarted replica loads what was learned, not a relearned variant.
    cp_b.kill().await;
    let cp_b = control_plane(Some(&db.url)).await;
    assert_eq!(answers(&cp_b.url(), &agent_token).await, verdict);
    assert_eq!(answers(&cp_a.url(), &agent_token).await, verdict);

    // A batch resent after a lost ack changes no count.
    let mut fake = FakeSidecar::connect(&cp_a.url(), &admin.token(pb::Role::Sidecar, "").await, "fake").await;
    let batch: Vec<pb::SyncEvent> = (0..3).map(|i| invocation(&agent.id, &good.id, i != 0)).collect();
    assert_eq!(fake.send(batch.clone()).await.len(), 3);
    let (after_once, _) = alike(&cp_a.url(), &cp_b.url(), &agent_token, &good.id, good_calls + 3).await;
    assert_eq!(fake.send(batch).await.len(), 3, "the resent batch is acked");
    let cells: i64 = pg
        .query_one(
            "SELECT invocations FROM learning_cells WHERE tool_id = $1 AND category = '' AND agent_id = $2",
            &[&Uuid::parse_str(&good.id).unwrap(), &Uuid::nil()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(u64::try_from(cells).unwrap(), good_calls + 3);
    let (after_twice, _) = alike(&cp_a.url(), &cp_b.url(), &agent_token, &good.id, good_calls + 3).await;
    assert_eq!(after_twice, after_once);
    drop((sc_a, sc_b, cp_a, cp_b));
}

/// The primary's reasoning for `task` as replica `url` selects for the agent.
async fn reasoning(url: &str, agent_token: &str, task: &str) -> String {
    let mut selector = Selector::new(channel(url, Some(agent_token)).await);
    selector
        .select_tool(pb::SelectToolRequest {
            task_description: task.to_owned(),
            task_category: CATEGORY.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reasoning
}

/// The first recommendation's reason for [`CATEGORY`], as replica `url` gives it.
async fn recommendation_reason(url: &str) -> String {
    let mut learning = Learning::new(channel(url, Some(ADMIN_TOKEN)).await);
    learning
        .get_recommendations(pb::GetRecommendationsRequest {
            task_category: CATEGORY.to_owned(),
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .recommendations
        .first()
        .map(|r| r.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn replicas_share_remembered_tasks_forgetting_and_recommendation_follow_ups() {
    const TASK: &str = "tally how many words my essay draft has";
    const ROUNDS: usize = 4;
    let db = TestDb::create().await;
    let server = ToolServer::start().await;
    let cp_a = control_plane(Some(&db.url)).await;
    let cp_b = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp_a.url(), ADMIN_TOKEN).await;
    let tool = admin
        .register(http_tool("word_count", &server.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("counter").await;
    admin.grant_full(&agent.id, &tool.id).await;
    let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
    // Only replica B has a sidecar: what its ingest learns, replica A must read.
    let sc_b = sidecar(&cp_b, &admin.token(pb::Role::Sidecar, "").await).await;
    let mut ex_b = executor(&sc_b.url(), Some(&agent_token)).await;
    eventually("the sidecar to serve", WAIT, || {
        let mut ex = ex_b.clone();
        async move { try_call(&mut ex, "word_count").await.ok().filter(|(_, ok)| *ok) }
    })
    .await;
    assert!(
        !reasoning(&cp_a.url(), &agent_token, TASK)
            .await
            .contains("similar past tasks"),
        "nothing remembered yet"
    );

    // Selections on replica A, each followed by its call through replica B's sidecar.
    let mut selector_a = Selector::new(channel(&cp_a.url(), Some(&agent_token)).await);
    let mut first_call = String::new();
    for round in 0..ROUNDS {
        let s = selector_a
            .select_tool(pb::SelectToolRequest {
                task_description: TASK.to_owned(),
                task_category: CATEGORY.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.primary.as_ref().unwrap().tool.as_ref().unwrap().id, tool.id);
        let r = ex_b
            .invoke(pb::InvokeRequest {
                tool: Some(pb::invoke_request::Tool::ToolId(tool.id.clone())),
                parameters: json_to_struct(&json!({"text": "one two three"})),
                task_id: format!("essay-{round}"),
                task_category: CATEGORY.to_owned(),
                selection_id: s.selection_id,
            })
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
        if round == 0 {
            first_call = r.invocation_id;
        }
    }
    // One of the agent's earlier calls made no selection: it is not a follow-up. The
    // warm-up selection above counts as a recommendation that was not followed.
    let expected = format!(
        "recommended a tool for this category {} times, agents followed {ROUNDS} times and {ROUNDS} of those succeeded",
        ROUNDS + 1
    );
    let started = Instant::now();
    eventually("both replicas to count the follow-ups alike", WAIT, || {
        let (a, b, expected) = (cp_a.url(), cp_b.url(), expected.clone());
        async move {
            let (x, y) = (recommendation_reason(&a).await, recommendation_reason(&b).await);
            (x == y && x.contains(&expected)).then_some(())
        }
    })
    .await;
    assert!(started.elapsed() <= ALIKE, "took {:?}", started.elapsed());

    // The task remembered by B's ingest guides A's selection too.
    let started = Instant::now();
    eventually("replica A to use the task B remembered", WAIT, || {
        let (a, token) = (cp_a.url(), agent_token.clone());
        async move {
            reasoning(&a, &token, TASK)
                .await
                .contains("similar past tasks")
                .then_some(())
        }
    })
    .await;
    assert!(started.elapsed() <= ALIKE, "took {:?}", started.elapsed());

    // The agent says the call did not serve the task (through replica B): forgotten on
    // both replicas, and its text is gone from the database.
    let mut learning_b = Learning::new(channel(&cp_b.url(), Some(&agent_token)).await);
    learning_b
        .report_outcome(pb::ReportOutcomeRequest {
            invocation_id: first_call,
            quality: 0.1,
            task_succeeded: false,
            comment: String::new(),
        })
        .await
        .unwrap();
    eventually("both replicas to forget the task", WAIT, || {
        let (a, b, token) = (cp_a.url(), cp_b.url(), agent_token.clone());
        async move {
            let (x, y) = (reasoning(&a, &token, TASK).await, reasoning(&b, &token, TASK).await);
            (!x.contains("similar past tasks") && !y.contains("similar past tasks")).then_some(())
        }
    })
    .await;
    let pg = db.client().await;
    let texts: i64 = pg
        .query_one("SELECT count(*) FROM task_memory WHERE task_text <> ''", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(texts, 0, "a forgotten task keeps no text");
    drop((sc_b, cp_a, cp_b));
}
