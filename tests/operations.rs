//! Operating toolplane: Prometheus metrics on both binaries after real calls.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, channel, executor, http_tool, invoke_request};
use toolplane_tests::procs::{ADMIN_TOKEN, MASTER_KEY, Proc, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, free_port};

const WAIT: Duration = Duration::from_secs(20);

async fn scrape(port: u16) -> String {
    toolplane_tests::http_get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn both_binaries_expose_prometheus_metrics_of_real_calls() {
    let (cp_port, sc_port) = (free_port(), free_port());
    let tools = ToolServer::start().await;
    let cp_metrics = format!("127.0.0.1:{cp_port}");
    let cp = Proc::start(
        "toolplane-control-plane",
        &["--listen", "127.0.0.1:0"],
        &[
            ("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TOOLPLANE_MASTER_KEY", MASTER_KEY),
            ("TOOLPLANE_METRICS_LISTEN", &cp_metrics),
        ],
    )
    .await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let mut cached = http_tool("cached_count", &tools.url("/word_count"));
    cached.cacheable = true;
    cached.cache_ttl_seconds = 60;
    cached.requirements.as_mut().unwrap().rate_limit_rpm = 2;
    let cached = admin.register(cached).await.unwrap();
    let agent = admin.agent("observed").await;
    admin.grant_full(&agent.id, &cached.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc_metrics = format!("127.0.0.1:{sc_port}");
    let sc = sidecar_with(
        &cp,
        &sidecar_token,
        &spool_dir(),
        &[("TOOLPLANE_METRICS_LISTEN", &sc_metrics)],
    )
    .await;
    let ex = executor(&sc.url(), Some(&token)).await;
    let call = |text: &str| invoke_request("cached_count", &json!({"text": text}));
    eventually("the sidecar to serve", WAIT, || {
        let (mut ex, req) = (ex.clone(), call("a"));
        async move { ex.invoke(req).await.ok() }
    })
    .await;
    ex.clone().invoke(call("a")).await.unwrap(); // a cache hit
    ex.clone().invoke(call("b")).await.unwrap(); // a miss, the second of 2 per minute
    let limited = ex.clone().invoke(call("c")).await.unwrap().into_inner().result.unwrap();
    assert_eq!(limited.status, pb::ToolExecutionStatus::RateLimited as i32);
    let mut selector = pb::tool_selector_client::ToolSelectorClient::new(channel(&cp.url(), Some(&token)).await);
    selector
        .select_tool(pb::SelectToolRequest {
            task_description: "count words".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();

    let text = eventually("sidecar gauges sampled", WAIT, || async move {
        let t = scrape(sc_port).await;
        t.contains("toolplane_snapshot_age_seconds").then_some(t)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            r#"toolplane_invocations_total{tool="cached_count",status="success"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"toolplane_cache_lookups_total{tool="cached_count",result="hit"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"toolplane_cache_lookups_total{tool="cached_count",result="miss"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"toolplane_rate_limit_rejections_total{tool="cached_count"}"#),
        Some(1.0)
    );
    assert!(
        text.contains("toolplane_invocation_duration_seconds_bucket"),
        "latency histogram"
    );
    assert!(sample(&text, "toolplane_spool_depth").is_some());
    assert_eq!(
        sample(&text, "toolplane_open_circuits"),
        Some(0.0),
        "the circuit-breaker state gauge"
    );
    assert!(sample(&text, "toolplane_snapshot_age_seconds").unwrap() < 60.0);

    let text = eventually("control plane metrics", WAIT, || async move {
        let t = scrape(cp_port).await;
        t.contains(r#"toolplane_sync_events_stored_total{kind="invocation"}"#)
            .then_some(t)
    })
    .await;
    assert!(text.contains("toolplane_selection_duration_seconds_count 1"), "{text}");
    let missing = toolplane_tests::http_get(format!("http://127.0.0.1:{cp_port}/other"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// A running stack with the demo's `word_count`, granted to one agent.
struct Stack {
    tools: ToolServer,
    cp: Proc,
    sc: Proc,
    token: String,
}

async fn stack() -> Stack {
    let tools = ToolServer::start().await;
    let cp = toolplane_tests::procs::control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let wc = admin
        .register(http_tool("word_count", &tools.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("demo-agent").await;
    admin.grant_full(&agent.id, &wc.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), &[]).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    eventually("the sidecar to serve", WAIT, || {
        let mut ex = ex.clone();
        async move {
            ex.invoke(invoke_request("word_count", &json!({"text": "x"})))
                .await
                .ok()
        }
    })
    .await;
    Stack { tools, cp, sc, token }
}

#[tokio::test]
async fn the_readme_grpcurl_lines_work_against_a_live_stack() {
    let s = stack().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let grpcurl = std::env::var("TOOLPLANE_GRPCURL").expect("make test sets TOOLPLANE_GRPCURL");
    let mut in_sh = false;
    let mut ran = 0;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh || !line.starts_with("grpcurl ") {
            continue;
        }
        let cmd = line
            .replacen("grpcurl", &grpcurl, 1)
            .replace("localhost:50051", &s.cp.addr.to_string())
            .replace("localhost:50061", &s.sc.addr.to_string());
        let out = tokio::process::Command::new("bash")
            .args(["-c", &cmd])
            .env("AGENT_TOKEN", &s.token)
            .env("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{line}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(!stdout.trim().is_empty(), "{line} printed nothing");
        if line.contains("Executor/") {
            assert!(stdout.contains("TOOL_EXECUTION_STATUS_SUCCESS"), "{line}\n{stdout}");
        }
        if line.contains("VerifyAuditChain") {
            assert!(stdout.contains("\"intact\": true"), "{stdout}");
        }
        ran += 1;
    }
    assert_eq!(ran, 5, "the README's grpcurl lines");
}

#[tokio::test]
async fn the_python_grpc_example_selects_and_invokes_through_the_sidecar() {
    let s = stack().await;
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/python/grpc_agent.py");
    let out = tokio::process::Command::new(python)
        .args([script, "count the words of my essay", r#"{"text": "one two three"}"#])
        .env("TOOLPLANE_SERVER", s.cp.addr.to_string())
        .env("TOOLPLANE_SIDECAR", s.sc.addr.to_string())
        .env("AGENT_TOKEN", &s.token)
        .output()
        .await
        .expect("the Python venv (make test creates it with grpcio-tools)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tool"], "word_count");
    assert_eq!(v["status_name"], "TOOL_EXECUTION_STATUS_SUCCESS", "{v}");
    assert_eq!(v["output"]["words"].as_f64(), Some(3.0), "{v}");
    assert!(v["reasoning"].as_str().unwrap().starts_with("chose word_count"), "{v}");
}

#[tokio::test]
async fn the_callers_trace_reaches_the_tool_as_a_child_span() {
    let s = stack().await;
    let mut ex = executor(&s.sc.url(), Some(&s.token)).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let mut req = tonic::Request::new(invoke_request("word_count", &json!({"text": "traced call"})));
    req.metadata_mut().insert("traceparent", incoming.parse().unwrap());
    let r = ex.invoke(req).await.unwrap().into_inner().result.unwrap();
    assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32);
    let sent: Vec<String> = s
        .tools
        .headers("/word_count")
        .iter()
        .filter_map(|h| h.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned))
        .collect();
    let last = sent.last().expect("the tool received a traceparent");
    assert!(last.starts_with(&format!("00-{trace_id}-")), "{last}");
    assert!(last.ends_with("-01"));
    assert_ne!(*last, incoming, "a new span for the sidecar's call");
    // Calls without a trace start one, so every tool call is traceable.
    assert!(
        sent.iter().all(|t| toolplane_core::trace::parse(t).is_some()),
        "{sent:?}"
    );
}

#[test]
fn deploy_manifests_validate_offline_against_the_kubernetes_schemas() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = std::process::Command::new(format!("{root}/.venv/bin/python"))
        .arg(format!("{root}/scripts/validate-deploy.py"))
        .output()
        .expect("the Python venv (make test creates it with kubernetes-validate)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("deploy/ valid: 23 resources"), "{text}");
}

/// The example alert rules and dashboard in deploy/monitoring parse as PromQL, read only
/// metrics the binaries export and cover what the issue asks (promtool is on no
/// registry this project installs from; `promql-parser` from PyPI stands in for it).
#[test]
fn monitoring_rules_and_dashboard_validate() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = std::process::Command::new(format!("{root}/.venv/bin/python"))
        .arg(format!("{root}/scripts/validate-monitoring.py"))
        .output()
        .expect("the Python venv (make test creates it with promql-parser)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("deploy/monitoring valid: "), "{text}");
}

/// Every flag's environment variable, read from the binaries' sources.
fn settings() -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let src = std::fs::read_to_string(&p).unwrap();
                for part in src.split("env = \"").skip(1) {
                    let name: String = part.chars().take_while(|c| *c != '"').collect();
                    if name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    {
                        out.push(name);
                    }
                }
            }
        }
    }
    let mut names = Vec::new();
    walk(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../crates")),
        &mut names,
    );
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_setting_of_every_binary_is_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let names = settings();
    assert!(names.len() > 30, "{names:?}");
    let missing: Vec<&String> = names.iter().filter(|n| !readme.contains(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "not documented in the README's configuration tables: {missing:?}"
    );
}

/// Runs toolctl against `cp` with `token`; returns (exit code, stdout, stderr).
fn toolctl(cp: &Proc, token: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(toolplane_tests::procs::bin("toolctl"))
        .args(["--server", &cp.url()])
        .args(args)
        .env("TOOLPLANE_TOKEN", token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn toolctl_operates_the_registry_grants_requests_and_selection() {
    let tools = ToolServer::start().await;
    let cp = toolplane_tests::procs::control_plane(None).await;
    let dir = spool_dir();
    let yaml = dir.join("notes.yaml");
    std::fs::write(
        &yaml,
        format!(
            "name: notes_search\ndescription: Search the team's notes by keyword\ncategory: knowledge\n\
             capabilities: [search]\nendpoint: {}\ninput_schema:\n  type: object\n  required: [text]\n  \
             properties:\n    text: {{type: string}}\nside_effects: read\n",
            tools.url("/word_count")
        ),
    )
    .unwrap();
    let ok = |r: (i32, String, String)| {
        assert_eq!(r.0, 0, "{}{}", r.1, r.2);
        r.1
    };
    let id = ok(toolctl(
        &cp,
        ADMIN_TOKEN,
        &["-o", "value", "tools", "register", yaml.to_str().unwrap()],
        None,
    ));
    assert_eq!(id.trim().len(), 36, "{id}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(toolctl(&cp, ADMIN_TOKEN, &["-o", "json", "tools", "list"], None))).unwrap();
    assert_eq!(listed[0]["name"], "notes_search");
    assert_eq!(
        ok(toolctl(
            &cp,
            ADMIN_TOKEN,
            &["-o", "value", "tools", "disable", "notes_search"],
            None
        ))
        .trim(),
        "false"
    );
    assert_eq!(
        ok(toolctl(
            &cp,
            ADMIN_TOKEN,
            &["-o", "value", "tools", "enable", "notes_search"],
            None
        ))
        .trim(),
        "true"
    );
    ok(toolctl(
        &cp,
        ADMIN_TOKEN,
        &["tools", "set-credential", "notes_search", "--from-file", "-"],
        Some("s3cr3t-value\n"),
    ));

    let agent = ok(toolctl(
        &cp,
        ADMIN_TOKEN,
        &["-o", "value", "agents", "create", "cli-agent"],
        None,
    ));
    let agent = agent.trim();
    let agent_token = ok(toolctl(
        &cp,
        ADMIN_TOKEN,
        &["-o", "value", "tokens", "issue", "--role", "agent", "--agent", agent],
        None,
    ));
    let agent_token = agent_token.trim();

    // Denied: exit code 4 with the reason; then a request, reviewed into a grant.
    let (code, stdout, _) = toolctl(
        &cp,
        agent_token,
        &["permissions", "check", "--tool", "notes_search"],
        None,
    );
    assert_eq!(code, 4, "{stdout}");
    assert!(stdout.contains("no grant"), "{stdout}");
    let request = ok(toolctl(
        &cp,
        agent_token,
        &[
            "-o",
            "value",
            "permissions",
            "request",
            "--tool",
            "notes_search",
            "--justification",
            "weekly digest",
        ],
        None,
    ));
    let pending = ok(toolctl(
        &cp,
        ADMIN_TOKEN,
        &["-o", "json", "permissions", "requests"],
        None,
    ));
    assert!(pending.contains("weekly digest"), "{pending}");
    let grant = ok(toolctl(
        &cp,
        ADMIN_TOKEN,
        &[
            "-o",
            "value",
            "permissions",
            "review",
            request.trim(),
            "--approve",
            "--type",
            "limited",
            "--per-day",
            "5",
            "--time-zone",
            "Europe/Paris",
            "--expires-in-hours",
            "24",
        ],
        None,
    ));
    let grants: serde_json::Value = serde_json::from_str(&ok(toolctl(
        &cp,
        ADMIN_TOKEN,
        &["-o", "json", "permissions", "list", "--agent", agent],
        None,
    )))
    .unwrap();
    assert_eq!(grants[0]["id"], grant.trim());
    assert_eq!(grants[0]["type"], "PERMISSION_TYPE_LIMITED_INVOCATIONS");
    assert_eq!(grants[0]["max_invocations_per_day"], 5);
    assert_eq!(
        ok(toolctl(
            &cp,
            agent_token,
            &["-o", "value", "permissions", "check", "--tool", "notes_search"],
            None
        ))
        .trim(),
        "true"
    );
    assert_eq!(
        ok(toolctl(
            &cp,
            agent_token,
            &["-o", "value", "select", "search my notes for the roadmap"],
            None
        ))
        .trim(),
        "notes_search"
    );

    // Bad input is exit 2, a refusal exit 1, an unreachable server exit 3.
    let (code, _, err) = toolctl(
        &cp,
        ADMIN_TOKEN,
        &[
            "permissions",
            "grant",
            "--agent",
            agent,
            "--tool",
            "notes_search",
            "--hours",
            "nine",
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = toolctl(&cp, agent_token, &["tools", "delete", "notes_search"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("PermissionDenied"), "{err}");
    let token_id = ok(toolctl(
        &cp,
        ADMIN_TOKEN,
        &["-o", "json", "tokens", "issue", "--role", "agent", "--agent", agent],
        None,
    ));
    let token_id: serde_json::Value = serde_json::from_str(&token_id).unwrap();
    ok(toolctl(
        &cp,
        ADMIN_TOKEN,
        &["tokens", "revoke", token_id["token_id"].as_str().unwrap()],
        None,
    ));
    ok(toolctl(
        &cp,
        ADMIN_TOKEN,
        &["permissions", "revoke", grant.trim()],
        None,
    ));
    ok(toolctl(&cp, ADMIN_TOKEN, &["tools", "delete", "notes_search"], None));
    let url = cp.url();
    // Killed and reaped before toolctl runs: dropping only sends the signal, and a
    // control plane still dying can take the connection and then break the call.
    cp.kill().await;
    let out = std::process::Command::new(toolplane_tests::procs::bin("toolctl"))
        .args(["--server", &url, "--token", ADMIN_TOKEN, "tools", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

/// A received span: trace id, span id, parent span id (hex), name.
type Span = (String, String, String, String);

/// Spans received over OTLP/gRPC.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<std::sync::Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push((
                        hex::encode(&s.trace_id),
                        hex::encode(&s.span_id),
                        hex::encode(&s.parent_span_id),
                        s.name,
                    ));
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test]
async fn spans_are_exported_over_otlp_and_the_tool_call_joins_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let service = opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
        collector.clone(),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let tools = ToolServer::start().await;
    let cp = toolplane_tests::procs::control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let wc = admin
        .register(http_tool("word_count", &tools.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("traced").await;
    admin.grant_full(&agent.id, &wc.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), &env).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let result = eventually("a traced call", WAIT, || {
        let mut ex = ex.clone();
        async move {
            let mut req = tonic::Request::new(invoke_request("word_count", &json!({"text": "a b"})));
            req.metadata_mut().insert(
                "traceparent",
                format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
            );
            ex.invoke(req).await.ok()
        }
    })
    .await;
    assert_eq!(
        result.into_inner().result.unwrap().status,
        pb::ToolExecutionStatus::Success as i32
    );
    let exported = eventually("the sidecar's span at the collector", WAIT, || {
        let c = collector.clone();
        async move {
            let spans = c.0.lock().unwrap().clone();
            spans.into_iter().find(|s| s.0 == trace_id && s.3 == "toolplane.invoke")
        }
    })
    .await;
    assert_eq!(exported.2, caller_span, "the sidecar's span is a child of the caller's");
    let sent = tools.headers("/word_count");
    let tp = sent
        .iter()
        .rev()
        .find_map(|h| h.get("traceparent").and_then(|v| v.to_str().ok()))
        .unwrap()
        .to_owned();
    assert_eq!(
        tp,
        format!("00-{trace_id}-{}-01", exported.1),
        "the tool's parent is the exported span"
    );
}

/// An HTTPS tool (certificate from a throwaway CA) offering HTTP/2 and HTTP/1.1 by
/// ALPN; answers word counts and records the HTTP version of each request.
async fn https_tool() -> (u16, String, std::sync::Arc<std::sync::Mutex<Vec<http::Version>>>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let mut config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let versions: std::sync::Arc<std::sync::Mutex<Vec<http::Version>>> = Default::default();
    let seen = versions.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push(req.version());
                        let body = http_body_util::BodyExt::collect(req.into_body())
                            .await
                            .unwrap()
                            .to_bytes();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        let words = v["text"].as_str().unwrap_or("").split_whitespace().count();
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(
                                    json!({"words": words}).to_string(),
                                )))
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
    (port, ca.pem(), versions)
}

#[tokio::test]
async fn https_tools_are_called_over_tls_with_http2_when_offered() {
    let (port, ca_pem, versions) = https_tool().await;
    let ca_file = spool_dir().join("tool-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let cp = toolplane_tests::procs::control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let tool = admin
        .register(http_tool("secure_count", &format!("https://localhost:{port}/count")))
        .await
        .unwrap();
    let agent = admin.agent("tls-client").await;
    admin.grant_full(&agent.id, &tool.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let ca = ca_file.to_string_lossy().into_owned();
    let sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), &[("TOOLPLANE_TOOL_CA_FILE", &ca)]).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    let r = eventually("a call to the HTTPS tool", WAIT, || {
        let mut ex = ex.clone();
        async move {
            let r = ex
                .invoke(invoke_request("secure_count", &json!({"text": "over tls"})))
                .await
                .ok()?
                .into_inner()
                .result?;
            (r.status == pb::ToolExecutionStatus::Success as i32).then_some(r)
        }
    })
    .await;
    assert!(r.output.is_some());
    assert_eq!(
        *versions.lock().unwrap(),
        [http::Version::HTTP_2],
        "h2 negotiated by ALPN"
    );
}
