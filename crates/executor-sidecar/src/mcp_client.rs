//! MCP `tools/call` over Streamable HTTP (rmcp). One MCP session per server and
//! credential, reused across calls; a session that broke is replaced once, on the
//! next call. Connections go through the same guarded resolver as HTTP tools, so an
//! MCP endpoint cannot be pointed at link-local or metadata addresses either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::{Peer, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use toolplane_core::endpoint::is_forbidden_ip;

#[derive(Debug, thiserror::Error)]
pub enum McpCallError {
    #[error("the MCP tool did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the MCP server: {0}")]
    Connect(String),
    /// The tool ran and reported an error (`isError`).
    #[error("the MCP tool reported an error: {0}")]
    Tool(String),
}

/// Resolves host names for reqwest, dropping link-local and metadata addresses.
struct GuardedDns {
    allow_link_local: bool,
}

impl reqwest::dns::Resolve for GuardedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_link_local;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow || !is_forbidden_ip(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves only to link-local or metadata addresses; refused").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

type Session = RunningService<RoleClient, ClientConfig>;
/// A session is per server and per credential header.
type SessionKey = (String, Vec<(String, String)>);

pub struct McpPool {
    http: reqwest::Client,
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
}

impl McpPool {
    pub fn new(allow_link_local: bool) -> Self {
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedDns { allow_link_local }))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            http,
            sessions: Mutex::default(),
        }
    }

    async fn session(&self, endpoint: &str, headers: &[(String, String)]) -> Result<Peer<RoleClient>, McpCallError> {
        let key = (endpoint.to_owned(), headers.to_vec());
        let mut sessions = self.sessions.lock().await;
        if let Some(s) = sessions.get(&key).filter(|s| !s.is_closed()) {
            return Ok(s.peer().clone());
        }
        let mut config = StreamableHttpClientTransportConfig::with_uri(endpoint.to_owned());
        for (name, value) in headers {
            let name = HeaderName::try_from(name.as_str()).map_err(|e| McpCallError::Connect(e.to_string()))?;
            let value = HeaderValue::try_from(value.as_str()).map_err(|e| McpCallError::Connect(e.to_string()))?;
            config.custom_headers.insert(name, value);
        }
        let transport = StreamableHttpClientTransport::with_client(self.http.clone(), config);
        let session = ClientConfig::default()
            .serve(transport)
            .await
            .map_err(|e| McpCallError::Connect(e.to_string()))?;
        let peer = session.peer().clone();
        sessions.insert(key, Arc::new(session));
        Ok(peer)
    }

    async fn forget(&self, endpoint: &str, headers: &[(String, String)]) {
        self.sessions
            .lock()
            .await
            .remove(&(endpoint.to_owned(), headers.to_vec()));
    }

    /// Calls `tool` on the server at `endpoint`. The output is the tool's structured
    /// content when it has one, else `{"content": [...]}` with its content blocks.
    pub async fn call(
        &self,
        endpoint: &str,
        tool: &str,
        arguments: &Value,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Value, McpCallError> {
        let work = async {
            let args = arguments.as_object().cloned().unwrap_or_default();
            let mut last = String::new();
            // A reused session may have died with its server: one fresh try.
            for _ in 0..2 {
                let peer = self.session(endpoint, headers).await?;
                match peer
                    .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args.clone()))
                    .await
                {
                    Ok(result) => {
                        let output = match result.structured_content {
                            Some(v) => v,
                            None => json!({ "content": result.content }),
                        };
                        if result.is_error == Some(true) {
                            return Err(McpCallError::Tool(output.to_string()));
                        }
                        return Ok(output);
                    }
                    Err(e) => {
                        last = e.to_string();
                        self.forget(endpoint, headers).await;
                    }
                }
            }
            Err(McpCallError::Connect(last))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| McpCallError::Timeout(timeout))?
    }
}
