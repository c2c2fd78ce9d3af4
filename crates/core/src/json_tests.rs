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
