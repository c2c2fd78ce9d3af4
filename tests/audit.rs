//! The audit trail end to end: real control plane on PostgreSQL, a real sidecar and
//! tool. Redaction (a secret sent as a parameter appears nowhere), streaming queries
//! with cursors, compliance reports through toolctl, usage statistics, the
//! application role's limits, and tampering found and named by `VerifyAuditChain`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, Authed, channel, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, bin, control_plane, sidecar};
use toolplane_tests::tool_server::ToolServer;

const WAIT: Duration = Duration::from_secs(20);
/// Sent as parameters; none of them may be stored, logged or echoed.
const SECRETS: [&str; 3] = [
    "sk_live_51HxYzAbCdEfGhIjKlMnOp",
    "AKIAIOSFODNN7EXAMPLE",
    "hunter2-but-longer-and-secret",
];

struct Trail {
    db: TestDb,
    _tools: ToolServer,
    cp: Proc,
    sidecar: Proc,
    admin: Admin,
    audit: pb::audit_client::AuditClient<Authed>,
    agent: pb::Agent,
    phi: pb::Tool,
    /// Successful calls the agent made.
    calls: usize,
}

/// A HIPAA tool on CONFIDENTIAL data granted to one agent, a tool it may not use, and
/// a few calls: successes carrying secrets, a denial, a schema error.
async fn trail() -> Trail {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let mut phi = http_tool("phi_lookup", &tools.url("/word_count"));
    phi.compliance_frameworks = vec!["HIPAA".to_owned()];
    phi.requirements.as_mut().unwrap().data_sensitivity = pb::DataSensitivity::Confidential as i32;
    let phi = admin.register(phi).await.unwrap();
    // A credential change is an admin event of this HIPAA tool too.
    admin
        .registry
        .set_credential(pb::SetCredentialRequest {
            tool_id: phi.id.clone(),
            secret: "phi-api-secret-value-0123456789".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .register(http_tool("forbidden", &tools.url("/echo")))
        .await
        .unwrap();
    let agent = admin.agent("auditee").await;
    admin.grant_full(&agent.id, &phi.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar(&cp, &sidecar_token).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    let params = json!({"text": format!("look up {} now", SECRETS[1]), "api_key": SECRETS[0], "password": SECRETS[2]});
    let first = eventually("the sidecar to serve", WAIT, || {
        let (mut ex, params) = (ex.clone(), params.clone());
        async move { ex.invoke(invoke_request("phi_lookup", &params)).await.ok() }
    })
    .await;
    assert_eq!(
        first.into_inner().result.unwrap().status,
        pb::ToolExecutionStatus::Success as i32
    );
    let calls = 5;
    for _ in 1..calls {
        let r = ex.clone().invoke(invoke_request("phi_lookup", &params)).await.unwrap();
        assert_eq!(
            r.into_inner().result.unwrap().status,
            pb::ToolExecutionStatus::Success as i32
        );
    }
    let denied = ex
        .clone()
        .invoke(invoke_request("forbidden", &params))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let too_long = json!({"text": "x".repeat(120), "api_key": SECRETS[0], "password": SECRETS[2]});
    let invalid = ex
        .clone()
        .invoke(invoke_request("phi_lookup", &too_long))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    for e in [&denied, &invalid] {
        for s in SECRETS {
            assert!(!e.message().contains(s), "an error echoed a secret: {}", e.message());
        }
    }
    let audit = pb::audit_client::AuditClient::new(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    let t = Trail {
        db,
        _tools: tools,
        cp,
        sidecar: sc,
        admin,
        audit,
        agent,
        phi,
        calls,
    };
    // Every event of those calls reached PostgreSQL.
    let client = t.db.client().await;
    eventually("the calls' audit events in PostgreSQL", WAIT, || {
        let client = &client;
        async move {
            let n: i64 = client
                .query_one("SELECT count(*) FROM audit_events WHERE sidecar_id <> ''", &[])
                .await
                .unwrap()
                .get(0);
            // 5 invocations, 1 denial, 1 schema error.
            (n >= 7).then_some(())
        }
    })
    .await;
    t
}

async fn query(
    audit: &mut pb::audit_client::AuditClient<Authed>,
    req: pb::QueryAuditTrailRequest,
) -> Vec<pb::QueryAuditTrailResponse> {
    let mut stream = audit.query_audit_trail(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        out.push(r);
    }
    out
}

fn toolctl(cp: &Proc, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("toolctl"))
        .args(["--server", &cp.url()])
        .args(args)
        .env("TOOLPLANE_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_trail_streams_reports_and_counts_and_holds_no_secret() {
    let mut t = trail().await;

    // Streaming with a resumable cursor: three records, then the rest from the cursor.
    let all = query(&mut t.audit, pb::QueryAuditTrailRequest::default()).await;
    assert!(all.len() >= 7 + 4, "admin events and call events: {}", all.len());
    let first3 = query(
        &mut t.audit,
        pb::QueryAuditTrailRequest {
            limit: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first3.len(), 3);
    let rest = query(
        &mut t.audit,
        pb::QueryAuditTrailRequest {
            cursor: first3[2].cursor.clone(),
            ..Default::default()
        },
    )
    .await;
    let seqs = |v: &[pb::QueryAuditTrailResponse]| {
        v.iter()
            .map(|r| r.record.as_ref().unwrap().sequence)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        [seqs(&first3), seqs(&rest)].concat(),
        seqs(&all),
        "resuming loses and repeats nothing"
    );

    // Filters: the agent's denials, and its successful invocations.
    let denials = query(
        &mut t.audit,
        pb::QueryAuditTrailRequest {
            agent_id: t.agent.id.clone(),
            action: pb::AuditAction::PermissionChecked as i32,
            success: Some(false),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(denials.len(), 1);
    let invoked = query(
        &mut t.audit,
        pb::QueryAuditTrailRequest {
            tool_id: t.phi.id.clone(),
            action: pb::AuditAction::ToolInvoked as i32,
            task_id: "task-1".to_owned(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(invoked.len(), t.calls);
    let e = invoked[0].record.as_ref().unwrap().event.as_ref().unwrap();
    assert_eq!(e.compliance_frameworks, ["HIPAA"]);
    assert_eq!(e.data_classification, pb::DataSensitivity::Confidential as i32);
    assert_eq!(e.result.as_ref().unwrap().digest.len(), 64);
    let bad_period = t
        .audit
        .query_audit_trail(pb::QueryAuditTrailRequest {
            since: Some(prost_types::Timestamp {
                seconds: 2_000_000_000,
                nanos: 0,
            }),
            until: Some(prost_types::Timestamp {
                seconds: 1_000_000_000,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_period.code(), Code::InvalidArgument);

    // The compliance report, and its exports through toolctl.
    let report = t
        .audit
        .generate_compliance_report(pb::GenerateComplianceReportRequest {
            framework: "HIPAA".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        report.total_events,
        t.calls as u64 + 4,
        "invocations + the schema error + the tool's registration, credential and grant"
    );
    let by_action = &toolplane_core::json::struct_to_json(report.report.clone())["by_action"];
    for admin_action in ["tool_registered", "credential_set", "permission_granted"] {
        assert_eq!(by_action[admin_action], 1, "{admin_action} in {by_action}");
    }
    assert_eq!(report.sensitive_accesses, t.calls as u64);
    assert_eq!(report.agents, [t.agent.id.clone()]);
    assert_eq!(report.tools, [t.phi.id.clone()]);
    let out = toolctl(&t.cp, &["audit", "report", "--framework", "HIPAA"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["totals"]["sensitive_accesses"], t.calls as u64);
    let out = toolctl(&t.cp, &["audit", "report", "--framework", "HIPAA", "--format", "csv"]);
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("agent_id,tool_id,data_classification,events")
    );
    let lines: Vec<&str> = lines.collect();
    // The tool's registration and credential change, which name no agent, have a line
    // of their own.
    assert!(
        lines.contains(&format!(",{},confidential,2,2,0,0,0,0", t.phi.id).as_str()),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{},{},confidential,{}", t.agent.id, t.phi.id, t.calls + 2))),
        "the calls, the schema error and the grant: {lines:?}"
    );

    // Usage statistics, maintained as the events arrived.
    let rows = t
        .audit
        .get_usage_statistics(pb::GetUsageStatisticsRequest {
            agent_id: t.agent.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rows;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].invocations, rows[0].successes),
        (t.calls as u64, t.calls as u64)
    );
    assert_eq!(rows[0].total_cost, "0.01", "5 calls at 0.0020");
    assert!(rows[0].average_duration_ms > 0.0);

    // Agents may not read the trail.
    let agent_token = t.admin.token(pb::Role::Agent, &t.agent.id).await;
    let mut as_agent = pb::audit_client::AuditClient::new(channel(&t.cp.url(), Some(&agent_token)).await);
    let e = as_agent
        .query_audit_trail(pb::QueryAuditTrailRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // The secrets are in no audit row, invocation record, or log line.
    let client = t.db.client().await;
    for s in SECRETS {
        let n: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM audit_events a WHERE a::text LIKE '%' || $1 || '%') \
                 + (SELECT count(*) FROM invocations i WHERE i::text LIKE '%' || $1 || '%')",
                &[&s],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{s} was stored");
        assert!(
            !t.cp.logs().contains(s) && !t.sidecar.logs().contains(s),
            "{s} was logged"
        );
    }
}

/// Runs `sql` as a superuser with triggers off (what an attacker with database access
/// could do), then verifies the whole trail.
async fn tamper(
    t: &mut Trail,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> pb::VerifyAuditChainResponse {
    let client = t.db.client().await;
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    client.execute(sql, params).await.unwrap();
    verify(t).await
}

async fn verify(t: &mut Trail) -> pb::VerifyAuditChainResponse {
    t.audit
        .verify_audit_chain(pb::VerifyAuditChainRequest::default())
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn tampering_is_found_and_the_first_bad_record_named() {
    let mut t = trail().await;
    let ok = verify(&mut t).await;
    assert!(ok.intact, "{}", ok.problem);
    assert_eq!(ok.chains_checked, 2, "the control plane's chain and the sidecar's");
    let client = t.db.client().await;
    let chain: Vec<(uuid::Uuid, i64, String)> = client
        .query(
            "SELECT event_id, chain_seq, sanitized_parameters::text FROM audit_events WHERE chain LIKE 'sidecar:%' ORDER BY chain_seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(chain.len() >= 7);
    let (victim, _, original) = chain[2].clone();

    // An edited payload.
    let v = tamper(
        &mut t,
        "UPDATE audit_events SET sanitized_parameters = '{\"text\": \"nothing to see\"}' WHERE event_id = $1",
        &[&victim],
    )
    .await;
    assert!(!v.intact);
    assert_eq!(v.first_bad_event_id, victim.to_string());
    assert!(v.problem.contains("edited"), "{}", v.problem);
    let v = tamper(
        &mut t,
        "UPDATE audit_events SET sanitized_parameters = $2::text::jsonb WHERE event_id = $1",
        &[&victim, &original],
    )
    .await;
    assert!(v.intact, "restored: {}", v.problem);

    // A deleted record: the next one is named, the gap described.
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    client
        .execute(
            "CREATE TABLE saved AS SELECT * FROM audit_events WHERE event_id = $1",
            &[&victim],
        )
        .await
        .unwrap();
    let v = tamper(&mut t, "DELETE FROM audit_events WHERE event_id = $1", &[&victim]).await;
    assert!(!v.intact);
    assert_eq!(v.first_bad_event_id, chain[3].0.to_string());
    assert!(v.problem.contains("missing link"), "{}", v.problem);
    let v = tamper(&mut t, "INSERT INTO audit_events SELECT * FROM saved", &[]).await;
    assert!(v.intact, "restored: {}", v.problem);

    // Two records swapped: the one now out of place is named.
    let (a, pa, _) = chain[3].clone();
    let (b, pb_, _) = chain[4].clone();
    let swap = "UPDATE audit_events SET chain_seq = CASE WHEN event_id = $1 THEN $4::bigint ELSE $3::bigint END WHERE event_id IN ($1, $2)";
    let v = tamper(&mut t, swap, &[&a, &b, &pa, &pb_]).await;
    assert!(!v.intact);
    assert_eq!(v.first_bad_event_id, b.to_string());
    assert!(v.problem.contains("broken link"), "{}", v.problem);
    let v = tamper(&mut t, swap, &[&a, &b, &pb_, &pa]).await;
    assert!(v.intact, "restored: {}", v.problem);

    // The newest record cut off the end of the chain.
    let (last, _, _) = chain.last().unwrap().clone();
    let v = tamper(&mut t, "DELETE FROM audit_events WHERE event_id = $1", &[&last]).await;
    assert!(!v.intact);
    assert!(v.problem.contains("missing (the chain's head"), "{}", v.problem);
    let out = toolctl(&t.cp, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(4), "toolctl exits 4 on a broken chain");
}

#[tokio::test]
async fn the_application_role_may_append_but_never_change_the_trail() {
    let db = TestDb::create().await;
    let _store = toolplane_control_plane::storage::PostgresStore::connect(&db.url, 1)
        .await
        .unwrap();
    let client = db.client().await;
    client.batch_execute("SET ROLE toolplane_app").await.unwrap();
    for sql in [
        "UPDATE audit_events SET success = false",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ] {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert!(format!("{e:?}").contains("permission denied"), "{sql}: {e:?}");
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM audit_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "it may read");
    // Partitions exist for this month and the next two.
    client.batch_execute("RESET ROLE").await.unwrap();
    let parts: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parts, 4, "three months and the default partition");
}
