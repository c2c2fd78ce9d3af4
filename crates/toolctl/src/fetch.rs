//! Fetching an OpenAPI document by URL for `tools import-openapi`: a plain GET over
//! HTTP or HTTPS (Mozilla roots), redirects not followed, at most 4 MiB, 30 s.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

pub async fn get_text(url: &str) -> anyhow::Result<String> {
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = http::Request::get(uri)
        .header(
            http::header::ACCEPT,
            "application/json, application/yaml;q=0.9, */*;q=0.1",
        )
        .body(Empty::new())?;
    let work = async {
        let resp = client.request(req).await.with_context(|| format!("fetching {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            bail!("fetching {url}: HTTP {status}");
        }
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading {url}: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).with_context(|| format!("{url} is not UTF-8 text"))
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| anyhow::anyhow!("fetching {url}: no answer within {TIMEOUT:?}"))?
}
