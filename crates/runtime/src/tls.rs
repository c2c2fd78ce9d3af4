//! TLS for both servers and mutual TLS between sidecar and control plane (rustls via
//! tonic), configured by file paths so Kubernetes Secrets mount straight in. Without a
//! certificate a server speaks plaintext (the embedded default for `make run`) and says
//! so in its start-up log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Server-side TLS flags, shared by both binaries.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain this server presents; enables TLS.
    #[arg(long, env = "TOOLPLANE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "TOOLPLANE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle; when set, every client must present a certificate it signed
    /// (mutual TLS).
    #[arg(long, env = "TOOLPLANE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve (and, for the sidecar, reach the control plane) in plaintext on a
    /// non-loopback address. Off: tokens, snapshots and credentials never cross a
    /// network in clear by accident; turn it on only where something else encrypts the
    /// traffic (e.g. a service mesh with mTLS).
    #[arg(long, env = "TOOLPLANE_ALLOW_PLAINTEXT", default_value_t = false)]
    pub allow_plaintext: bool,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))
}

impl ServerTlsArgs {
    /// Plaintext on an address other than loopback, unless explicitly allowed, is an
    /// error: checked before a binary announces it is listening.
    pub fn refuse_plaintext(&self, listen: SocketAddr) -> anyhow::Result<()> {
        if self.tls_cert.is_none() && !listen.ip().is_loopback() && !self.allow_plaintext {
            anyhow::bail!(
                "refusing to serve plaintext gRPC on {listen}, which is not a loopback address: \
                 set TOOLPLANE_TLS_CERT and TOOLPLANE_TLS_KEY, listen on 127.0.0.1, or set \
                 TOOLPLANE_ALLOW_PLAINTEXT=true where something else encrypts the traffic"
            );
        }
        Ok(())
    }

    /// The server's TLS configuration, or `None` for plaintext (logged either way).
    /// Plaintext on an address other than loopback is refused unless explicitly allowed.
    pub fn server_config(&self, server: &str, listen: SocketAddr) -> anyhow::Result<Option<ServerTlsConfig>> {
        self.refuse_plaintext(listen)?;
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            tracing::warn!(
                server,
                %listen,
                "serving plaintext gRPC: no --tls-cert given (fine on loopback, not across a network)"
            );
            return Ok(None);
        };
        let identity = Identity::from_pem(read(cert, "TLS certificate")?, read(key, "TLS key")?);
        let mut config = ServerTlsConfig::new().identity(identity);
        match &self.tls_client_ca {
            Some(ca) => {
                config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
                tracing::info!(
                    server,
                    "serving gRPC over TLS; client certificates required (mutual TLS)"
                );
            }
            None => tracing::info!(server, "serving gRPC over TLS"),
        }
        Ok(Some(config))
    }
}

/// How the sidecar reaches the control plane over TLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA bundle that signed the control plane's certificate; enables TLS to it
    /// (use an https:// control plane URL).
    #[arg(long, env = "TOOLPLANE_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,

    /// PEM client certificate for mutual TLS with the control plane.
    #[arg(
        long,
        env = "TOOLPLANE_CONTROL_PLANE_CLIENT_CERT",
        requires = "control_plane_client_key"
    )]
    pub control_plane_client_cert: Option<PathBuf>,

    /// PEM private key of --control-plane-client-cert.
    #[arg(
        long,
        env = "TOOLPLANE_CONTROL_PLANE_CLIENT_KEY",
        requires = "control_plane_client_cert"
    )]
    pub control_plane_client_key: Option<PathBuf>,
}

/// Whether `url` names this host (`localhost`, `127.0.0.0/8`, `::1`): the one place a
/// plaintext connection to the control plane carries nothing across a network.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl ClientTlsArgs {
    /// Refuses an `http://` control plane that is not on this host unless plaintext is
    /// explicitly allowed: the sync stream carries the decrypted tool credentials and
    /// every token digest.
    pub fn check_plaintext(&self, url: &str, allow_plaintext: bool) -> anyhow::Result<()> {
        if self.control_plane_ca.is_none() && !allow_plaintext && !is_loopback_url(url) {
            anyhow::bail!(
                "refusing to reach the control plane at {url} in plaintext: it is not on this host. \
                 Give an https:// URL and TOOLPLANE_CONTROL_PLANE_CA, or set TOOLPLANE_ALLOW_PLAINTEXT=true \
                 where something else encrypts the traffic"
            );
        }
        Ok(())
    }

    /// `None` for plaintext.
    pub fn client_config(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        let Some(ca) = &self.control_plane_ca else {
            return Ok(None);
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "control plane CA")?));
        if let (Some(cert), Some(key)) = (&self.control_plane_client_cert, &self.control_plane_client_key) {
            config = config.identity(Identity::from_pem(
                read(cert, "client certificate")?,
                read(key, "client key")?,
            ));
        }
        Ok(Some(config))
    }
}
