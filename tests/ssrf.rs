//! SSRF: every spelling of a metadata or link-local address is refused for HTTP tools,
//! MCP tools and `ImportMcpTools`, at registration and again by the sidecar when it
//! connects; MCP and HTTP calls never follow a redirect, so a tool server cannot send
//! a call and its credential to another origin. The real binaries, real PostgreSQL,
//! real HTTP and MCP servers on loopback; nothing here is sent anywhere else (refused
//! forms are refused before connecting, which the errors say).
//!
//! A host name that resolves to a refused address at call time (DNS rebinding) cannot
//! be staged with real DNS here; the resolver guard is tested with an injected
//! resolver in `toolplane-runtime` (`egress::tests`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, control_plane_with, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;

const WAIT: Duration = Duration::from_secs(20);

/// 169.254.169.254 in the spellings resolvers and URL parsers accept, its IPv6
/// embeddings (mapped, compatible, NAT64, 6to4), other link-local and metadata
/// addresses, and a metadata host name.
const REFUSED_HOSTS: &[&str] = &[
    "169.254.169.254",
    "2852039166",
    "0xa9fea9fe",
    "0251.0376.0251.0376",
    "169.254.43518",
    "[::ffff:169.254.169.254]",
    "[::a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",
    "[2002:a9fe:a9fe::1]",
    "[fe80::1]",
    "[fd00:ec2::254]",
    "100.100.100.200",
    "metadata.google.internal",
];

fn mcp_tool(name: &str, endpoint: &str) -> pb::Tool {
    pb::Tool {
        protocol: pb::ToolProtocol::Mcp as i32,
        remote_name: "echo".to_owned(),
        ..http_tool(name, endpoint)
    }
}

fn invalid_field(e: &tonic::Status) -> String {
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    e.get_details_bad_request().unwrap().field_violations[0].field.clone()
}

#[tokio::test]
async fn registration_and_import_refuse_every_spelling_of_a_metadata_address() {
    let db = TestDb::create().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    for (i, host) in REFUSED_HOSTS.iter().enumerate() {
        let endpoint = format!("http://{host}/latest/meta-data");
        let e = admin
            .register(http_tool(&format!("http_{i}"), &endpoint))
            .await
            .unwrap_err();
        assert_eq!(invalid_field(&e), "tool.endpoint", "HTTP tool at {endpoint}");
        let e = admin
            .register(mcp_tool(&format!("mcp_{i}"), &endpoint))
            .await
            .unwrap_err();
        assert_eq!(invalid_field(&e), "tool.endpoint", "MCP tool at {endpoint}");
        let e = admin
            .registry
            .import_mcp_tools(pb::ImportMcpToolsRequest {
                endpoint: format!("http://{host}/mcp"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(invalid_field(&e), "endpoint", "import from {host}");
        assert!(e.message().contains("refused"), "{}", e.message());
    }

    // A host name that resolves to loopback is an ordinary endpoint.
    let mcp = Proc::start("toolplane-test-mcp-server", &["--listen", "127.0.0.1:0"], &[]).await;
    let imported = admin
        .registry
        .import_mcp_tools(pb::ImportMcpToolsRequest {
            endpoint: format!("http://localhost:{}/mcp", mcp.addr.port()),
            name_prefix: "m.".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!imported.created.is_empty());
}

#[tokio::test]
async fn the_sidecar_refuses_metadata_addresses_before_connecting() {
    // Registered by a control plane that allows link-local endpoints (an older policy,
    // or a misconfigured replica); the sidecar, which does not, must still refuse.
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp = control_plane_with(Some(&db.url), &[("TOOLPLANE_ALLOW_LINK_LOCAL_ENDPOINTS", "true")]).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("agent-ssrf").await;
    let mut names = Vec::new();
    for (i, host) in REFUSED_HOSTS.iter().enumerate() {
        for tool in [
            http_tool(&format!("http_{i}"), &format!("http://{host}/latest/meta-data")),
            mcp_tool(&format!("mcp_{i}"), &format!("http://{host}/mcp")),
        ] {
            let tool = admin.register(tool).await.unwrap();
            admin.grant_full(&agent.id, &tool.id).await;
            names.push((tool.name, *host));
        }
    }
    // A name resolving to loopback works.
    let local = admin
        .register(http_tool(
            "local",
            &format!("http://localhost:{}/word_count", tools.addr.unwrap().port()),
        ))
        .await
        .unwrap();
    admin.grant_full(&agent.id, &local.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), &[]).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    let ok = eventually("the sidecar to call the local tool", WAIT, || {
        let mut ex = ex.clone();
        async move {
            let r = ex
                .invoke(invoke_request("local", &json!({"text": "a b c"})))
                .await
                .ok()?;
            r.into_inner().result
        }
    })
    .await;
    assert_eq!(ok.status, pb::ToolExecutionStatus::Success as i32, "{}", ok.error);

    for (name, host) in names {
        let r = ex
            .clone()
            .invoke(invoke_request(&name, &json!({"text": "hi"})))
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert_eq!(
            r.status,
            pb::ToolExecutionStatus::ExecutionError as i32,
            "{name} at {host}"
        );
        assert!(
            r.error.contains("refused by policy"),
            "{name} at {host} was not refused by the policy: {}",
            r.error
        );
    }
}

/// An HTTP tool and an MCP tool whose server answers 307 to another origin, each with
/// a credential in a custom header (which redirect-following clients forward).
#[tokio::test]
async fn redirects_to_another_origin_are_not_followed_and_carry_no_credential() {
    let db = TestDb::create().await;
    let origin = ToolServer::start().await;
    let target = ToolServer::start().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("agent-redirect").await;
    let redirect = |path: &str| origin.url(&format!("/redirect?to={}", target.url(path)));
    let secret = "sk-redirect-SECRET-42";
    let mut tools = Vec::new();
    for tool in [
        http_tool("http_redirect", &redirect("/echo")),
        mcp_tool("mcp_redirect", &redirect("/mcp")),
    ] {
        let tool = admin.register(tool).await.unwrap();
        admin
            .registry
            .set_credential(pb::SetCredentialRequest {
                tool_id: tool.id.clone(),
                auth_type: pb::AuthType::ApiKey as i32,
                header_name: "X-Api-Key".into(),
                secret: secret.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        admin.grant_full(&agent.id, &tool.id).await;
        tools.push(tool.name);
    }
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), &[]).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    for name in &tools {
        let r = eventually("the sidecar to know the tool", WAIT, || {
            let mut ex = ex.clone();
            let name = name.clone();
            async move {
                let r = ex.invoke(invoke_request(&name, &json!({"text": "hi"}))).await;
                match r {
                    Err(s) if matches!(s.code(), Code::Unavailable | Code::NotFound | Code::PermissionDenied) => None,
                    r => Some(r.unwrap().into_inner().result.unwrap()),
                }
            }
        })
        .await;
        assert_ne!(r.status, pb::ToolExecutionStatus::Success as i32, "{name}");
        assert!(!r.error.contains(secret), "{}", r.error);
    }
    // The calls reached the origin with their credential...
    let sent = origin.headers("/redirect");
    assert!(sent.len() >= 2, "{} requests reached the origin", sent.len());
    assert!(sent.iter().all(|h| h.get("x-api-key").is_some_and(|v| v == secret)));
    // ...and nothing, credential or not, reached the other origin.
    assert_eq!(target.hits("/echo"), 0, "the HTTP tool followed the redirect");
    assert_eq!(target.hits("/mcp"), 0, "the MCP client followed the redirect");

    // Importing from a server that redirects does not follow it either.
    let e = admin
        .registry
        .import_mcp_tools(pb::ImportMcpToolsRequest {
            endpoint: redirect("/mcp"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(target.hits("/mcp"), 0, "ImportMcpTools followed the redirect");
}
