//! Identity and permissions end to end: daily budgets shared by two sidecars through
//! Redis, time windows, access requests, attempts to act as someone else, and mutual
//! TLS with certificates made here. The real binaries, real Redis, real PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{Timelike, Utc};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, Authed, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, sidecar, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, test_redis};

const WAIT: Duration = Duration::from_secs(20);

/// One registered tool, one agent (no grants yet), and the agent's token.
struct Setup {
    tools: ToolServer,
    cp: Proc,
    admin: Admin,
    tool: pb::Tool,
    agent: pb::Agent,
    token: String,
    sidecar_token: String,
}

async fn setup(database_url: Option<&str>) -> Setup {
    let tools = ToolServer::start().await;
    let cp = control_plane(database_url).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let tool = admin
        .register(http_tool("counted", &tools.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("agent-under-test").await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    Setup {
        tools,
        cp,
        admin,
        tool,
        agent,
        token,
        sidecar_token,
    }
}

impl Setup {
    async fn grant(&mut self, p: pb::Permission) -> pb::Permission {
        let p = pb::Permission {
            agent_id: self.agent.id.clone(),
            tool_id: self.tool.id.clone(),
            ..p
        };
        let r = self
            .admin
            .permissions
            .grant(pb::GrantRequest { permission: Some(p) })
            .await;
        r.unwrap().into_inner().permission.unwrap()
    }

    async fn agent_channel(&self) -> Authed {
        toolplane_tests::grpc::channel(&self.cp.url(), Some(&self.token)).await
    }
}

/// Waits until the sidecar serves from a snapshot (an unknown tool is NOT_FOUND, not
/// UNAVAILABLE), without touching any budget.
async fn ready(sidecar: &Proc, token: &str) {
    let ex = executor(&sidecar.url(), Some(token)).await;
    eventually("the sidecar to serve", WAIT, || {
        let mut ex = ex.clone();
        async move {
            let r = ex.invoke(invoke_request("no_such_tool", &json!({"text": "x"}))).await;
            matches!(r, Err(s) if s.code() == Code::NotFound).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_daily_budget_is_counted_exactly_once_across_two_sidecars() {
    const N: usize = 20;
    let mut s = setup(None).await;
    let grant = s
        .grant(pb::Permission {
            r#type: pb::PermissionType::LimitedInvocations as i32,
            max_invocations_per_day: N as u32,
            time_zone: "Europe/Berlin".to_owned(),
            ..Default::default()
        })
        .await;
    let redis = test_redis();
    let mut sidecars = Vec::new();
    for _ in 0..2 {
        let sc = sidecar_with(&s.cp, &s.sidecar_token, &spool_dir(), &[("REDIS_URL", &redis)]).await;
        ready(&sc, &s.token).await;
        sidecars.push(sc);
    }
    let (ok, exhausted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for w in 0..16 {
        let ex = executor(&sidecars[w % 2].url(), Some(&s.token)).await;
        let (ok, exhausted) = (ok.clone(), exhausted.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..5 {
                match ex
                    .clone()
                    .invoke(invoke_request("counted", &json!({"text": "a b"})))
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner().result.unwrap();
                        assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                        assert!(e.message().contains("resets at"), "{}", e.message());
                        let wait = e.get_details_retry_info().and_then(|r| r.retry_delay).unwrap();
                        assert!(
                            wait > Duration::ZERO && wait <= Duration::from_secs(25 * 3600),
                            "{wait:?}"
                        );
                        exhausted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::SeqCst), N, "exactly the budget succeeds");
    assert_eq!(exhausted.load(Ordering::SeqCst), 80 - N);
    assert_eq!(s.tools.hits("/word_count"), N, "refused calls never reach the tool");

    // Check explains which grant allows it and that it is metered.
    let mut perms = pb::permissions_client::PermissionsClient::new(s.agent_channel().await);
    let check = perms
        .check(pb::CheckRequest {
            agent_id: String::new(),
            tool: Some(pb::check_request::Tool::ToolName("counted".to_owned())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(check.allowed);
    assert_eq!(check.permission_id, grant.id);
    assert!(check.reason.contains("20 per day"), "{}", check.reason);
}

#[tokio::test]
async fn time_windows_follow_the_clock_and_check_says_why() {
    let mut s = setup(None).await;
    let now = Utc::now().hour();
    // Every hour but this one and the next: refused whenever the test runs.
    let closed: Vec<u32> = (0..24).filter(|h| *h != now && *h != (now + 1) % 24).collect();
    s.grant(pb::Permission {
        r#type: pb::PermissionType::TimeRestricted as i32,
        allowed_hours: closed,
        time_zone: "UTC".to_owned(),
        ..Default::default()
    })
    .await;
    let sc = sidecar(&s.cp, &s.sidecar_token).await;
    ready(&sc, &s.token).await;
    let mut ex = executor(&sc.url(), Some(&s.token)).await;
    let e = ex
        .invoke(invoke_request("counted", &json!({"text": "x"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("outside the allowed hours"), "{}", e.message());
    let check = s
        .admin
        .permissions
        .check(pb::CheckRequest {
            agent_id: s.agent.id.clone(),
            tool: Some(pb::check_request::Tool::ToolId(s.tool.id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.allowed);
    assert!(check.reason.contains("outside the allowed hours"), "{}", check.reason);

    // Around the clock in another zone: allowed.
    s.grant(pb::Permission {
        r#type: pb::PermissionType::TimeRestricted as i32,
        allowed_hours: (0..24).collect(),
        time_zone: "Asia/Kolkata".to_owned(),
        ..Default::default()
    })
    .await;
    eventually("the new grant at the sidecar", WAIT, || {
        let mut ex = ex.clone();
        async move { ex.invoke(invoke_request("counted", &json!({"text": "x"}))).await.ok() }
    })
    .await;

    // Bad shapes name the field.
    for (p, field) in [
        (
            pb::Permission {
                r#type: pb::PermissionType::TimeRestricted as i32,
                ..Default::default()
            },
            "permission.allowed_hours",
        ),
        (
            pb::Permission {
                r#type: pb::PermissionType::TimeRestricted as i32,
                allowed_hours: vec![9],
                time_zone: "Mars/Olympus".to_owned(),
                ..Default::default()
            },
            "permission.time_zone",
        ),
        (
            pb::Permission {
                r#type: pb::PermissionType::LimitedInvocations as i32,
                ..Default::default()
            },
            "permission.max_invocations_per_day",
        ),
    ] {
        let p = pb::Permission {
            agent_id: s.agent.id.clone(),
            tool_id: s.tool.id.clone(),
            ..p
        };
        let e = s
            .admin
            .permissions
            .grant(pb::GrantRequest { permission: Some(p) })
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
        assert!(fields.contains(&field.to_owned()), "{fields:?}");
    }
}

#[tokio::test]
async fn access_requests_go_pending_then_reviewed_and_every_step_is_audited() {
    let db = TestDb::create().await;
    let s = setup(Some(&db.url)).await;
    let sc = sidecar(&s.cp, &s.sidecar_token).await;
    ready(&sc, &s.token).await;
    let mut ex = executor(&sc.url(), Some(&s.token)).await;
    let e = ex
        .invoke(invoke_request("counted", &json!({"text": "x"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let mut as_agent = pb::permissions_client::PermissionsClient::new(s.agent_channel().await);
    let e = as_agent
        .request_access(pb::RequestAccessRequest {
            tool_id: s.tool.id.clone(),
            justification: "  ".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let request = as_agent
        .request_access(pb::RequestAccessRequest {
            tool_name: s.tool.name.clone(),
            justification: "word counts for the weekly report".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(request.status, pb::AccessRequestStatus::Pending as i32);
    let again = as_agent
        .request_access(pb::RequestAccessRequest {
            tool_id: s.tool.id.clone(),
            justification: "please".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "one pending request per tool");

    // Only admins review.
    let review = |approve: bool, reason: &str, grant: Option<pb::Permission>| pb::ReviewAccessRequestRequest {
        request_id: request.id.clone(),
        approve,
        reason: reason.to_owned(),
        grant,
    };
    let e = as_agent
        .review_access_request(review(true, "", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut admin_perms = s.admin.permissions.clone();
    let e = admin_perms
        .review_access_request(review(false, "", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "a denial needs a reason");

    let pending = admin_perms
        .list_access_requests(pb::ListAccessRequestsRequest {
            status: pb::AccessRequestStatus::Pending as i32,
            agent_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(pending.len(), 1);

    let expires = prost_types::Timestamp {
        seconds: Utc::now().timestamp() + 3600,
        nanos: 0,
    };
    let shape = pb::Permission {
        r#type: pb::PermissionType::ReadOnly as i32,
        expires_at: Some(expires),
        ..Default::default()
    };
    let approved = admin_perms
        .review_access_request(review(true, "fine for one hour", Some(shape)))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(approved.status, pb::AccessRequestStatus::Approved as i32);
    assert!(!approved.permission_id.is_empty());
    let e = admin_perms
        .review_access_request(review(false, "changed my mind", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "reviewed once");

    let grants = admin_perms
        .list_permissions(pb::ListPermissionsRequest {
            agent_id: s.agent.id.clone(),
            tool_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .permissions;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].id, approved.permission_id);
    assert_eq!(grants[0].r#type, pb::PermissionType::ReadOnly as i32);
    assert!(grants[0].expires_at.is_some());

    eventually("the approved grant at the sidecar", WAIT, || {
        let mut ex = ex.clone();
        async move { ex.invoke(invoke_request("counted", &json!({"text": "x"}))).await.ok() }
    })
    .await;

    let client = db.client().await;
    let actions: Vec<String> = client
        .query(
            "SELECT action FROM audit_events WHERE action IN ('access_requested','access_reviewed','permission_granted') ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actions, ["access_requested", "access_reviewed", "permission_granted"]);
}

#[tokio::test]
async fn an_agent_cannot_act_as_another_or_as_an_admin() {
    let mut s = setup(None).await;
    let other = s.admin.agent("someone-else").await;
    let ch = s.agent_channel().await;
    let mut perms = pb::permissions_client::PermissionsClient::new(ch.clone());
    let denied = |r: Result<tonic::Response<_>, tonic::Status>, what: &str| {
        let _: () = match r {
            Ok(_) => panic!("{what} must be refused"),
            Err(e) => assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}"),
        };
    };
    // Naming another agent's id in a request field.
    denied(
        perms
            .check(pb::CheckRequest {
                agent_id: other.id.clone(),
                tool: Some(pb::check_request::Tool::ToolId(s.tool.id.clone())),
            })
            .await
            .map(|r| r.map(|_| ())),
        "Check for another agent",
    );
    denied(
        perms
            .list_permissions(pb::ListPermissionsRequest {
                agent_id: other.id.clone(),
                tool_id: String::new(),
                ..Default::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        "ListPermissions of another agent",
    );
    denied(
        perms
            .list_access_requests(pb::ListAccessRequestsRequest {
                status: 0,
                agent_id: other.id.clone(),
                ..Default::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        "ListAccessRequests of another agent",
    );
    // Admin RPCs with an agent's token.
    denied(
        perms
            .grant(pb::GrantRequest {
                permission: Some(pb::Permission {
                    agent_id: s.agent.id.clone(),
                    tool_id: s.tool.id.clone(),
                    r#type: pb::PermissionType::FullAccess as i32,
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.map(|_| ())),
        "Grant to itself",
    );
    let mut registry = pb::tool_registry_client::ToolRegistryClient::new(ch.clone());
    denied(
        registry
            .register_tool(pb::RegisterToolRequest {
                tool: Some(http_tool("sneaky", &s.tools.url("/echo"))),
            })
            .await
            .map(|r| r.map(|_| ())),
        "RegisterTool",
    );
    denied(
        registry
            .set_credential(pb::SetCredentialRequest {
                tool_id: s.tool.id.clone(),
                secret: "x".to_owned(),
                ..Default::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        "SetCredential",
    );
    let mut identity = pb::identity_client::IdentityClient::new(ch);
    denied(
        identity
            .issue_token(pb::IssueTokenRequest {
                role: pb::Role::Agent as i32,
                agent_id: other.id.clone(),
                ..Default::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        "IssueToken for another agent",
    );
    denied(
        identity
            .create_agent(pb::CreateAgentRequest {
                name: "minion".to_owned(),
                ..Default::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        "CreateAgent",
    );
    // Its own view still works, narrowed to itself.
    let own = perms
        .list_permissions(pb::ListPermissionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(own.permissions.iter().all(|p| p.agent_id == s.agent.id));
}

/// PEM certificate and key.
struct Pem {
    cert: String,
    key: String,
}

/// A throwaway CA, and certificates it signs for localhost.
struct TestPki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    dir: std::path::PathBuf,
}

impl TestPki {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "toolplane test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = std::env::temp_dir().join(format!("toolplane-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { ca, ca_key, dir }
    }

    fn issue(&self, name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> Pem {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes `pem` next to the CA and returns the (cert, key) paths.
    fn write(&self, name: &str, pem: &Pem) -> (String, String) {
        let cert = self.dir.join(format!("{name}.crt"));
        let key = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert, &pem.cert).unwrap();
        std::fs::write(&key, &pem.key).unwrap();
        (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned())
    }

    fn ca_path(&self) -> String {
        let path = self.dir.join("ca.crt");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path.to_string_lossy().into_owned()
    }
}

async fn tls_channel(
    url: &str,
    ca: &str,
    client: Option<&Pem>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some(p) = client {
        tls = tls.identity(tonic::transport::Identity::from_pem(&p.cert, &p.key));
    }
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn everything_works_over_mutual_tls_and_nothing_without_a_client_certificate() {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let pki = TestPki::new();
    let ca = pki.ca_path();
    let (cp_cert, cp_key) = pki.write("control-plane", &pki.issue("control-plane", ServerAuth));
    let (sc_cert, sc_key) = pki.write("sidecar", &pki.issue("sidecar", ServerAuth));
    let sidecar_client = pki.issue("sidecar-client", ClientAuth);
    let (scc_cert, scc_key) = pki.write("sidecar-client", &sidecar_client);
    let admin_client = pki.issue("admin", ClientAuth);

    let tools = ToolServer::start().await;
    let cp = Proc::start(
        "toolplane-control-plane",
        &["--listen", "127.0.0.1:0", "--shutdown-grace", "2"],
        &[
            ("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TOOLPLANE_MASTER_KEY", toolplane_tests::procs::MASTER_KEY),
            ("TOOLPLANE_TLS_CERT", &cp_cert),
            ("TOOLPLANE_TLS_KEY", &cp_key),
            ("TOOLPLANE_TLS_CLIENT_CA", &ca),
        ],
    )
    .await;
    eventually("the mTLS start-up line", WAIT, || async {
        cp.logs().contains("client certificates required").then_some(())
    })
    .await;
    let cp_url = format!("https://localhost:{}", cp.addr.port());

    // Without a client certificate, or in plaintext, nothing gets through.
    let no_cert = match tls_channel(&cp_url, &ca, None).await {
        Err(_) => true,
        Ok(ch) => {
            let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
            h.check(tonic_health::pb::HealthCheckRequest::default()).await.is_err()
        }
    };
    assert!(no_cert, "a client without a certificate was served");
    let plain = tonic::transport::Endpoint::from_shared(cp.url())
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        assert!(h.check(tonic_health::pb::HealthCheckRequest::default()).await.is_err());
    }

    // With one: the whole flow, control plane and sidecar both over TLS.
    let ch = tls_channel(&cp_url, &ca, Some(&admin_client)).await.unwrap();
    let bearer = toolplane_core::client::Bearer::new(Some(ADMIN_TOKEN)).unwrap();
    let authed = tonic::service::interceptor::InterceptedService::new(ch, bearer);
    let mut admin = Admin {
        registry: pb::tool_registry_client::ToolRegistryClient::new(authed.clone()),
        identity: pb::identity_client::IdentityClient::new(authed.clone()),
        permissions: pb::permissions_client::PermissionsClient::new(authed),
    };
    let tool = admin
        .register(http_tool("tls_tool", &tools.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("tls-agent").await;
    admin.grant_full(&agent.id, &tool.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = toolplane_tests::procs::sidecar_to(
        &cp_url,
        &sidecar_token,
        &spool_dir(),
        &[
            ("TOOLPLANE_CONTROL_PLANE_CA", &ca),
            ("TOOLPLANE_CONTROL_PLANE_CLIENT_CERT", &scc_cert),
            ("TOOLPLANE_CONTROL_PLANE_CLIENT_KEY", &scc_key),
            ("TOOLPLANE_TLS_CERT", &sc_cert),
            ("TOOLPLANE_TLS_KEY", &sc_key),
        ],
    )
    .await;
    let sc_url = format!("https://localhost:{}", sc.addr.port());
    let ch = tls_channel(&sc_url, &ca, None).await.unwrap();
    let bearer = toolplane_core::client::Bearer::new(Some(&token)).unwrap();
    let ex = pb::executor_client::ExecutorClient::new(tonic::service::interceptor::InterceptedService::new(ch, bearer));
    let result = eventually("a call over TLS through the sidecar", WAIT, || {
        let mut ex = ex.clone();
        async move {
            ex.invoke(invoke_request("tls_tool", &json!({"text": "one two three"})))
                .await
                .ok()
                .and_then(|r| r.into_inner().result)
        }
    })
    .await;
    assert_eq!(
        result.status,
        pb::ToolExecutionStatus::Success as i32,
        "{}",
        result.error
    );
    assert!(sc.logs().contains("serving gRPC over TLS"), "{}", sc.logs());

    // toolctl over mutual TLS: with its certificate it works, without it it cannot.
    let (tc_cert, tc_key) = pki.write("toolctl", &pki.issue("toolctl", ClientAuth));
    let toolctl = |extra: &[&str]| {
        std::process::Command::new(toolplane_tests::procs::bin("toolctl"))
            .args(["--server", &cp_url, "--token", ADMIN_TOKEN, "--ca-cert", &ca])
            .args(extra)
            .args(["-o", "json", "tools", "list"])
            .output()
            .unwrap()
    };
    let ok = toolctl(&["--client-cert", &tc_cert, "--client-key", &tc_key]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("tls_tool"));
    let refused = toolctl(&[]);
    assert!(!refused.status.success(), "no client certificate, no answer");
    std::fs::remove_dir_all(&pki.dir).ok();
}

/// A sidecar selects for an agent that signed in with an identity provider (the
/// control plane does not know that agent's token): only a sidecar token may name the
/// agent, and the selection is among that agent's tools only.
#[tokio::test]
async fn a_sidecar_token_selects_only_for_the_agent_it_names() {
    let cp = control_plane(None).await;
    let server = ToolServer::start().await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let mine = admin
        .register(http_tool("word_count", &server.url("/word_count")))
        .await
        .unwrap();
    admin
        .register(http_tool("word_count_elsewhere", &server.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("idp-agent").await;
    admin.grant_full(&agent.id, &mine.id).await;
    let request = || pb::SelectToolRequest {
        task_description: "count the words of a text".to_owned(),
        max_alternatives: 3,
        ..Default::default()
    };
    let named = |agent: &str| {
        let mut r = tonic::Request::new(request());
        r.metadata_mut().insert("x-toolplane-agent", agent.parse().unwrap());
        r
    };
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let mut as_sidecar = pb::tool_selector_client::ToolSelectorClient::new(
        toolplane_tests::grpc::channel(&cp.url(), Some(&sidecar_token)).await,
    );
    let refused = as_sidecar.select_tool(request()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{}", refused.message());
    assert!(refused.message().contains("x-toolplane-agent"), "{}", refused.message());
    let bad = as_sidecar.select_tool(named("not-an-id")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let got = as_sidecar.select_tool(named(&agent.id)).await.unwrap().into_inner();
    let ids: Vec<String> = got
        .primary
        .iter()
        .chain(&got.alternatives)
        .map(|s| s.tool.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids, std::slice::from_ref(&mine.id), "only the named agent's tools");

    // An agent's own token selects for that agent whatever it names.
    let stranger = admin.agent("stranger").await;
    let stranger_token = admin.token(pb::Role::Agent, &stranger.id).await;
    let mut as_stranger = pb::tool_selector_client::ToolSelectorClient::new(
        toolplane_tests::grpc::channel(&cp.url(), Some(&stranger_token)).await,
    );
    let theirs = as_stranger.select_tool(named(&agent.id)).await;
    assert!(
        theirs.is_err_and(|s| s.code() == Code::NotFound),
        "the stranger has no tools, and naming another agent lends it none"
    );
}
