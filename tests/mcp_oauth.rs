//! Sign-in the MCP way against a real OpenID provider (`oidc-provider` from npm, JWT
//! access tokens bound to the MCP endpoint by a resource indicator): the official
//! Python and TypeScript SDKs find the protected-resource metadata after a 401, get a
//! token by client credentials and list and call tools, on each protocol revision they
//! speak (2025-11-25 handshake, 2026-07-28 stateless; 2025-06-18 by a raw session).
//! Tokens for another audience, expired, signed by another key or unsigned are refused
//! with 401; a valid token naming no agent gets 403 with the reason; toolplane's own
//! agent tokens keep working, and the gRPC API takes the same access tokens.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, executor, http_tool, invoke_request};
use toolplane_tests::oidc::{Client, Idp, forge, oidc_dir};
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, free_port};

const WAIT: Duration = Duration::from_secs(20);

struct Answer {
    status: u16,
    challenge: String,
    session: Option<String>,
    body: String,
}

/// One JSON-RPC POST to the MCP endpoint, as any HTTP client sends it.
async fn post(url: &str, token: Option<&str>, session: Option<&str>, version: &str, body: Value) -> Answer {
    let mut req = toolplane_tests::http_client()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", version)
        .body(body.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let Ok(r) = req.send().await else {
        return Answer {
            status: 0,
            challenge: String::new(),
            session: None,
            body: "not listening yet".to_owned(),
        };
    };
    let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (challenge, session) = (header("www-authenticate").unwrap_or_default(), header("mcp-session-id"));
    Answer {
        status: r.status().as_u16(),
        challenge,
        session,
        body: r.text().await.unwrap_or_default(),
    }
}

fn initialize(version: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
}

/// The JSON-RPC message of a JSON or single-event SSE answer.
fn message(body: &str) -> Value {
    let data = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|d| d.starts_with('{'))
        .unwrap_or(body);
    serde_json::from_str(data).unwrap_or_else(|_| panic!("not a JSON-RPC answer: {body}"))
}

/// Runs an SDK client script (Python or node) and parses the JSON it prints.
async fn sdk_client(program: &str, args: &[&str], cwd: &std::path::Path, env: &[(&str, &str)]) -> Value {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).current_dir(cwd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program}: {e} (make test-deps installs the SDKs)"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{program}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test]
async fn mcp_clients_sign_in_with_the_identity_provider_and_forged_tokens_are_refused() {
    let tools = ToolServer::start().await;
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let words = admin
        .register(http_tool("word_count", &tools.url("/word_count")))
        .await
        .unwrap();
    // The identity provider's client id is the agent's name (the `sub` of a
    // client-credentials token).
    let agent = admin.agent("oidc-agent").await;
    admin.grant_full(&agent.id, &words.id).await;
    let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}/mcp");
    let elsewhere = "http://127.0.0.1:9/another/mcp";
    let metrics_listen = format!("127.0.0.1:{}", free_port());
    let idp = Idp::start(
        &[&url, elsewhere],
        &[
            Client("oidc-agent", "agent-secret", 300),
            Client("stranger", "stranger-secret", 300),
            Client("brief", "brief-secret", 1),
        ],
    )
    .await;
    let sc = sidecar_with(
        &cp,
        &sidecar_token,
        &spool_dir(),
        &[
            ("TOOLPLANE_MCP_LISTEN", &listen),
            ("TOOLPLANE_OAUTH_ISSUERS", &idp.issuer),
            ("TOOLPLANE_OAUTH_LEEWAY_SECS", "0"),
            ("TOOLPLANE_METRICS_LISTEN", &metrics_listen),
        ],
    )
    .await;

    // No token: 401 pointing at the protected-resource metadata, which names the
    // identity provider.
    let metadata_url = format!("http://{listen}/.well-known/oauth-protected-resource/mcp");
    let anonymous = eventually("the MCP endpoint", WAIT, || {
        let url = url.clone();
        async move {
            let a = post(&url, None, None, "2025-06-18", initialize("2025-06-18")).await;
            (a.status != 0).then_some(a)
        }
    })
    .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(
        anonymous.challenge,
        format!("Bearer resource_metadata=\"{metadata_url}\"")
    );
    assert!(anonymous.session.is_none());
    let metadata: Value = toolplane_tests::http_get(&metadata_url)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], json!(url));
    assert_eq!(metadata["authorization_servers"], json!([idp.issuer]));
    let root: Value = toolplane_tests::http_get(format!("http://{listen}/.well-known/oauth-protected-resource"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root, metadata);

    // A client-credentials token for this resource opens a session (once the sidecar
    // has its snapshot).
    let good = idp.token("oidc-agent", "agent-secret", &url).await;
    let opened = eventually("a session with the access token", WAIT, || {
        let (url, good) = (url.clone(), good.clone());
        async move {
            let a = post(&url, Some(&good), None, "2025-06-18", initialize("2025-06-18")).await;
            (a.status == 200).then_some(a)
        }
    })
    .await;
    assert!(opened.session.is_some());
    // toolplane's own agent tokens keep working beside the identity provider's.
    let own = post(&url, Some(&agent_token), None, "2025-06-18", initialize("2025-06-18")).await;
    assert_eq!(own.status, 200, "{}", own.body);

    // Refused with 401 and why: another audience, expired, another key, unsigned.
    let refused = |a: &Answer, why: &str| {
        assert_eq!(a.status, 401, "{why}: {}", a.body);
        assert!(a.session.is_none());
        assert!(a.challenge.contains("error=\"invalid_token\""), "{}", a.challenge);
        assert!(a.challenge.contains(&metadata_url), "{}", a.challenge);
        assert!(a.body.contains(why), "expected {why:?} in {:?}", a.body);
    };
    let other_audience = idp.token("oidc-agent", "agent-secret", elsewhere).await;
    refused(
        &post(
            &url,
            Some(&other_audience),
            None,
            "2025-06-18",
            initialize("2025-06-18"),
        )
        .await,
        "audience",
    );
    let brief = idp.token("brief", "brief-secret", &url).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    refused(
        &post(&url, Some(&brief), None, "2025-06-18", initialize("2025-06-18")).await,
        "expired",
    );
    let payload = good.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&base64_url(payload)).unwrap();
    let forged = forge(&claims, "idp-key-1").await;
    refused(
        &post(&url, Some(&forged), None, "2025-06-18", initialize("2025-06-18")).await,
        "signature",
    );
    // "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0" is {"alg":"none","typ":"JWT"}.
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    refused(
        &post(&url, Some(&unsigned), None, "2025-06-18", initialize("2025-06-18")).await,
        "alg none",
    );

    // A valid token for no toolplane agent: 403, saying so.
    let stranger = idp.token("stranger", "stranger-secret", &url).await;
    let a = post(&url, Some(&stranger), None, "2025-06-18", initialize("2025-06-18")).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body.contains("\"stranger\"") && a.body.contains("names no toolplane agent"),
        "{}",
        a.body
    );
    assert!(a.session.is_none());

    // 2025-06-18, by hand: the session negotiated at that revision lists and calls.
    let session = opened.session.as_deref();
    assert_eq!(message(&opened.body)["result"]["protocolVersion"], "2025-06-18");
    let notified = post(
        &url,
        Some(&good),
        session,
        "2025-06-18",
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(notified.status, 202, "{}", notified.body);
    let listed = post(
        &url,
        Some(&good),
        session,
        "2025-06-18",
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    let listed = message(&listed.body);
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["toolplane_select", "word_count"], "{listed}");
    let called = post(
        &url,
        Some(&good),
        session,
        "2025-06-18",
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "word_count", "arguments": {"text": "a b"}}}),
    )
    .await;
    assert_eq!(
        message(&called.body)["result"]["structuredContent"],
        json!({"words": 2})
    );
    // Selection with the identity provider's token: the control plane does not know
    // that token, so the sidecar asks for the agent with its own; the agent's tools
    // only, and a sidecar token cannot name an agent without being one.
    let selected = post(
        &url,
        Some(&good),
        session,
        "2025-06-18",
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
               "params": {"name": "toolplane_select", "arguments": {"task": "count the words of a text"}}}),
    )
    .await;
    let selected = message(&selected.body);
    let content = &selected["result"]["structuredContent"];
    assert_eq!(content["tools"][0]["tool"], "word_count", "{selected}");
    assert!(
        !content["selection_id"].as_str().unwrap_or_default().is_empty(),
        "{selected}"
    );
    // 2026-07-28, by hand: stateless (no session), `server/discover`, routing headers,
    // and a tools/list with cache hints private to the agent.
    let modern = |method: &str, id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}}}})
    };
    let stateless = |method: &'static str, id: u64| {
        let (url, good, body) = (url.clone(), good.clone(), modern(method, id));
        async move {
            let r = toolplane_tests::http_client()
                .post(&url)
                .header("accept", "application/json, text/event-stream")
                .header("content-type", "application/json")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", method)
                .header("authorization", format!("Bearer {good}"))
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert!(
                r.headers().get("mcp-session-id").is_none(),
                "2026-07-28 keeps no session"
            );
            assert_eq!(r.status(), 200);
            message(&r.text().await.unwrap())
        }
    };
    let discovered = stateless("server/discover", 10).await;
    let versions = discovered["result"]["supportedVersions"].as_array().unwrap().clone();
    for v in ["2025-06-18", "2025-11-25", "2026-07-28"] {
        assert!(versions.contains(&json!(v)), "{discovered}");
    }
    let listed = stateless("tools/list", 11).await;
    assert_eq!(listed["result"]["tools"][1]["name"], "word_count", "{listed}");
    assert_eq!(listed["result"]["cacheScope"], "private", "{listed}");
    assert_eq!(listed["result"]["ttlMs"], 10_000, "{listed}");
    // Unauthenticated stateless requests get the same 401 challenge.
    let anonymous = post(&url, None, None, "2026-07-28", modern("tools/list", 12)).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.challenge.contains(&metadata_url));

    // The official SDKs, each discovering the metadata after a 401 and signing in by
    // client credentials: Python 1.x and TypeScript 1.x (2025-11-25 handshake), Python
    // 2.x and the TypeScript 2.x client (2026-07-28, stateless).
    let root_dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/python/mcp_oauth_agent.py");
    let env = [
        ("TOOLPLANE_MCP_URL", url.as_str()),
        ("OAUTH_ISSUER", idp.issuer.as_str()),
        ("OAUTH_CLIENT_ID", "oidc-agent"),
        ("OAUTH_CLIENT_SECRET", "agent-secret"),
    ];
    let runs = [
        (
            "2025-11-25",
            sdk_client(".venv/bin/python", &[script], root_dir, &env).await,
        ),
        (
            "2026-07-28",
            sdk_client(".venv-mcp-latest/bin/python", &[script], root_dir, &env).await,
        ),
        (
            "2025-11-25",
            sdk_client("node", &["mcp_agent.mjs", "sdk"], &oidc_dir(), &env).await,
        ),
        (
            "2026-07-28",
            sdk_client("node", &["mcp_agent.mjs", "client"], &oidc_dir(), &env).await,
        ),
    ];
    for (version, run) in &runs {
        assert_eq!(run["protocol_version"], *version, "{run}");
        assert_eq!(run["tools"], json!(["toolplane_select", "word_count"]), "{run}");
        assert_eq!(run["result"]["structured"], json!({"words": 4}), "{run}");
        let exchanges: Vec<&str> = run["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        let first_401 = exchanges.iter().position(|e| e.ends_with(" 401 /mcp"));
        let metadata_read = exchanges
            .iter()
            .position(|e| *e == "GET 200 /.well-known/oauth-protected-resource/mcp");
        let token = exchanges.iter().position(|e| *e == "POST 200 /token");
        assert!(
            first_401 < metadata_read && metadata_read < token && first_401.is_some(),
            "401 → metadata → token, in that order: {exchanges:?}"
        );
    }

    // The gRPC API takes the same access tokens, and refuses the same forgeries.
    let mut grpc = executor(&sc.url(), Some(&good)).await;
    let r = grpc
        .invoke(invoke_request("word_count", &json!({"text": "x y z"})))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
    let mut grpc = executor(&sc.url(), Some(&forged)).await;
    let e = grpc
        .invoke(invoke_request("word_count", &json!({"text": "x"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut grpc = executor(&sc.url(), Some(&stranger)).await;
    let e = grpc
        .invoke(invoke_request("word_count", &json!({"text": "x"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // Operators see the verdicts and the key loads.
    let metrics = toolplane_tests::http_get(format!("http://{metrics_listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "toolplane_access_tokens_total{outcome=\"accepted\"}",
        "toolplane_access_tokens_total{outcome=\"invalid\"}",
        "toolplane_access_tokens_total{outcome=\"forbidden\"}",
        "toolplane_jwks_refreshes_total{result=\"ok\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

fn base64_url(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
