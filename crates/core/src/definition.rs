//! A tool's definition — what an MCP server describes and what an agent reads: name,
//! remote name, description, input and output schemas and the annotations (side
//! effects, idempotency) — its canonical hash, and the field-by-field difference of
//! two definitions. An approved definition is pinned by its hash: a server that changes
//! it gets a pending change, not a new live version (see `ToolReview`).

use serde_json::{Value, json};

use crate::json::digest;
use crate::model::ToolSpec;

/// The definition fields, in the order a diff lists them.
pub const FIELDS: [&str; 8] = [
    "description",
    "input_schema",
    "output_schema",
    "side_effects",
    "idempotent",
    "remote_name",
    "endpoint",
    "protocol",
];

fn field(spec: &ToolSpec, name: &str) -> Value {
    match name {
        "description" => Value::String(spec.description.clone()),
        "input_schema" => spec.input_schema.clone(),
        "output_schema" => spec.output_schema.clone(),
        "side_effects" => Value::String(spec.side_effects.as_str().to_owned()),
        "idempotent" => Value::Bool(spec.idempotent),
        "remote_name" => Value::String(spec.remote_name.clone()),
        "endpoint" => Value::String(spec.endpoint.clone()),
        "protocol" => Value::String(spec.protocol.as_str().to_owned()),
        _ => Value::Null,
    }
}

/// The definition as one JSON object (what the hash covers). Where the tool lives
/// (endpoint, protocol) is not part of it: moving a server is governance, not a
/// change of what agents read.
pub fn definition(spec: &ToolSpec) -> Value {
    json!({
        "name": spec.name,
        "remote_name": spec.remote_name,
        "description": spec.description,
        "input_schema": spec.input_schema,
        "output_schema": spec.output_schema,
        "annotations": {
            "side_effects": spec.side_effects.as_str(),
            "idempotent": spec.idempotent,
        },
    })
}

/// Hex SHA-256 of the canonical JSON (sorted keys) of [`definition`]: equal for equal
/// definitions whatever the key order of their schemas.
pub fn definition_hash(spec: &ToolSpec) -> String {
    digest(&definition(spec))
}

/// One changed field: its name, the value before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    pub field: &'static str,
    pub before: Value,
    pub after: Value,
}

/// The fields of [`FIELDS`] in which `after` differs from `before`.
pub fn diff(before: &ToolSpec, after: &ToolSpec) -> Vec<FieldChange> {
    FIELDS
        .iter()
        .filter_map(|f| {
            let (b, a) = (field(before, f), field(after, f));
            (crate::json::canonical(&b) != crate::json::canonical(&a)).then_some(FieldChange {
                field: f,
                before: b,
                after: a,
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "definition_tests.rs"]
mod tests;
