use serde_json::json;

use super::*;
use crate::testutil::tool_spec;

#[test]
fn a_good_spec_passes() {
    check_tool_spec(&tool_spec("word_count"), ToolPolicy::default()).unwrap();
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let mut s = tool_spec("Bad Name");
    s.endpoint = "http://169.254.169.254/latest".to_owned();
    s.description = "x".repeat(MAX_DESCRIPTION_LEN + 1);
    s.input_schema = json!({"type": "object", "properties": {"text": {"type": 12}}});
    let err = check_tool_spec(&s, ToolPolicy::default()).unwrap_err();
    let fields: Vec<&str> = err.0.iter().map(|v| v.field.as_str()).collect();
    assert!(fields.contains(&"tool.name"), "{err}");
    assert!(fields.contains(&"tool.endpoint"), "{err}");
    assert!(fields.contains(&"tool.description"), "{err}");
    assert!(err.to_string().contains("8192"), "{err}");
    assert!(
        fields
            .iter()
            .any(|f| f.starts_with("tool.schema.input_schema/properties/text")),
        "{err}"
    );
}

#[test]
fn an_example_that_breaks_its_schema_is_refused() {
    let mut s = tool_spec("word_count");
    s.examples[0].input = json!({"lang": "en"});
    s.examples[0].expected_output = json!({"words": "two"});
    let err = check_tool_spec(&s, ToolPolicy::default()).unwrap_err();
    let fields: Vec<&str> = err.0.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "tool.schema.examples[0].input/",
            "tool.schema.examples[0].expected_output/words"
        ]
    );
}

#[test]
fn caching_a_tool_with_side_effects_is_refused() {
    let mut s = tool_spec("word_count");
    s.cacheable = true;
    s.cache_ttl_seconds = 60;
    s.side_effects = crate::model::SideEffects::Write;
    assert!(check_tool_spec(&s, ToolPolicy::default()).is_err());
}
