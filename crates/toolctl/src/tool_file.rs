//! The JSON file format `toolctl tools register --file` reads: the tool's fields with
//! readable enum names, mapped onto `toolplane.v1.Tool`.

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;
use toolplane_core::json::{json_to_struct, value_to_pb};
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

fn pick(field: &str, value: &str, options: &[(&str, i32)]) -> anyhow::Result<i32> {
    if value.is_empty() {
        return Ok(0);
    }
    match options.iter().find(|(n, _)| *n == value) {
        Some((_, v)) => Ok(*v),
        None => bail!(
            "{field}: {value:?} is not one of {}",
            options.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ),
    }
}

impl ToolFile {
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn into_pb(self) -> anyhow::Result<pb::Tool> {
        use pb::{AuthType as A, DataSensitivity as D, SideEffects as S, ToolProtocol as P};
        let r = self.requirements;
        Ok(pb::Tool {
            name: self.name,
            category: self.category,
            description: self.description,
            schema: Some(pb::ToolSchema {
                input_schema: json_to_struct(&self.input_schema),
                output_schema: json_to_struct(&self.output_schema),
                examples: self
                    .examples
                    .iter()
                    .map(|e| pb::ToolExample {
                        description: e.description.clone(),
                        input: Some(value_to_pb(&e.input)),
                        expected_output: Some(value_to_pb(&e.expected_output)),
                    })
                    .collect(),
                ..Default::default()
            }),
            capabilities: self.capabilities,
            requirements: Some(pb::ToolRequirements {
                authentication: pick(
                    "requirements.authentication",
                    &r.authentication,
                    &[
                        ("none", A::None as i32),
                        ("api_key", A::ApiKey as i32),
                        ("oauth2", A::Oauth2 as i32),
                        ("mutual_tls", A::MutualTls as i32),
                    ],
                )?,
                rate_limit_rpm: r.rate_limit_rpm,
                timeout_ms: r.timeout_ms,
                required_agent_skills: r.required_agent_skills,
                data_sensitivity: pick(
                    "requirements.data_sensitivity",
                    &r.data_sensitivity,
                    &[
                        ("public", D::Public as i32),
                        ("internal", D::Internal as i32),
                        ("confidential", D::Confidential as i32),
                        ("restricted", D::Restricted as i32),
                    ],
                )?,
            }),
            provider: self.provider,
            endpoint: self.endpoint,
            protocol: pick(
                "protocol",
                &self.protocol,
                &[("http", P::Http as i32), ("mcp", P::Mcp as i32)],
            )?,
            cost_per_call: self.cost_per_call,
            enabled: self.enabled,
            side_effects: pick(
                "side_effects",
                &self.side_effects,
                &[
                    ("none", S::None as i32),
                    ("read", S::Read as i32),
                    ("write", S::Write as i32),
                ],
            )?,
            idempotent: self.idempotent,
            cacheable: self.cacheable,
            cache_ttl_seconds: self.cache_ttl_seconds,
            cache_normalize_keys: self.cache_normalize_keys,
            cache_ignored_params: self.cache_ignored_params,
            ..Default::default()
        })
    }
}
