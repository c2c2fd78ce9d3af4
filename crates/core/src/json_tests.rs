use serde_json::json;

use super::*;

#[test]
fn struct_round_trip_keeps_integers_integers() {
    let v = json!({"a": 1, "b": [1.5, "x", null, true], "c": {"d": -3}});
    let back = struct_to_json(json_to_struct(&v));
    assert_eq!(back, v);
    assert!(back["a"].is_i64());
}

#[test]
fn canonical_sorts_keys_so_digest_ignores_order() {
    let a: Value = serde_json::from_str(r#"{"b":1,"a":{"z":2,"y":3}}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"a":{"y":3,"z":2},"b":1}"#).unwrap();
    assert_eq!(canonical(&a), r#"{"a":{"y":3,"z":2},"b":1}"#);
    assert_eq!(digest(&a), digest(&b));
    assert_ne!(digest(&a), digest(&json!({"b": 2})));
}

/// The form the audit chain and cache keys were first written with: every stored hash
/// depends on the canonical form staying byte for byte the same.
fn canonical_reference(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_reference(&m[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical_reference).collect::<Vec<_>>().join(",")),
        scalar => scalar.to_string(),
    }
}

#[test]
fn canonical_form_is_unchanged_byte_for_byte() {
    let cases = [
        json!(null),
        json!(-0.0),
        json!({"quote\"d": "tab\there\nnew \u{1}ctl \\ back", "ünï": "日本語 🙂", "": []}),
        json!({"n": [0, -1, 1.5, 1e300, 2.5e-8, 18_446_744_073_709_551_615_u64, -9_223_372_036_854_775_808_i64]}),
        json!({"z": {"b": [{"y": true, "x": false}], "a": null}, "a": "</script>"}),
    ];
    for v in cases {
        assert_eq!(canonical(&v), canonical_reference(&v), "{v}");
    }
}
