//! The admin console: server-rendered HTML over the same gRPC service implementations
//! the API serves, called in process with the logged-in principal, so every rule
//! (authorization, validation, audit) is the API's own. Off unless
//! `TOOLPLANE_CONSOLE_LISTEN` is set.
//!
//! Rooms: `session` (login, cookies, CSRF), `rpc` (the in-process calls), one file per
//! page (`overview`, `tools`, `agents`, `audit`, `selection`), `charts` (SVG) and
//! `page` (layout, errors, security headers).

mod agents;
mod audit;
mod charts;
mod overview;
mod page;
mod rpc;
mod selection;
mod session;
mod tools;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::auth::StoreAuthenticator;
use crate::checkpoints::Checkpoints;
use crate::services::sync_fleet::Fleet;
use crate::state::AppState;

pub use session::Sessions;

/// What the console's handlers share.
pub struct Console {
    pub(crate) state: Arc<AppState>,
    pub(crate) rpc: rpc::Services,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) authn: Arc<StoreAuthenticator>,
    pub(crate) sessions: Sessions,
    pub(crate) activity: overview::ActivityCache,
    /// Cookies carry `Secure` (the console is served over TLS, or behind a proxy that is).
    pub(crate) secure_cookies: bool,
}

/// Everything the console is built from.
pub struct ConsoleParts {
    pub state: Arc<AppState>,
    pub checkpoints: Arc<Checkpoints>,
    pub fleet: Arc<Fleet>,
    pub authn: Arc<StoreAuthenticator>,
    pub redactor: toolplane_core::redact::Redactor,
    pub session_ttl: Duration,
    pub secure_cookies: bool,
}

impl Console {
    pub fn new(p: ConsoleParts) -> Arc<Self> {
        Arc::new(Self {
            rpc: rpc::Services::new(&p.state, p.checkpoints, p.redactor),
            state: p.state,
            fleet: p.fleet,
            authn: p.authn,
            sessions: Sessions::new(p.session_ttl),
            activity: Default::default(),
            secure_cookies: p.secure_cookies,
        })
    }

    /// Every page and form of the console.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(overview::page))
            .route("/login", get(session::login_page).post(session::login))
            .route("/logout", post(session::logout))
            .route("/tools", get(tools::list))
            .route("/tools/{id}", get(tools::show))
            .route("/tools/{id}/enabled", post(tools::set_enabled))
            .route("/agents", get(agents::list))
            .route("/agents/{id}", get(agents::show))
            .route("/tokens/issue", post(agents::issue_token))
            .route("/tokens/revoke", post(agents::revoke_token))
            .route("/grants", post(agents::grant))
            .route("/grants/revoke", post(agents::revoke_grant))
            .route("/access", get(agents::access_queue))
            .route("/access/{id}/review", post(agents::review))
            .route("/audit", get(audit::trail))
            .route("/audit/verify", get(audit::verify))
            .route("/audit/report", get(audit::report))
            .route("/selection", get(selection::playground))
            .route("/static/console.css", get(page::stylesheet))
            .fallback(page::not_found)
            .layer(axum::middleware::from_fn(page::security_headers))
            .with_state(self.clone())
    }
}

/// Serves the console on `listener` (over TLS when `tls` is given) until `stop`.
pub async fn serve(
    console: Arc<Console>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let router = console.router();
    let acceptor = tls.map(TlsAcceptor::from);
    let (stopped_tx, stopped) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stopped_tx.send(true);
    });
    let mut stopping = stopped.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "console: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { let _ = stopping.wait_for(|s| *s).await; } => break,
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(router);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let served = match acceptor {
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => builder.serve_connection(TokioIo::new(tls), service).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "console: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
                None => builder.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "console: connection ended with an error");
            }
        });
    }
    tracing::info!("console stopped");
}

/// The console's rustls configuration from the control plane's certificate and key.
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("console: cannot read the TLS certificate {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("console: cannot read the TLS key {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The address the console is reachable at, as printed at start-up.
pub fn url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}/", if tls { "https" } else { "http" })
}
