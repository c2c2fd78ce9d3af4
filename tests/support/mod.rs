//! Test harness: throwaway PostgreSQL databases, the real binaries as child processes,
//! a real HTTP tool server that counts its calls, and authenticated gRPC clients.

#![allow(clippy::unwrap_used)]

pub mod grpc;
pub mod pg;
pub mod procs;
pub mod tool_server;

use std::future::Future;
use std::time::{Duration, Instant};

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
