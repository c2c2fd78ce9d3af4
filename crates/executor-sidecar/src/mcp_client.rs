//! MCP `tools/call` over Streamable HTTP (rmcp). One MCP session per server and
//! credential, reused across calls; a session that broke is replaced once, on the
//! next call. Connections are guarded like HTTP tools' ([`toolplane_runtime::egress`]),
//! so an MCP endpoint cannot be pointed at link-local or metadata addresses either,
//! and redirects are never followed: a server cannot send the call, with its
//! credential headers, to another origin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::{Peer, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use toolplane_runtime::egress::{self, EgressError, McpHttp};

#[derive(Debug, thiserror::Error)]
pub enum McpCallError {
    #[error("the MCP tool did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the MCP server: {0}")]
    Connect(String),
    /// The endpoint policy refused the server's address; nothing was sent.
    #[error("endpoint refused by policy: {0}")]
    Forbidden(String),
    /// The tool ran and reported an error (`isError`).
    #[error("the MCP tool reported an error: {0}")]
    Tool(String),
}

type Session = RunningService<RoleClient, ClientConfig>;
/// A session is per server and per credential header.
type SessionKey = (String, Vec<(String, String)>);

pub struct McpPool {
    http: McpHttp,
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
}

impl McpPool {
    /// `tool_ca`: a PEM bundle trusted for https:// MCP servers besides the public roots.
    pub fn new(allow_link_local: bool, tool_ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Ok(Self {
            http: McpHttp::new(allow_link_local, tool_ca)?,
            sessions: Mutex::default(),
        })
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
        let transport = self.http.transport(config).map_err(|e| match e {
            EgressError::Refused(why) => McpCallError::Forbidden(why),
            EgressError::BadUrl(_) => McpCallError::Connect(e.to_string()),
        })?;
        let session = ClientConfig::default()
            .serve(transport)
            .await
            .map_err(|e| match egress::refusal_reason(&e) {
                Some(why) => McpCallError::Forbidden(why),
                None => McpCallError::Connect(e.to_string()),
            })?;
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
