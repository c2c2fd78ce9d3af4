//! Checks on a tool definition before it is stored: sizes, names, schemas, examples and
//! the endpoint. Every problem found is reported, each with the field or JSON pointer.

use crate::endpoint::check_endpoint;
use crate::error::Violations;
use crate::model::{SideEffects, ToolSpec};
use crate::schema;

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_DESCRIPTION_LEN: usize = 8192;
pub const MAX_SHORT_TEXT_LEN: usize = 128;
pub const MAX_ENDPOINT_LEN: usize = 2048;
pub const MAX_LIST_ITEMS: usize = 64;
pub const MAX_EXAMPLES: usize = 32;
/// Canonical JSON size of one schema.
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct ToolPolicy {
    /// Allow endpoints on link-local or metadata addresses (off by default).
    pub allow_link_local_endpoints: bool,
}

pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
        && name.len() <= MAX_NAME_LEN
}

fn check_len(v: &mut Violations, field: &str, value: &str, max: usize) {
    if value.chars().count() > max {
        v.push(field, format!("is longer than the limit of {max} characters"));
    }
}

fn check_list(v: &mut Violations, field: &str, items: &[String]) {
    if items.len() > MAX_LIST_ITEMS {
        v.push(field, format!("has more than the limit of {MAX_LIST_ITEMS} items"));
    }
    for (i, item) in items.iter().enumerate() {
        if item.is_empty() {
            v.push(format!("{field}[{i}]"), "must not be empty");
        }
        check_len(v, &format!("{field}[{i}]"), item, MAX_SHORT_TEXT_LEN);
    }
}

pub fn check_tool_spec(spec: &ToolSpec, policy: ToolPolicy) -> Result<(), Violations> {
    let mut v = Violations::default();
    if spec.name.is_empty() {
        v.push("tool.name", "is required");
    } else if !is_valid_name(&spec.name) {
        v.push(
            "tool.name",
            format!("must match ^[a-z][a-z0-9_.-]*$ and be at most {MAX_NAME_LEN} characters"),
        );
    }
    check_len(&mut v, "tool.description", &spec.description, MAX_DESCRIPTION_LEN);
    check_len(&mut v, "tool.category", &spec.category, MAX_SHORT_TEXT_LEN);
    check_len(&mut v, "tool.provider", &spec.provider, MAX_SHORT_TEXT_LEN);
    check_len(&mut v, "tool.remote_name", &spec.remote_name, MAX_NAME_LEN);
    check_list(&mut v, "tool.capabilities", &spec.capabilities);
    check_list(
        &mut v,
        "tool.requirements.required_agent_skills",
        &spec.requirements.required_agent_skills,
    );
    if spec.endpoint.is_empty() {
        v.push("tool.endpoint", "is required");
    } else if spec.endpoint.len() > MAX_ENDPOINT_LEN {
        v.push(
            "tool.endpoint",
            format!("is longer than the limit of {MAX_ENDPOINT_LEN} characters"),
        );
    } else if let Err(e) = check_endpoint("tool.endpoint", &spec.endpoint, policy.allow_link_local_endpoints) {
        v.0.extend(e.0);
    }
    // Agents' spend budgets count costs exactly, in millionths.
    if spec.cost_per_call.normalize().scale() > crate::convert::MONEY_SCALE {
        v.push(
            "tool.cost_per_call",
            format!("has more than {} decimal places", crate::convert::MONEY_SCALE),
        );
    } else if spec.cost_per_call > rust_decimal::Decimal::from(crate::convert::MAX_SPEND_BUDGET) {
        v.push(
            "tool.cost_per_call",
            format!("must be at most {}", crate::convert::MAX_SPEND_BUDGET),
        );
    }
    if !(0.0..=1.0).contains(&spec.reliability_score) {
        v.push("tool.reliability_score", "must be between 0 and 1");
    }
    if spec.cacheable && spec.side_effects != SideEffects::None {
        v.push("tool.cacheable", "only tools whose side_effects is NONE may be cached");
    }
    if spec.cacheable && spec.cache_ttl_seconds == 0 {
        v.push("tool.cache_ttl_seconds", "is required for a cacheable tool");
    }
    check_list(&mut v, "tool.cache_ignored_params", &spec.cache_ignored_params);
    check_list(&mut v, "tool.compliance_frameworks", &spec.compliance_frameworks);
    check_schemas(&mut v, spec);
    if let Some(binding) = &spec.http {
        if spec.protocol != crate::model::ToolProtocol::Http {
            v.push("tool.http", "only HTTP tools take an HTTP binding");
        }
        crate::http_binding::check(&mut v, binding, &spec.input_schema);
    }
    v.into_result()
}

fn check_schemas(v: &mut Violations, spec: &ToolSpec) {
    let input_field = "tool.schema.input_schema";
    let output_field = "tool.schema.output_schema";
    for (field, s) in [(input_field, &spec.input_schema), (output_field, &spec.output_schema)] {
        if crate::json::canonical(s).len() > MAX_SCHEMA_BYTES {
            v.push(field, format!("is larger than the limit of {MAX_SCHEMA_BYTES} bytes"));
            return;
        }
    }
    let input = if spec.input_schema.is_null() {
        v.push(input_field, "is required");
        None
    } else {
        schema::compile(input_field, &spec.input_schema)
            .map_err(|e| v.0.extend(e.0))
            .ok()
    };
    let output = if spec.output_schema.is_null() {
        None
    } else {
        schema::compile(output_field, &spec.output_schema)
            .map_err(|e| v.0.extend(e.0))
            .ok()
    };
    if spec.examples.len() > MAX_EXAMPLES {
        v.push(
            "tool.schema.examples",
            format!("has more than the limit of {MAX_EXAMPLES} items"),
        );
        return;
    }
    for (i, ex) in spec.examples.iter().enumerate() {
        if let Some(input) = &input
            && let Err(e) = schema::check(input, &format!("tool.schema.examples[{i}].input"), &ex.input)
        {
            v.0.extend(e.0);
        }
        if let Some(output) = &output
            && !ex.expected_output.is_null()
            && let Err(e) = schema::check(
                output,
                &format!("tool.schema.examples[{i}].expected_output"),
                &ex.expected_output,
            )
        {
            v.0.extend(e.0);
        }
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
