//! Outbound connections to tools, guarded by the endpoint policy
//! ([`toolplane_core::endpoint`]) at the moment of connecting, not only when an
//! endpoint is registered: a host name re-pointed at instance metadata after
//! registration (DNS rebinding), or a literal the registry never saw in that spelling,
//! is refused before a single packet leaves.
//!
//! Every client that calls a tool or an MCP server is built here: the sidecar's HTTP
//! tool client ([`connector`]), its MCP sessions and the control plane's
//! `ImportMcpTools` ([`McpHttp`]). Two guards, because a connector skips the resolver
//! for literal addresses: the resolver drops refused addresses from every answer, and
//! the URL's host is checked (in every spelling) before the connection is made. MCP
//! clients never follow redirects, so a server cannot send a call, and the credential
//! headers it carries, to another origin.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{StreamableHttpClientTransportConfig, StreamableHttpError};
use toolplane_core::endpoint::{check_host, refusal};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a TCP connection to a tool may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The endpoint policy refused the address; nothing was sent.
    #[error("endpoint refused by policy: {0}")]
    Refused(String),
    #[error("{0:?} is not a URL")]
    BadUrl(String),
}

/// The policy's words, if `err` or anything in its chain is a policy refusal (rather
/// than a tool that could not be reached), however many client layers wrapped it.
pub fn refusal_reason(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(EgressError::Refused(why)) = e.downcast_ref::<EgressError>() {
            return Some(why.clone());
        }
        // These hide what they wrap from `source()`: io::Error its payload, rmcp its
        // transport's error and the HTTP client's error.
        let hidden: Option<&(dyn std::error::Error + 'static)> = if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io.get_ref().map(|inner| inner as _)
        } else if let Some(rmcp::service::ClientInitializeError::TransportError { error, .. }) = e.downcast_ref() {
            Some(error)
        } else if let Some(StreamableHttpError::Client(inner)) = e.downcast_ref::<StreamableHttpError<reqwest::Error>>()
        {
            Some(inner)
        } else {
            None
        };
        if let Some(why) = hidden.and_then(refusal_reason) {
            return Some(why);
        }
        next = e.source();
    }
    None
}

/// Whether `err` is, or wraps, a policy refusal (see [`refusal_reason`]).
pub fn is_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    refusal_reason(err).is_some()
}

type Lookup =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> + Send + Sync>;

/// Resolves host names and drops every refused address from the answer; an answer
/// with nothing left is an error. Used by both HTTP stacks (hyper's and reqwest's).
#[derive(Clone)]
pub struct GuardedResolver {
    allow_link_local: bool,
    lookup: Lookup,
}

impl GuardedResolver {
    /// The system resolver (getaddrinfo), guarded.
    pub fn new(allow_link_local: bool) -> Self {
        Self::with_lookup(allow_link_local, |host| {
            Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
        })
    }

    /// A guarded resolver over another lookup (tests make a name resolve to a
    /// metadata address with it, which real DNS here cannot).
    pub fn with_lookup<F>(allow_link_local: bool, lookup: F) -> Self
    where
        F: Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> + Send + Sync + 'static,
    {
        Self {
            allow_link_local,
            lookup: Arc::new(lookup),
        }
    }

    /// The addresses `host` resolves to that the policy admits.
    pub async fn resolve(&self, host: &str) -> std::io::Result<Vec<SocketAddr>> {
        let all = (self.lookup)(host.to_owned()).await?;
        let total = all.len();
        let mut refused = None;
        let kept: Vec<SocketAddr> = all
            .into_iter()
            .filter(|a| {
                let why = if self.allow_link_local { None } else { refusal(a.ip()) };
                if let Some(why) = why {
                    refused = Some((a.ip(), why));
                }
                why.is_none()
            })
            .collect();
        if kept.len() < total {
            tracing::warn!(
                host,
                dropped = total - kept.len(),
                "resolver answer held refused addresses; dropped"
            );
        }
        match (kept.is_empty(), refused) {
            (true, Some((ip, why))) => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                EgressError::Refused(format!("{host} resolves to {ip}, {why}")),
            )),
            (true, None) => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} resolves to no address"),
            )),
            (false, _) => Ok(kept),
        }
    }
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.resolve(name.as_str()).await?.into_iter()) })
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = this.resolve(&host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Checks a URI's host (any spelling of a literal address, or a metadata host name)
/// before connecting to it.
pub fn check_uri(uri: &Uri, allow_link_local: bool) -> Result<(), EgressError> {
    let host = uri.host().ok_or_else(|| EgressError::BadUrl(uri.to_string()))?;
    check_host(host, allow_link_local).map_err(EgressError::Refused)
}

/// Checks a URL the way reqwest will read it (the url crate), before connecting.
pub fn check_url(endpoint: &str, allow_link_local: bool) -> Result<(), EgressError> {
    let url = url::Url::parse(endpoint).map_err(|_| EgressError::BadUrl(endpoint.to_owned()))?;
    let host = url.host_str().ok_or_else(|| EgressError::BadUrl(endpoint.to_owned()))?;
    check_host(host, allow_link_local).map_err(EgressError::Refused)
}

/// A connector that checks the destination's host before the inner connector (which
/// skips its resolver for literal addresses) opens anything.
#[derive(Clone)]
pub struct GuardedConnector<C> {
    inner: C,
    allow_link_local: bool,
}

impl<C> tower::Service<Uri> for GuardedConnector<C>
where
    C: tower::Service<Uri>,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Err(e) = check_uri(&uri, self.allow_link_local) {
            return Box::pin(std::future::ready(Err(e.into())));
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The TCP connector for HTTP tools: the guarded resolver under a host check. Wrap it
/// in TLS as needed; the hyper client does not follow redirects.
pub fn connector(resolver: GuardedResolver) -> GuardedConnector<HttpConnector<GuardedResolver>> {
    let allow_link_local = resolver.allow_link_local;
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.enforce_http(false);
    GuardedConnector {
        inner: http,
        allow_link_local,
    }
}

/// The HTTP client for MCP servers (calls and imports): guarded resolver, no
/// redirects, no proxy (a proxy would resolve names where the guard cannot see), and
/// transports only for endpoints the policy admits.
#[derive(Clone)]
pub struct McpHttp {
    client: reqwest::Client,
    allow_link_local: bool,
}

impl McpHttp {
    /// Over TLS, server certificates are checked against the Mozilla roots plus
    /// `extra_ca` (a PEM bundle, e.g. a private CA), with the ring provider.
    pub fn new(allow_link_local: bool, extra_ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Self::with_resolver(GuardedResolver::new(allow_link_local), extra_ca)
    }

    pub fn with_resolver(resolver: GuardedResolver, extra_ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let allow_link_local = resolver.allow_link_local;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::tool_tls::client_config(extra_ca)?)
            .dns_resolver(resolver)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Self {
            client,
            allow_link_local,
        })
    }

    /// A Streamable HTTP transport to `config.uri`, once its host passes the policy.
    /// A transport only ever talks to that URI, and redirects are not followed, so
    /// this check and the resolver's cover every connection it makes.
    pub fn transport(
        &self,
        config: StreamableHttpClientTransportConfig,
    ) -> Result<StreamableHttpClientTransport<reqwest::Client>, EgressError> {
        check_url(&config.uri, self.allow_link_local)?;
        Ok(StreamableHttpClientTransport::with_client(self.client.clone(), config))
    }
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod tests;
