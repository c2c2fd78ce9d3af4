//! Result cache keys: a stable SHA-256 over the tool id and version, the caller's scope
//! and the canonical JSON of the parameters (keys sorted), optionally normalized so
//! requests that differ only in form share an entry.

use serde_json::{Number, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::json::canonical;
use crate::model::ToolSpec;

/// Strings trimmed, lowercased, inner whitespace collapsed; integral numbers written
/// as integers; recursively.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()),
        Value::Number(n) => match n.as_f64() {
            #[allow(clippy::cast_possible_truncation)]
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Number(Number::from(f as i64)),
            _ => Value::Number(n.clone()),
        },
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), normalize(v))).collect()),
        other => other.clone(),
    }
}

/// The key of `params` for `tool` at `version`, seen by `scope` (the calling agent).
pub fn cache_key(tool: Uuid, version: u32, spec: &ToolSpec, scope: &str, params: &Value) -> String {
    let mut p = params.clone();
    if let Value::Object(o) = &mut p {
        o.retain(|k, _| !spec.cache_ignored_params.contains(k));
    }
    if spec.cache_normalize_keys {
        p = normalize(&p);
    }
    let mut h = Sha256::new();
    h.update(tool.as_bytes());
    h.update(version.to_be_bytes());
    h.update((scope.len() as u64).to_be_bytes());
    h.update(scope.as_bytes());
    h.update(canonical(&p).as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testutil::tool_spec;

    #[test]
    fn keys_ignore_key_order_but_not_version_scope_or_values() {
        let s = tool_spec("t");
        let id = Uuid::new_v4();
        let a: Value = serde_json::from_str(r#"{"b":1,"a":"x"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"x","b":1}"#).unwrap();
        let k = cache_key(id, 1, &s, "agent-1", &a);
        assert_eq!(k, cache_key(id, 1, &s, "agent-1", &b));
        assert_ne!(k, cache_key(id, 2, &s, "agent-1", &a));
        assert_ne!(k, cache_key(id, 1, &s, "agent-2", &a));
        assert_ne!(k, cache_key(id, 1, &s, "agent-1", &json!({"a": "X", "b": 1})));
    }

    #[test]
    fn normalization_and_ignored_params_merge_equivalent_requests() {
        let mut s = tool_spec("t");
        s.cache_normalize_keys = true;
        s.cache_ignored_params = vec!["request_id".into()];
        let id = Uuid::new_v4();
        let k1 = cache_key(
            id,
            1,
            &s,
            "a",
            &json!({"q": "  Weather in  Paris ", "n": 3.0, "request_id": "r1"}),
        );
        let k2 = cache_key(
            id,
            1,
            &s,
            "a",
            &json!({"q": "weather in paris", "n": 3, "request_id": "r2"}),
        );
        assert_eq!(k1, k2);
        assert_ne!(k1, cache_key(id, 1, &s, "a", &json!({"q": "weather in rome", "n": 3})));
    }
}
