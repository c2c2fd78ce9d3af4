//! Search mode of the sidecar's MCP front door with 300 granted tools and a real MCP
//! client: `tools/list` holds only `toolplane_select` and `toolplane_call`;
//! `toolplane_select` returns candidates with their input schemas; `toolplane_call`
//! runs the chosen tool; a tool the agent may not use is denied through
//! `toolplane_call` and audited like a direct call.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, http_tool};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, free_port, http_client};

const WAIT: Duration = Duration::from_secs(30);

async fn connect(url: &str, token: &str) -> Option<rmcp::service::RunningService<RoleClient, ClientConfig>> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    config.custom_headers.insert(
        HeaderName::from_static("authorization"),
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    ClientConfig::default()
        .serve(StreamableHttpClientTransport::with_client(http_client(), config))
        .await
        .ok()
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_owned()).with_arguments(args.as_object().cloned().unwrap())
}

fn text(r: &rmcp::model::CallToolResult) -> String {
    serde_json::to_string(&r.content).unwrap()
}

#[tokio::test]
async fn three_hundred_tools_are_searched_and_called_through_meta_tools() {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("search-agent").await;
    // 299 unrelated tools and one word counter, all granted.
    let mut words = http_tool("word_count", &tools.url("/word_count"));
    words.description = "Counts the words of a text, e.g. an essay".into();
    let words = admin.register(words).await.unwrap();
    admin.grant_full(&agent.id, &words.id).await;
    for i in 0..299 {
        let mut t = http_tool(&format!("inventory_{i:03}"), &tools.url("/word_count"));
        t.description = format!("Looks up warehouse inventory shelf {i} stock levels");
        t.capabilities = vec!["retrieve".into()];
        let t = admin.register(t).await.unwrap();
        admin.grant_full(&agent.id, &t.id).await;
    }
    // Registered, not granted.
    let forbidden = admin
        .register(http_tool("forbidden_count", &tools.url("/word_count")))
        .await
        .unwrap();
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _sc = sidecar_with(
        &cp,
        &sidecar_token,
        &spool_dir(),
        &[("TOOLPLANE_MCP_LISTEN", &listen), ("TOOLPLANE_MCP_SEARCH_ABOVE", "100")],
    )
    .await;
    let url = format!("http://{listen}/mcp");

    let client = eventually("the MCP front door with the agent's catalog", WAIT, || {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let c = connect(&url, &token).await?;
            let names: Vec<String> = c
                .list_all_tools()
                .await
                .ok()?
                .into_iter()
                .map(|t| t.name.to_string())
                .collect();
            (names.len() == 2).then_some(c)
        }
    })
    .await;
    let listed = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["toolplane_select", "toolplane_call"], "only the meta-tools");

    // The same agent on a sidecar with search mode off gets every definition: what
    // search mode keeps out of the agent's context.
    let full_port = free_port();
    let full_listen = format!("127.0.0.1:{full_port}");
    let _full_sc = sidecar_with(
        &cp,
        &sidecar_token,
        &spool_dir(),
        &[
            ("TOOLPLANE_MCP_LISTEN", &full_listen),
            ("TOOLPLANE_MCP_SEARCH_ABOVE", "0"),
        ],
    )
    .await;
    let full_url = format!("http://{full_listen}/mcp");
    let full = eventually("the full catalog", WAIT, || {
        let (url, token) = (full_url.clone(), token.clone());
        async move {
            let c = connect(&url, &token).await?;
            let all = c.list_all_tools().await.ok()?;
            let _ = c.cancel().await;
            (all.len() == 301).then_some(all)
        }
    })
    .await;
    let (search_bytes, full_bytes) = (
        serde_json::to_string(&listed).unwrap().len(),
        serde_json::to_string(&full).unwrap().len(),
    );
    println!("tools/list for 300 granted tools: {full_bytes} bytes in full, {search_bytes} in search mode");
    assert!(search_bytes * 20 < full_bytes, "{search_bytes} vs {full_bytes}");

    // Select: candidates come with their input schemas.
    let picked = client
        .call_tool(call("toolplane_select", json!({"task": "count the words of my essay"})))
        .await
        .unwrap();
    assert_ne!(picked.is_error, Some(true), "{}", text(&picked));
    let picked = picked.structured_content.unwrap();
    let first = &picked["tools"][0];
    assert_eq!(first["tool"], "word_count", "{picked}");
    assert_eq!(first["input_schema"]["required"], json!(["text"]), "{picked}");
    let ranked: Vec<&str> = picked["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tool"].as_str().unwrap())
        .collect();
    assert!(!ranked.contains(&"forbidden_count"), "{ranked:?}");

    // Call the chosen tool through toolplane_call.
    let ok = client
        .call_tool(call(
            "toolplane_call",
            json!({"tool": first["tool"], "arguments": {"text": "one two three four"}}),
        ))
        .await
        .unwrap();
    assert_ne!(ok.is_error, Some(true), "{}", text(&ok));
    assert_eq!(ok.structured_content, Some(json!({"words": 4})));
    // Validated like a direct call.
    let invalid = client
        .call_tool(call(
            "toolplane_call",
            json!({"tool": "word_count", "arguments": {"text": 7}}),
        ))
        .await
        .unwrap();
    assert_eq!(invalid.is_error, Some(true));
    assert!(text(&invalid).contains("parameters/text"), "{}", text(&invalid));
    let malformed = client
        .call_tool(call("toolplane_call", json!({"arguments": {}})))
        .await
        .unwrap();
    assert_eq!(malformed.is_error, Some(true));
    assert!(text(&malformed).contains("/tool"), "{}", text(&malformed));
    // Denied like a direct call.
    let denied = client
        .call_tool(call(
            "toolplane_call",
            json!({"tool": "forbidden_count", "arguments": {"text": "x"}}),
        ))
        .await
        .unwrap();
    assert_eq!(denied.is_error, Some(true));
    assert!(text(&denied).contains("PERMISSION_DENIED"), "{}", text(&denied));
    let direct = client
        .call_tool(call("forbidden_count", json!({"text": "x"})))
        .await
        .unwrap();
    assert_eq!(denied.content, direct.content, "the same answer as a direct call");

    // Audited like direct calls: the successful call and both refusals of the tool.
    let pg = db.client().await;
    let (agent_id, forbidden_id, words_id) = (agent.id.clone(), forbidden.id.clone(), words.id.clone());
    let rows = eventually("the calls' audit events", WAIT, || {
        let (pg, agent_id, forbidden_id, words_id) = (&pg, agent_id.clone(), forbidden_id.clone(), words_id.clone());
        async move {
            let rows = pg
                .query(
                    "SELECT action, success, tool_id::text FROM audit_events WHERE sidecar_id <> '' \
                     AND agent_id = $1::text::uuid AND tool_id IN ($2::text::uuid, $3::text::uuid) ORDER BY seq",
                    &[&agent_id, &forbidden_id, &words_id],
                )
                .await
                .unwrap();
            let denials = rows
                .iter()
                .filter(|r| r.get::<_, String>(0) == "permission_checked" && r.get::<_, String>(2) == forbidden_id)
                .count();
            (denials >= 2).then_some(rows)
        }
    })
    .await;
    let actions: Vec<(String, bool, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert!(
        actions.contains(&("tool_invoked".to_owned(), true, words.id.clone())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("permission_checked".to_owned(), false, forbidden.id.clone())),
        "{actions:?}"
    );
}
