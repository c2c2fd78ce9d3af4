//! PostgreSQL over TLS, honouring `sslmode` (and `sslrootcert`) in `DATABASE_URL` the way
//! libpq does, over rustls:
//!
//! - `disable`: plaintext.
//! - `prefer` (the default) and `require`: encrypted; the server's certificate is not
//!   checked, unless `sslrootcert` is given, which makes `require` act as `verify-ca`.
//!   `prefer` falls back to plaintext when the server offers no TLS.
//! - `verify-ca`: encrypted; the certificate must chain to `sslrootcert` (or, without
//!   it, the public web roots), whatever name it carries.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, so the two verifying
//! modes and `sslrootcert` are taken out of the URL here and enforced by the rustls
//! configuration instead.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// libpq's `prefer`/`require` without a root certificate: encrypted, not verified.
    Nothing,
    /// The chain, not the name.
    Chain,
    /// Chain and host name.
    Full,
}

/// The connection settings and TLS connector `url` asks for.
pub fn target(url: &str) -> anyhow::Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let (rewritten, mode, root_cert) = split_tls_params(url)?;
    let config: tokio_postgres::Config = rewritten
        .parse()
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
    let verify = match (mode.as_deref(), root_cert.is_some()) {
        (Some("verify-full"), _) => Verify::Full,
        (Some("verify-ca"), _) | (Some("require"), true) => Verify::Chain,
        _ => Verify::Nothing,
    };
    let roots = roots(root_cert.as_deref())?;
    Ok((config, MakeRustlsConnect::new(client_config(verify, roots)?)))
}

/// `url` with `sslmode=verify-*` turned into `require` and `sslrootcert` taken out; the
/// mode as given and the root certificate path.
fn split_tls_params(url: &str) -> anyhow::Result<(String, Option<String>, Option<String>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut mode, mut root_cert, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                if !["disable", "allow", "prefer", "require", "verify-ca", "verify-full"].contains(&v) {
                    anyhow::bail!("DATABASE_URL: unknown sslmode {v:?}");
                }
                mode = Some(v.to_owned());
                let passed = match v {
                    "verify-ca" | "verify-full" => "require",
                    "allow" => "prefer",
                    other => other,
                };
                kept.push(format!("sslmode={passed}"));
            }
            "sslrootcert" => root_cert = Some(toolplane_core::redact::percent_decode(v)),
            _ => kept.push(pair.to_owned()),
        }
    }
    let rewritten = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rewritten, mode, root_cert))
}

fn roots(root_cert: Option<&str>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("DATABASE_URL sslrootcert {path}: {e}"))?;
            for cert in rustls_pemfile_certs(&pem) {
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("DATABASE_URL sslrootcert {path}: {e}"))?;
            }
            if roots.is_empty() {
                anyhow::bail!("DATABASE_URL sslrootcert {path} holds no certificate");
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect()
}

fn client_config(verify: Verify, roots: RootCertStore) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS for PostgreSQL: {e}"))?;
    let config = match verify {
        Verify::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        Verify::Chain | Verify::Nothing => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| anyhow::anyhow!("TLS for PostgreSQL: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LibpqVerifier {
                    webpki,
                    provider,
                    check_chain: verify == Verify::Chain,
                }))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// libpq's weaker modes: `verify-ca` checks the chain but not the name; `prefer` and
/// `require` check nothing (the handshake signatures are still verified, so the session
/// is encrypted to whoever holds the presented key).
#[derive(Debug)]
struct LibpqVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    check_chain: bool,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_and_the_root_certificate_leave_the_url() {
        let (url, mode, root) =
            split_tls_params("postgres://u@db/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=tp")
                .unwrap();
        assert_eq!(url, "postgres://u@db/x?sslmode=require&application_name=tp");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (url, mode, root) = split_tls_params("postgres://u@db/x").unwrap();
        assert_eq!((url.as_str(), mode, root), ("postgres://u@db/x", None, None));
        assert!(split_tls_params("postgres://u@db/x?sslmode=sometimes").is_err());
        assert!(target("postgres://u@db/x?sslmode=verify-ca&sslrootcert=/nonexistent").is_err());
    }
}
