//! The control plane's side of an audit trail no sidecar can break or forge: a real
//! control plane on PostgreSQL, and a test client that speaks `SidecarSync.Connect`
//! with a sidecar token of its own, as a compromised or buggy sidecar would.
//!
//! - Events are stamped with the identity of the token that sent them; admin actions
//!   and events whose actor is not their agent are refused into the dead-letter table.
//! - An event the database refuses (a NUL character), or that cannot be parsed (an
//!   action this control plane does not know), is dead-lettered whole; the rest of its
//!   batch is stored and the whole batch acked, so the stream moves on.
//! - Resending a batch stores nothing twice.
//! - An admin change whose audit event cannot be appended is not applied.

#![allow(clippy::unwrap_used)]

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use toolplane_core::convert::ts;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::sidecar_sync_client::SidecarSyncClient;
use toolplane_tests::fake_sidecar::FakeSidecar;
use toolplane_tests::grpc::{Admin, Authed, channel, http_tool};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane};
use uuid::Uuid;

/// An audit event as an honest sidecar records a call of `agent`.
fn call_event(agent: &str, tool: &str, task_id: &str) -> pb::SyncEvent {
    let id = Uuid::now_v7().to_string();
    pb::SyncEvent {
        event_id: id.clone(),
        payload: Some(pb::sync_event::Payload::Audit(pb::AuditEvent {
            event_id: id,
            action: pb::AuditAction::ToolInvoked as i32,
            invocation_id: Uuid::now_v7().to_string(),
            actor_id: agent.to_owned(),
            agent_id: agent.to_owned(),
            tool_id: tool.to_owned(),
            tool_version: 1,
            task_id: task_id.to_owned(),
            occurred_at: Some(ts(chrono::Utc::now())),
            success: true,
            sidecar_id: "honest-sidecar".to_owned(),
            ..Default::default()
        })),
    }
}

fn with_audit(mut e: pb::SyncEvent, change: impl FnOnce(&mut pb::AuditEvent)) -> pb::SyncEvent {
    if let Some(pb::sync_event::Payload::Audit(a)) = &mut e.payload {
        change(a);
    }
    e
}

struct Setup {
    db: TestDb,
    _cp: toolplane_tests::procs::Proc,
    url: String,
    admin: Admin,
    audit: pb::audit_client::AuditClient<Authed>,
    agent: pb::Agent,
    tool: pb::Tool,
}

async fn setup() -> Setup {
    let db = TestDb::create().await;
    let cp = control_plane(Some(&db.url)).await;
    let url = cp.url();
    let mut admin = Admin::connect(&url, ADMIN_TOKEN).await;
    let tool = admin
        .register(http_tool("audited_tool", "http://127.0.0.1:9/x"))
        .await
        .unwrap();
    let agent = admin.agent("honest-agent").await;
    let audit = pb::audit_client::AuditClient::new(channel(&url, Some(ADMIN_TOKEN)).await);
    Setup {
        db,
        _cp: cp,
        url,
        admin,
        audit,
        agent,
        tool,
    }
}

async fn dead_letters(audit: &mut pb::audit_client::AuditClient<Authed>) -> Vec<pb::DeadLetter> {
    audit
        .list_dead_letters(pb::ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .letters
}

#[tokio::test]
async fn forged_and_poisoned_events_are_stamped_refused_or_dead_lettered_and_the_stream_moves_on() {
    let mut s = setup().await;
    let issued = s.admin.issue(pb::Role::Sidecar, "").await;
    let (token_id, token) = (issued.token_id, issued.token);
    let mut fake = FakeSidecar::connect(&s.url, &token, "claims-to-be-someone-else").await;
    let (agent, tool) = (s.agent.id.clone(), s.tool.id.clone());

    let honest = call_event(&agent, &tool, "task-1");
    let other_sidecar = with_audit(call_event(&agent, &tool, "task-2"), |a| {
        a.sidecar_id = "victim-sidecar".into()
    });
    let empty_sidecar = with_audit(call_event(&agent, &tool, "task-3"), |a| a.sidecar_id.clear());
    let admin_action = with_audit(call_event(&agent, &tool, "task-4"), |a| {
        a.action = pb::AuditAction::PermissionGranted as i32;
        a.actor_id = "admin:bootstrap".into();
        a.sidecar_id.clear();
    });
    let foreign_actor = with_audit(call_event(&agent, &tool, "task-5"), |a| {
        a.actor_id = Uuid::now_v7().to_string();
    });
    let nul = with_audit(call_event(&agent, &tool, "task-\u{0}-6"), |a| {
        a.detail = "nul\u{0}detail".into()
    });
    let unknown_action = with_audit(call_event(&agent, &tool, "task-7"), |a| a.action = 999);
    let batch = vec![
        honest.clone(),
        other_sidecar.clone(),
        empty_sidecar.clone(),
        admin_action.clone(),
        foreign_actor.clone(),
        nul.clone(),
        unknown_action.clone(),
    ];
    let sent: Vec<String> = batch.iter().map(|e| e.event_id.clone()).collect();
    let acked = fake.send(batch.clone()).await;
    assert_eq!(
        acked, sent,
        "every event of the batch is acked, stored or dead-lettered"
    );

    let db = s.db.client().await;
    let rows = db
        .query(
            "SELECT event_id::text, action, sidecar_id, chain, task_id FROM audit_events ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let sidecar_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.get::<_, String>(3) != "control-plane")
        .collect();
    let stored: Vec<String> = sidecar_rows.iter().map(|r| r.get(0)).collect();
    let mut expected = vec![
        honest.event_id.clone(),
        other_sidecar.event_id.clone(),
        empty_sidecar.event_id.clone(),
    ];
    expected.sort();
    let mut got = stored.clone();
    got.sort();
    assert_eq!(got, expected, "exactly the honest-looking events are in the trail");
    for r in &sidecar_rows {
        assert_eq!(r.get::<_, String>(2), token_id, "sidecar_id is the sending token's");
        assert_eq!(r.get::<_, String>(3), format!("sidecar:{token_id}"));
    }
    // The control plane's own chain holds only what the control plane wrote.
    for r in rows.iter().filter(|r| r.get::<_, String>(3) == "control-plane") {
        let action: String = r.get(1);
        assert!(
            ["tool_registered", "agent_created", "token_issued"].contains(&action.as_str()),
            "unexpected {action} in the control plane's chain"
        );
    }

    let letters = dead_letters(&mut s.audit).await;
    let lettered: Vec<&str> = letters.iter().map(|l| l.event_id.as_str()).collect();
    // What the database refused is kept as the control plane tried to store it: stamped
    // with the sender's identity.
    let nul_as_stored = with_audit(nul.clone(), |a| a.sidecar_id = token_id.clone());
    for (e, why) in [
        (&admin_action, "administrative"),
        (&foreign_actor, "is not the event's agent"),
        (&nul_as_stored, "not stored"),
        (&unknown_action, "unparseable"),
    ] {
        let l = letters
            .iter()
            .find(|l| l.event_id == e.event_id)
            .unwrap_or_else(|| panic!("{} not dead-lettered: {lettered:?}", e.event_id));
        assert!(l.error.contains(why), "{}: {}", e.event_id, l.error);
        assert_eq!(l.source, format!("sidecar:{token_id}"));
        assert_eq!(pb::SyncEvent::decode(l.raw.as_slice()).unwrap(), *e, "kept whole");
    }
    assert_eq!(letters.len(), 4);
    // Operators see them with toolctl too.
    let out = std::process::Command::new(toolplane_tests::procs::bin("toolctl"))
        .args(["-o", "json", "audit", "dead-letters"])
        .env("TOOLPLANE_SERVER", &s.url)
        .env("TOOLPLANE_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["total"], 4, "{listed}");
    assert_eq!(listed["letters"][0]["raw_hex"], hex::encode(&letters[0].raw));

    // A resend after a lost ack stores nothing twice.
    assert_eq!(fake.send(batch).await, sent);
    let count: i64 = db
        .query_one("SELECT count(*) FROM audit_events WHERE chain <> 'control-plane'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
    assert_eq!(dead_letters(&mut s.audit).await.len(), 4);

    // The stream still works: an ordinary event sent afterwards is stored at once.
    let later = call_event(&agent, &tool, "after");
    assert_eq!(fake.send(vec![later.clone()]).await, vec![later.event_id.clone()]);
    let found: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_events WHERE event_id = $1::text::uuid",
            &[&later.event_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 1);

    let verify = s
        .audit
        .verify_audit_chain(pb::VerifyAuditChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(verify.intact, "{verify:?}");
}

#[tokio::test]
async fn agent_and_admin_tokens_cannot_write_the_trail() {
    let mut s = setup().await;
    let agent_token = s.admin.token(pb::Role::Agent, &s.agent.id).await;
    let mut client = SidecarSyncClient::new(channel(&s.url, Some(&agent_token)).await);
    let (_tx, rx) = mpsc::channel::<pb::ConnectRequest>(1);
    let refused = client.connect(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // An admin token may follow the snapshots, but its events are not a sidecar's.
    let mut fake = FakeSidecar::connect(&s.url, ADMIN_TOKEN, "admin-as-sidecar").await;
    let e = call_event(&s.agent.id, &s.tool.id, "t");
    assert_eq!(fake.send(vec![e.clone()]).await, vec![e.event_id.clone()]);
    let letters = dead_letters(&mut s.audit).await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0].error.contains("sidecar token"), "{}", letters[0].error);
}

#[tokio::test]
async fn an_admin_change_whose_audit_event_cannot_be_appended_is_not_applied() {
    let mut s = setup().await;
    let db = s.db.client().await;
    db.batch_execute(
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'audit_events is read-only'; END $$; \
         CREATE TRIGGER audit_read_only BEFORE INSERT ON audit_events \
         FOR EACH ROW EXECUTE FUNCTION refuse_audit();",
    )
    .await
    .unwrap();

    let err = s
        .admin
        .register(http_tool("never_registered", "http://127.0.0.1:9/x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    let err = s
        .admin
        .permissions
        .grant(pb::GrantRequest {
            permission: Some(pb::Permission {
                agent_id: s.agent.id.clone(),
                tool_id: s.tool.id.clone(),
                r#type: pb::PermissionType::FullAccess as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    let err = s
        .admin
        .identity
        .create_agent(pb::CreateAgentRequest {
            name: "never-created".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM tools WHERE name = 'never_registered'").await,
        0
    );
    assert_eq!(count("SELECT count(*) FROM permissions").await, 0);
    assert_eq!(
        count("SELECT count(*) FROM agents WHERE name = 'never-created'").await,
        0
    );

    // With the trail writable again, the same change goes through, recorded.
    db.batch_execute("DROP TRIGGER audit_read_only ON audit_events")
        .await
        .unwrap();
    let tool = s
        .admin
        .register(http_tool("never_registered", "http://127.0.0.1:9/x"))
        .await
        .unwrap();
    let recorded: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_events WHERE action = 'tool_registered' AND tool_id = $1::text::uuid",
            &[&tool.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 1);
}
