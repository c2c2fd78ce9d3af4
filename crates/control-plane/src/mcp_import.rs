//! `ImportMcpTools`: reads `tools/list` of an MCP server over Streamable HTTP (rmcp)
//! and turns each tool into a registry spec. MCP annotations map onto toolplane's
//! model: `readOnlyHint` → side effects READ (else WRITE), `idempotentHint` (or
//! read-only) → idempotent; `destructiveHint` tools are WRITE either way.
//!
//! The server is read with the same guarded client as the sidecar's MCP calls
//! ([`toolplane_runtime::egress::McpHttp`]): the endpoint policy is applied to the
//! host in every spelling and to every address it resolves to, when connecting, and
//! redirects are not followed.

use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::ClientConfig;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rust_decimal::Decimal;
use serde_json::Value;
use toolplane_core::model::{AuthType, DataSensitivity, SideEffects, ToolProtocol, ToolRequirements, ToolSpec};
use toolplane_runtime::egress::{self, EgressError, McpHttp};

/// How long connecting and listing may take together.
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("could not talk to the MCP server: {0}")]
    Unreachable(String),
    #[error("the MCP server did not answer within {0:?}")]
    Timeout(Duration),
    /// The endpoint policy refused the server's address; nothing was sent.
    #[error("{0}")]
    Refused(String),
}

/// Lists every tool of the server at `endpoint` (all pages). `allow_link_local` is
/// the registry's `TOOLPLANE_ALLOW_LINK_LOCAL_ENDPOINTS`.
pub async fn list_tools(endpoint: &str, allow_link_local: bool) -> Result<Vec<rmcp::model::Tool>, ImportError> {
    let work = async {
        let http = McpHttp::new(allow_link_local).map_err(|e| ImportError::Unreachable(e.to_string()))?;
        let transport = http
            .transport(StreamableHttpClientTransportConfig::with_uri(endpoint.to_owned()))
            .map_err(|e| match e {
                EgressError::Refused(why) => ImportError::Refused(why),
                EgressError::BadUrl(_) => ImportError::Unreachable(e.to_string()),
            })?;
        let client = ClientConfig::default()
            .serve(transport)
            .await
            .map_err(|e| match egress::refusal_reason(&e) {
                Some(why) => ImportError::Refused(why),
                None => ImportError::Unreachable(e.to_string()),
            })?;
        let tools = client
            .list_all_tools()
            .await
            .map_err(|e| ImportError::Unreachable(e.to_string()));
        let _ = client.cancel().await;
        tools
    };
    tokio::time::timeout(IMPORT_TIMEOUT, work)
        .await
        .map_err(|_| ImportError::Timeout(IMPORT_TIMEOUT))?
}

/// What an import request says about every tool it brings in.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub endpoint: String,
    pub category: String,
    pub provider: String,
    pub name_prefix: String,
}

/// A registry name from an MCP tool name: lowercase, with characters the registry does
/// not allow replaced by `_`, prefixed.
pub fn registry_name(prefix: &str, remote: &str) -> String {
    let mut name: String = format!("{prefix}{remote}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "mcp_");
    }
    name
}

pub fn to_spec(tool: &rmcp::model::Tool, opts: &ImportOptions) -> ToolSpec {
    let hints = tool.annotations.clone().unwrap_or_default();
    let read_only = hints.read_only_hint.unwrap_or(false);
    let description = tool
        .description
        .as_deref()
        .map(str::to_owned)
        .or_else(|| tool.title.clone())
        .unwrap_or_default();
    ToolSpec {
        name: registry_name(&opts.name_prefix, &tool.name),
        category: if opts.category.is_empty() {
            "integration".to_owned()
        } else {
            opts.category.clone()
        },
        description,
        input_schema: Value::Object((*tool.input_schema).clone()),
        output_schema: tool
            .output_schema
            .as_ref()
            .map_or(Value::Null, |s| Value::Object((**s).clone())),
        examples: Vec::new(),
        capabilities: vec![
            if read_only { "retrieve" } else { "execute" }.to_owned(),
            "integrate".to_owned(),
        ],
        requirements: ToolRequirements {
            authentication: AuthType::None,
            rate_limit_rpm: 0,
            timeout_ms: 0,
            required_agent_skills: Vec::new(),
            data_sensitivity: DataSensitivity::Internal,
        },
        provider: if opts.provider.is_empty() {
            "mcp".to_owned()
        } else {
            opts.provider.clone()
        },
        endpoint: opts.endpoint.clone(),
        protocol: ToolProtocol::Mcp,
        reliability_score: 0.0,
        average_latency_ms: 0,
        cost_per_call: Decimal::ZERO,
        enabled: true,
        side_effects: if read_only {
            SideEffects::Read
        } else {
            SideEffects::Write
        },
        idempotent: hints.idempotent_hint.unwrap_or(read_only),
        cacheable: false,
        cache_ttl_seconds: 0,
        cache_normalize_keys: false,
        cache_ignored_params: Vec::new(),
        compliance_frameworks: Vec::new(),
        remote_name: tool.name.to_string(),
    }
}

/// Whether `fresh` (from the server) differs from what is registered, ignoring what
/// the registry owns: learned statistics and the enabled switch.
pub fn changed(registered: &ToolSpec, fresh: &ToolSpec) -> bool {
    let mut a = registered.clone();
    a.reliability_score = fresh.reliability_score;
    a.average_latency_ms = fresh.average_latency_ms;
    a.enabled = fresh.enabled;
    a != *fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_registry_safe() {
        assert_eq!(registry_name("gh.", "createIssue"), "gh.createissue");
        assert_eq!(registry_name("", "Search Web!"), "search_web_");
        assert_eq!(registry_name("", "42answers"), "mcp_42answers");
    }
}
