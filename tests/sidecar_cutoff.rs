//! Fail closed when cut off: the real control plane and sidecar binaries. A control
//! plane frozen with SIGSTOP (its connections stay open, nothing answers: what a dead
//! node looks like without a FIN) makes the sidecar refuse calls once its snapshot is
//! older than `TOOLPLANE_MAX_SNAPSHOT_AGE`, and admit them again after it reconnects; a
//! revoked sidecar token's stream is closed at once; heartbeats keep a quiet stream
//! (and the snapshot) alive; sessions end at their maximum lifetime and the sidecar
//! reconnects by itself.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::sidecar_sync_client::SidecarSyncClient;
use toolplane_tests::fake_sidecar::FakeSidecar;
use toolplane_tests::grpc::{Admin, channel, executor, http_tool, invoke_request};
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane_with, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, free_port};

const WAIT: Duration = Duration::from_secs(20);
/// What the sidecars under test may go without hearing from the control plane.
const MAX_AGE_SECS: u64 = 2;
/// The control planes' heartbeat cadence.
const HEARTBEAT_MS: u64 = 200;
/// The sidecars' read-side watchdog: five heartbeats.
const IDLE_MS: u64 = 1000;

/// Sends `signal` to `pid` (`kill -<signal> <pid>`).
fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid} failed");
}

/// A process stopped with SIGSTOP, continued when dropped, so a failing assertion never
/// leaves a frozen process behind (and its `Proc`, dropped next, kills a running one).
struct Frozen(Option<u32>);

impl Frozen {
    fn freeze(p: &Proc) -> Self {
        let pid = p.pid();
        assert_ne!(pid, 0);
        signal(pid, "STOP");
        Self(Some(pid))
    }

    fn resume(mut self) {
        if let Some(pid) = self.0.take() {
            signal(pid, "CONT");
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// A control plane (in memory) beating every `HEARTBEAT_MS`, a granted agent and a
/// sidecar token, with `word_count` at a real HTTP tool server.
struct Setup {
    tools: ToolServer,
    cp: Proc,
    admin: Admin,
    agent_token: String,
    sidecar_token: String,
    sidecar_token_id: String,
}

impl Setup {
    async fn start(cp_env: &[(&str, &str)]) -> Self {
        let tools = ToolServer::start().await;
        let beat = HEARTBEAT_MS.to_string();
        let mut env = vec![("TOOLPLANE_SYNC_HEARTBEAT_MS", beat.as_str())];
        env.extend_from_slice(cp_env);
        let cp = control_plane_with(None, &env).await;
        let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
        let tool = admin
            .register(http_tool("word_count", &tools.url("/word_count")))
            .await
            .unwrap();
        let agent = admin.agent("cut-off-agent").await;
        admin.grant_full(&agent.id, &tool.id).await;
        let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
        let issued = admin.issue(pb::Role::Sidecar, "").await;
        Self {
            tools,
            cp,
            admin,
            agent_token,
            sidecar_token: issued.token,
            sidecar_token_id: issued.token_id,
        }
    }

    /// A sidecar with a small maximum snapshot age, serving (waited for).
    async fn sidecar(&self, extra: &[(&str, &str)]) -> Proc {
        let (age, idle) = (MAX_AGE_SECS.to_string(), IDLE_MS.to_string());
        let mut env = vec![
            ("TOOLPLANE_MAX_SNAPSHOT_AGE", age.as_str()),
            ("TOOLPLANE_SYNC_IDLE_TIMEOUT_MS", idle.as_str()),
        ];
        env.extend_from_slice(extra);
        let sc = sidecar_with(&self.cp, &self.sidecar_token, &spool_dir(), &env).await;
        eventually("the sidecar to serve from a snapshot", WAIT, || {
            let (url, token) = (sc.url(), self.agent_token.clone());
            async move { call(&url, &token).await.ok() }
        })
        .await;
        sc
    }
}

/// One `word_count` call through the sidecar at `url`.
async fn call(url: &str, token: &str) -> Result<pb::ToolResult, tonic::Status> {
    let mut ex = executor(url, Some(token)).await;
    let r = ex
        .invoke(invoke_request("word_count", &json!({"text": "one two three"})))
        .await?;
    Ok(r.into_inner().result.unwrap())
}

fn assert_says_why(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let m = status.message();
    assert!(
        m.contains("has not heard from the control plane") && m.contains("TOOLPLANE_MAX_SNAPSHOT_AGE"),
        "the refusal says why: {m}"
    );
}

async fn health(url: &str, service: &str) -> ServingStatus {
    let mut h = HealthClient::new(channel(url, None).await);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap();
    r.into_inner().status()
}

/// `toolplane_snapshot_age_seconds` as the sidecar exports it.
async fn snapshot_age_metric(metrics: &str) -> Option<f64> {
    let body = toolplane_tests::http_get(metrics).await.ok()?.text().await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("toolplane_snapshot_age_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn a_frozen_control_plane_cuts_the_sidecar_off_until_it_resumes() {
    let s = Setup::start(&[]).await;
    let (mcp_port, metrics_port) = (free_port(), free_port());
    let (mcp_listen, metrics_listen) = (format!("127.0.0.1:{mcp_port}"), format!("127.0.0.1:{metrics_port}"));
    let sc = s
        .sidecar(&[
            ("TOOLPLANE_MCP_LISTEN", &mcp_listen),
            ("TOOLPLANE_METRICS_LISTEN", &metrics_listen),
        ])
        .await;
    let metrics = format!("http://{metrics_listen}/metrics");
    let mut mcp_config = StreamableHttpClientTransportConfig::with_uri(format!("http://{mcp_listen}/mcp"));
    mcp_config.custom_headers.insert(
        HeaderName::from_static("authorization"),
        HeaderValue::try_from(format!("Bearer {}", s.agent_token)).unwrap(),
    );
    let mcp = ClientConfig::default()
        .serve(StreamableHttpClientTransport::with_client(
            toolplane_tests::http_client(),
            mcp_config,
        ))
        .await
        .unwrap();
    let mcp_call = || {
        CallToolRequestParams::new("word_count").with_arguments(json!({"text": "a b"}).as_object().cloned().unwrap())
    };
    let serving = |url: String| async move {
        (health(&url, "toolplane.v1.Executor").await == ServingStatus::Serving).then_some(())
    };
    eventually("health SERVING for the executor", WAIT, || serving(sc.url())).await;

    let frozen = Frozen::freeze(&s.cp);
    let froze_at = Instant::now();
    // The snapshot was confirmed at most a heartbeat ago: still served.
    call(&sc.url(), &s.agent_token)
        .await
        .expect("calls keep working within the maximum age");
    let refused = eventually("the cut-off sidecar to refuse calls", WAIT, || {
        let (url, token) = (sc.url(), s.agent_token.clone());
        async move { call(&url, &token).await.err() }
    })
    .await;
    let after = froze_at.elapsed();
    assert_says_why(&refused);
    assert!(
        after >= Duration::from_millis(MAX_AGE_SECS * 1000 - 2 * HEARTBEAT_MS),
        "refused after only {after:?}: before the maximum age had passed"
    );
    // Every door: a batch, a task (refused at once, not after waiting for a selection
    // the frozen control plane would never answer), MCP.
    let mut ex = executor(&sc.url(), Some(&s.agent_token)).await;
    let batch = ex
        .batch_invoke(pb::BatchInvokeRequest {
            calls: vec![invoke_request("word_count", &json!({"text": "x"}))],
        })
        .await;
    assert_says_why(&batch.expect_err("a batch is refused"));
    let task = tokio::time::timeout(
        Duration::from_secs(5),
        ex.execute_task(pb::ExecuteTaskRequest {
            task_description: "count words".to_owned(),
            ..Default::default()
        }),
    )
    .await
    .expect("a task is refused at once");
    assert_says_why(&task.expect_err("a task is refused"));
    let r = mcp.call_tool(mcp_call()).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    let text = serde_json::to_string(&r.content).unwrap();
    assert!(
        text.contains("UNAVAILABLE") && text.contains("TOOLPLANE_MAX_SNAPSHOT_AGE"),
        "{text}"
    );
    let hits_while_cut_off = s.tools.hits("/word_count");
    // Health: the executor is not serving; the process is (no liveness restart).
    eventually("health NOT_SERVING for the executor", WAIT, || {
        let url = sc.url();
        async move { (health(&url, "toolplane.v1.Executor").await == ServingStatus::NotServing).then_some(()) }
    })
    .await;
    assert_eq!(health(&sc.url(), "").await, ServingStatus::Serving);
    let age = eventually("the snapshot age metric past the maximum", WAIT, || {
        let m = metrics.clone();
        async move { snapshot_age_metric(&m).await.filter(|a| *a > MAX_AGE_SECS as f64) }
    })
    .await;
    assert!(age > MAX_AGE_SECS as f64);
    // The half-open stream was abandoned by the watchdog, not waited on for ever.
    assert!(
        sc.logs().contains("not even a heartbeat"),
        "the read-side watchdog fired:\n{}",
        sc.logs()
    );
    assert_eq!(s.tools.hits("/word_count"), hits_while_cut_off);

    frozen.resume();
    eventually(
        "calls admitted again after reconnecting",
        Duration::from_secs(40),
        || {
            let (url, token) = (sc.url(), s.agent_token.clone());
            async move { call(&url, &token).await.ok() }
        },
    )
    .await;
    eventually("health SERVING again", WAIT, || serving(sc.url())).await;
    let r = mcp.call_tool(mcp_call()).await.unwrap();
    assert_ne!(r.is_error, Some(true), "{:?}", r.content);
    let age = eventually("the snapshot age metric fresh again", WAIT, || {
        let m = metrics.clone();
        async move { snapshot_age_metric(&m).await.filter(|a| *a < 1.0) }
    })
    .await;
    assert!(age < 1.0);
    assert!(
        sc.logs().contains("synced with the control plane again"),
        "{}",
        sc.logs()
    );
}

#[tokio::test]
async fn a_revoked_sidecar_tokens_open_stream_is_closed_and_gets_no_further_snapshot() {
    // Heartbeats rare: the revocation itself must close the stream.
    let mut s = Setup::start(&[("TOOLPLANE_SYNC_HEARTBEAT_MS", "60000")]).await;
    let mut fake = FakeSidecar::connect(&s.cp.url(), &s.sidecar_token, "about-to-be-revoked").await;
    let first = fake.next_within(WAIT).await.unwrap().unwrap().unwrap();
    let Some(pb::connect_response::Message::Snapshot(snap)) = first.message else {
        panic!("the first message is a snapshot: {first:?}");
    };
    assert!(!snap.tokens.is_empty());

    let revoked_at = Instant::now();
    s.admin
        .identity
        .revoke_token(pb::RevokeTokenRequest {
            token_id: s.sidecar_token_id.clone(),
        })
        .await
        .unwrap();
    // A change that, before the fix, would be pushed (with credentials) to the stream.
    s.admin
        .register(http_tool("after_revocation", &s.tools.url("/echo")))
        .await
        .unwrap();
    let ended = loop {
        match fake.next_within(Duration::from_secs(5)).await {
            Err(_) => panic!("the stream stayed open after its token was revoked"),
            Ok(Some(Ok(m))) => match m.message {
                Some(pb::connect_response::Message::Snapshot(_) | pb::connect_response::Message::Delta(_)) => {
                    panic!("a revoked sidecar got state after the revocation: {m:?}")
                }
                _ => continue,
            },
            Ok(Some(Err(status))) => break status,
            Ok(None) => panic!("the stream ended without saying why"),
        }
    };
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        revoked_at.elapsed() < Duration::from_secs(2),
        "closed only after {:?}",
        revoked_at.elapsed()
    );
    assert!(matches!(fake.next_within(Duration::from_secs(2)).await, Ok(None)));

    // And it cannot open another.
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::ConnectRequest>(1);
    let mut client = SidecarSyncClient::new(channel(&s.cp.url(), Some(&s.sidecar_token)).await);
    let again = match client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Err(e) => e,
        Ok(r) => match r.into_inner().next().await {
            Some(Err(e)) => e,
            other => panic!("a revoked token opened a stream: {other:?}"),
        },
    };
    assert_eq!(again.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_sidecar_whose_token_is_revoked_stops_serving_once_its_snapshot_is_too_old() {
    let mut s = Setup::start(&[]).await;
    let sc = s.sidecar(&[]).await;
    s.admin
        .identity
        .revoke_token(pb::RevokeTokenRequest {
            token_id: s.sidecar_token_id.clone(),
        })
        .await
        .unwrap();
    let revoked_at = Instant::now();
    let refused = eventually("the revoked sidecar to refuse calls", WAIT, || {
        let (url, token) = (sc.url(), s.agent_token.clone());
        async move { call(&url, &token).await.err() }
    })
    .await;
    assert_says_why(&refused);
    assert!(revoked_at.elapsed() >= Duration::from_millis(MAX_AGE_SECS * 1000 - 2 * HEARTBEAT_MS));
    // It says so, at error level, and keeps trying with backoff rather than spinning.
    let said = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("ERROR") && l.contains("refused this sidecar's token"))
            .count()
    };
    assert!(said(&sc.logs()) >= 1, "{}", sc.logs());
    let before = said(&sc.logs());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let retries = said(&sc.logs()) - before;
    assert!(retries <= 6, "{retries} attempts in 3 s: no backoff");
    // Still refused: no snapshot reached it since.
    assert_says_why(&call(&sc.url(), &s.agent_token).await.unwrap_err());
}

#[tokio::test]
async fn heartbeats_arrive_at_the_configured_cadence() {
    let s = Setup::start(&[]).await;
    let mut fake = FakeSidecar::connect(&s.cp.url(), &s.sidecar_token, "listener").await;
    let first = fake.next_within(WAIT).await.unwrap().unwrap().unwrap();
    let Some(pb::connect_response::Message::Snapshot(snap)) = first.message else {
        panic!("the first message is a snapshot: {first:?}");
    };
    let start = Instant::now();
    let mut beats = Vec::new();
    while start.elapsed() < Duration::from_secs(2) {
        let m = fake
            .next_within(Duration::from_secs(1))
            .await
            .expect("a heartbeat within 1 s");
        if let Some(pb::connect_response::Message::Heartbeat(h)) = m.unwrap().unwrap().message {
            assert_eq!(
                h.revision, snap.revision,
                "a heartbeat names the revision the stream delivered"
            );
            assert!(h.sent_at.is_some());
            beats.push(start.elapsed());
        }
    }
    // 200 ms apart over 2 s: about ten (room left for a busy test machine; a cadence
    // of 1 s, or a message only per change, would give two or none).
    assert!(
        (6..=14).contains(&beats.len()),
        "{} heartbeats in 2 s: {beats:?}",
        beats.len()
    );
    for pair in beats.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(100) && gap <= Duration::from_millis(800),
            "{gap:?}"
        );
    }
}

#[tokio::test]
async fn sessions_end_at_their_maximum_lifetime_and_the_sidecar_reconnects_by_itself() {
    let s = Setup::start(&[("TOOLPLANE_SYNC_SESSION_MAX_SECS", "1")]).await;
    let mut fake = FakeSidecar::connect(&s.cp.url(), &s.sidecar_token, "short-lived").await;
    let opened = Instant::now();
    let ended = loop {
        match fake.next_within(Duration::from_secs(5)).await {
            Err(_) => panic!("the session outlived its maximum lifetime"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => panic!("the session ended with an error: {status:?}"),
            Ok(None) => break opened.elapsed(),
        }
    };
    assert!(
        ended >= Duration::from_millis(900) && ended < Duration::from_secs(3),
        "ended after {ended:?}"
    );

    // A real sidecar goes through several sessions without refusing a call.
    let sc = s.sidecar(&[]).await;
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < Duration::from_secs(5) {
        call(&sc.url(), &s.agent_token)
            .await
            .unwrap_or_else(|e| panic!("a call failed across session ends: {e:?}\n{}", sc.logs()));
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(calls > 20);
    let sessions = sc.logs().matches("connected to control plane").count();
    assert!(sessions >= 4, "{sessions} sessions in 5 s:\n{}", sc.logs());
    assert!(sc.logs().contains("control plane closed the sync stream"));
}
