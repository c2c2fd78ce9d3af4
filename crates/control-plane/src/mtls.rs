//! Checks of a mutual-TLS credential at `SetCredential`: the certificate chain and the
//! private key must parse, so a sidecar never receives an identity it cannot use.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// `Err((field, why))` when the PEM certificate chain or key does not parse.
pub fn check_identity(cert_pem: &str, key_pem: &str) -> Result<(), (&'static str, String)> {
    if cert_pem.is_empty() {
        return Err((
            "client_certificate_pem",
            "is required for a MUTUAL_TLS credential".into(),
        ));
    }
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ("client_certificate_pem", format!("is not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(("client_certificate_pem", "holds no certificate".into()));
    }
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        (
            "secret",
            format!("is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    Ok(())
}
