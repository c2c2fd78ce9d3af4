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

/// Lists every tool of the server at `endpoint` (all pages), sending `headers` (the
/// tools' credential) with every request. `http` is the guarded client
/// ([`AppState::mcp_http`](crate::state::AppState::mcp_http)).
pub async fn list_tools(
    http: &McpHttp,
    endpoint: &str,
    headers: &[(String, String)],
) -> Result<Vec<rmcp::model::Tool>, ImportError> {
    let work = async {
        let mut config = StreamableHttpClientTransportConfig::with_uri(endpoint.to_owned());
        for (name, value) in headers {
            let name =
                http::HeaderName::try_from(name.as_str()).map_err(|e| ImportError::Unreachable(e.to_string()))?;
            let value =
                http::HeaderValue::try_from(value.as_str()).map_err(|e| ImportError::Unreachable(e.to_string()))?;
            config.custom_headers.insert(name, value);
        }
        let transport = http.transport(config).map_err(|e| match e {
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
        http: None,
    }
}

/// `registered` with what the MCP server owns taken from `fresh` (its [`to_spec`]):
/// the description, input and output schemas, the annotations (side effects and
/// idempotency), and where and how the tool is reached (remote name, endpoint,
/// protocol — the import request names the server). Everything an admin governs —
/// category, provider, capabilities, examples, requirements (authentication, rate
/// limit, timeout, skills, data sensitivity), cost, caching, compliance frameworks and
/// the enabled switch — and the learned statistics stay as registered, so a re-import
/// never undoes governance. Category and provider come from the request only when
/// a tool is first imported.
///
/// One refinement of an annotation is the admin's: side effects NONE (a pure function,
/// which is what lets a tool be cached) on a tool the server still calls read-only.
/// MCP cannot say "pure", so the server's READ must not undo it; a server that stops
/// calling the tool read-only does.
pub fn merge(registered: &ToolSpec, fresh: &ToolSpec) -> ToolSpec {
    let side_effects = if registered.side_effects == SideEffects::None && fresh.side_effects == SideEffects::Read {
        SideEffects::None
    } else {
        fresh.side_effects
    };
    ToolSpec {
        description: fresh.description.clone(),
        input_schema: fresh.input_schema.clone(),
        output_schema: fresh.output_schema.clone(),
        side_effects,
        idempotent: fresh.idempotent,
        remote_name: fresh.remote_name.clone(),
        endpoint: fresh.endpoint.clone(),
        protocol: fresh.protocol,
        ..registered.clone()
    }
}

/// The server-owned fields in which `merged` (see [`merge`]) differs from
/// `registered`, by name; empty when a re-import has nothing to record.
pub fn server_changes(registered: &ToolSpec, merged: &ToolSpec) -> Vec<&'static str> {
    let fields = [
        ("description", registered.description != merged.description),
        ("input schema", registered.input_schema != merged.input_schema),
        ("output schema", registered.output_schema != merged.output_schema),
        ("side effects", registered.side_effects != merged.side_effects),
        ("idempotency", registered.idempotent != merged.idempotent),
        ("remote name", registered.remote_name != merged.remote_name),
        ("endpoint", registered.endpoint != merged.endpoint),
        ("protocol", registered.protocol != merged.protocol),
    ];
    fields.into_iter().filter(|(_, d)| *d).map(|(f, _)| f).collect()
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

    fn remote(description: &str, read_only: bool) -> rmcp::model::Tool {
        let schema = serde_json::json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "number"}}});
        rmcp::model::Tool::new(
            "sum",
            description.to_owned(),
            std::sync::Arc::new(schema.as_object().cloned().unwrap_or_default()),
        )
        .annotate(
            rmcp::model::ToolAnnotations::new()
                .read_only(read_only)
                .idempotent(true),
        )
    }

    fn opts() -> ImportOptions {
        ImportOptions {
            endpoint: "http://mcp.internal/mcp".into(),
            category: "analysis".into(),
            provider: "calc".into(),
            name_prefix: "calc.".into(),
        }
    }

    /// What an admin made of an imported tool: every governed field set away from the
    /// import defaults, plus learned statistics.
    fn governed(imported: &ToolSpec) -> ToolSpec {
        let mut s = imported.clone();
        s.category = "finance".into();
        s.provider = "ledger team".into();
        s.capabilities = vec!["compute".into()];
        s.requirements.authentication = AuthType::ApiKey;
        s.requirements.rate_limit_rpm = 30;
        s.requirements.timeout_ms = 2_500;
        s.requirements.required_agent_skills = vec!["accounting".into()];
        s.requirements.data_sensitivity = DataSensitivity::Confidential;
        s.cost_per_call = Decimal::new(25, 4);
        s.cacheable = true;
        s.cache_ttl_seconds = 60;
        s.cache_normalize_keys = true;
        s.cache_ignored_params = vec!["trace".into()];
        s.compliance_frameworks = vec!["SOX".into(), "HIPAA".into()];
        s.enabled = false;
        s.reliability_score = 0.93;
        s.average_latency_ms = 41;
        s
    }

    #[test]
    fn an_unchanged_server_leaves_governance_alone_and_records_nothing() {
        let imported = to_spec(&remote("Add numbers", true), &opts());
        let admin = governed(&imported);
        let merged = merge(&admin, &to_spec(&remote("Add numbers", true), &opts()));
        assert_eq!(merged, admin, "nothing the admin set is reset to the import defaults");
        assert!(server_changes(&admin, &merged).is_empty());
    }

    #[test]
    fn a_new_description_and_annotations_come_from_the_server_with_governance_kept() {
        let admin = governed(&to_spec(&remote("Add numbers", true), &opts()));
        let fresh = to_spec(&remote("Add numbers exactly", false), &opts());
        let merged = merge(&admin, &fresh);
        assert_eq!(merged.description, "Add numbers exactly");
        assert_eq!(merged.side_effects, SideEffects::Write);
        assert_eq!(server_changes(&admin, &merged), ["description", "side effects"]);
        // Put the server's fields back: what is left is exactly the admin's spec.
        let mut back = merged.clone();
        back.description.clone_from(&admin.description);
        back.side_effects = admin.side_effects;
        assert_eq!(back, admin);
    }

    #[test]
    fn an_admins_pure_function_stays_pure_while_the_server_says_read_only() {
        let mut admin = governed(&to_spec(&remote("Add numbers", true), &opts()));
        admin.side_effects = SideEffects::None;
        let merged = merge(&admin, &to_spec(&remote("Add numbers", true), &opts()));
        assert_eq!(merged.side_effects, SideEffects::None);
        assert!(server_changes(&admin, &merged).is_empty());
        let merged = merge(&admin, &to_spec(&remote("Add numbers", false), &opts()));
        assert_eq!(merged.side_effects, SideEffects::Write, "the server now writes");
    }

    #[test]
    fn schemas_and_location_are_the_servers() {
        let admin = governed(&to_spec(&remote("Add numbers", true), &opts()));
        let mut fresh = to_spec(&remote("Add numbers", true), &opts());
        fresh.input_schema = serde_json::json!({"type": "object", "properties": {"b": {"type": "string"}}});
        fresh.output_schema = serde_json::json!({"type": "object"});
        fresh.endpoint = "http://mcp2.internal/mcp".into();
        let merged = merge(&admin, &fresh);
        assert_eq!(
            server_changes(&admin, &merged),
            ["input schema", "output schema", "endpoint"]
        );
        assert_eq!(merged.input_schema, fresh.input_schema);
        assert_eq!(merged.endpoint, fresh.endpoint);
        assert_eq!(merged.requirements, admin.requirements);
        assert_eq!(merged.compliance_frameworks, admin.compliance_frameworks);
    }
}
