//! Task memory end to end: a real control plane on PostgreSQL, a real sidecar calling
//! a real HTTP tool. A successful call that followed a selection remembers the task
//! for the tool — redacted, never for an opted-out agent, a RESTRICTED tool or another
//! agent's selection — and similar tasks then find that tool even when its own text
//! does not match; poor reports forget; retention applies at start-up.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use toolplane_core::json::json_to_struct;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, Authed, channel, executor, http_tool};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane, control_plane_with, sidecar};
use toolplane_tests::tool_server::ToolServer;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "sk_live_51HxYzAbCdEfGhIjKlMnOp";

type Selector = pb::tool_selector_client::ToolSelectorClient<Authed>;
type Executor = pb::executor_client::ExecutorClient<Authed>;

fn tool(name: &str, description: &str, endpoint: &str, sensitivity: pb::DataSensitivity) -> pb::Tool {
    let mut t = http_tool(name, endpoint);
    t.description = description.to_owned();
    t.category = "general".to_owned();
    t.capabilities = vec![];
    t.requirements.as_mut().unwrap().data_sensitivity = sensitivity as i32;
    t
}

async fn select(s: &mut Selector, task: &str) -> pb::SelectToolResponse {
    s.select_tool(pb::SelectToolRequest {
        task_description: task.to_owned(),
        max_alternatives: 3,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// Calls `tool` after `selection`; returns the invocation id.
async fn invoke(ex: &mut Executor, tool_id: &str, selection_id: &str) -> String {
    let r = ex
        .invoke(pb::InvokeRequest {
            tool: Some(pb::invoke_request::Tool::ToolId(tool_id.to_owned())),
            parameters: json_to_struct(&json!({"text": "hello there"})),
            selection_id: selection_id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
    r.invocation_id
}

async fn remembered(db: &tokio_postgres::Client, tool_id: &str) -> Vec<String> {
    let id = uuid::Uuid::parse_str(tool_id).unwrap();
    db.query(
        "SELECT task_text FROM task_memory WHERE tool_id = $1 AND forgotten_at IS NULL ORDER BY last_seen",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn stored_invocations(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM invocations", &[])
        .await
        .unwrap()
        .get(0)
}

fn primary(r: &pb::SelectToolResponse) -> String {
    r.primary.as_ref().unwrap().tool.as_ref().unwrap().name.clone()
}

#[tokio::test]
async fn successful_calls_teach_selection_their_tasks_within_the_privacy_rules() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let server = ToolServer::start().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let ep = server.url("/word_count");
    let installer = admin
        .register(tool(
            "package_installer",
            "Installs a software package",
            &ep,
            pb::DataSensitivity::Internal,
        ))
        .await
        .unwrap();
    let tracker = admin
        .register(tool(
            "shipment_tracker",
            "Tracks parcels by carrier tracking number",
            &ep,
            pb::DataSensitivity::Internal,
        ))
        .await
        .unwrap();
    let ledger = admin
        .register(tool(
            "ledger_lookup",
            "Reads the general ledger",
            &ep,
            pb::DataSensitivity::Restricted,
        ))
        .await
        .unwrap();
    let forecast = admin
        .register(tool(
            "weather_forecast",
            "Daily weather forecast for a city",
            &ep,
            pb::DataSensitivity::Internal,
        ))
        .await
        .unwrap();
    let alice = admin.agent("alice").await;
    let bob = admin.agent("bob").await;
    let private = admin
        .identity
        .create_agent(pb::CreateAgentRequest {
            name: "private".to_owned(),
            task_memory_opt_out: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert!(private.task_memory_opt_out);
    for a in [&alice, &bob, &private] {
        for t in [&installer, &tracker, &ledger, &forecast] {
            admin.grant_full(&a.id, &t.id).await;
        }
    }
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar(&cp, &sidecar_token).await;
    let mut selectors = Vec::new();
    let mut executors = Vec::new();
    for a in [&alice, &bob, &private] {
        let token = admin.token(pb::Role::Agent, &a.id).await;
        selectors.push(pb::tool_selector_client::ToolSelectorClient::new(
            channel(&cp.url(), Some(&token)).await,
        ));
        executors.push(executor(&sc.url(), Some(&token)).await);
    }
    let (mut alice_sel, mut bob_sel, mut private_sel) = (selectors.remove(0), selectors.remove(0), selectors.remove(0));
    let (mut alice_ex, mut bob_ex, mut private_ex) = (executors.remove(0), executors.remove(0), executors.remove(0));
    eventually("the sidecar to serve", WAIT, || {
        let mut ex = alice_ex.clone();
        let id = installer.id.clone();
        async move {
            ex.invoke(pb::InvokeRequest {
                tool: Some(pb::invoke_request::Tool::ToolId(id)),
                parameters: json_to_struct(&json!({"text": "warm up"})),
                ..Default::default()
            })
            .await
            .ok()
        }
    })
    .await;

    // Before any history the text decides: "package" is the installer's word.
    let query = "my online order package has not arrived yet";
    assert_eq!(primary(&select(&mut alice_sel, query).await), "package_installer");

    // Alice's successful calls after selections: one task per tool, the tracker's with
    // a secret in it.
    let s = select(
        &mut alice_sel,
        "install the latest numpy package in my python environment",
    )
    .await;
    invoke(&mut alice_ex, &installer.id, &s.selection_id).await;
    let tracked_task = format!("where is my package from the online order, it has not arrived; key {SECRET}");
    let s = select(&mut alice_sel, &tracked_task).await;
    let tracked_call = invoke(&mut alice_ex, &tracker.id, &s.selection_id).await;
    // Not remembered: a RESTRICTED tool, an opted-out agent, another agent's selection.
    let s = select(&mut alice_sel, "show the ledger balance for march").await;
    invoke(&mut alice_ex, &ledger.id, &s.selection_id).await;
    let s = select(&mut private_sel, "track the parcel my aunt sent me").await;
    invoke(&mut private_ex, &tracker.id, &s.selection_id).await;
    let s = select(&mut alice_sel, "install a package for my friend bob").await;
    invoke(&mut bob_ex, &installer.id, &s.selection_id).await;
    // ExecuteTask remembers too (the sidecar passes its selection's id) — and last:
    // once it shows, every call before it has been considered.
    let done = alice_ex
        .execute_task(pb::ExecuteTaskRequest {
            task_description: "will it rain in Lisbon tomorrow? weather forecast please".to_owned(),
            parameters: json_to_struct(&json!({"text": "Lisbon"})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(primary(done.selection.as_ref().unwrap()), "weather_forecast");
    assert_eq!(done.result.unwrap().status, pb::ToolExecutionStatus::Success as i32);
    // A selection id that is not a UUID is refused with the field named.
    let e = bob_ex
        .invoke(pb::InvokeRequest {
            tool: Some(pb::invoke_request::Tool::ToolId(installer.id.clone())),
            parameters: json_to_struct(&json!({"text": "x"})),
            selection_id: "not-a-uuid".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("selection_id"), "{}", e.message());

    eventually("the ExecuteTask call's task remembered", WAIT, || {
        let (pg, id) = (&pg, forecast.id.clone());
        async move { (!remembered(pg, &id).await.is_empty()).then_some(()) }
    })
    .await;
    let tracked = remembered(&pg, &tracker.id).await;
    assert_eq!(tracked.len(), 1, "{tracked:?}");
    assert!(tracked[0].contains("online order"), "{tracked:?}");
    assert!(
        !tracked[0].contains(SECRET),
        "redacted like audit parameters: {tracked:?}"
    );
    assert_eq!(
        remembered(&pg, &installer.id).await,
        ["install the latest numpy package in my python environment"]
    );
    assert!(remembered(&pg, &ledger.id).await.is_empty(), "RESTRICTED tool");
    assert_eq!(
        remembered(&pg, &forecast.id).await,
        ["will it rain in Lisbon tomorrow? weather forecast please"]
    );
    let all: Vec<String> = pg
        .query("SELECT task_text FROM task_memory", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(all.len(), 3, "opted-out agent and borrowed selection left out: {all:?}");

    // A similar task now finds the tracker, whose own text never says "package".
    let r = select(&mut bob_sel, query).await;
    assert_eq!(primary(&r), "shipment_tracker", "{}", r.reasoning);
    assert!(r.reasoning.contains("similar past tasks"), "{}", r.reasoning);

    // Kept across a restart of the control plane (loaded from PostgreSQL).
    drop(sc);
    cp.stop().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let token = admin.token(pb::Role::Agent, &alice.id).await;
    let mut alice_sel = pb::tool_selector_client::ToolSelectorClient::new(channel(&cp.url(), Some(&token)).await);
    assert_eq!(primary(&select(&mut alice_sel, query).await), "shipment_tracker");

    // A poor report on the call forgets its task.
    let mut learning = pb::learning_client::LearningClient::new(channel(&cp.url(), Some(&token)).await);
    learning
        .report_outcome(pb::ReportOutcomeRequest {
            invocation_id: tracked_call,
            quality: 0.1,
            task_succeeded: false,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(remembered(&pg, &tracker.id).await.is_empty());
    assert_eq!(primary(&select(&mut alice_sel, query).await), "package_installer");

    // A tool turned RESTRICTED loses what was remembered for it.
    let mut restricted = installer.clone();
    restricted.requirements.as_mut().unwrap().data_sensitivity = pb::DataSensitivity::Restricted as i32;
    admin
        .registry
        .update_tool(pb::UpdateToolRequest { tool: Some(restricted) })
        .await
        .unwrap();
    assert!(remembered(&pg, &installer.id).await.is_empty());
    cp.stop().await;
}

#[tokio::test]
async fn retention_forgets_old_tasks_and_zero_turns_task_memory_off() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let server = ToolServer::start().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let t = admin
        .register(tool(
            "shipment_tracker",
            "Tracks parcels",
            &server.url("/word_count"),
            pb::DataSensitivity::Internal,
        ))
        .await
        .unwrap();
    cp.stop().await;
    let id = uuid::Uuid::parse_str(&t.id).unwrap();
    for (text, days) in [("an old task", 40), ("a recent task", 5)] {
        let seen = chrono::Utc::now() - chrono::Duration::days(days);
        pg.execute(
            "INSERT INTO task_memory (tool_id, task_hash, task_text, source, uses, first_seen, last_seen) \
             VALUES ($1, md5($2), $2, 'selection', 1, $3, $3)",
            &[&id, &text, &seen],
        )
        .await
        .unwrap();
    }
    let cp = control_plane_with(Some(&db.url), &[("TOOLPLANE_TASK_MEMORY_DAYS", "30")]).await;
    eventually("tasks past the retention forgotten at start-up", WAIT, || {
        let (pg, id) = (&pg, t.id.clone());
        async move { (remembered(pg, &id).await == ["a recent task"]).then_some(()) }
    })
    .await;
    cp.stop().await;

    // Off: what was kept is forgotten, and nothing new is remembered.
    let cp = control_plane_with(Some(&db.url), &[("TOOLPLANE_TASK_MEMORY_DAYS", "0")]).await;
    eventually("everything forgotten when task memory is off", WAIT, || {
        let (pg, id) = (&pg, t.id.clone());
        async move { remembered(pg, &id).await.is_empty().then_some(()) }
    })
    .await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("alice").await;
    admin.grant_full(&agent.id, &t.id).await;
    let sc = sidecar(&cp, &admin.token(pb::Role::Sidecar, "").await).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let mut sel = pb::tool_selector_client::ToolSelectorClient::new(channel(&cp.url(), Some(&token)).await);
    let mut ex = executor(&sc.url(), Some(&token)).await;
    let s = select(&mut sel, "where is my parcel").await;
    eventually("the sidecar to serve", WAIT, || {
        let (mut ex, id, sid) = (ex.clone(), t.id.clone(), s.selection_id.clone());
        async move {
            ex.invoke(pb::InvokeRequest {
                tool: Some(pb::invoke_request::Tool::ToolId(id)),
                parameters: json_to_struct(&json!({"text": "x"})),
                selection_id: sid,
                ..Default::default()
            })
            .await
            .ok()
        }
    })
    .await;
    invoke(&mut ex, &t.id, &s.selection_id).await;
    eventually("the calls stored", WAIT, || {
        let pg = &pg;
        async move { (stored_invocations(pg).await >= 2).then_some(()) }
    })
    .await;
    assert!(remembered(&pg, &t.id).await.is_empty());
    drop(sc);
    cp.stop().await;
}

/// The embedding setting without the model (or without the feature) stops the control
/// plane at start-up with a message naming what to run, instead of selecting silently
/// without it.
#[tokio::test]
async fn embeddings_without_the_model_refuse_to_start_and_say_what_to_run() {
    let out = tokio::process::Command::new(toolplane_tests::procs::bin("toolplane-control-plane"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .env("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOOLPLANE_EMBEDDINGS", "minilm")
        .env("TOOLPLANE_EMBEDDINGS_DIR", "/nonexistent/toolplane-model")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("make model"), "{stderr}");
}
