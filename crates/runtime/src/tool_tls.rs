//! The TLS client configuration for tools and MCP servers (`https://` endpoints):
//! server certificates checked against the Mozilla roots (webpki-roots) plus an
//! optional private CA bundle (`TOOLPLANE_TOOL_CA_FILE`), with the ring provider.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Roots tools' certificates are checked against, and the client configuration.
pub fn client_config(extra_ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    client_config_with_identity(extra_ca, None)
}

/// As [`client_config`], presenting a client certificate chain and its key (mutual TLS
/// towards one tool) when given.
pub fn client_config_with_identity(
    extra_ca: Option<&Path>,
    identity: Option<(Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("cannot read the tool CA bundle {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| anyhow::anyhow!("bad certificate in {}: {e}", path.display()))?;
            roots.add(cert)?;
            added += 1;
        }
        if added == 0 {
            anyhow::bail!("the tool CA bundle {} holds no certificate", path.display());
        }
        tracing::debug!(path = %path.display(), certificates = added, "trusting an extra CA for tools");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    })
}
