//! End to end: the real control plane and sidecar binaries, real PostgreSQL, a real HTTP
//! tool server, generated gRPC clients, and grpcurl.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;
use toolplane_core::json::value_from_pb;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, sidecar};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, test_redis};

const WAIT: Duration = Duration::from_secs(20);

/// A running system: control plane (on Postgres), sidecar, one granted agent.
struct System {
    db: TestDb,
    tools: ToolServer,
    cp: Proc,
    sidecar: Proc,
    admin: Admin,
    agent: pb::Agent,
    agent_token: String,
    sidecar_token: String,
}

impl System {
    /// Registers `word_count` (granted) and `secret_tool` (not granted), starts a sidecar
    /// and waits until it serves.
    async fn start() -> Self {
        let db = TestDb::create().await;
        let tools = ToolServer::start().await;
        let cp = control_plane(Some(&db.url)).await;
        let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
        let tool = admin
            .register(http_tool("word_count", &tools.url("/word_count")))
            .await
            .unwrap();
        admin
            .register(http_tool("secret_tool", &tools.url("/echo")))
            .await
            .unwrap();
        let agent = admin.agent("agent-007").await;
        admin.grant_full(&agent.id, &tool.id).await;
        let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
        let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
        let sidecar = sidecar(&cp, &sidecar_token).await;
        let url = sidecar.url();
        let token = agent_token.clone();
        eventually("the sidecar to serve from a snapshot", WAIT, || {
            let (url, token) = (url.clone(), token.clone());
            async move {
                let mut ex = executor(&url, Some(&token)).await;
                match ex
                    .invoke(invoke_request("word_count", &json!({"text": "warm up"})))
                    .await
                {
                    Err(s) if s.code() == Code::Unavailable => None,
                    _ => Some(()),
                }
            }
        })
        .await;
        Self {
            db,
            tools,
            cp,
            sidecar,
            admin,
            agent,
            agent_token,
            sidecar_token,
        }
    }

    async fn executor(&self) -> pb::executor_client::ExecutorClient<toolplane_tests::grpc::Authed> {
        executor(&self.sidecar.url(), Some(&self.agent_token)).await
    }

    /// Waits for the audit rows of one invocation to reach PostgreSQL.
    async fn audit_rows(&self, invocation_id: &str, expected: usize) -> Vec<tokio_postgres::Row> {
        let client = self.db.client().await;
        let id = uuid::Uuid::parse_str(invocation_id).unwrap();
        eventually("audit rows in PostgreSQL", WAIT, || {
            let client = &client;
            async move {
                let rows = client
                    .query(
                        "SELECT * FROM audit_events WHERE invocation_id = $1 ORDER BY seq",
                        &[&id],
                    )
                    .await
                    .unwrap();
                (rows.len() >= expected).then_some(rows)
            }
        })
        .await
    }
}

fn output(r: &pb::ToolResult) -> Value {
    r.output.clone().map_or(Value::Null, value_from_pb)
}

#[tokio::test]
async fn agent_token_to_tool_to_audit_row_in_postgres() {
    let sys = System::start().await;
    let mut ex = sys.executor().await;
    let before = sys.tools.hits("/word_count");
    let r = ex
        .invoke(invoke_request(
            "word_count",
            &json!({"text": "the quick brown fox", "api_key": "sk-live-SECRET123"}),
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
    assert_eq!(output(&r), json!({"words": 4}));
    assert_eq!(r.cost, "0.0020");
    assert_eq!(r.tool_version, 1);
    assert_eq!(sys.tools.hits("/word_count"), before + 1);
    // The tool itself receives the parameters as sent.
    assert_eq!(
        sys.tools.bodies("/word_count").last().unwrap()["api_key"],
        "sk-live-SECRET123"
    );

    let rows = sys.audit_rows(&r.invocation_id, 1).await;
    let row = &rows[0];
    assert_eq!(row.get::<_, String>("action"), "tool_invoked");
    assert!(row.get::<_, bool>("success"));
    assert_eq!(row.get::<_, uuid::Uuid>("agent_id").to_string(), sys.agent.id);
    assert_eq!(row.get::<_, String>("task_id"), "task-1");
    // Stamped by the control plane with the sending sidecar's token, whatever the
    // sidecar calls itself (`test-sidecar`).
    let sidecar_token_id: String = sys
        .db
        .client()
        .await
        .query_one("SELECT id::text FROM tokens WHERE role = 'sidecar'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(row.get::<_, String>("sidecar_id"), sidecar_token_id);
    assert!(row.get::<_, Option<uuid::Uuid>>("permission_id").is_some());
    let params: Value = row.get("sanitized_parameters");
    assert_eq!(params, json!({"text": "the quick brown fox", "api_key": "[REDACTED]"}));
    assert_eq!(
        row.get::<_, Option<String>>("result_digest").unwrap(),
        toolplane_core::json::digest(&json!({"words": 4}))
    );

    let client = sys.db.client().await;
    let inv = uuid::Uuid::parse_str(&r.invocation_id).unwrap();
    let rec = eventually("the invocation row", WAIT, || {
        let client = &client;
        async move {
            client
                .query_opt("SELECT * FROM invocations WHERE invocation_id = $1", &[&inv])
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(rec.get::<_, String>("status"), "success");
    assert_eq!(rec.get::<_, Value>("parameters")["api_key"], "[REDACTED]");
    assert_eq!(rec.get::<_, rust_decimal::Decimal>("cost").to_string(), "0.0020");

    for logs in [sys.cp.logs(), sys.sidecar.logs()] {
        assert!(!logs.contains("SECRET123"), "a secret reached the logs:\n{logs}");
        assert!(!logs.contains(&sys.agent_token), "a token reached the logs");
    }
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_no_upstream_call() {
    let mut sys = System::start().await;
    let mut ex = sys.executor().await;
    let hits = sys.tools.hits("/word_count");

    let e = ex.invoke(invoke_request("no_such_tool", &json!({}))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let e = ex
        .invoke(invoke_request("word_count", &json!({"text": 42})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let fields: Vec<String> = e
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["parameters/text"], "{e:?}");
    let e = ex
        .invoke(invoke_request("word_count", &json!({"text": "x".repeat(101)})))
        .await
        .unwrap_err();
    assert!(e.message().contains("parameters/text"), "{e:?}");
    let e = ex.invoke(invoke_request("word_count", &json!({}))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        sys.tools.hits("/word_count"),
        hits,
        "no upstream call for invalid parameters"
    );

    // No grant: refused, and the refusal is audited.
    let e = ex
        .invoke(invoke_request("secret_tool", &json!({"text": "hi"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("no grant"), "{e:?}");
    assert_eq!(sys.tools.hits("/echo"), 0);
    let client = sys.db.client().await;
    let agent = uuid::Uuid::parse_str(&sys.agent.id).unwrap();
    eventually("the denial in the audit trail", WAIT, || {
        let client = &client;
        async move {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM audit_events WHERE action = 'permission_checked' AND NOT success AND agent_id = $1",
                    &[&agent],
                )
                .await
                .unwrap()
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;

    // Tokens: missing, wrong, or of the wrong role.
    let mut anon = executor(&sys.sidecar.url(), None).await;
    let e = anon
        .invoke(invoke_request("word_count", &json!({"text": "a"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut forged = executor(&sys.sidecar.url(), Some(&toolplane_core::token::generate())).await;
    let e = forged
        .invoke(invoke_request("word_count", &json!({"text": "a"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // A scoped sidecar (the default) holds only agents' token digests: another role's
    // token is unknown to it.
    let mut as_sidecar = executor(&sys.sidecar.url(), Some(&sys.sidecar_token)).await;
    let e = as_sidecar
        .invoke(invoke_request("word_count", &json!({"text": "a"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut cp_anon = Admin::connect(&sys.cp.url(), "tpk_wrong_token_wrong_token_wrong_token").await;
    let e = cp_anon
        .register(http_tool("x", &sys.tools.url("/echo")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut as_agent = Admin::connect(&sys.cp.url(), &sys.agent_token).await;
    let e = as_agent
        .register(http_tool("x", &sys.tools.url("/echo")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // Registration: malformed schema, duplicate name, metadata endpoint.
    let mut bad = http_tool("bad_schema", &sys.tools.url("/echo"));
    bad.schema.as_mut().unwrap().input_schema =
        toolplane_core::json::json_to_struct(&json!({"type": "object", "properties": {"q": {"type": "strnig"}}}));
    let e = sys.admin.register(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let field = &e.get_details_bad_request().unwrap().field_violations[0].field;
    assert!(field.starts_with("tool.schema.input_schema/properties/q"), "{field}");
    let e = sys
        .admin
        .register(http_tool("word_count", &sys.tools.url("/echo")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = sys
        .admin
        .register(http_tool("metadata", "http://169.254.169.254/latest/meta-data"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("tool.endpoint"), "{e:?}");

    // An agent may check only its own permissions.
    let mut perms = pb::permissions_client::PermissionsClient::new(
        toolplane_tests::grpc::channel(&sys.cp.url(), Some(&sys.agent_token)).await,
    );
    let own = perms
        .check(pb::CheckRequest {
            agent_id: String::new(),
            tool: Some(pb::check_request::Tool::ToolName("word_count".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(own.allowed, "{}", own.reason);
    let other = sys.admin.agent("someone-else").await;
    let e = perms
        .check(pb::CheckRequest {
            agent_id: other.id,
            tool: Some(pb::check_request::Tool::ToolName("word_count".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn tool_failures_come_back_as_result_statuses() {
    let mut sys = System::start().await;
    let mut ids = Vec::new();
    for (name, path) in [
        ("slow", "/slow"),
        ("failing", "/fail"),
        ("garbled", "/bad_json"),
        ("off_schema", "/bad_output"),
    ] {
        let mut tool = http_tool(name, &sys.tools.url(path));
        // Not idempotent: one attempt each, so the statuses show without retries.
        tool.idempotent = false;
        let t = sys.admin.register(tool).await.unwrap();
        sys.admin.grant_full(&sys.agent.id, &t.id).await;
        ids.push(name);
    }
    let mut ex = sys.executor().await;
    // Wait for the snapshot carrying the new grants.
    eventually("grants to reach the sidecar", WAIT, || {
        let mut ex = ex.clone();
        async move { ex.invoke(invoke_request("failing", &json!({"text": "a"}))).await.ok() }
    })
    .await;

    let status = |r: &pb::ToolResult| pb::ToolExecutionStatus::try_from(r.status).unwrap();
    let call = |name: &'static str| {
        let mut ex = ex.clone();
        async move {
            ex.invoke(invoke_request(name, &json!({"text": "a b"})))
                .await
                .unwrap()
                .into_inner()
                .result
                .unwrap()
        }
    };
    let r = call("slow").await;
    assert_eq!(status(&r), pb::ToolExecutionStatus::Timeout, "{}", r.error);
    assert!(
        r.duration_ms >= 1000 && r.duration_ms < 2500,
        "tool timeout is 1 s: {}",
        r.duration_ms
    );
    let r = call("failing").await;
    assert_eq!(status(&r), pb::ToolExecutionStatus::ExecutionError);
    assert!(r.error.contains("500"), "{}", r.error);
    let r = call("garbled").await;
    assert_eq!(status(&r), pb::ToolExecutionStatus::ExecutionError);
    assert!(r.error.contains("not valid JSON"), "{}", r.error);
    let r = call("off_schema").await;
    assert_eq!(status(&r), pb::ToolExecutionStatus::ValidationError);
    assert!(r.error.contains("output/words"), "{}", r.error);

    // The caller's deadline caps the tool's timeout.
    let mut req = tonic::Request::new(invoke_request("slow", &json!({"text": "a"})));
    req.set_timeout(Duration::from_millis(400));
    let started = Instant::now();
    let r = ex.invoke(req).await.unwrap().into_inner().result.unwrap();
    assert_eq!(status(&r), pb::ToolExecutionStatus::Timeout);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Batch: results stream back, each with its index; refusals are per item.
    let batch = pb::BatchInvokeRequest {
        calls: vec![
            invoke_request("word_count", &json!({"text": "one two"})),
            invoke_request("secret_tool", &json!({"text": "x"})),
            invoke_request("word_count", &json!({"text": 1})),
        ],
    };
    let mut stream = ex.batch_invoke(batch).await.unwrap().into_inner();
    let mut got = std::collections::BTreeMap::new();
    while let Some(item) = stream.message().await.unwrap() {
        got.insert(item.index, item.result.unwrap());
    }
    assert_eq!(got.len(), 3);
    assert_eq!(output(&got[&0]), json!({"words": 2}));
    assert_eq!(status(&got[&1]), pb::ToolExecutionStatus::PermissionDenied);
    assert_eq!(status(&got[&2]), pb::ToolExecutionStatus::ValidationError);
}

#[tokio::test]
async fn no_audit_event_is_lost_while_the_control_plane_is_down() {
    let sys = System::start().await;
    let System {
        db,
        cp,
        sidecar,
        agent_token,
        ..
    } = sys;
    let addr = cp.addr;
    assert!(cp.stop().await.success(), "control plane exits cleanly on SIGTERM");

    // The sidecar keeps serving from its snapshot.
    let mut ex = executor(&sidecar.url(), Some(&agent_token)).await;
    let mut invocations = Vec::new();
    for i in 0..5 {
        let r = ex
            .invoke(invoke_request("word_count", &json!({"text": format!("call {i}")})))
            .await
            .unwrap();
        invocations.push(uuid::Uuid::parse_str(&r.into_inner().result.unwrap().invocation_id).unwrap());
    }

    // Same address, same database: the sidecar reconnects and resends.
    let url = db.url.clone();
    let _cp = Proc::start(
        "toolplane-control-plane",
        &["--listen", &addr.to_string()],
        &[("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN), ("DATABASE_URL", &url)],
    )
    .await;
    let client = db.client().await;
    eventually("every invocation audited exactly once", Duration::from_secs(30), || {
        let (client, invocations) = (&client, &invocations);
        async move {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM audit_events WHERE action = 'tool_invoked' AND invocation_id = ANY($1)",
                    &[invocations],
                )
                .await
                .unwrap()
                .get(0);
            (n == 5).then_some(())
        }
    })
    .await;
    let dup: i64 = client
        .query_one("SELECT count(*) - count(DISTINCT invocation_id) FROM invocations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dup, 0);
}

/// grpcurl 1.8.6 (the one installable here) lists the services through reflection.
#[tokio::test]
async fn grpcurl_lists_services_and_checks_health() {
    let grpcurl = std::env::var("TOOLPLANE_GRPCURL")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/grpcurl").to_owned());
    assert!(
        std::path::Path::new(&grpcurl).exists(),
        "{grpcurl} is missing: `make tools` installs it"
    );
    let cp = control_plane(None).await;
    let out = tokio::process::Command::new(&grpcurl)
        .args(["-plaintext", &cp.addr.to_string(), "list"])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    for svc in [
        "toolplane.v1.ToolRegistry",
        "toolplane.v1.Identity",
        "toolplane.v1.Permissions",
        "toolplane.v1.SidecarSync",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.lines().any(|l| l == svc),
            "{svc} not listed:\n{listed}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = tokio::process::Command::new(&grpcurl)
        .args([
            "-plaintext",
            "-d",
            r#"{"service":"toolplane.v1.ToolRegistry"}"#,
            &cp.addr.to_string(),
            "grpc.health.v1.Health/Check",
        ])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"), "{out:?}");
    // Without a token the API itself stays closed.
    let out = tokio::process::Command::new(&grpcurl)
        .args([
            "-plaintext",
            "-d",
            r#"{"name":"x"}"#,
            &cp.addr.to_string(),
            "toolplane.v1.ToolRegistry/GetTool",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_credential_reaches_the_tool_and_nothing_else() {
    let mut sys = System::start().await;
    const SECRET: &str = "sk-cred-7f3a9b1c2d4e";
    let tool = sys
        .admin
        .registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name("word_count".into())),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap();
    sys.admin
        .registry
        .set_credential(pb::SetCredentialRequest {
            tool_id: tool.id.clone(),
            auth_type: pb::AuthType::ApiKey as i32,
            header_name: "X-Api-Key".into(),
            secret: SECRET.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ex = sys.executor().await;
    let tools = sys.tools.clone();
    let responses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    eventually("the credential to reach the tool as a header", WAIT, || {
        let (mut ex, tools, responses) = (ex.clone(), tools.clone(), responses.clone());
        async move {
            let r = ex
                .invoke(invoke_request("word_count", &json!({"text": "hello"})))
                .await
                .unwrap();
            responses.lock().unwrap().push(format!("{r:?}"));
            let last = tools.headers("/word_count").pop()?;
            (last.get("x-api-key")?.to_str().ok()? == SECRET).then_some(())
        }
    })
    .await;

    // Nowhere else: RPC responses, logs, audit and invocation records, the stored row.
    let mut seen = responses.lock().unwrap().clone();
    seen.push(format!("{tool:?}"));
    let listed = sys
        .admin
        .registry
        .list_tools(pb::ListToolsRequest::default())
        .await
        .unwrap();
    seen.push(format!("{listed:?}"));
    seen.push(sys.cp.logs());
    seen.push(sys.sidecar.logs());
    let client = sys.db.client().await;
    for table in ["audit_events", "invocations", "credentials", "tools", "tool_versions"] {
        for row in client
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
            .await
            .unwrap()
        {
            seen.push(row.get::<_, String>(0));
        }
    }
    for text in &seen {
        assert!(!text.contains(SECRET), "the credential leaked into: {text}");
    }
    let sealed: Vec<u8> = client
        .query_one("SELECT ciphertext FROM credentials", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!sealed.is_empty());
}

/// Polls an invocation through the sidecar until `accept` likes the outcome; returns
/// how long that took.
async fn time_until(
    ex: &pb::executor_client::ExecutorClient<toolplane_tests::grpc::Authed>,
    tool: &str,
    accept: impl Fn(&Result<pb::ToolResult, tonic::Status>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let r = ex
            .clone()
            .invoke(invoke_request(tool, &json!({"text": "a b c"})))
            .await
            .map(|r| r.into_inner().result.unwrap());
        if accept(&r) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "change never reached the sidecar; last: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_replicas_share_one_database_and_push_changes_within_a_second() {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp_a = control_plane(Some(&db.url)).await;
    let cp_b = control_plane(Some(&db.url)).await;
    let mut a = Admin::connect(&cp_a.url(), ADMIN_TOKEN).await;
    let mut b = Admin::connect(&cp_b.url(), ADMIN_TOKEN).await;

    let tool = a
        .register(http_tool("word_count", &tools.url("/word_count")))
        .await
        .unwrap();
    let seen_by_b = b
        .registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name("word_count".into())),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap();
    assert_eq!(seen_by_b.id, tool.id);
    let e = b
        .register(http_tool("word_count", &tools.url("/echo")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "names stay unique across replicas");

    let agent = a.agent("roamer").await;
    let agent_token = a.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = a.token(pb::Role::Sidecar, "").await;
    // The sidecar follows replica B; every change below is made through replica A.
    let sc = sidecar(&cp_b, &sidecar_token).await;
    let ex = executor(&sc.url(), Some(&agent_token)).await;
    time_until(
        &ex,
        "word_count",
        |r| matches!(r, Err(s) if s.code() == Code::PermissionDenied),
    )
    .await;

    a.grant_full(&agent.id, &tool.id).await;
    let granted = time_until(&ex, "word_count", |r| r.as_ref().is_ok_and(|r| r.tool_version == 1)).await;

    let mut v2 = http_tool("word_count", &tools.url("/word_count"));
    v2.id = tool.id.clone();
    v2.description = "Counts words, version two".into();
    a.registry
        .update_tool(pb::UpdateToolRequest { tool: Some(v2) })
        .await
        .unwrap();
    let updated = time_until(&ex, "word_count", |r| r.as_ref().is_ok_and(|r| r.tool_version == 2)).await;

    a.registry
        .set_tool_enabled(pb::SetToolEnabledRequest {
            tool_id: tool.id.clone(),
            enabled: false,
        })
        .await
        .unwrap();
    let disabled = time_until(
        &ex,
        "word_count",
        |r| matches!(r, Err(s) if s.code() == Code::PermissionDenied && s.message().contains("disabled")),
    )
    .await;
    println!(
        "change propagation through the other replica: grant {granted:?}, update {updated:?}, disable {disabled:?}"
    );
    for (what, took) in [("grant", granted), ("update", updated), ("disable", disabled)] {
        assert!(
            took < Duration::from_secs(1),
            "{what} took {took:?} to reach the sidecar"
        );
    }
    assert!(sc.logs().contains("installed snapshot"));
}

/// Waits until each of `invocations` has exactly one `tool_invoked` audit row.
async fn audited_exactly_once(db: &TestDb, invocations: &[uuid::Uuid]) {
    let client = db.client().await;
    let expected = i64::try_from(invocations.len()).unwrap();
    eventually("every invocation audited", Duration::from_secs(30), || {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT count(*), count(DISTINCT invocation_id) FROM audit_events \
                     WHERE action = 'tool_invoked' AND invocation_id = ANY($1)",
                    &[&invocations],
                )
                .await
                .unwrap();
            let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
            assert_eq!(rows, distinct, "an invocation was audited twice");
            (distinct == expected).then_some(())
        }
    })
    .await;
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM invocations WHERE invocation_id = ANY($1)",
            &[&invocations],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn unacked_events_survive_a_sidecar_crash() {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let tool = admin
        .register(http_tool("word_count", &tools.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("crasher").await;
    admin.grant_full(&agent.id, &tool.id).await;
    let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let spool = toolplane_tests::procs::spool_dir();
    let sc = toolplane_tests::procs::sidecar_with_spool(&cp, &sidecar_token, &spool).await;
    let ex = executor(&sc.url(), Some(&agent_token)).await;
    time_until(&ex, "word_count", |r| r.is_ok()).await;

    let addr = cp.addr;
    cp.stop().await;
    let mut invocations = Vec::new();
    for i in 0..5 {
        let r = ex
            .clone()
            .invoke(invoke_request("word_count", &json!({"text": format!("call {i}")})))
            .await
            .unwrap();
        invocations.push(uuid::Uuid::parse_str(&r.into_inner().result.unwrap().invocation_id).unwrap());
    }
    // The sidecar dies with everything still unacked; only its spool remembers.
    sc.kill().await;
    let url = db.url.clone();
    let env = [("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN), ("DATABASE_URL", url.as_str())];
    let cp = Proc::start("toolplane-control-plane", &["--listen", &addr.to_string()], &env).await;
    let restarted = toolplane_tests::procs::sidecar_with_spool(&cp, &sidecar_token, &spool).await;
    audited_exactly_once(&db, &invocations).await;
    assert!(
        restarted.logs().contains("resending unacked events from the spool"),
        "{}",
        restarted.logs()
    );
    std::fs::remove_dir_all(&spool).ok();
}

#[tokio::test]
async fn killing_the_control_plane_under_load_loses_no_invocation() {
    let sys = System::start().await;
    let System {
        db,
        cp,
        sidecar,
        agent_token,
        ..
    } = sys;
    let ex = executor(&sidecar.url(), Some(&agent_token)).await;
    let mut workers = Vec::new();
    for w in 0..8 {
        let ex = ex.clone();
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..40 {
                let req = invoke_request("word_count", &json!({"text": format!("worker {w} call {i}")}));
                let r = ex.clone().invoke(req).await.unwrap().into_inner().result.unwrap();
                ids.push(uuid::Uuid::parse_str(&r.invocation_id).unwrap());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let addr = cp.addr;
    cp.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = db.url.clone();
    let env = [("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN), ("DATABASE_URL", url.as_str())];
    let cp = Proc::start("toolplane-control-plane", &["--listen", &addr.to_string()], &env).await;
    let mut invocations = Vec::new();
    for w in workers {
        invocations.extend(w.await.unwrap());
    }
    assert_eq!(
        invocations.len(),
        320,
        "every call was served while the control plane was down"
    );
    audited_exactly_once(&db, &invocations).await;
    // Resent batches after the crash left the chains whole: no gap, no duplicate.
    let mut audit =
        pb::audit_client::AuditClient::new(toolplane_tests::grpc::channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    let v = audit
        .verify_audit_chain(pb::VerifyAuditChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.intact, "{}", v.problem);
    assert!(v.records_checked >= 320);
}

#[tokio::test]
async fn mcp_tools_are_called_through_one_reused_session() {
    let mut sys = System::start().await;
    let mcp = Proc::start("toolplane-test-mcp-server", &["--listen", "127.0.0.1:0"], &[]).await;
    let imported = sys
        .admin
        .registry
        .import_mcp_tools(pb::ImportMcpToolsRequest {
            endpoint: format!("{}/mcp", mcp.url()),
            name_prefix: "m.".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for t in &imported.created {
        sys.admin.grant_full(&sys.agent.id, &t.id).await;
    }
    let ex = sys.executor().await;
    let call = |tool: &'static str, params: Value| {
        let mut ex = ex.clone();
        async move {
            ex.invoke(invoke_request(tool, &params))
                .await
                .map(|r| r.into_inner().result.unwrap())
        }
    };
    time_until(&ex, "m.sessions", |r| r.is_ok()).await;
    let before = output(&call("m.sessions", json!({})).await.unwrap())["sessions"]
        .as_u64()
        .unwrap();
    for i in 0..5 {
        let r = call("m.sum", json!({"a": i, "b": 2})).await.unwrap();
        assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
        assert_eq!(output(&r), json!({"sum": i + 2}));
    }
    let echo = call("m.echo", json!({"message": "hello mcp"})).await.unwrap();
    assert_eq!(output(&echo)["content"][0]["text"], "hello mcp");
    let after = output(&call("m.sessions", json!({})).await.unwrap())["sessions"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before, "calls reuse the sidecar's MCP session");

    let e = call("m.sum", json!({"a": "two"})).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "MCP tools' input schemas are enforced too"
    );

    // The server goes away and comes back: the next call gets a fresh session.
    let addr = mcp.addr.to_string();
    mcp.stop().await;
    let down = call("m.sum", json!({"a": 1, "b": 1})).await.unwrap();
    assert_eq!(down.status, pb::ToolExecutionStatus::ExecutionError as i32);
    let _back = Proc::start("toolplane-test-mcp-server", &["--listen", &addr], &[]).await;
    let r = call("m.sum", json!({"a": 1, "b": 1})).await.unwrap();
    assert_eq!(output(&r), json!({"sum": 2}), "{}", r.error);
}

#[tokio::test]
async fn retries_backoff_and_the_circuit_breaker() {
    let mut sys = System::start().await;
    for (name, path, idempotent) in [
        ("flaky", "/flaky", true),
        ("flaky_write", "/flaky_write", false),
        ("throttled", "/throttled", true),
        ("broken", "/fail", true),
    ] {
        let mut tool = http_tool(name, &sys.tools.url(path));
        tool.idempotent = idempotent;
        let t = sys.admin.register(tool).await.unwrap();
        sys.admin.grant_full(&sys.agent.id, &t.id).await;
    }
    let ex = sys.executor().await;
    time_until(&ex, "throttled", |r| r.is_ok()).await;
    let call = |name: &'static str| {
        let mut ex = ex.clone();
        async move {
            ex.invoke(invoke_request(name, &json!({"text": "a"})))
                .await
                .unwrap()
                .into_inner()
                .result
                .unwrap()
        }
    };
    let status = |r: &pb::ToolResult| pb::ToolExecutionStatus::try_from(r.status).unwrap();

    // 503, 503, 200: an idempotent tool gets there on the third attempt.
    let r = call("flaky").await;
    assert_eq!(
        (status(&r), r.attempts),
        (pb::ToolExecutionStatus::Success, 3),
        "{}",
        r.error
    );
    assert_eq!(sys.tools.hits("/flaky"), 3);
    // A tool with side effects is never retried.
    let r = call("flaky_write").await;
    assert_eq!((status(&r), r.attempts), (pb::ToolExecutionStatus::ExecutionError, 1));
    assert_eq!(sys.tools.hits("/flaky_write"), 1);

    // 429 with Retry-After: 1 is honoured before the retry.
    let before = sys.tools.hits("/throttled");
    let r = call("throttled").await;
    let attempts = sys.tools.hits("/throttled") - before;
    if attempts == 2 {
        assert!(r.duration_ms >= 1000, "waited out Retry-After: {} ms", r.duration_ms);
    }
    assert_eq!(status(&r), pb::ToolExecutionStatus::Success, "{}", r.error);

    // A server that resets every connection: retried (idempotent), then an error.
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    let resets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = resets.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = resetter.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let t = sys
        .admin
        .register(http_tool("resetting", &format!("http://{reset_addr}/x")))
        .await
        .unwrap();
    sys.admin.grant_full(&sys.agent.id, &t.id).await;
    // The first answer (once the grant has arrived) is the one to look at: later calls
    // meet the circuit these failures open.
    let r = loop {
        match ex
            .clone()
            .invoke(invoke_request("resetting", &json!({"text": "a"})))
            .await
        {
            Ok(r) => break r.into_inner().result.unwrap(),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    assert_eq!(status(&r), pb::ToolExecutionStatus::ExecutionError, "{}", r.error);
    assert_eq!(r.attempts, 3, "connection resets are retried: {}", r.error);
    assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 3);

    // 500 is not retryable; five failures open the circuit, and then the tool is not
    // called at all.
    for _ in 0..5 {
        let r = call("broken").await;
        assert_eq!((status(&r), r.attempts), (pb::ToolExecutionStatus::ExecutionError, 1));
    }
    let r = call("broken").await;
    assert_eq!(status(&r), pb::ToolExecutionStatus::CircuitOpen, "{}", r.error);
    assert!(r.error.contains("retry in"), "{}", r.error);
    assert_eq!(sys.tools.hits("/fail"), 5, "an open circuit makes no upstream call");
}

/// A control plane (in memory), one rate-limited tool granted to one agent, and two
/// sidecars configured with `env`.
async fn rate_limited_fleet(rpm: u32, env: &[(&str, &str)]) -> (ToolServer, Proc, Vec<Proc>, String) {
    let tools = ToolServer::start().await;
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let mut tool = http_tool("limited", &tools.url("/word_count"));
    tool.requirements.as_mut().unwrap().rate_limit_rpm = rpm;
    let tool = admin.register(tool).await.unwrap();
    let agent = admin.agent("hammer").await;
    admin.grant_full(&agent.id, &tool.id).await;
    let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let mut sidecars = Vec::new();
    for _ in 0..2 {
        let spool = toolplane_tests::procs::spool_dir();
        sidecars.push(toolplane_tests::procs::sidecar_with(&cp, &sidecar_token, &spool, env).await);
    }
    (tools, cp, sidecars, agent_token)
}

/// `calls` invocations spread over the sidecars, 16 at a time; returns how many each
/// sidecar admitted. Every call must answer (SUCCESS or RATE_LIMITED).
async fn hammer(sidecars: &[Proc], token: &str, calls: usize) -> Vec<usize> {
    let mut clients = Vec::new();
    for sc in sidecars {
        let ex = executor(&sc.url(), Some(token)).await;
        time_until(&ex, "limited", |r| {
            matches!(r, Err(s) if s.code() != Code::Unavailable) || r.is_ok()
        })
        .await;
        clients.push(ex);
    }
    let admitted: Vec<std::sync::Arc<std::sync::atomic::AtomicUsize>> =
        clients.iter().map(|_| Default::default()).collect();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..16 {
        let (ex, counter, next) = (
            clients[w % clients.len()].clone(),
            admitted[w % clients.len()].clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < calls {
                let r = ex
                    .clone()
                    .invoke(invoke_request("limited", &json!({"text": "x"})))
                    .await
                    .unwrap();
                let r = r.into_inner().result.unwrap();
                match pb::ToolExecutionStatus::try_from(r.status).unwrap() {
                    pb::ToolExecutionStatus::Success => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    pb::ToolExecutionStatus::RateLimited => {
                        assert!(r.retry_after_ms > 0, "a rejected call says when to retry");
                        assert!(r.error.contains("retry in"), "{}", r.error);
                    }
                    other => panic!("unexpected {other:?}: {}", r.error),
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    admitted
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::SeqCst))
        .collect()
}

#[tokio::test]
async fn two_sidecars_share_one_rate_limit_through_redis() {
    const N: u32 = 100;
    let redis = test_redis();
    let (_tools, _cp, sidecars, token) = rate_limited_fleet(N, &[("REDIS_URL", &redis)]).await;
    // The warm-up calls in `hammer` (one per sidecar) count against the budget too.
    let started = Instant::now();
    let admitted: usize = hammer(&sidecars, &token, 300).await.iter().sum::<usize>() + 2;
    println!(
        "admitted {admitted} of 302 calls with a limit of {N}/min in {:?}",
        started.elapsed()
    );
    let n = N as usize;
    // The limit refills one call every 60/N seconds: a slow run (a loaded machine) may
    // admit those refills too, and no more.
    let refilled = (started.elapsed().as_secs_f64() * f64::from(N) / 60.0).ceil() as usize;
    assert!(
        admitted + n / 100 >= n && admitted <= n + refilled + 1,
        "admitted {admitted}, limit {n} plus {refilled} refilled"
    );
    for sc in &sidecars {
        assert!(!sc.logs().contains("Redis unavailable"), "{}", sc.logs());
    }
}

#[tokio::test]
async fn redis_going_away_fails_no_call_and_admits_only_the_local_share() {
    const N: u32 = 100;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = tokio::process::Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed (make test names the package)");
    let url = format!("redis://127.0.0.1:{port}");
    eventually("the throwaway Redis", WAIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()
    })
    .await;
    let env = [("REDIS_URL", url.as_str()), ("TOOLPLANE_RATE_LIMIT_LOCAL_SHARE", "0.3")];
    let (_tools, _cp, sidecars, token) = rate_limited_fleet(N, &env).await;
    let shared: usize = hammer(&sidecars, &token, 40).await.iter().sum();
    assert_eq!(shared + 2, 42, "well under the shared budget, everything passes");

    redis.kill().await.unwrap();
    let per_sidecar = hammer(&sidecars, &token, 200).await;
    println!("admitted per sidecar after Redis went away: {per_sidecar:?}");
    for (admitted, sc) in per_sidecar.iter().zip(&sidecars) {
        // Local share: 30 of the 100 per minute for each sidecar (+1 for refill).
        assert!(*admitted <= 31, "admitted {admitted}, local share 30");
        assert!(*admitted >= 25, "admitted {admitted}: the local limiter still serves");
        assert!(
            sc.logs().contains("Redis unavailable; deciding locally"),
            "{}",
            sc.logs()
        );
    }
}

#[tokio::test]
async fn cacheable_tools_answer_from_cache_with_one_upstream_call() {
    let mut sys = System::start().await;
    let mut tool = http_tool("cached_echo", &sys.tools.url("/echo"));
    tool.cacheable = true;
    tool.cache_ttl_seconds = 60;
    tool.cache_normalize_keys = true;
    tool.cache_ignored_params = vec!["api_key".into()];
    tool.schema.as_mut().unwrap().output_schema = None;
    let tool = sys.admin.register(tool).await.unwrap();
    sys.admin.grant_full(&sys.agent.id, &tool.id).await;
    let ex = sys.executor().await;
    time_until(&ex, "cached_echo", |r| r.is_ok()).await;
    let warm = sys.tools.hits("/echo");

    // 20 identical calls at once: one upstream call, everyone gets its answer.
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut ex = ex.clone();
        calls.push(tokio::spawn(async move {
            ex.invoke(invoke_request("cached_echo", &json!({"text": "Hello   World"})))
                .await
                .unwrap()
                .into_inner()
                .result
                .unwrap()
        }));
    }
    let mut hits = 0;
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
        assert_eq!(output(&r)["text"], "Hello   World");
        hits += usize::from(r.cache_hit);
    }
    assert_eq!(
        sys.tools.hits("/echo") - warm,
        1,
        "concurrent identical misses make one upstream call"
    );
    assert_eq!(hits, 19);

    // Same request in another form (case, spacing, an ignored parameter): still a hit.
    let r = ex
        .clone()
        .invoke(invoke_request(
            "cached_echo",
            &json!({"text": " hello world ", "api_key": "k-123"}),
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(r.cache_hit);
    assert_eq!(r.cost, "0", "a hit costs nothing");
    assert_eq!(sys.tools.hits("/echo") - warm, 1);

    // A different request misses.
    let r = ex
        .clone()
        .invoke(invoke_request("cached_echo", &json!({"text": "other"})))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(!r.cache_hit);
    assert_eq!(sys.tools.hits("/echo") - warm, 2);

    // Another agent has its own scope, and a hit is still permission-checked.
    let other = sys.admin.agent("other-agent").await;
    let other_token = sys.admin.token(pb::Role::Agent, &other.id).await;
    let mut other_ex = executor(&sys.sidecar.url(), Some(&other_token)).await;
    let e = loop {
        match other_ex
            .invoke(invoke_request("cached_echo", &json!({"text": "Hello World"})))
            .await
        {
            Err(s) if s.code() == Code::Unauthenticated => tokio::time::sleep(Duration::from_millis(20)).await,
            other => break other.unwrap_err(),
        }
    };
    assert_eq!(e.code(), Code::PermissionDenied, "no grant, no cached answer");

    let client = sys.db.client().await;
    let tool_id = uuid::Uuid::parse_str(&tool.id).unwrap();
    eventually("CACHE_HIT events in the audit trail", WAIT, || {
        let client = &client;
        async move {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM audit_events WHERE action = 'cache_hit' AND tool_id = $1",
                    &[&tool_id],
                )
                .await
                .unwrap()
                .get(0);
            (n == 20).then_some(())
        }
    })
    .await;
    // Each upstream fetch of the cacheable tool is a CACHE_MISS (warm-up, the one
    // fetch of the 20 concurrent calls, "other"), each also a TOOL_INVOKED.
    let upstream = i64::try_from(sys.tools.hits("/echo")).unwrap();
    eventually("a CACHE_MISS event per upstream fetch", WAIT, || {
        let client = &client;
        async move {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM audit_events WHERE action = 'cache_miss' AND tool_id = $1",
                    &[&tool_id],
                )
                .await
                .unwrap()
                .get(0);
            assert!(n <= upstream, "{n} misses for {upstream} upstream calls");
            (n == upstream).then_some(())
        }
    })
    .await;
}

async fn set_strategy(
    admin: &mut Admin,
    tool: &pb::Tool,
    fallbacks: &[&pb::Tool],
    conditions: &[pb::FallbackCondition],
    mode: pb::DegradationMode,
) -> Result<pb::FallbackStrategy, tonic::Status> {
    let strategy = pb::FallbackStrategy {
        tool_id: tool.id.clone(),
        fallback_tool_ids: fallbacks.iter().map(|t| t.id.clone()).collect(),
        conditions: conditions.iter().map(|c| *c as i32).collect(),
        mode: mode as i32,
        ..Default::default()
    };
    let r = admin
        .registry
        .set_fallback_strategy(pb::SetFallbackStrategyRequest {
            strategy: Some(strategy),
        })
        .await?;
    Ok(r.into_inner().strategy.unwrap())
}

#[tokio::test]
async fn fallbacks_pass_the_same_checks_and_are_audited() {
    let mut sys = System::start().await;
    let mut register = async |name: &str, path: &str, grant: bool| {
        let mut t = http_tool(name, &sys.tools.url(path));
        t.idempotent = false;
        let t = sys.admin.register(t).await.unwrap();
        if grant {
            sys.admin.grant_full(&sys.agent.id, &t.id).await;
        }
        t
    };
    let primary = register("primary", "/fail", true).await;
    let forbidden = register("forbidden_backup", "/echo", false).await;
    let backup = register("backup", "/word_count", true).await;
    let flaky = register("flaky_reader", "/flaky_write", true).await;
    use pb::{DegradationMode as Mode, FallbackCondition as Cond};

    let e = set_strategy(&mut sys.admin, &primary, &[&primary], &[], Mode::Full)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    set_strategy(&mut sys.admin, &primary, &[&forbidden, &backup], &[], Mode::Full)
        .await
        .unwrap();
    let got = sys
        .admin
        .registry
        .get_fallback_strategy(pb::GetFallbackStrategyRequest {
            tool_id: primary.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .strategy
        .unwrap();
    assert_eq!(got.fallback_tool_ids, [forbidden.id.clone(), backup.id.clone()]);

    let ex = sys.executor().await;
    let backup_id = backup.id.clone();
    time_until(&ex, "primary", |r| r.as_ref().is_ok_and(|r| r.tool_id == backup_id)).await;
    let r = ex
        .clone()
        .invoke(invoke_request("primary", &json!({"text": "one two three"})))
        .await
        .unwrap();
    let r = r.into_inner().result.unwrap();
    assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32);
    assert_eq!(
        (r.tool_id.as_str(), r.fallback_from_tool_id.as_str()),
        (backup.id.as_str(), primary.id.as_str())
    );
    assert_eq!(output(&r), json!({"words": 3}));
    assert_eq!(
        sys.tools.hits("/echo"),
        0,
        "a fallback the agent may not use is never called"
    );

    let client = sys.db.client().await;
    let (primary_id, forbidden_id) = (
        uuid::Uuid::parse_str(&primary.id).unwrap(),
        uuid::Uuid::parse_str(&forbidden.id).unwrap(),
    );
    eventually("FALLBACK_USED and the refused fallback in the audit trail", WAIT, || {
        let client = &client;
        async move {
            let used: i64 = client
                .query_one("SELECT count(*) FROM audit_events WHERE action = 'fallback_used'", &[])
                .await
                .unwrap()
                .get(0);
            let refused: i64 = client
                .query_one(
                    "SELECT count(*) FROM audit_events WHERE action = 'permission_checked' AND NOT success AND tool_id = $1",
                    &[&forbidden_id],
                )
                .await
                .unwrap()
                .get(0);
            let recorded: i64 = client
                .query_one("SELECT count(*) FROM invocations WHERE requested_tool_id = $1 AND tool_id <> $1", &[&primary_id])
                .await
                .unwrap()
                .get(0);
            (used >= 1 && refused >= 1 && recorded >= 1).then_some(())
        }
    })
    .await;

    // Only on timeouts: a plain error stands.
    set_strategy(&mut sys.admin, &primary, &[&backup], &[Cond::OnTimeout], Mode::Full)
        .await
        .unwrap();
    time_until(&ex, "primary", |r| r.as_ref().is_ok_and(|r| r.tool_id != backup_id)).await;

    // CACHED: the last good answer, marked stale, when the tool fails. The tool
    // answers 503 twice, then 200; a success seen before the strategy reached the
    // sidecar is not remembered, so wait for the first stale answer rather than
    // for the first success.
    set_strategy(&mut sys.admin, &flaky, &[], &[], Mode::Cached)
        .await
        .unwrap();
    let mut served_fresh = false;
    let started = Instant::now();
    let r = loop {
        let r = ex
            .clone()
            .invoke(invoke_request("flaky_reader", &json!({"text": "a b c"})))
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        if r.stale {
            break r;
        }
        served_fresh |= r.status == pb::ToolExecutionStatus::Success as i32;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never served stale; last: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(served_fresh, "a stale answer needs an earlier good one");
    assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32);
    assert_eq!(output(&r), json!({"words": 1}));
}

#[tokio::test]
async fn revoked_tokens_and_grants_stop_working_at_the_sidecar_within_a_second() {
    let mut sys = System::start().await;
    let ex = sys.executor().await;
    let grants = sys
        .admin
        .permissions
        .list_permissions(pb::ListPermissionsRequest {
            agent_id: sys.agent.id.clone(),
            tool_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .permissions;
    sys.admin
        .permissions
        .revoke(pb::RevokeRequest {
            permission_id: grants[0].id.clone(),
        })
        .await
        .unwrap();
    let took = time_until(
        &ex,
        "word_count",
        |r| matches!(r, Err(s) if s.code() == Code::PermissionDenied),
    )
    .await;
    assert!(took < Duration::from_secs(1), "grant revocation took {took:?}");
    let e = sys
        .admin
        .permissions
        .revoke(pb::RevokeRequest {
            permission_id: grants[0].id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // A second token for the same agent, then revoke it.
    let r = sys
        .admin
        .identity
        .issue_token(pb::IssueTokenRequest {
            role: pb::Role::Agent as i32,
            agent_id: sys.agent.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ex2 = executor(&sys.sidecar.url(), Some(&r.token)).await;
    time_until(
        &ex2,
        "word_count",
        |r| matches!(r, Err(s) if s.code() == Code::PermissionDenied),
    )
    .await;
    sys.admin
        .identity
        .revoke_token(pb::RevokeTokenRequest {
            token_id: r.token_id.clone(),
        })
        .await
        .unwrap();
    let took = time_until(
        &ex2,
        "word_count",
        |r| matches!(r, Err(s) if s.code() == Code::Unauthenticated),
    )
    .await;
    assert!(took < Duration::from_secs(1), "token revocation took {took:?}");
    // The first token still works.
    time_until(
        &ex,
        "word_count",
        |r| matches!(r, Err(s) if s.code() == Code::PermissionDenied),
    )
    .await;
}

/// A snapshot far above gRPC's default 4 MiB message limit still reaches the sidecar.
#[tokio::test]
async fn a_large_registry_reaches_the_sidecar() {
    let sys = System::start().await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let url = sys.cp.url();
        tasks.push(tokio::spawn(async move {
            let mut admin = Admin::connect(&url, ADMIN_TOKEN).await;
            for i in 0..150 {
                let mut t = http_tool(&format!("bulk_{w}_{i}"), "http://127.0.0.1:9/x");
                t.description = format!("{i} ").repeat(1500);
                admin.register(t).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last = Admin::connect(&sys.cp.url(), ADMIN_TOKEN).await;
    let tool = last
        .register(http_tool("after_bulk", &sys.tools.url("/word_count")))
        .await
        .unwrap();
    last.grant_full(&sys.agent.id, &tool.id).await;
    let ex = sys.executor().await;
    time_until(&ex, "after_bulk", |r| r.is_ok()).await;
}

#[tokio::test]
async fn the_partial_strategy_returns_schema_breaking_output_marked_partial() {
    let mut sys = System::start().await;
    let tool = sys
        .admin
        .register(http_tool("loose_counter", &sys.tools.url("/bad_output")))
        .await
        .unwrap();
    sys.admin.grant_full(&sys.agent.id, &tool.id).await;
    let mut ex = sys.executor().await;
    let call = || invoke_request("loose_counter", &json!({"text": "a b"}));
    // Without a strategy: VALIDATION_ERROR, and the bad output is not passed on.
    let r = eventually("the grant at the sidecar", WAIT, || {
        let mut ex = ex.clone();
        async move { ex.invoke(call()).await.ok() }
    })
    .await
    .into_inner()
    .result
    .unwrap();
    assert_eq!(r.status, pb::ToolExecutionStatus::ValidationError as i32);
    assert_eq!(output(&r), Value::Null);

    set_strategy(
        &mut sys.admin,
        &tool,
        &[],
        &[pb::FallbackCondition::OnDataValidationFailure],
        pb::DegradationMode::Partial,
    )
    .await
    .unwrap();
    let r = eventually("the strategy at the sidecar", WAIT, || {
        let mut ex = ex.clone();
        async move {
            let r = ex.invoke(call()).await.ok()?.into_inner().result?;
            (r.status == pb::ToolExecutionStatus::PartialSuccess as i32).then_some(r)
        }
    })
    .await;
    assert_eq!(output(&r), json!({"words": "many"}));
    assert!(
        r.error.contains("output schema") && r.error.contains("output/words"),
        "{}",
        r.error
    );
    let rows = sys.audit_rows(&r.invocation_id, 2).await;
    let actions: Vec<String> = rows.iter().map(|r| r.get("action")).collect();
    assert!(actions.contains(&"fallback_used".to_owned()), "{actions:?}");
    let _ = &mut ex;
}

#[tokio::test]
async fn a_batch_answers_its_cache_hits_first() {
    let mut sys = System::start().await;
    let mut tool = http_tool("cached_words", &sys.tools.url("/word_count"));
    tool.cacheable = true;
    tool.cache_ttl_seconds = 300;
    let tool = sys.admin.register(tool).await.unwrap();
    sys.admin.grant_full(&sys.agent.id, &tool.id).await;
    let mut ex = sys.executor().await;
    let warm = |t: &str| invoke_request("cached_words", &json!({"text": t}));
    eventually("the grant at the sidecar", WAIT, || {
        let mut ex = ex.clone();
        async move { ex.invoke(warm("seen before")).await.ok() }
    })
    .await;
    // 30 misses first in the request, then 10 hits.
    let mut calls: Vec<pb::InvokeRequest> = (0..30).map(|i| warm(&format!("new text {i}"))).collect();
    calls.extend((0..10).map(|_| warm("seen before")));
    let mut stream = ex
        .batch_invoke(pb::BatchInvokeRequest { calls })
        .await
        .unwrap()
        .into_inner();
    let mut order = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        let r = item.result.unwrap();
        assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
        order.push((item.index, r.cache_hit));
    }
    assert_eq!(order.len(), 40);
    assert!(
        order[..10].iter().all(|(i, hit)| *hit && *i >= 30),
        "the hits (indices 30..40) come first: {order:?}"
    );
}
