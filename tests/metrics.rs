//! The fleet is observable: both binaries' `/metrics` after real calls (a control plane
//! on PostgreSQL, a sidecar, a real HTTP tool) show per-RPC counts by status code and
//! latency, the database pool and each connected sidecar's lag; reflection lists only
//! what a binary serves.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, channel, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane_with, sidecar_with, spool_dir};
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

/// The samples of `name` in a scrape: labels (in any order) and value.
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let labels = labels
                .trim_end_matches('}')
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The value of the one sample of `name` whose labels include `want`.
fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(labels, _)| want.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, v)| v)
}

fn rpc<'a>(service: &'a str, method: &'a str, code: &'a str) -> [(&'a str, &'a str); 3] {
    [("grpc_service", service), ("grpc_method", method), ("grpc_code", code)]
}

#[tokio::test]
async fn both_servers_count_rpcs_by_status_and_the_control_plane_shows_its_pool_and_each_sidecars_lag() {
    let db = TestDb::create().await;
    let (cp_port, sc_port) = (free_port(), free_port());
    let tools = ToolServer::start().await;
    let cp_metrics = format!("127.0.0.1:{cp_port}");
    let cp = control_plane_with(
        Some(&db.url),
        &[
            ("TOOLPLANE_METRICS_LISTEN", &cp_metrics),
            ("TOOLPLANE_SYNC_HEARTBEAT_MS", "500"),
        ],
    )
    .await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let wc = admin
        .register(http_tool("word_count", &tools.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("observed").await;
    admin.grant_full(&agent.id, &wc.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let issued = admin.issue(pb::Role::Sidecar, "").await;
    let sc_metrics = format!("127.0.0.1:{sc_port}");
    let sc = sidecar_with(
        &cp,
        &issued.token,
        &spool_dir(),
        &[("TOOLPLANE_METRICS_LISTEN", &sc_metrics)],
    )
    .await;

    // Sidecar: calls that succeed, and one with a token it does not know.
    let ex = executor(&sc.url(), Some(&token)).await;
    eventually("the sidecar to serve", WAIT, || {
        let mut ex = ex.clone();
        async move {
            ex.invoke(invoke_request("word_count", &json!({"text": "a b"})))
                .await
                .ok()
        }
    })
    .await;
    let stranger = executor(&sc.url(), Some("tpk_not_a_token_0123456789abcdef01234567")).await;
    let refused = stranger
        .clone()
        .invoke(invoke_request("word_count", &json!({"text": "a"})))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Control plane: an admin call that succeeds, the same call by an agent (denied).
    let mut as_agent = pb::tool_registry_client::ToolRegistryClient::new(channel(&cp.url(), Some(&token)).await);
    let denied = as_agent
        .register_tool(pb::RegisterToolRequest {
            tool: Some(http_tool("sneaky", &tools.url("/word_count"))),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let text = scrape(sc_port).await;
    let ok = value(
        &text,
        "toolplane_grpc_server_handled_total",
        &rpc("toolplane.v1.Executor", "Invoke", "OK"),
    );
    assert!(ok.is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(
        value(
            &text,
            "toolplane_grpc_server_handled_total",
            &rpc("toolplane.v1.Executor", "Invoke", "UNAUTHENTICATED")
        ),
        Some(1.0),
        "{text}"
    );
    let started = value(
        &text,
        "toolplane_grpc_server_started_total",
        &[("grpc_service", "toolplane.v1.Executor"), ("grpc_method", "Invoke")],
    );
    let handled: f64 = samples(&text, "toolplane_grpc_server_handled_total")
        .iter()
        .filter(|(l, _)| l["grpc_method"] == "Invoke")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(started, Some(handled), "every started call finished: {text}");
    assert_eq!(
        value(
            &text,
            "toolplane_grpc_server_handling_seconds_count",
            &[
                ("grpc_service", "toolplane.v1.Executor"),
                ("grpc_method", "Invoke"),
                ("grpc_type", "unary")
            ]
        ),
        started,
        "{text}"
    );

    let text = scrape(cp_port).await;
    for (code, n) in [("OK", 1.0), ("PERMISSION_DENIED", 1.0)] {
        assert_eq!(
            value(
                &text,
                "toolplane_grpc_server_handled_total",
                &rpc("toolplane.v1.ToolRegistry", "RegisterTool", code)
            ),
            Some(n),
            "RegisterTool {code}: {text}"
        );
    }
    assert!(
        value(
            &text,
            "toolplane_grpc_server_handling_seconds_bucket",
            &[("grpc_method", "RegisterTool"), ("le", "+Inf")]
        ) == Some(2.0),
        "{text}"
    );
    // The sidecar's sync stream counts as started while it is open.
    assert_eq!(
        value(
            &text,
            "toolplane_grpc_server_started_total",
            &[
                ("grpc_service", "toolplane.v1.SidecarSync"),
                ("grpc_method", "Connect"),
                ("grpc_type", "bidi_stream")
            ]
        ),
        Some(1.0),
        "{text}"
    );

    // The database pool, read at the scrape.
    let max = value(&text, "toolplane_db_pool_max_connections", &[]).unwrap();
    let open = value(&text, "toolplane_db_pool_connections", &[]).unwrap();
    let idle = value(&text, "toolplane_db_pool_available_connections", &[]).unwrap();
    assert!(max >= 1.0 && open >= 1.0 && open <= max && idle <= open, "{text}");
    assert_eq!(value(&text, "toolplane_db_pool_waiting_requests", &[]), Some(0.0));

    // The connected sidecar, by its token's id: up to date, and heard from recently.
    assert_eq!(value(&text, "toolplane_sync_sessions", &[]), Some(1.0), "{text}");
    let by_token = [("sidecar_token", issued.token_id.as_str())];
    assert_eq!(
        value(&text, "toolplane_sidecar_snapshot_revision_lag", &by_token),
        Some(0.0),
        "{text}"
    );
    // Heartbeats every 500 ms keep the push age low.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let age = value(
            &scrape(cp_port).await,
            "toolplane_sidecar_last_push_age_seconds",
            &by_token,
        )
        .unwrap();
        assert!(age < 2.0, "last push {age} s ago");
    }
    // A change reaches the sidecar: its lag is back to 0 (it moved with the change).
    admin
        .register(http_tool("another", &tools.url("/word_count")))
        .await
        .unwrap();
    eventually("the sidecar to catch up", WAIT, || async {
        (value(
            &scrape(cp_port).await,
            "toolplane_sidecar_snapshot_revision_lag",
            &by_token,
        ) == Some(0.0))
        .then_some(())
    })
    .await;

    // Gone sidecars leave no lag series, and the session gauge drops to 0.
    sc.kill().await;
    let text = eventually("the session to end", WAIT, || async {
        let t = scrape(cp_port).await;
        (value(&t, "toolplane_sync_sessions", &[]) == Some(0.0)).then_some(t)
    })
    .await;
    assert!(
        samples(&text, "toolplane_sidecar_snapshot_revision_lag").is_empty(),
        "{text}"
    );
    assert!(samples(&text, "toolplane_sidecar_last_push_age_seconds").is_empty());
    assert_eq!(
        value(
            &text,
            "toolplane_grpc_server_handled_total",
            &[("grpc_method", "Connect"), ("grpc_code", "CANCELLED")]
        ),
        Some(1.0),
        "a stream whose peer vanished: {text}"
    );
}

/// A path no service knows is labelled `other`, so scanners cannot add series.
#[tokio::test]
async fn unknown_paths_share_one_label() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cp = control_plane_with(None, &[("TOOLPLANE_METRICS_LISTEN", &listen)]).await;
    let ch = tonic::transport::Endpoint::from_shared(cp.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    for path in ["/scan.Me/Now", "/toolplane.v1.ToolRegistry/NoSuchMethod"] {
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.unwrap();
        let _ = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await;
    }
    let text = scrape(port).await;
    let other: Vec<_> = samples(&text, "toolplane_grpc_server_started_total")
        .into_iter()
        .filter(|(l, _)| l["grpc_service"] == "other")
        .collect();
    assert_eq!(other.len(), 1, "{text}");
    assert_eq!(other[0].0["grpc_method"], "other");
    assert_eq!(other[0].1, 2.0);
    assert!(!text.contains("NoSuchMethod") && !text.contains("scan.Me"), "{text}");
}

async fn grpcurl(args: &[&str]) -> (bool, String) {
    let grpcurl = std::env::var("TOOLPLANE_GRPCURL")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/grpcurl").to_owned());
    let out = tokio::process::Command::new(&grpcurl)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{grpcurl}: {e} (`make tools` installs it)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn reflection_lists_only_the_services_a_binary_serves() {
    let cp = control_plane_with(None, &[]).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), &[]).await;
    let sc_addr = sc.addr.to_string();
    let (ok, listed) = grpcurl(&["-plaintext", &sc_addr, "list"]).await;
    assert!(ok, "{listed}");
    let mut services: Vec<&str> = listed.lines().collect();
    services.sort_unstable();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "toolplane.v1.Executor",
        ]
    );
    // Not described either, though `executor.proto` imports the file declaring it.
    let (ok, out) = grpcurl(&["-plaintext", &sc_addr, "describe", "toolplane.v1.ToolSelector"]).await;
    assert!(!ok, "{out}");
    let (ok, out) = grpcurl(&["-plaintext", &sc_addr, "describe", "toolplane.v1.Executor.Invoke"]).await;
    assert!(ok && out.contains("InvokeRequest"), "{out}");
    let (ok, out) = grpcurl(&["-plaintext", &sc_addr, "describe", "toolplane.v1.SelectionConstraints"]).await;
    assert!(ok, "messages the executor uses stay described: {out}");

    let (ok, listed) = grpcurl(&["-plaintext", &cp.addr.to_string(), "list"]).await;
    assert!(ok, "{listed}");
    assert!(listed.lines().any(|l| l == "toolplane.v1.SidecarSync"), "{listed}");
    assert!(!listed.lines().any(|l| l == "toolplane.v1.Executor"), "{listed}");
}

/// A sidecar that stops reading its sync stream (hung, or its network stalled) falls
/// behind: its revision lag grows with every change and nothing is pushed to it.
#[tokio::test]
async fn a_sidecar_that_stops_reading_shows_a_growing_lag() {
    use tokio_stream::StreamExt;
    use toolplane_proto::v1::sidecar_sync_client::SidecarSyncClient;

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cp = control_plane_with(
        None,
        &[
            ("TOOLPLANE_METRICS_LISTEN", &listen),
            ("TOOLPLANE_SYNC_HEARTBEAT_MS", "200"),
        ],
    )
    .await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let issued = admin.issue(pb::Role::Sidecar, "").await;
    // The smallest HTTP/2 windows: a few unread messages fill them, then the control
    // plane's writes for this stream wait.
    let ch = tonic::transport::Endpoint::from_shared(cp.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let bearer = toolplane_core::client::Bearer::new(Some(&issued.token)).unwrap();
    let mut client = SidecarSyncClient::new(tonic::service::interceptor::InterceptedService::new(ch, bearer));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::ConnectRequest {
        message: Some(pb::connect_request::Message::Hello(pb::SidecarHello {
            sidecar_id: "stalled".to_owned(),
            version: "test".to_owned(),
            known_revision: 0,
            scope: None,
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = inbound.next().await.unwrap().unwrap();
    assert!(matches!(
        first.message,
        Some(pb::connect_response::Message::Snapshot(_))
    ));
    let by_token = [("sidecar_token", issued.token_id.as_str())];
    let lag = |text: &str| value(text, "toolplane_sidecar_snapshot_revision_lag", &by_token);
    assert_eq!(lag(&scrape(port).await), Some(0.0));

    // Big tools (a 200 kB schema each), so each delta fills the stream's window.
    let mut big = http_tool("big", "http://127.0.0.1:9/x");
    big.schema.as_mut().unwrap().input_schema = toolplane_core::json::json_to_struct(&json!({
        "type": "object",
        "description": "x".repeat(200_000),
    }));
    let mut behind = 0.0;
    for i in 0..60 {
        let mut tool = big.clone();
        tool.name = format!("big_{i}");
        admin.register(tool).await.unwrap();
        behind = eventually("the scrape to see the change", WAIT, || async {
            lag(&scrape(port).await)
        })
        .await;
        if behind >= 3.0 {
            break;
        }
    }
    assert!(behind >= 3.0, "the stalled sidecar's lag is {behind}");
    // Nothing reaches it any more, heartbeats included.
    eventually("the push age to grow", WAIT, || async {
        let age = value(
            &scrape(port).await,
            "toolplane_sidecar_last_push_age_seconds",
            &by_token,
        )
        .unwrap();
        (age > 2.0).then_some(())
    })
    .await;
    // Reading again, it catches up.
    tokio::spawn(async move { while inbound.next().await.is_some() {} });
    eventually("the sidecar to catch up", WAIT, || async {
        (lag(&scrape(port).await) == Some(0.0)).then_some(())
    })
    .await;
    drop(tx);
}
