//! JSON Schema checks: a tool's schemas must be valid JSON Schema (draft 2020-12 by
//! default, or whatever `$schema` names) and compile; parameters and outputs are
//! validated against the full schema, and each failure names its JSON pointer.

use jsonschema::Validator;
use serde_json::Value;

use crate::error::Violations;

/// At most this many violations are reported for one document, so a huge bad input
/// cannot produce a huge error.
const MAX_REPORTED: usize = 10;

/// Checks `schema` against its meta-schema and compiles it. `field` names the schema in
/// the request (e.g. `tool.schema.input_schema`); violations append the pointer inside.
pub fn compile(field: &str, schema: &Value) -> Result<Validator, Violations> {
    if !schema.is_object() {
        return Err(Violations::single(field, "must be a JSON Schema object"));
    }
    if let Err(e) = jsonschema::meta::validate(schema) {
        let pointer = e.instance_path().as_str().to_owned();
        return Err(Violations::single(
            format!("{field}{pointer}"),
            format!("is not valid JSON Schema: {}", e.masked()),
        ));
    }
    jsonschema::validator_for(schema).map_err(|e| {
        Violations::single(
            format!("{field}{}", e.schema_path().as_str()),
            format!("does not compile: {}", e.masked()),
        )
    })
}

/// Validates a document. The error message never echoes the offending value, which
/// may be a secret.
pub fn check(validator: &Validator, field_prefix: &str, instance: &Value) -> Result<(), Violations> {
    let mut violations = Violations::default();
    for e in validator.iter_errors(instance).take(MAX_REPORTED) {
        let pointer = e.instance_path().as_str();
        let field = if pointer.is_empty() {
            format!("{field_prefix}/")
        } else {
            format!("{field_prefix}{pointer}")
        };
        violations.push(field, e.masked().to_string());
    }
    violations.into_result()
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
