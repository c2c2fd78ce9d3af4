//! Replicas learn of every change even when a notification is lost: a change made in
//! the database without its NOTIFY (what a replica that died between its commit and
//! its notification leaves behind) reaches the sidecars of another replica by polling.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use tonic::Code;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane_with, sidecar};
use toolplane_tests::tool_server::ToolServer;

const WAIT: Duration = Duration::from_secs(20);

/// Revokes every agent token the way a replica's RevokeToken commits it — the row and
/// the change revision in one transaction — but sends no NOTIFY.
async fn revoke_without_notify(db: &TestDb) {
    let client = db.client().await;
    client
        .batch_execute(
            "BEGIN; UPDATE tokens SET revoked_at = now() WHERE role = 'agent'; \
             UPDATE toolplane_changes SET revision = revision + 1; COMMIT;",
        )
        .await
        .unwrap();
}

async fn scenario(
    poll_ms: &str,
) -> (
    TestDb,
    Vec<toolplane_tests::procs::Proc>,
    pb::executor_client::ExecutorClient<toolplane_tests::grpc::Authed>,
    ToolServer,
) {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let env = [("TOOLPLANE_CHANGE_POLL_MS", poll_ms)];
    let cp_a = control_plane_with(Some(&db.url), &env).await;
    let cp_b = control_plane_with(Some(&db.url), &env).await;
    let mut a = Admin::connect(&cp_a.url(), ADMIN_TOKEN).await;
    let tool = a
        .register(http_tool("word_count", &tools.url("/word_count")))
        .await
        .unwrap();
    let agent = a.agent("watched").await;
    a.grant_full(&agent.id, &tool.id).await;
    let agent_token = a.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = a.token(pb::Role::Sidecar, "").await;
    let sc = sidecar(&cp_b, &sidecar_token).await;
    let ex = executor(&sc.url(), Some(&agent_token)).await;
    let params = json!({"text": "still here"});
    eventually("the sidecar on replica B to serve", WAIT, || {
        let (mut ex, params) = (ex.clone(), params.clone());
        async move { ex.invoke(invoke_request("word_count", &params)).await.ok() }
    })
    .await;
    (db, vec![cp_a, cp_b, sc], ex, tools)
}

async fn refused(ex: &pb::executor_client::ExecutorClient<toolplane_tests::grpc::Authed>) -> bool {
    let r = ex
        .clone()
        .invoke(invoke_request("word_count", &json!({"text": "x"})))
        .await;
    matches!(r, Err(s) if s.code() == Code::Unauthenticated)
}

#[tokio::test]
async fn a_change_whose_notify_was_lost_reaches_the_other_replicas_sidecars_by_polling() {
    let (db, _procs, ex, _tools) = scenario("200").await;
    revoke_without_notify(&db).await;
    let started = Instant::now();
    eventually(
        "the revocation to reach the sidecar of replica B",
        Duration::from_secs(10),
        || {
            let ex = ex.clone();
            async move { refused(&ex).await.then_some(()) }
        },
    )
    .await;
    println!("a change without NOTIFY reached the sidecar in {:?}", started.elapsed());
}

#[tokio::test]
async fn without_polling_the_same_lost_notify_is_never_healed() {
    // The control: the test above fails when polling does not happen.
    let (db, _procs, ex, _tools) = scenario("600000").await;
    revoke_without_notify(&db).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!refused(&ex).await, "nothing else told replica B");
}
