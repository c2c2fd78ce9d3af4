//! Secrets stay out of the audit trail, the logs and the caller's errors: a tool that
//! refuses its credential and quotes it back (under an `ON_AUTH_FAILURE` / `FULL`
//! fallback, and on a retried 503), and parameters whose secrets only a compound key
//! name, a `$ref`'d `writeOnly` property or an operator's configured key or pattern
//! give away. Real PostgreSQL, the real control plane and sidecar (logging at debug), a
//! real HTTP tool.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use toolplane_core::json::json_to_struct;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;

const WAIT: Duration = Duration::from_secs(20);

/// The tools' credential. Its pieces hold letters outside hex, so no id or digest in a
/// row can contain them by chance; a piece of it anywhere is a leak.
const SECRET: &str = "credQ/zx7w+Kyv9:mP4t";
const SECRET_PIECES: &[&str] = &["credQ", "zx7w", "Kyv9", "mP4t"];
/// Parameter values only their key name or their schema mark as secret.
const DB_PASSWORD: &str = "dbpw-Hunter-Zq81";
const PIN: &str = "pin-Wx42-Kq";

/// A tool whose input has a `$ref`'d object with a `writeOnly` property.
fn tool_with_login(name: &str, endpoint: &str) -> pb::Tool {
    let input = json!({
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string", "maxLength": 100},
            "login": {"$ref": "#/$defs/login"},
        },
        "$defs": {
            "login": {"type": "object", "properties": {"user": {"type": "string"}, "pin": {"$ref": "#/$defs/pin"}}},
            "pin": {"type": "string", "writeOnly": true},
        },
    });
    let mut tool = http_tool(name, endpoint);
    if let Some(schema) = tool.schema.as_mut() {
        schema.input_schema = json_to_struct(&input);
    }
    tool
}

async fn register_granted(admin: &mut Admin, agent: &pb::Agent, tool: pb::Tool) -> pb::Tool {
    let tool = admin.register(tool).await.unwrap();
    admin.grant_full(&agent.id, &tool.id).await;
    tool
}

async fn set_credential(admin: &mut Admin, tool: &pb::Tool) {
    admin
        .registry
        .set_credential(pb::SetCredentialRequest {
            tool_id: tool.id.clone(),
            auth_type: pb::AuthType::ApiKey as i32,
            // Sent as `authorization: Bearer <secret>`.
            header_name: String::new(),
            secret: SECRET.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn assert_no_secret(what: &str, text: &str) {
    for piece in SECRET_PIECES.iter().chain([&DB_PASSWORD, &PIN]) {
        assert!(!text.contains(piece), "{piece:?} leaked into {what}: {text}");
    }
}

#[tokio::test]
async fn an_echoed_credential_and_secret_parameters_reach_no_row_log_or_error() {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("agent-redaction").await;
    let primary = register_granted(
        &mut admin,
        &agent,
        tool_with_login("primary", &tools.url("/unauthorized_echo")),
    )
    .await;
    let backup = register_granted(&mut admin, &agent, http_tool("backup", &tools.url("/word_count"))).await;
    // Idempotent: its 503s are retried, each retry logged at debug with the error.
    let lonely = register_granted(&mut admin, &agent, http_tool("lonely", &tools.url("/unavailable_echo"))).await;
    set_credential(&mut admin, &primary).await;
    set_credential(&mut admin, &lonely).await;
    admin
        .registry
        .set_fallback_strategy(pb::SetFallbackStrategyRequest {
            strategy: Some(pb::FallbackStrategy {
                tool_id: primary.id.clone(),
                fallback_tool_ids: vec![backup.id.clone()],
                conditions: vec![pb::FallbackCondition::OnAuthFailure as i32],
                mode: pb::DegradationMode::Full as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    // Everything is set before the sidecar starts, so its first snapshot has it all.
    let sidecar = sidecar_with(
        &cp,
        &sidecar_token,
        &spool_dir(),
        &[
            ("RUST_LOG", "debug"),
            ("TOOLPLANE_BREAKER_FAILURES", "100"),
            // An operator's additions: a key name and a pattern.
            ("TOOLPLANE_REDACT_KEYS", "badge number"),
            ("TOOLPLANE_REDACT_PATTERNS", "ticket-[A-Z]{4}"),
        ],
    )
    .await;
    let ex = executor(&sidecar.url(), Some(&agent_token)).await;
    eventually("the sidecar to serve from a snapshot", WAIT, || {
        let mut ex = ex.clone();
        async move {
            match ex.invoke(invoke_request("backup", &json!({"text": "warm up"}))).await {
                Err(s) if s.code() == Code::Unavailable => None,
                _ => Some(()),
            }
        }
    })
    .await;

    // The primary refuses the credential and quotes it; the backup answers.
    let params = json!({
        "text": "one two ticket-QRSX",
        "db_password": DB_PASSWORD,
        "login": {"user": "ann", "pin": PIN},
        "badgeNumber": "B-7731",
    });
    let r = ex
        .clone()
        .invoke(invoke_request("primary", &params))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{r:?}");
    assert_eq!(
        (r.tool_id.as_str(), r.fallback_from_tool_id.as_str()),
        (backup.id.as_str(), primary.id.as_str())
    );
    let sent = tools.headers("/unauthorized_echo");
    assert_eq!(
        sent.last()
            .and_then(|h| h.get("authorization"))
            .map(|v| v.to_str().unwrap().to_owned()),
        Some(format!("Bearer {SECRET}")),
        "the primary got the credential (and so could echo it)"
    );

    // A tool with no fallback: the caller's error says what happened, without the secret.
    let r = ex
        .clone()
        .invoke(invoke_request("lonely", &json!({"text": "x"})))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.status, pb::ToolExecutionStatus::ExecutionError as i32, "{r:?}");
    assert_eq!(r.attempts, 3, "{r:?}");
    assert!(r.error.contains("HTTP 503"), "{}", r.error);
    assert!(r.error.contains("[REDACTED]"), "{}", r.error);
    assert_no_secret("the caller's error", &format!("{r:?}"));

    let client = db.client().await;
    let (primary_id, lonely_id) = (
        uuid::Uuid::parse_str(&primary.id).unwrap(),
        uuid::Uuid::parse_str(&lonely.id).unwrap(),
    );
    eventually("the fallback and the failed call in the audit trail", WAIT, || {
        let client = &client;
        async move {
            let fallbacks: i64 = client
                .query_one("SELECT count(*) FROM audit_events WHERE action = 'fallback_used'", &[])
                .await
                .unwrap()
                .get(0);
            let invocations: i64 = client
                .query_one(
                    "SELECT count(*) FROM invocations WHERE requested_tool_id = ANY($1)",
                    &[&vec![primary_id, lonely_id]],
                )
                .await
                .unwrap()
                .get(0);
            (fallbacks >= 1 && invocations >= 2).then_some(())
        }
    })
    .await;

    // The fallback's detail names the primary's failure, scrubbed.
    let detail: String = client
        .query_one("SELECT detail FROM audit_events WHERE action = 'fallback_used'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        detail.contains("fell back from primary to backup")
            && detail.contains("HTTP 401")
            && detail.contains("[REDACTED]"),
        "{detail}"
    );
    // The parameters as stored: the compound key, the $ref'd writeOnly and the
    // operator's key and pattern redacted.
    let stored: Value = client
        .query_one(
            "SELECT sanitized_parameters FROM audit_events WHERE tool_id = $1 AND action = 'fallback_used'",
            &[&uuid::Uuid::parse_str(&backup.id).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        json!({
            "text": "one two [REDACTED]",
            "db_password": "[REDACTED]",
            "login": {"user": "ann", "pin": "[REDACTED]"},
            "badgeNumber": "[REDACTED]",
        })
    );

    for table in ["audit_events", "invocations"] {
        let rows = client
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
            .await
            .unwrap();
        assert!(!rows.is_empty(), "{table}");
        for row in rows {
            assert_no_secret(table, &row.get::<_, String>(0));
        }
    }
    let sidecar_logs = sidecar.logs();
    assert!(
        sidecar_logs.contains("retrying") && sidecar_logs.contains("[REDACTED]"),
        "the sidecar logged the retries of the 503s at debug, scrubbed: {sidecar_logs}"
    );
    assert_no_secret("the sidecar's logs", &sidecar_logs);
    assert_no_secret("the control plane's logs", &cp.logs());
}
