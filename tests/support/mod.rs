//! Test harness: throwaway PostgreSQL databases, the real binaries as child processes,
//! a real HTTP tool server that counts its calls, and authenticated gRPC clients.

#![allow(clippy::unwrap_used)]

pub mod browser;
pub mod events;
pub mod fake_sidecar;
pub mod grpc;
pub mod oidc;
pub mod pg;
pub mod procfs;
pub mod procs;
pub mod tool_server;

use std::future::Future;
use std::time::{Duration, Instant};

/// A port nothing listens on right now (for servers that take a fixed address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until something accepts connections on 127.0.0.1:`port` (a server that binds
/// after it announced its gRPC address, such as the admin console).
pub async fn wait_for_port(port: u16) {
    eventually(
        &format!("127.0.0.1:{port} to accept connections"),
        Duration::from_secs(30),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

/// The Redis tests share (`make test` points it at a throwaway server when none runs).
pub fn test_redis() -> String {
    std::env::var("TOOLPLANE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A plain HTTP client for tests. reqwest is built with `rustls-no-provider` (the
/// product hands it a ring-based TLS configuration), so a client built without one
/// needs ring installed as the process's default provider first.
pub fn http_client() -> reqwest::Client {
    http_client_builder()
        .build()
        .expect("an HTTP client with the ring provider")
}

/// A reqwest client builder, the process's rustls provider installed first (reqwest
/// brings none of its own here).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// `GET url` with [`http_client`].
pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}
