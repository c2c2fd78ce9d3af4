//! Pinned tool definitions, with the real reference MCP server, control plane
//! (PostgreSQL) and sidecar: a server that changes an approved tool's description
//! gets a pending change, not a live version; the sidecar's MCP front door keeps
//! serving the approved definition until an admin approves; the drift is audited; the
//! scheduled re-list finds a drift without any import; a second server cannot take
//! over a name; a provider's auto-approval; and MCP servers over https (a test CA),
//! imported and called with the tool's credential.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rmcp::ServiceExt;
use rmcp::model::ClientConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;
use toolplane_core::json::value_from_pb;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, Authed, channel, executor, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane_with, sidecar_with, spool_dir};
use toolplane_tests::{eventually, free_port, http_client};

const WAIT: Duration = Duration::from_secs(30);

async fn mcp_server(args: &[&str]) -> Proc {
    Proc::start("toolplane-test-mcp-server", args, &[]).await
}

fn review_client(ch: Authed) -> pb::tool_review_client::ToolReviewClient<Authed> {
    pb::tool_review_client::ToolReviewClient::new(ch)
}

async fn import(admin: &mut Admin, endpoint: &str, prefix: &str) -> Result<pb::ImportMcpToolsResponse, tonic::Status> {
    Ok(admin
        .registry
        .import_mcp_tools(pb::ImportMcpToolsRequest {
            endpoint: endpoint.to_owned(),
            provider: "calc-vendor".into(),
            name_prefix: prefix.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

async fn live(admin: &mut Admin, name: &str) -> pb::Tool {
    admin
        .registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name(name.to_owned())),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap()
}

/// Runs `toolctl` against `cp` as the admin: (exit code, stdout, stderr).
fn toolctl(cp: &Proc, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(toolplane_tests::procs::bin("toolctl"))
        .args(["--server", &cp.url()])
        .args(args)
        .env("TOOLPLANE_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The description the sidecar's MCP front door serves for `tool` to the agent.
async fn served_description(url: &str, token: &str, tool: &str) -> Option<String> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    config.custom_headers.insert(
        HeaderName::from_static("authorization"),
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    let client = ClientConfig::default()
        .serve(StreamableHttpClientTransport::with_client(http_client(), config))
        .await
        .ok()?;
    let tools = client.list_all_tools().await.ok()?;
    let _ = client.cancel().await;
    tools
        .into_iter()
        .find(|t| t.name == tool)
        .and_then(|t| t.description.map(|d| d.to_string()))
}

/// Audit events of `action` about `tool_id`.
async fn audit_of(cp: &Proc, tool_id: &str, action: pb::AuditAction) -> Vec<pb::AuditEvent> {
    let mut audit = pb::audit_client::AuditClient::new(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    let mut stream = audit
        .query_audit_trail(pb::QueryAuditTrailRequest {
            tool_id: tool_id.to_owned(),
            action: action as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        out.push(r.record.unwrap().event.unwrap());
    }
    out
}

#[tokio::test]
async fn a_changed_description_waits_for_review_while_the_sidecar_serves_the_approved_one() {
    let db = TestDb::create().await;
    let server = mcp_server(&["--listen", "127.0.0.1:0"]).await;
    let addr = server.addr.to_string();
    let endpoint = format!("http://{addr}/mcp");
    let cp = control_plane_with(Some(&db.url), &[]).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let mut review = review_client(channel(&cp.url(), Some(ADMIN_TOKEN)).await);

    let first = import(&mut admin, &endpoint, "calc.").await.unwrap();
    let sum = first.created.iter().find(|t| t.name == "calc.sum").unwrap().clone();
    assert_eq!(
        sum.definition_hash.len(),
        64,
        "every tool has a canonical definition hash"
    );
    let agent = admin.agent("pinned-agent").await;
    admin.grant_full(&agent.id, &sum.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), &[("TOOLPLANE_MCP_LISTEN", &listen)]).await;
    let url = format!("http://{listen}/mcp");
    let served = eventually("the approved tool on the MCP front door", WAIT, || {
        let (url, token) = (url.clone(), token.clone());
        async move { served_description(&url, &token, "calc.sum").await }
    })
    .await;
    assert_eq!(served, "Add two numbers");

    // The server changes the description (a rug pull): same address, new catalog.
    server.stop().await;
    let _v2 = mcp_server(&["--variant", "2", "--listen", &addr]).await;
    let second = import(&mut admin, &endpoint, "calc.").await.unwrap();
    assert!(second.updated.is_empty(), "nothing changes without review");
    assert_eq!(second.pending.len(), 1, "{:?}", second.pending);
    let change = second.pending[0].clone();
    assert_eq!(
        (change.tool_name.as_str(), change.base_version, change.source.as_str()),
        ("calc.sum", 1, "import")
    );
    assert_eq!(change.status, pb::ToolChangeStatus::Pending as i32);
    assert_eq!(change.base_hash, sum.definition_hash);
    let still = live(&mut admin, "calc.sum").await;
    assert_eq!((still.version, still.description.as_str()), (1, "Add two numbers"));

    // The review shows the diff.
    let listed = review
        .list_tool_changes(pb::ListToolChangesRequest {
            status: pb::ToolChangeStatus::Pending as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(listed.len(), 1);
    let diff = &listed[0].diff;
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert_eq!(diff[0].field, "description");
    assert_eq!(value_from_pb(diff[0].before.clone().unwrap()), json!("Add two numbers"));
    assert_eq!(
        value_from_pb(diff[0].after.clone().unwrap()),
        json!("Add two numbers (exactly)")
    );

    // The drift is audited, and the sidecar keeps serving the approved definition.
    let detected = audit_of(&cp, &sum.id, pb::AuditAction::ToolChangeDetected).await;
    assert_eq!(detected.len(), 1, "{detected:?}");
    assert!(
        detected[0].detail.contains("description") && detected[0].detail.contains(&change.id),
        "{}",
        detected[0].detail
    );
    assert!(detected[0].actor_id.starts_with("admin:"), "{}", detected[0].actor_id);
    // Give a wrongly pushed snapshot every chance to arrive before looking.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        served_description(&url, &token, "calc.sum").await.as_deref(),
        Some("Add two numbers"),
        "the sidecar serves only approved definitions"
    );

    // `toolctl review` shows the same diff.
    let (code, out, err) = toolctl(&cp, &["-o", "json", "review", "changes"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["id"], change.id.as_str(), "{listed}");
    assert_eq!(listed[0]["diff"][0]["after"], "Add two numbers (exactly)", "{listed}");
    let (code, out, err) = toolctl(&cp, &["review", "show", &change.id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("- Add two numbers") && out.contains("+ Add two numbers (exactly)"),
        "{out}"
    );

    // Approval makes it the next version, served at once.
    let approved = review
        .review_tool_change(pb::ReviewToolChangeRequest {
            change_id: change.id.clone(),
            approve: true,
            reason: "harmless wording".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let tool = approved.tool.unwrap();
    assert_eq!(
        (tool.version, tool.description.as_str()),
        (2, "Add two numbers (exactly)")
    );
    assert_eq!(tool.definition_hash, change.proposed_hash);
    assert_eq!(approved.change.unwrap().status, pb::ToolChangeStatus::Approved as i32);
    eventually("the approved new definition on the MCP front door", WAIT, || {
        let (url, token) = (url.clone(), token.clone());
        async move {
            (served_description(&url, &token, "calc.sum").await.as_deref() == Some("Add two numbers (exactly)"))
                .then_some(())
        }
    })
    .await;
    let reviewed = audit_of(&cp, &sum.id, pb::AuditAction::ToolChangeReviewed).await;
    assert_eq!(reviewed.len(), 1);
    assert!(reviewed[0].detail.contains("approved") && reviewed[0].detail.contains("harmless wording"));
    // Reviewing it again is refused.
    let again = review
        .review_tool_change(pb::ReviewToolChangeRequest {
            change_id: change.id.clone(),
            approve: false,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    let bad = review
        .review_tool_change(pb::ReviewToolChangeRequest {
            change_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // A second server claiming the same names is refused, and nothing is taken over.
    let other = mcp_server(&["--listen", "127.0.0.1:0"]).await;
    let hijack = import(&mut admin, &format!("{}/mcp", other.url()), "calc.")
        .await
        .unwrap();
    assert!(hijack.created.is_empty() && hijack.pending.is_empty() && hijack.updated.is_empty());
    let collision = hijack.skipped.iter().find(|s| s.remote_name == "sum").unwrap();
    assert!(collision.reason.contains("name collision"), "{}", collision.reason);
    assert_eq!(live(&mut admin, "calc.sum").await.endpoint, endpoint);

    // Agents cannot review.
    let mut as_agent = review_client(channel(&cp.url(), Some(&token)).await);
    let e = as_agent
        .list_tool_changes(pb::ListToolChangesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn the_scheduled_relist_flags_drift_without_an_import_and_a_provider_may_auto_approve() {
    let db = TestDb::create().await;
    let server = mcp_server(&["--listen", "127.0.0.1:0"]).await;
    let addr = server.addr.to_string();
    let endpoint = format!("http://{addr}/mcp");
    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let cp = control_plane_with(
        Some(&db.url),
        &[
            ("TOOLPLANE_MCP_RELIST_SECS", "1"),
            ("TOOLPLANE_METRICS_LISTEN", &metrics_listen),
        ],
    )
    .await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let mut review = review_client(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    let first = import(&mut admin, &endpoint, "m.").await.unwrap();
    let sum = first.created.iter().find(|t| t.name == "m.sum").unwrap().clone();

    // Nobody imports again; the server changes anyway.
    server.stop().await;
    let v2 = mcp_server(&["--variant", "2", "--listen", &addr]).await;
    let change = eventually("a pending change found by the re-list", WAIT, || {
        let mut review = review.clone();
        let tool_id = sum.id.clone();
        async move {
            let changes = review
                .list_tool_changes(pb::ListToolChangesRequest {
                    status: pb::ToolChangeStatus::Pending as i32,
                    tool_id,
                })
                .await
                .ok()?
                .into_inner()
                .changes;
            changes.into_iter().next()
        }
    })
    .await;
    assert_eq!(change.source, "relist");
    assert_eq!(change.diff[0].field, "description");
    let detected = audit_of(&cp, &sum.id, pb::AuditAction::ToolChangeDetected).await;
    assert_eq!(detected[0].actor_id, "control-plane:mcp-relist");
    let live_now = live(&mut admin, "m.sum").await;
    assert_eq!(
        (live_now.version, live_now.description.as_str()),
        (1, "Add two numbers")
    );
    eventually("the drift metric", WAIT, || {
        let url = format!("http://{metrics_listen}/metrics");
        async move {
            let scrape = toolplane_tests::http_get(url).await.ok()?.text().await.ok()?;
            scrape
                .lines()
                .any(|l| {
                    l.starts_with("toolplane_tool_definition_drift_total")
                        && l.contains("source=\"relist\"")
                        && l.contains("outcome=\"pending\"")
                })
                .then_some(())
        }
    })
    .await;
    // Later re-lists find the same drift and record it once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let all = review
        .list_tool_changes(pb::ListToolChangesRequest {
            tool_id: sum.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(all.len(), 1, "{all:?}");

    // The server goes back to the approved definition: nothing waits any more.
    v2.stop().await;
    let v1 = mcp_server(&["--listen", &addr]).await;
    eventually("the withdrawn change", WAIT, || {
        let mut review = review.clone();
        let id = change.id.clone();
        async move {
            let changes = review
                .list_tool_changes(pb::ListToolChangesRequest::default())
                .await
                .ok()?
                .into_inner()
                .changes;
            changes
                .iter()
                .any(|c| c.id == id && c.status == pb::ToolChangeStatus::Superseded as i32)
                .then_some(())
        }
    })
    .await;

    // The provider's changes are approved automatically from now on (audited).
    let (code, _, err) = toolctl(&cp, &["review", "policy", "calc-vendor", "--auto-approve", "true"]);
    assert_eq!(code, 0, "{err}");
    let policies = review
        .list_tool_review_policies(pb::ListToolReviewPoliciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .policies;
    assert_eq!(
        (policies[0].provider.as_str(), policies[0].auto_approve),
        ("calc-vendor", true)
    );
    v1.stop().await;
    let _v2 = mcp_server(&["--variant", "2", "--listen", &addr]).await;
    let updated = eventually("the automatically approved version", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let t = live(&mut admin, "m.sum").await;
            (t.version == 2).then_some(t)
        }
    })
    .await;
    assert_eq!(updated.description, "Add two numbers (exactly)");
    let events = audit_of(&cp, &sum.id, pb::AuditAction::ToolUpdated).await;
    assert!(
        events.iter().any(|e| e.detail.contains("approved automatically")),
        "{events:?}"
    );
}

/// A throwaway CA and a `localhost` certificate it signed, as PEM files in `dir`:
/// (ca, cert, key).
fn test_ca(dir: &std::path::Path) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "toolplane MCP test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let path = |n: &str| dir.join(n).to_string_lossy().into_owned();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}

#[tokio::test]
async fn an_mcp_server_over_https_with_a_private_ca_is_imported_and_called_with_its_credential() {
    let dir = spool_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = test_ca(&dir);
    let secret = "Bearer mcp-secret-42";
    let server = mcp_server(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--require-header",
        &format!("authorization={secret}"),
    ])
    .await;
    let endpoint = format!("https://localhost:{}/mcp", server.addr.port());

    // Without the CA, the server's certificate is not trusted: nothing is imported.
    let untrusting = control_plane_with(None, &[]).await;
    let mut admin = Admin::connect(&untrusting.url(), ADMIN_TOKEN).await;
    let e = admin
        .registry
        .import_mcp_tools(pb::ImportMcpToolsRequest {
            endpoint: endpoint.clone(),
            credential_header: "authorization".into(),
            credential_secret: secret.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    drop(untrusting);

    let cp = control_plane_with(None, &[("TOOLPLANE_TOOL_CA_FILE", &ca)]).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    // Trusted, but without the credential the server refuses.
    let e = admin
        .registry
        .import_mcp_tools(pb::ImportMcpToolsRequest {
            endpoint: endpoint.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let e = admin
        .registry
        .import_mcp_tools(pb::ImportMcpToolsRequest {
            endpoint: endpoint.clone(),
            credential_header: "authorization".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let imported = admin
        .registry
        .import_mcp_tools(pb::ImportMcpToolsRequest {
            endpoint: endpoint.clone(),
            name_prefix: "tls.".into(),
            credential_header: "authorization".into(),
            credential_secret: secret.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let sum = imported.created.iter().find(|t| t.name == "tls.sum").unwrap().clone();
    assert_eq!(sum.endpoint, endpoint);

    // The sidecar calls it over TLS with the sealed credential.
    let agent = admin.agent("tls-agent").await;
    admin.grant_full(&agent.id, &sum.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), &[("TOOLPLANE_TOOL_CA_FILE", &ca)]).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    let result = eventually("a call over https", WAIT, || {
        let mut ex = ex.clone();
        async move {
            let r = ex
                .invoke(invoke_request("tls.sum", &json!({"a": 2, "b": 40})))
                .await
                .ok()?
                .into_inner()
                .result?;
            (r.status == pb::ToolExecutionStatus::Success as i32).then_some(r)
        }
    })
    .await;
    let output = value_from_pb(result.output.unwrap());
    assert_eq!(output["sum"].as_f64(), Some(42.0), "{output}");

    // A sidecar that does not trust the CA cannot call it.
    let sc2 = sidecar_with(&cp, &sidecar_token, &spool_dir(), &[]).await;
    let mut ex2 = executor(&sc2.url(), Some(&token)).await;
    let failed = eventually("a refused call without the CA", WAIT, || {
        let mut ex2 = ex2.clone();
        async move {
            let r = ex2
                .invoke(invoke_request("tls.sum", &json!({"a": 2, "b": 40})))
                .await
                .ok()?
                .into_inner()
                .result?;
            (r.status == pb::ToolExecutionStatus::ExecutionError as i32).then_some(r)
        }
    })
    .await;
    assert!(!failed.error.is_empty());
    let _ = &mut ex2;
}
