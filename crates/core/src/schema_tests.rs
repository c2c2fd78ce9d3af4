use serde_json::json;

use super::*;

#[test]
fn malformed_schema_is_refused_with_its_pointer() {
    let err = compile(
        "tool.schema.input_schema",
        &json!({"type": "object", "properties": {"q": {"type": "strnig"}}}),
    )
    .unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(
        err.0[0].field.starts_with("tool.schema.input_schema/properties/q"),
        "{err}"
    );
}

#[test]
fn non_object_schema_is_refused() {
    assert!(compile("s", &json!("string")).is_err());
}

#[test]
fn parameter_violation_names_the_pointer_and_hides_the_value() {
    let v = compile(
        "s",
        &json!({"type": "object", "required": ["q"], "properties": {
            "q": {"type": "string"}, "n": {"type": "integer", "maximum": 5}}}),
    )
    .unwrap();
    let err = check(&v, "parameters", &json!({"q": "ok", "n": 77})).unwrap_err();
    assert_eq!(err.0[0].field, "parameters/n");
    assert!(!err.to_string().contains("77"), "{err}");
    let err = check(&v, "parameters", &json!({})).unwrap_err();
    assert_eq!(err.0[0].field, "parameters/");
    assert!(err.0[0].description.contains('q'));
    assert!(check(&v, "parameters", &json!({"q": "x", "n": 3})).is_ok());
}

#[test]
fn draft07_schemas_are_accepted() {
    let s = json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                   "properties": {"a": {"type": "number"}}});
    assert!(compile("s", &s).is_ok());
}
