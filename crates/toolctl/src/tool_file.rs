//! The JSON file format `toolctl tools register --file` reads: the tool's fields with
//! readable enum names, mapped onto `toolplane.v1.Tool`.

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;
use toolplane_core::convert::{parse_decimal, spec_to_pb};
use toolplane_core::model::{
    AuthType, DataSensitivity, SideEffects, ToolExample, ToolProtocol, ToolRequirements, ToolSpec,
};
use toolplane_proto::v1 as pb;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolFile {
    pub name: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub description: String,
    pub input_schema: Value,
    #[serde(default)]
    pub output_schema: Value,
    #[serde(default)]
    pub examples: Vec<ExampleFile>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub requirements: RequirementsFile,
    #[serde(default)]
    pub provider: String,
    pub endpoint: String,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default)]
    pub cost_per_call: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_side_effects")]
    pub side_effects: String,
    #[serde(default)]
    pub idempotent: bool,
    #[serde(default)]
    pub cacheable: bool,
    #[serde(default)]
    pub cache_ttl_seconds: u32,
    #[serde(default)]
    pub cache_normalize_keys: bool,
    #[serde(default)]
    pub cache_ignored_params: Vec<String>,
    #[serde(default)]
    pub compliance_frameworks: Vec<String>,
    /// HTTP tools: method, path template and where each parameter goes.
    #[serde(default)]
    pub http: Option<toolplane_core::http_binding::HttpBinding>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleFile {
    #[serde(default)]
    pub description: String,
    pub input: Value,
    #[serde(default)]
    pub expected_output: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementsFile {
    #[serde(default)]
    pub authentication: String,
    #[serde(default)]
    pub rate_limit_rpm: u32,
    #[serde(default)]
    pub timeout_ms: u32,
    #[serde(default)]
    pub required_agent_skills: Vec<String>,
    #[serde(default)]
    pub data_sensitivity: String,
}

fn default_protocol() -> String {
    "http".to_owned()
}

fn default_side_effects() -> String {
    "write".to_owned()
}

fn yes() -> bool {
    true
}

/// An enum field by its stable text; empty takes the default.
fn parse<T: Copy>(field: &str, value: &str, default: T, parse: fn(&str) -> Option<T>) -> anyhow::Result<T> {
    if value.is_empty() {
        return Ok(default);
    }
    parse(value).ok_or_else(|| anyhow::anyhow!("{field}: {value:?} is not a known value"))
}

impl ToolFile {
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let yaml = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if yaml {
            serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        } else {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
    }

    /// The file as a registry spec on the wire; the server validates the rest.
    pub fn into_pb(self) -> anyhow::Result<pb::Tool> {
        let r = self.requirements;
        let spec = ToolSpec {
            name: self.name,
            category: self.category,
            description: self.description,
            input_schema: self.input_schema,
            output_schema: self.output_schema,
            examples: self
                .examples
                .into_iter()
                .map(|e| ToolExample {
                    description: e.description,
                    input: e.input,
                    expected_output: e.expected_output,
                })
                .collect(),
            capabilities: self.capabilities,
            requirements: ToolRequirements {
                authentication: parse(
                    "requirements.authentication",
                    &r.authentication,
                    AuthType::None,
                    AuthType::parse,
                )?,
                rate_limit_rpm: r.rate_limit_rpm,
                timeout_ms: r.timeout_ms,
                required_agent_skills: r.required_agent_skills,
                data_sensitivity: parse(
                    "requirements.data_sensitivity",
                    &r.data_sensitivity,
                    DataSensitivity::Internal,
                    DataSensitivity::parse,
                )?,
            },
            provider: self.provider,
            endpoint: self.endpoint,
            protocol: parse("protocol", &self.protocol, ToolProtocol::Http, ToolProtocol::parse)?,
            reliability_score: 0.0,
            average_latency_ms: 0,
            cost_per_call: parse_decimal("cost_per_call", &self.cost_per_call)?,
            enabled: self.enabled,
            side_effects: parse(
                "side_effects",
                &self.side_effects,
                SideEffects::Write,
                SideEffects::parse,
            )?,
            idempotent: self.idempotent,
            cacheable: self.cacheable,
            cache_ttl_seconds: self.cache_ttl_seconds,
            cache_normalize_keys: self.cache_normalize_keys,
            cache_ignored_params: self.cache_ignored_params,
            remote_name: String::new(),
            http: self.http,
            compliance_frameworks: self.compliance_frameworks,
        };
        Ok(spec_to_pb(spec))
    }
}
