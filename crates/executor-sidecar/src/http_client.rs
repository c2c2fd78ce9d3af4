//! The pooled HTTP client tools are called with. Its connector is the guarded one
//! ([`toolplane_runtime::egress`]): every address a host name resolves to, and every
//! spelling of a literal address, is checked against the endpoint policy when the
//! connection is made, so an endpoint cannot be pointed at link-local or metadata
//! addresses after registration (DNS rebinding) either. Redirects are not followed.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use toolplane_runtime::egress::{self, GuardedConnector, GuardedResolver};

/// Largest response body accepted from a tool.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// How much of an error answer's body is kept. More than the caller shows, so it can
/// scrub a credential echoed across the point where it cuts the body short.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the tool did not answer within {0:?}")]
    Timeout(Duration),
    #[error("endpoint refused by policy: {0}")]
    Forbidden(String),
    #[error("cannot reach the tool: {0}")]
    Connect(String),
    #[error("the tool answered HTTP {status}")]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: String,
    },
    #[error("the tool's response is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the tool's response is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

type Connector = hyper_rustls::HttpsConnector<GuardedConnector<HttpConnector<GuardedResolver>>>;

#[derive(Clone)]
pub struct ToolHttpClient {
    client: Client<Connector, Full<Bytes>>,
}

/// A client certificate chain and its key, presented to one tool (mutual TLS).
pub struct ClientIdentity {
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// From PEM text; `None` with the reason when either part does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
        if certs.is_empty() {
            return Err("the client certificate chain is empty".to_owned());
        }
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("the client key is not PEM: {e}"))?;
        Ok(Self { certs, key })
    }
}

impl ToolHttpClient {
    /// HTTP/1.1 and, over TLS, HTTP/2 when the tool offers it (ALPN).
    pub fn new(allow_link_local: bool, extra_ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Self::with_identity(allow_link_local, extra_ca, None)
    }

    /// A client of its own (own connection pool) presenting `identity` when the tool
    /// asks for a client certificate.
    pub fn with_identity(
        allow_link_local: bool,
        extra_ca: Option<&std::path::Path>,
        identity: Option<ClientIdentity>,
    ) -> anyhow::Result<Self> {
        let http = egress::connector(GuardedResolver::new(allow_link_local));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(toolplane_runtime::tool_tls::client_config_with_identity(
                extra_ca,
                identity.map(|id| (id.certs, id.key)),
            )?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self { client })
    }

    /// POSTs `body` as JSON and parses the JSON answer, within `timeout`.
    pub async fn post_json(
        &self,
        endpoint: &str,
        body: Vec<u8>,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Value, CallError> {
        self.send(Method::POST, endpoint, Some(body), headers, timeout).await
    }

    /// Sends one request (`body`, when given, as JSON) and parses the answer within
    /// `timeout`: JSON as JSON, an empty body as `null`, other text as a string.
    pub async fn send(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Vec<u8>>,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let typed = body.map(|b| (b, "application/json"));
        self.request(method, endpoint, typed, headers, timeout).await
    }

    /// POSTs a form (`application/x-www-form-urlencoded`), e.g. an OAuth 2.0 token
    /// request, and parses the JSON answer.
    pub async fn send_form(
        &self,
        endpoint: &str,
        body: Vec<u8>,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let typed = Some((body, "application/x-www-form-urlencoded"));
        self.request(Method::POST, endpoint, typed, headers, timeout).await
    }

    async fn request(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<(Vec<u8>, &'static str)>,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|_| CallError::Connect(format!("{endpoint:?} is not a URL")))?;
        let mut builder = Request::builder().method(method).uri(uri);
        let body = match body {
            Some((bytes, content_type)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                Some(bytes)
            }
            None => None,
        };
        builder = builder.header(header::ACCEPT, "application/json").header(
            header::USER_AGENT,
            concat!("toolplane-sidecar/", env!("CARGO_PKG_VERSION")),
        );
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let req = builder
            .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
            .map_err(|e| CallError::Connect(e.to_string()))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| match egress::refusal_reason(&e) {
                    Some(why) => CallError::Forbidden(why),
                    None => CallError::Connect(e.to_string()),
                })?;
            let status = resp.status();
            let is_json = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_none_or(|v| v.contains("json"));
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                        CallError::TooLarge
                    } else {
                        CallError::Connect(e.to_string())
                    }
                })?
                .to_bytes();
            if !status.is_success() {
                // Any bytes at all: made text (NUL escaped, invalid UTF-8 replaced) that
                // errors, logs and audit events can carry.
                let head = &bytes[..bytes.len().min(MAX_ERROR_BODY_BYTES)];
                let body = toolplane_core::audit_clean::text_from_bytes(head, MAX_ERROR_BODY_BYTES);
                return Err(CallError::Status {
                    status,
                    retry_after,
                    body,
                });
            }
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            match serde_json::from_slice(&bytes) {
                Ok(v) => Ok(v),
                Err(e) if is_json => Err(CallError::InvalidJson(e.to_string())),
                // A non-JSON answer (text/plain, text/html, ...) as text.
                Err(_) => Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
            }
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| CallError::Timeout(timeout))?
    }
}
