//! Start-up announcement and staged shutdown: on the first SIGINT/SIGTERM the caller
//! marks health NOT_SERVING and drains within a grace period; a second signal exits at
//! once.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

/// Prints the one stdout line tests and scripts wait for (`--listen :0` friendly).
pub fn announce(name: &str, addr: SocketAddr) {
    println!("{name} listening grpc={addr}");
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves on the first signal; spawns a watcher that exits the process on the second.
pub async fn first_signal() {
    signal().await;
    tracing::info!("shutdown requested; draining (send the signal again to exit at once)");
    tokio::spawn(async {
        signal().await;
        tracing::warn!("second signal; exiting now");
        std::process::exit(130);
    });
}

/// Awaits `server` (which stops accepting and drains once `draining` turns true), but
/// no longer than `grace` after draining began.
pub async fn with_grace<F, E>(server: F, mut draining: watch::Receiver<bool>, grace: Duration) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => res,
        _ = async {
            let _ = draining.wait_for(|d| *d).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "drain grace period over; exiting");
            Ok(())
        }
    }
}

/// Accepted connections with TCP_NODELAY and keepalive: without NODELAY, small gRPC
/// responses wait out delayed ACKs (about 40 ms a call).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}
