//! The sidecar's MCP endpoint with a real MCP client (rmcp over Streamable HTTP):
//! a per-agent catalog, calls through the governed pipeline (a denied tool, a schema
//! error, a rate-limited call), `toolplane_select`, `list_changed` on a new grant, and
//! the audit trail recording MCP calls like gRPC ones.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::NotificationContext;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, http_tool};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, free_port};

const WAIT: Duration = Duration::from_secs(20);

/// Counts `notifications/tools/list_changed`.
#[derive(Clone, Default)]
struct Watcher(Arc<AtomicUsize>);

impl ClientHandler for Watcher {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

async fn connect(
    url: &str,
    token: &str,
    watcher: Watcher,
) -> Option<rmcp::service::RunningService<RoleClient, Watcher>> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    config.custom_headers.insert(
        HeaderName::from_static("authorization"),
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    let transport = StreamableHttpClientTransport::with_client(toolplane_tests::http_client(), config);
    watcher.serve(transport).await.ok()
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_owned()).with_arguments(args.as_object().cloned().unwrap())
}

fn text(r: &rmcp::model::CallToolResult) -> String {
    serde_json::to_string(&r.content).unwrap()
}

#[tokio::test]
async fn an_mcp_client_lists_selects_and_calls_governed_tools() {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let words = admin
        .register(http_tool("word_count", &tools.url("/word_count")))
        .await
        .unwrap();
    let mut limited = http_tool("scarce_count", &tools.url("/word_count"));
    limited.description = "Counts words, once a minute".to_owned();
    limited.requirements.as_mut().unwrap().rate_limit_rpm = 1;
    let limited = admin.register(limited).await.unwrap();
    let forbidden = admin
        .register(http_tool("forbidden_count", &tools.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("mcp-agent").await;
    admin.grant_full(&agent.id, &words.id).await;
    admin.grant_full(&agent.id, &limited.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let spool = spool_dir();
    let sc = sidecar_with(&cp, &sidecar_token, &spool, &[("TOOLPLANE_MCP_LISTEN", &listen)]).await;
    let url = format!("http://127.0.0.1:{port}/mcp");

    // A wrong token gets nothing.
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone());
    config.custom_headers.insert(
        HeaderName::from_static("authorization"),
        HeaderValue::from_static("Bearer tpk_forged"),
    );
    let intruder = ClientConfig::default()
        .serve(StreamableHttpClientTransport::with_client(
            toolplane_tests::http_client(),
            config,
        ))
        .await;
    if let Ok(session) = intruder {
        assert!(
            session.list_all_tools().await.is_err(),
            "a forged token must not list tools"
        );
    }

    let watcher = Watcher::default();
    let client = eventually("the MCP endpoint with a snapshot", WAIT, || {
        let (url, token, w) = (url.clone(), token.clone(), watcher.clone());
        async move {
            let c = connect(&url, &token, w).await?;
            let names: Vec<String> = c
                .list_all_tools()
                .await
                .ok()?
                .into_iter()
                .map(|t| t.name.to_string())
                .collect();
            (names.len() == 3).then_some(c)
        }
    })
    .await;
    let listed = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        ["toolplane_select", "scarce_count", "word_count"],
        "exactly what the agent may use"
    );
    let wc = listed.iter().find(|t| t.name == "word_count").unwrap();
    assert_eq!(wc.input_schema["required"], json!(["text"]));
    assert_eq!(wc.annotations.as_ref().unwrap().read_only_hint, Some(true));

    // A governed call, a schema error, a denied tool, a rate-limited call.
    let ok = client
        .call_tool(call("word_count", json!({"text": "one two three"})))
        .await
        .unwrap();
    assert_ne!(ok.is_error, Some(true), "{}", text(&ok));
    assert_eq!(ok.structured_content, Some(json!({"words": 3})));
    let invalid = client.call_tool(call("word_count", json!({"text": 7}))).await.unwrap();
    assert_eq!(invalid.is_error, Some(true));
    assert!(
        text(&invalid).contains("VALIDATION_ERROR") && text(&invalid).contains("parameters/text"),
        "{}",
        text(&invalid)
    );
    let denied = client
        .call_tool(call("forbidden_count", json!({"text": "x"})))
        .await
        .unwrap();
    assert_eq!(denied.is_error, Some(true));
    assert!(text(&denied).contains("PERMISSION_DENIED"), "{}", text(&denied));
    let first = client
        .call_tool(call("scarce_count", json!({"text": "x"})))
        .await
        .unwrap();
    assert_ne!(first.is_error, Some(true), "{}", text(&first));
    let second = client
        .call_tool(call("scarce_count", json!({"text": "x"})))
        .await
        .unwrap();
    assert_eq!(second.is_error, Some(true));
    assert!(
        text(&second).contains("RATE_LIMITED") && text(&second).contains("retry in"),
        "{}",
        text(&second)
    );

    // The built-in selection tool.
    let picked = client
        .call_tool(call("toolplane_select", json!({"task": "count the words of my essay"})))
        .await
        .unwrap();
    let picked = picked.structured_content.unwrap();
    let ranked: Vec<&str> = picked["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tool"].as_str().unwrap())
        .collect();
    assert!(!ranked.contains(&"forbidden_count"), "{ranked:?}");
    assert!(picked["reasoning"].as_str().unwrap().starts_with("chose "), "{picked}");

    // A new grant changes the catalog, and sessions are told.
    let before = watcher.0.load(Ordering::SeqCst);
    admin.grant_full(&agent.id, &forbidden.id).await;
    eventually("the new tool in the agent's catalog", WAIT, || {
        let c = &client;
        async move {
            let tools = c.list_all_tools().await.ok()?;
            tools.iter().any(|t| t.name == "forbidden_count").then_some(())
        }
    })
    .await;
    let notified = tokio::time::timeout(WAIT, async {
        while watcher.0.load(Ordering::SeqCst) == before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(notified.is_ok(), "no notifications/tools/list_changed after the grant");

    // The official Python SDK (PyPI `mcp`, installed by `make test`) sees the same.
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/python/mcp_agent.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("TOOLPLANE_MCP_URL", &url)
        .env("AGENT_TOKEN", &token)
        .env("DENIED_TOOL", "no_such_tool")
        .output()
        .await
        .expect("the Python venv (make test creates it with the mcp package)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(py["tools"][0], "toolplane_select");
    assert!(
        py["tools"].as_array().unwrap().contains(&json!("forbidden_count")),
        "{py}"
    );
    assert_eq!(py["result"], json!({"words": 4}), "{py}");
    assert_eq!(py["denied"]["is_error"], true, "{py}");
    assert!(py["denied"]["text"].as_str().unwrap().contains("NOT_FOUND"), "{py}");
    assert_eq!(py["invalid"]["is_error"], true, "{py}");
    assert!(
        py["invalid"]["text"].as_str().unwrap().contains("parameters/text"),
        "{py}"
    );

    // The session outlives a sidecar restart: the same client keeps calling.
    sc.stop().await;
    let _sc = sidecar_with(&cp, &sidecar_token, &spool, &[("TOOLPLANE_MCP_LISTEN", &listen)]).await;
    let after = eventually("a call on the old session after the restart", WAIT, || {
        let c = &client;
        async move {
            let r = c
                .call_tool(call("word_count", json!({"text": "still here"})))
                .await
                .ok()?;
            (r.is_error != Some(true)).then_some(r)
        }
    })
    .await;
    assert_eq!(after.structured_content, Some(json!({"words": 2})));

    // MCP calls are audited exactly like gRPC calls.
    let pg = db.client().await;
    let agent_id = agent.id.clone();
    let rows = eventually("the MCP calls' audit events", WAIT, || {
        let (pg, agent_id) = (&pg, agent_id.clone());
        async move {
            let rows = pg
                .query(
                    "SELECT action, success FROM audit_events WHERE sidecar_id <> '' AND agent_id = $1::text::uuid ORDER BY seq",
                    &[&agent_id],
                )
                .await
                .unwrap();
            (rows.len() >= 5).then_some(rows)
        }
    })
    .await;
    let actions: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for expected in [
        ("tool_invoked".to_owned(), true),
        ("error_occurred".to_owned(), false),
        ("permission_checked".to_owned(), false),
        ("rate_limited".to_owned(), false),
    ] {
        assert!(actions.contains(&expected), "{expected:?} missing from {actions:?}");
    }
}

/// A raw `initialize` POST, as any HTTP client can send it.
async fn raw_initialize(url: &str, host: &str, token: Option<&str>) -> (u16, Option<String>, String) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}});
    let mut req = toolplane_tests::http_client()
        .post(url)
        .header("host", host)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let Ok(r) = req.send().await else {
        return (0, None, "not listening yet".to_owned());
    };
    let status = r.status().as_u16();
    let session = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, session, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_front_door_keeps_no_state_for_strangers_and_bounds_its_sessions() {
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("mcp-bounded").await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let sc = sidecar_with(
        &cp,
        &sidecar_token,
        &spool_dir(),
        &[("TOOLPLANE_MCP_LISTEN", &listen), ("TOOLPLANE_MCP_MAX_SESSIONS", "2")],
    )
    .await;
    let url = format!("http://{listen}/mcp");
    // Wait until the sidecar holds its snapshot (the agent token is known).
    eventually("the MCP front door to know the agent", WAIT, || {
        let (url, token, listen) = (url.clone(), token.clone(), listen.clone());
        async move {
            let (status, session, _) = raw_initialize(&url, &listen, Some(&token)).await;
            (status == 200 && session.is_some()).then_some(())
        }
    })
    .await;

    // No token, or not an agent's: 401, and no session.
    let (status, session, body) = raw_initialize(&url, &listen, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        session.is_none(),
        "an unauthenticated initialize opened a session: {body}"
    );
    let (status, session, _) = raw_initialize(&url, &listen, Some(&sidecar_token)).await;
    assert_eq!(status, 401);
    assert!(session.is_none());
    // A Host this sidecar is not (DNS rebinding from a web page) is refused outright.
    let (status, session, _) = raw_initialize(&url, "attacker.example", Some(&token)).await;
    assert_eq!(status, 403);
    assert!(session.is_none());
    // One session is open (from the wait above); one more fits, the next does not.
    let (status, session, _) = raw_initialize(&url, &listen, Some(&token)).await;
    assert_eq!(status, 200);
    assert!(session.is_some());
    let (status, session, body) = raw_initialize(&url, &listen, Some(&token)).await;
    assert_eq!(status, 503, "{body}");
    assert!(session.is_none());
    drop(sc);
}
