//! A sidecar holds what its agents can use: the control plane sends a scoped sidecar
//! only its agents' tools, permissions, fallbacks and credentials, then deltas of what
//! concerns it; the real sidecar learns its agents from the tokens it sees and fetches
//! tools outside its scope on demand, so calls are served and refused as with the whole
//! catalog. Real binaries, real PostgreSQL, a real HTTP tool server.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::sidecar_sync_client::SidecarSyncClient;
use toolplane_tests::grpc::{Admin, channel, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, control_plane_with, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, free_port};

const WAIT: Duration = Duration::from_secs(20);

/// A raw sync stream asking for a scope, as a sidecar opens it.
struct ScopedStream {
    tx: mpsc::Sender<pb::ConnectRequest>,
    inbound: tonic::Streaming<pb::ConnectResponse>,
}

impl ScopedStream {
    async fn open(cp: &Proc, token: &str, scope: pb::SnapshotScope) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::ConnectRequest {
            message: Some(pb::connect_request::Message::Hello(pb::SidecarHello {
                sidecar_id: "scoped-test".into(),
                version: "test".into(),
                known_revision: 0,
                scope: Some(scope),
            })),
        })
        .await
        .unwrap();
        let mut client =
            SidecarSyncClient::new(channel(&cp.url(), Some(token)).await).max_decoding_message_size(64 * 1024 * 1024);
        let inbound = client.connect(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Self { tx, inbound }
    }

    /// The next snapshot or delta (heartbeats and acks skipped); `None` if none comes
    /// within `within`.
    async fn next_state(&mut self, within: Duration) -> Option<pb::connect_response::Message> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.inbound.next()).await.ok()?;
            if let Some(m @ (pb::connect_response::Message::Snapshot(_) | pb::connect_response::Message::Delta(_))) =
                msg.unwrap().unwrap().message
            {
                return Some(m);
            }
        }
    }

    async fn delta(&mut self) -> pb::SnapshotDelta {
        match self.next_state(WAIT).await {
            Some(pb::connect_response::Message::Delta(d)) => d,
            other => panic!("expected a delta, got {other:?}"),
        }
    }
}

fn ids<'a>(v: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    v.into_iter().cloned().collect()
}

async fn set_credential(admin: &mut Admin, tool: &pb::Tool, secret: &str) {
    admin
        .registry
        .set_credential(pb::SetCredentialRequest {
            tool_id: tool.id.clone(),
            secret: secret.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_scoped_stream_carries_only_its_agents_tools_permissions_and_credentials() {
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let mut tools = Vec::new();
    for i in 0..40 {
        tools.push(
            admin
                .register(http_tool(&format!("tool_{i:02}"), "http://127.0.0.1:9/x"))
                .await
                .unwrap(),
        );
    }
    let (a, b) = (admin.agent("scope-a").await, admin.agent("scope-b").await);
    let g0 = admin.grant_full(&a.id, &tools[0].id).await;
    admin.grant_full(&a.id, &tools[1].id).await;
    admin.grant_full(&b.id, &tools[3].id).await;
    admin
        .registry
        .set_fallback_strategy(pb::SetFallbackStrategyRequest {
            strategy: Some(pb::FallbackStrategy {
                tool_id: tools[1].id.clone(),
                fallback_tool_ids: vec![tools[2].id.clone()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    set_credential(&mut admin, &tools[0], "secret-of-a-tool-0123456789").await;
    set_credential(&mut admin, &tools[3], "secret-of-b-tool-0123456789").await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;

    // Asked for by name: A's grants and the fallback one of them names.
    let mut s = ScopedStream::open(
        &cp,
        &sidecar_token,
        pb::SnapshotScope {
            agents: vec!["scope-a".into()],
            ..Default::default()
        },
    )
    .await;
    let Some(pb::connect_response::Message::Snapshot(snap)) = s.next_state(WAIT).await else {
        panic!("a snapshot first");
    };
    assert_eq!(
        ids(snap.tools.iter().map(|t| &t.id)),
        ids([&tools[0].id, &tools[1].id, &tools[2].id])
    );
    assert_eq!(snap.permissions.len(), 2);
    assert!(snap.permissions.iter().all(|p| p.agent_id == a.id));
    assert_eq!(snap.agents.len(), 2, "agents are whole, to authenticate any of them");
    let secrets: Vec<&str> = snap.credentials.iter().map(|c| c.secret.as_str()).collect();
    assert_eq!(secrets, ["secret-of-a-tool-0123456789"], "no credential of B's tools");
    assert_eq!(snap.fallbacks.len(), 1);
    let scope = snap.scope.clone().unwrap();
    assert_eq!(scope.agents, vec![a.id.clone()], "the name resolved to the id");

    // A grant to A: the tool and the permission, nothing else.
    let g = admin.grant_full(&a.id, &tools[5].id).await;
    let d = s.delta().await;
    assert_eq!(ids(d.upserted_tools.iter().map(|t| &t.id)), ids([&tools[5].id]));
    assert_eq!(d.upserted_permissions.len(), 1);
    assert_eq!(d.from_revision, snap.revision);

    // Changes that do not concern A's sidecar send it nothing.
    let mut other = tools[20].clone();
    other.description = "changed for nobody here".into();
    admin
        .registry
        .update_tool(pb::UpdateToolRequest { tool: Some(other) })
        .await
        .unwrap();
    admin.grant_full(&b.id, &tools[21].id).await;
    set_credential(&mut admin, &tools[3], "rotated-secret-of-b-0123456789").await;
    assert_eq!(s.next_state(Duration::from_millis(1500)).await, None);

    // A change to a held tool reaches it, continuing from the revision it holds.
    let mut held = tools[0].clone();
    held.description = "a held tool, updated".into();
    admin
        .registry
        .update_tool(pb::UpdateToolRequest { tool: Some(held) })
        .await
        .unwrap();
    let upd = s.delta().await;
    assert_eq!(upd.from_revision, d.revision);
    assert_eq!(upd.upserted_tools.len(), 1);
    assert_eq!(upd.upserted_tools[0].description, "a held tool, updated");

    // On demand: a tool of B's by name, and one that does not exist.
    s.tx.send(pb::ConnectRequest {
        message: Some(pb::connect_request::Message::Scope(pb::ScopeRequest {
            request_id: 7,
            agents: vec![],
            tools: vec![tools[3].name.clone(), "no_such_tool".into()],
        })),
    })
    .await
    .unwrap();
    let answer = s.delta().await;
    let scope = answer.scope.unwrap();
    assert_eq!(scope.request_id, 7);
    assert_eq!(scope.tools, vec![tools[3].id.clone()]);
    assert_eq!(ids(answer.upserted_tools.iter().map(|t| &t.id)), ids([&tools[3].id]));
    assert!(answer.upserted_permissions.is_empty(), "B's grant is not A's");

    // Revokes take the permission and the tool away.
    for p in [&g, &g0] {
        admin
            .permissions
            .revoke(pb::RevokeRequest {
                permission_id: p.id.clone(),
            })
            .await
            .unwrap();
    }
    let mut removed_tools = BTreeSet::new();
    let mut removed_permissions = BTreeSet::new();
    while removed_permissions.len() < 2 {
        let d = s.delta().await;
        removed_tools.extend(d.removed_tool_ids);
        removed_permissions.extend(d.removed_permission_ids);
    }
    assert_eq!(removed_permissions, ids([&g.id, &g0.id]));
    assert_eq!(removed_tools, ids([&tools[5].id, &tools[0].id]));
}

/// The sidecar's `toolplane_snapshot_tools` gauge.
async fn held_tools(metrics_port: u16) -> Option<f64> {
    let text = toolplane_tests::http_get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("toolplane_snapshot_tools "))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_held(port: u16, what: &str, want: f64) {
    eventually(what, WAIT, || async move {
        (held_tools(port).await == Some(want)).then_some(())
    })
    .await;
}

async fn scoped_sidecar(cp: &Proc, token: &str, agents: Option<&str>) -> (Proc, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut env = vec![("TOOLPLANE_METRICS_LISTEN", listen.as_str())];
    if let Some(a) = agents {
        env.push(("TOOLPLANE_SIDECAR_AGENTS", a));
    }
    (sidecar_with(cp, token, &spool_dir(), &env).await, port)
}

#[tokio::test]
async fn a_sidecar_learns_its_agents_and_fetches_tools_on_demand() {
    const FILLER: usize = 200;
    let db = TestDb::create().await;
    let server = ToolServer::start().await;
    // Sync sessions end every few seconds: what the sidecar learned must survive its
    // reconnects.
    let cp = control_plane_with(Some(&db.url), &[("TOOLPLANE_SYNC_SESSION_MAX_SECS", "3")]).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    for i in 0..FILLER {
        admin
            .register(http_tool(&format!("filler_{i:03}"), "http://127.0.0.1:9/x"))
            .await
            .unwrap();
    }
    let tool = |name: &str| http_tool(name, &server.url("/word_count"));
    let (ta, tb, tlate) = (
        admin.register(tool("a_tool")).await.unwrap(),
        admin.register(tool("b_tool")).await.unwrap(),
        admin.register(tool("late_tool")).await.unwrap(),
    );
    let (a, b) = (admin.agent("learn-a").await, admin.agent("learn-b").await);
    admin.grant_full(&a.id, &ta.id).await;
    admin.grant_full(&b.id, &tb.id).await;
    let (token_a, token_b) = (
        admin.token(pb::Role::Agent, &a.id).await,
        admin.token(pb::Role::Agent, &b.id).await,
    );
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let params = json!({"text": "two words"});

    // Learned (the default): nothing held until an agent calls.
    let (sc, port) = scoped_sidecar(&cp, &sidecar_token, None).await;
    wait_held(port, "an empty scope", 0.0).await;
    let mut ex_a = executor(&sc.url(), Some(&token_a)).await;
    let ok = ex_a
        .invoke(invoke_request("a_tool", &params))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.result.unwrap().status, pb::ToolExecutionStatus::Success as i32);
    wait_held(port, "A's one tool", 1.0).await;

    // Outside the scope: refused as with the whole catalog, and audited with the tool.
    let denied = ex_a.invoke(invoke_request("b_tool", &params)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let missing = ex_a.invoke(invoke_request("no_such_tool", &params)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    // Hostile names, many at once (long, a NUL, a direction override): each is looked up
    // and answered NOT_FOUND; none is held (the count below stays exact).
    let mut odd = tokio::task::JoinSet::new();
    for i in 0..32 {
        let mut ex = ex_a.clone();
        let name = format!("{}\u{0}\u{202e}{i}", "x".repeat(300 + i));
        odd.spawn(async move { ex.invoke(invoke_request(&name, &json!({"text": "a"}))).await });
    }
    while let Some(r) = odd.join_next().await {
        let e = r.unwrap().unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    let audit = pb::audit_client::AuditClient::new(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    eventually("the denial in the audit trail, naming the tool", WAIT, || {
        let mut audit = audit.clone();
        let (agent, tool) = (a.id.clone(), tb.id.clone());
        async move {
            let mut stream = audit
                .query_audit_trail(pb::QueryAuditTrailRequest {
                    agent_id: agent,
                    tool_id: tool,
                    action: pb::AuditAction::PermissionChecked as i32,
                    success: Some(false),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            stream
                .next()
                .await
                .and_then(Result::ok)
                .and_then(|r| r.record)
                .map(|_| ())
        }
    })
    .await;

    // Another agent through the same sidecar: learned on its first call.
    let mut ex_b = executor(&sc.url(), Some(&token_b)).await;
    let ok = ex_b
        .invoke(invoke_request("b_tool", &params))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.result.unwrap().status, pb::ToolExecutionStatus::Success as i32);

    // A grant made now reaches the sidecar as a delta; the call succeeds.
    admin.grant_full(&a.id, &tlate.id).await;
    eventually("the late grant to be served", WAIT, || {
        let mut ex = ex_a.clone();
        let params = params.clone();
        async move { ex.invoke(invoke_request("late_tool", &params)).await.ok() }
    })
    .await;
    wait_held(port, "A's and B's tools only", 3.0).await;

    // After a reconnect the sidecar asks for what it learned: still held, no call needed.
    let reconnects = |sc: &Proc| sc.logs().matches("connected to control plane").count();
    let before = reconnects(&sc);
    eventually("a reconnect", WAIT, || {
        let n = reconnects(&sc);
        async move { (n > before).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        held_tools(port).await,
        Some(3.0),
        "the learned scope survives a reconnect"
    );

    // Configured by name: held before any call. `*`: the whole catalog.
    let (_named, port) = scoped_sidecar(&cp, &sidecar_token, Some("learn-a")).await;
    wait_held(port, "A's tools from the start", 2.0).await;
    let (_all, port) = scoped_sidecar(&cp, &sidecar_token, Some("*")).await;
    wait_held(port, "the whole catalog", (FILLER + 3) as f64).await;
}
