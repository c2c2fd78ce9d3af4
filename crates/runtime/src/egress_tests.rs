use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const METADATA: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A resolver where `rebound.test` answers a metadata address (what a rebinding DNS
/// server would), `mixed.test` both, and everything else loopback.
fn fake_dns(allow_link_local: bool) -> GuardedResolver {
    GuardedResolver::with_lookup(allow_link_local, |host| {
        Box::pin(async move {
            Ok(match host.as_str() {
                "rebound.test" => vec![SocketAddr::new(METADATA, 0)],
                "rebound6.test" => vec![SocketAddr::new("64:ff9b::a9fe:a9fe".parse().unwrap(), 0)],
                "mixed.test" => vec![SocketAddr::new(METADATA, 0), SocketAddr::new(LOOPBACK, 0)],
                _ => vec![SocketAddr::new(LOOPBACK, 0)],
            })
        })
    })
}

/// A loopback HTTP server answering every request with `response`, counting
/// connections (to prove none was made).
async fn server(response: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 16 * 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, count)
}

fn ok_response() -> String {
    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_owned()
}

#[tokio::test]
async fn the_resolver_drops_refused_addresses() {
    let dns = fake_dns(false);
    let err = dns.resolve("rebound.test").await.unwrap_err();
    assert!(is_refused(&err), "{err}");
    assert!(is_refused(&dns.resolve("rebound6.test").await.unwrap_err()));
    let kept = dns.resolve("mixed.test").await.unwrap();
    assert_eq!(kept, vec![SocketAddr::new(LOOPBACK, 0)]);
    assert_eq!(fake_dns(true).resolve("rebound.test").await.unwrap().len(), 1);
}

#[tokio::test]
async fn http_tool_connections_are_guarded_at_connect_time() {
    let (port, connections) = server(ok_response()).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector(fake_dns(false)));
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url.parse().unwrap()).await }
    };
    // A name that resolves to loopback is fine.
    let ok = get(format!("http://tool.test:{port}/")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // Rebound to metadata after registration, in any spelling, or a literal the
    // resolver never sees: refused before connecting.
    for url in [
        "http://rebound.test/latest/meta-data".to_owned(),
        "http://rebound6.test/".to_owned(),
        "http://2852039166/".to_owned(),
        "http://0xa9fea9fe/".to_owned(),
        "http://169.254.43518/".to_owned(),
        "http://[64:ff9b::a9fe:a9fe]/".to_owned(),
        "http://[2002:a9fe:a9fe::1]/".to_owned(),
        "http://[::a9fe:a9fe]/".to_owned(),
        "http://[::ffff:169.254.169.254]/".to_owned(),
        "http://[fd00:ec2::254]/".to_owned(),
        "http://100.100.100.200/".to_owned(),
    ] {
        let err = get(url.clone()).await.unwrap_err();
        assert!(is_refused(&err), "{url}: {err:?}");
    }
    // Allowed by configuration: the literal check is off (the connection itself would
    // go to a real metadata address, so only a loopback literal is tried here).
    let allowed: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector(fake_dns(true)));
    let ok = allowed
        .get(format!("http://[::ffff:127.0.0.1]:{port}/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn mcp_clients_refuse_refused_hosts_and_do_not_follow_redirects() {
    let mcp = McpHttp::with_resolver(fake_dns(false), None).unwrap();
    for url in [
        "http://2852039166/mcp",
        "http://0251.0376.0251.0376/mcp",
        "http://[::ffff:a9fe:a9fe]/mcp",
        "http://[64:ff9b::a9fe:a9fe]/mcp",
        "http://metadata.google.internal/mcp",
    ] {
        let err = mcp
            .transport(StreamableHttpClientTransportConfig::with_uri(url))
            .err()
            .unwrap_or_else(|| panic!("{url} got a transport"));
        assert!(matches!(err, EgressError::Refused(_)), "{url}: {err}");
    }
    let err = mcp.client.get("http://rebound.test/mcp").send().await.unwrap_err();
    assert!(is_refused(&err), "{err:?}");
    // Through an MCP session too (the sidecar's and ImportMcpTools' path): the
    // refusal survives rmcp's error wrapping, so callers can say why.
    use rmcp::ServiceExt;
    let transport = mcp
        .transport(StreamableHttpClientTransportConfig::with_uri(
            "http://rebound.test:8080/mcp",
        ))
        .unwrap();
    let err = rmcp::model::ClientConfig::default().serve(transport).await.unwrap_err();
    let why = refusal_reason(&err).unwrap_or_else(|| panic!("not a refusal: {err:?}"));
    assert!(why.contains("rebound.test resolves to 169.254.169.254"), "{why}");

    let (target, reached) = server(ok_response()).await;
    let redirect = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{target}/mcp\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    let (origin, _) = server(redirect).await;
    let resp = mcp
        .client
        .post(format!("http://tool.test:{origin}/mcp"))
        .header("x-api-key", "secret")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the redirect was followed");
}
