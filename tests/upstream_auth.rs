//! Upstream authentication that works, through the real binaries:
//! - OAuth 2.0 client credentials against a real authorization server the suite starts
//!   (oidc-provider, tests/oidc/upstream_server.mjs, installed by `make test-deps`): the tool checks
//!   every token it is shown by introspection; 200 concurrent calls cause one token
//!   request; a revoked token is replaced after the tool's 401 without a failed call;
//!   short-lived tokens are renewed before they expire, none reaching the tool expired.
//! - Mutual TLS: a tool behind a rustls server that requires client certificates from
//!   a test CA answers the tool whose credential holds one, and refuses a tool without.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tonic::Code;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, Authed, executor, http_tool, invoke_request};
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, sidecar_with, spool_dir};
use toolplane_tests::{eventually, free_port};

const WAIT: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "toolplane-sidecar";
const CLIENT_SECRET: &str = "cs-0e1d2c3b4a5968778695a4b3c2d1e0f";

type Executor = pb::executor_client::ExecutorClient<Authed>;

/// oidc-provider on a free port, issuing tokens that live `ttl_s` seconds.
struct AuthServer {
    _child: tokio::process::Child,
    base: String,
}

impl AuthServer {
    async fn start(ttl_s: u32) -> Self {
        let port = free_port();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/oidc");
        let mut child = tokio::process::Command::new("node")
            .arg(format!("{dir}/upstream_server.mjs"))
            .arg(port.to_string())
            .arg(ttl_s.to_string())
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node (oidc-provider is installed by `make test-deps`)");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line()).await;
        assert!(
            matches!(&first, Ok(Ok(Some(l))) if l == "ready"),
            "the authorization server did not start: {first:?} (run `make test-deps`)"
        );
        // Its notices go to stdout: keep reading, or its next write fails (EPIPE).
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _child: child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn token_requests(&self) -> u64 {
        let text = toolplane_tests::http_get(format!("{}/test/token-requests", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str::<Value>(&text).unwrap()["count"].as_u64().unwrap()
    }

    /// POSTs a form to one of the server's endpoints as the client.
    async fn post(&self, path: &str, form: &str) -> reqwest::Response {
        toolplane_tests::http_client()
            .post(format!("{}{path}", self.base))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .unwrap()
    }

    async fn active(&self, token: &str) -> bool {
        introspect(&self.base, token).await
    }
}

/// At most 16 introspections at a time, so 200 concurrent calls do not overrun the
/// authorization server's accept queue.
static INTROSPECTIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

/// Whether the authorization server at `base` says `token` is active (RFC 7662). A
/// connection the server dropped (an idle keep-alive) is tried again.
async fn introspect(base: &str, token: &str) -> bool {
    let _permit = INTROSPECTIONS.acquire().await.unwrap();
    let mut tries = 0;
    let text = loop {
        let sent = toolplane_tests::http_client()
            .post(format!("{base}/token/introspection"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await;
        match sent {
            Ok(r) => break r.text().await.unwrap(),
            Err(e) if tries < 3 => {
                tries += 1;
                eprintln!("introspection failed ({e}); again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("introspection failed: {e}"),
        }
    };
    serde_json::from_str::<Value>(&text).unwrap()["active"] == json!(true)
}

/// A tool that accepts a call only with a bearer token the authorization server says
/// is active; records every token it was shown and every refusal.
#[derive(Clone, Default)]
struct ProtectedTool {
    tokens: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<u32>>,
}

impl ProtectedTool {
    async fn start(auth: &AuthServer) -> (Self, String) {
        let tool = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/count", listener.local_addr().unwrap());
        let (state, auth_base) = (tool.clone(), auth.base.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (state, auth_base) = (state.clone(), auth_base.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (state, auth_base) = (state.clone(), auth_base.clone());
                        async move {
                            let token = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.strip_prefix("Bearer "))
                                .unwrap_or_default()
                                .to_owned();
                            let _ = req.into_body().collect().await;
                            let ok = !token.is_empty() && introspect(&auth_base, &token).await;
                            state.tokens.lock().unwrap().push(token);
                            let (status, body) = if ok {
                                (200, json!({"words": 1}))
                            } else {
                                *state.refused.lock().unwrap() += 1;
                                (401, json!({"error": "invalid_token"}))
                            };
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (tool, url)
    }
}

struct Deployment {
    _cp: Proc,
    _sc: Proc,
    admin: Admin,
    ex: Executor,
}

/// A control plane and a sidecar; `tools` registered, with their credentials, and
/// granted to one agent whose executor client is returned.
async fn deploy(tools: Vec<(pb::Tool, Option<pb::SetCredentialRequest>)>, sidecar_env: &[(&str, &str)]) -> Deployment {
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("agent-upstream-auth").await;
    for (tool, credential) in tools {
        let tool = admin.register(tool).await.unwrap();
        if let Some(mut c) = credential {
            c.tool_id = tool.id.clone();
            admin.registry.set_credential(c).await.unwrap();
        }
        admin.grant_full(&agent.id, &tool.id).await;
    }
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), sidecar_env).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    Deployment {
        _cp: cp,
        _sc: sc,
        admin,
        ex,
    }
}

async fn call(ex: &Executor, name: &str) -> pb::ToolResult {
    let mut ex = ex.clone();
    ex.invoke(invoke_request(name, &json!({"text": "hi"})))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap()
}

/// The first call, once the sidecar knows the tool.
async fn first_call(ex: &Executor, name: &str) -> pb::ToolResult {
    eventually("the sidecar to know the tool", WAIT, || {
        let (mut ex, name) = (ex.clone(), name.to_owned());
        async move {
            match ex.invoke(invoke_request(&name, &json!({"text": "hi"}))).await {
                Err(s) if matches!(s.code(), Code::Unavailable | Code::NotFound | Code::PermissionDenied) => None,
                r => Some(r.unwrap().into_inner().result.unwrap()),
            }
        }
    })
    .await
}

/// An HTTP tool with a timeout that leaves room for its introspection round trip
/// under 200 concurrent calls.
fn patient_tool(name: &str, url: &str) -> pb::Tool {
    let mut t = http_tool(name, url);
    t.requirements.as_mut().unwrap().timeout_ms = 20_000;
    t
}

fn oauth_credential(auth: &AuthServer) -> pb::SetCredentialRequest {
    pb::SetCredentialRequest {
        auth_type: pb::AuthType::Oauth2 as i32,
        secret: CLIENT_SECRET.into(),
        oauth2: Some(pb::OAuth2ClientCredentials {
            token_url: format!("{}/token", auth.base),
            client_id: CLIENT_ID.into(),
            scopes: vec!["inventory:read".into()],
            audience: String::new(),
        }),
        ..Default::default()
    }
}

fn ok(r: &pb::ToolResult) -> bool {
    r.status == pb::ToolExecutionStatus::Success as i32
}

/// Held by every test here, so they run one at a time: the renewal test has 0.4 s in
/// hand with 4 s tokens, and on two vCPUs the others running beside it (each starts an
/// authorization server, and one loads the sidecar on purpose) stalled calls longer
/// than that: an expired token reached the tool in every parallel run of this file on
/// a slow day, in none of the runs one at a time.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn oauth_tokens_are_fetched_once_shared_and_replaced_when_refused() {
    let _apart = TIMED.lock().await;
    let auth = AuthServer::start(300).await;
    let (tool, url) = ProtectedTool::start(&auth).await;
    // A tool without a credential tells when the sidecar has its snapshot, so the
    // OAuth tool's first calls find no token cached.
    let (_warmup, warmup_url) = KeyedTool::start().await;
    let d = deploy(
        vec![
            (patient_tool("oauth_tool", &url), Some(oauth_credential(&auth))),
            (patient_tool("warmup", &warmup_url), None),
        ],
        &[],
    )
    .await;
    first_call(&d.ex, "warmup").await;
    assert_eq!(auth.token_requests().await, 0);

    // 200 calls at once, none with a token yet: one token request serves them all.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let ex = d.ex.clone();
        calls.spawn(async move { call(&ex, "oauth_tool").await });
    }
    let mut failed = Vec::new();
    while let Some(r) = calls.join_next().await {
        let r = r.unwrap();
        if !ok(&r) {
            failed.push(r.error);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 200 failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(
        auth.token_requests().await,
        1,
        "200 concurrent calls caused more than one token request"
    );
    let first_token = tool.tokens.lock().unwrap()[0].clone();
    assert!(tool.tokens.lock().unwrap().iter().all(|t| *t == first_token));
    assert!(
        auth.active(&first_token).await,
        "the tool received a valid access token"
    );
    let r = call(&d.ex, "oauth_tool").await;
    assert!(ok(&r), "{}", r.error);
    assert_eq!(auth.token_requests().await, 1, "the cached token serves later calls");

    // The token is revoked at the server: the tool answers 401, the sidecar fetches a
    // new token and calls again; the caller sees a success.
    let revoked = auth.post("/token/revocation", &format!("token={first_token}")).await;
    assert!(revoked.status().is_success());
    assert!(!auth.active(&first_token).await);
    let r = call(&d.ex, "oauth_tool").await;
    assert!(ok(&r), "{}", r.error);
    assert_eq!(auth.token_requests().await, 2);
    assert_eq!(*tool.refused.lock().unwrap(), 1);
    let last = tool.tokens.lock().unwrap().last().cloned().unwrap();
    assert_ne!(last, first_token);
    assert!(auth.active(&last).await);
}

#[tokio::test]
async fn short_lived_oauth_tokens_are_renewed_before_they_expire() {
    let _apart = TIMED.lock().await;
    // Tokens live 4 s: calls over 10 s need several, and none may fail.
    let auth = AuthServer::start(4).await;
    let (tool, url) = ProtectedTool::start(&auth).await;
    let d = deploy(
        vec![(patient_tool("oauth_short", &url), Some(oauth_credential(&auth)))],
        &[],
    )
    .await;
    let r = first_call(&d.ex, "oauth_short").await;
    assert!(ok(&r), "{}", r.error);
    let start = std::time::Instant::now();
    let mut calls = 0;
    while start.elapsed() < Duration::from_secs(10) {
        let r = call(&d.ex, "oauth_short").await;
        assert!(ok(&r), "a call failed after {:?}: {}", start.elapsed(), r.error);
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = auth.token_requests().await;
    // Renewed 1.4 s before the end of each 4 s token (the server's whole-second `exp`
    // can take up to a second of it): one every ~2.6 s.
    assert!(
        (4..=8).contains(&requests),
        "{requests} token requests for 10 s of 4 s tokens"
    );
    assert_eq!(
        *tool.refused.lock().unwrap(),
        0,
        "an expired token reached the tool ({calls} calls)"
    );
    let distinct: std::collections::HashSet<String> = tool.tokens.lock().unwrap().iter().cloned().collect();
    assert_eq!(distinct.len() as u64, requests);
}

#[tokio::test]
async fn a_bad_grant_is_refused_at_set_credential_and_a_wrong_secret_fails_the_call() {
    let _apart = TIMED.lock().await;
    let auth = AuthServer::start(300).await;
    let (_tool, url) = ProtectedTool::start(&auth).await;
    let mut wrong = oauth_credential(&auth);
    wrong.secret = "not-the-secret".into();
    let mut d = deploy(vec![(http_tool("oauth_wrong", &url), Some(wrong))], &[]).await;
    let r = first_call(&d.ex, "oauth_wrong").await;
    assert_eq!(r.status, pb::ToolExecutionStatus::ExecutionError as i32);
    assert!(r.error.contains("access token"), "{}", r.error);
    assert!(!r.error.contains("not-the-secret"), "{}", r.error);

    let tool = d
        .admin
        .registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name("oauth_wrong".into())),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap();
    let mut missing = oauth_credential(&auth);
    missing.tool_id = tool.id.clone();
    missing.oauth2 = None;
    let e = d.admin.registry.set_credential(missing).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("oauth2"), "{e:?}");
    let mut metadata = oauth_credential(&auth);
    metadata.tool_id = tool.id;
    metadata.oauth2.as_mut().unwrap().token_url = "http://169.254.169.254/token".into();
    let e = d.admin.registry.set_credential(metadata).await.unwrap_err();
    assert!(e.message().contains("oauth2.token_url"), "{e:?}");
}

/// A throwaway CA and a certificate it signs.
fn issue(ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.signed_by(&key, ca, ca_key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn new_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    (params.self_signed(&key).unwrap(), key)
}

/// An HTTPS tool that requires a client certificate signed by `client_ca`; records
/// the common name of every client it served.
async fn mtls_tool(server: (String, String), client_ca: &rcgen::Certificate) -> (u16, Arc<Mutex<Vec<usize>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(client_ca.der().to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server.0.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server.1.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served: Arc<Mutex<Vec<usize>>> = Arc::default();
    let seen = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let chain = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        seen.lock().unwrap().push(chain);
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(json!({"words": 2}).to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, served)
}

#[tokio::test]
async fn a_tool_requiring_a_client_certificate_answers_only_the_tool_that_has_one() {
    let _apart = TIMED.lock().await;
    let (ca, ca_key) = new_ca("toolplane mtls test CA");
    let (other_ca, other_key) = new_ca("some other CA");
    let (port, served) = mtls_tool(issue(&ca, &ca_key, "127.0.0.1"), &ca).await;
    let dir = std::env::temp_dir().join(format!("toolplane-mtls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let url = format!("https://127.0.0.1:{port}/count");
    let identity = |cert: (String, String)| pb::SetCredentialRequest {
        auth_type: pb::AuthType::MutualTls as i32,
        client_certificate_pem: cert.0,
        secret: cert.1,
        ..Default::default()
    };
    let d = deploy(
        vec![
            (
                http_tool("mtls_with", &url),
                Some(identity(issue(&ca, &ca_key, "agent tool"))),
            ),
            (http_tool("mtls_without", &url), None),
            (
                http_tool("mtls_foreign", &url),
                Some(identity(issue(&other_ca, &other_key, "foreign tool"))),
            ),
        ],
        &[("TOOLPLANE_TOOL_CA_FILE", ca_file.to_str().unwrap())],
    )
    .await;
    let r = first_call(&d.ex, "mtls_with").await;
    assert!(ok(&r), "{}", r.error);
    for _ in 0..5 {
        let r = call(&d.ex, "mtls_with").await;
        assert!(ok(&r), "{}", r.error);
    }
    // The shared client never presents that certificate: the tool without a
    // credential, and one with a certificate of another CA, are refused.
    for name in ["mtls_without", "mtls_foreign"] {
        let r = first_call(&d.ex, name).await;
        assert_eq!(
            r.status,
            pb::ToolExecutionStatus::ExecutionError as i32,
            "{name}: {}",
            r.error
        );
    }
    assert_eq!(
        served.lock().unwrap().len(),
        6,
        "only the certified tool's calls were served"
    );
    assert!(served.lock().unwrap().iter().all(|&chain| chain >= 1));

    // A key that does not parse is refused when set.
    let mut admin = d.admin;
    let tool = admin
        .registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name("mtls_without".into())),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap();
    let mut bad = identity(issue(&ca, &ca_key, "x"));
    bad.tool_id = tool.id;
    bad.secret = "not a key".into();
    let e = admin.registry.set_credential(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("secret"), "{e:?}");
}

/// A tool that accepts an `x-api-key` header (or an `api_key` query parameter) from a
/// set the test changes (an upstream rotating its keys); records the key of every
/// request (empty when none came).
#[derive(Clone, Default)]
struct KeyedTool {
    accepted: Arc<Mutex<std::collections::HashSet<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl KeyedTool {
    async fn start() -> (Self, String) {
        let tool = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/count", listener.local_addr().unwrap());
        let state = tool.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let in_query =
                                url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                                    .find(|(k, _)| k == "api_key")
                                    .map(|(_, v)| v.into_owned());
                            let key = req
                                .headers()
                                .get("x-api-key")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                                .or(in_query)
                                .unwrap_or_default();
                            let _ = req.into_body().collect().await;
                            let ok = state.accepted.lock().unwrap().contains(&key);
                            state.seen.lock().unwrap().push(key);
                            let (status, body) = if ok {
                                (200, json!({"words": 1}))
                            } else {
                                (401, json!({}))
                            };
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (tool, url)
    }

    fn last_seen(&self) -> Option<String> {
        self.seen.lock().unwrap().last().cloned()
    }
}

fn api_key(key: &str) -> pb::SetCredentialRequest {
    pb::SetCredentialRequest {
        auth_type: pb::AuthType::ApiKey as i32,
        header_name: "X-Api-Key".into(),
        secret: key.into(),
        ..Default::default()
    }
}

async fn tool_id(admin: &mut Admin, name: &str) -> String {
    admin
        .registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name(name.into())),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap()
        .id
}

#[tokio::test]
async fn credentials_rotate_under_load_expire_and_are_deleted() {
    let _apart = TIMED.lock().await;
    let (keyed, url) = KeyedTool::start().await;
    keyed.accepted.lock().unwrap().insert("key-0".into());
    let (expiring_tool, expiring_url) = KeyedTool::start().await;
    expiring_tool.accepted.lock().unwrap().insert("short".into());
    let expires = chrono::Utc::now() + chrono::Duration::seconds(4);
    let mut expiring = api_key("short");
    expiring.expires_at = Some(prost_types::Timestamp {
        seconds: expires.timestamp(),
        nanos: 0,
    });
    let mut d = deploy(
        vec![
            (patient_tool("keyed", &url), Some(api_key("key-0"))),
            (patient_tool("expiring", &expiring_url), Some(expiring)),
        ],
        &[],
    )
    .await;
    assert!(ok(&first_call(&d.ex, "keyed").await));
    assert!(ok(&first_call(&d.ex, "expiring").await));
    let keyed_id = tool_id(&mut d.admin, "keyed").await;

    // Rotation under load: four callers without pause while the key changes five
    // times; the upstream accepts the new key before it is set and drops the old one
    // once the sidecar sends the new one (after a grace for calls already sent).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (ex, stop) = (d.ex.clone(), stop.clone());
        load.spawn(async move {
            let (mut calls, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = call(&ex, "keyed").await;
                calls += 1;
                if !ok(&r) {
                    failed.push(r.error);
                }
            }
            (calls, failed)
        });
    }
    for i in 1..=5 {
        let (old, new) = (format!("key-{}", i - 1), format!("key-{i}"));
        keyed.accepted.lock().unwrap().insert(new.clone());
        let mut rotate = api_key(&new);
        rotate.tool_id = keyed_id.clone();
        d.admin.registry.set_credential(rotate).await.unwrap();
        eventually("the sidecar to send the new key", WAIT, || {
            let seen = keyed.last_seen();
            let new = new.clone();
            async move { (seen.as_deref() == Some(new.as_str())).then_some(()) }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        keyed.accepted.lock().unwrap().remove(&old);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut calls, mut failed) = (0, Vec::new());
    while let Some(r) = load.join_next().await {
        let (c, f) = r.unwrap();
        calls += c;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(calls >= 50, "only {calls} calls under load");
    assert!(
        keyed.seen.lock().unwrap().iter().all(|k| k.starts_with("key-")),
        "a call went without a key"
    );

    // Expiry: refused by the sidecar, with a clear reason, without reaching the tool.
    let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(200);
    tokio::time::sleep(wait).await;
    let before = expiring_tool.seen.lock().unwrap().len();
    let r = call(&d.ex, "expiring").await;
    assert_eq!(r.status, pb::ToolExecutionStatus::ExecutionError as i32, "{}", r.error);
    assert!(r.error.contains("expired"), "{}", r.error);
    assert!(!r.error.contains("short"), "{}", r.error);
    assert_eq!(
        expiring_tool.seen.lock().unwrap().len(),
        before,
        "an expired credential reached the tool"
    );
    let mut past = api_key("again");
    past.tool_id = tool_id(&mut d.admin, "expiring").await;
    past.expires_at = Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() - 1,
        nanos: 0,
    });
    let e = d.admin.registry.set_credential(past).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("expires_at"), "{e:?}");

    // Deletion: the sidecar stops sending the key; a second deletion finds none.
    d.admin
        .registry
        .delete_credential(pb::DeleteCredentialRequest {
            tool_id: keyed_id.clone(),
        })
        .await
        .unwrap();
    eventually("calls to go without the deleted key", WAIT, || {
        let (ex, keyed) = (d.ex.clone(), keyed.clone());
        async move {
            let r = call(&ex, "keyed").await;
            (!ok(&r) && keyed.last_seen().as_deref() == Some("")).then_some(())
        }
    })
    .await;
    let e = d
        .admin
        .registry
        .delete_credential(pb::DeleteCredentialRequest { tool_id: keyed_id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn an_api_key_goes_in_the_query_escaped_and_bad_settings_are_refused() {
    let _apart = TIMED.lock().await;
    let (keyed, url) = KeyedTool::start().await;
    keyed.accepted.lock().unwrap().insert("q-key~1&x=2".into());
    let mut in_query = api_key("q-key~1&x=2");
    in_query.header_name.clear();
    in_query.query_param = "api_key".into();
    let d = deploy(vec![(patient_tool("query_keyed", &url), Some(in_query))], &[]).await;
    let r = first_call(&d.ex, "query_keyed").await;
    assert!(ok(&r), "{}", r.error);
    assert_eq!(keyed.last_seen().as_deref(), Some("q-key~1&x=2"));

    // Refused at SetCredential: a query parameter for a non-API-key credential, and
    // HTTP basic without a user name.
    let mut admin = d.admin;
    let id = tool_id(&mut admin, "query_keyed").await;
    let mut wrong = api_key("x");
    wrong.tool_id = id.clone();
    wrong.auth_type = pb::AuthType::HttpBasic as i32;
    wrong.header_name.clear();
    let e = admin.registry.set_credential(wrong.clone()).await.unwrap_err();
    assert!(e.message().contains("username"), "{e:?}");
    wrong.username = "alice".into();
    wrong.query_param = "api_key".into();
    let e = admin.registry.set_credential(wrong).await.unwrap_err();
    assert!(e.message().contains("query_param"), "{e:?}");
}
