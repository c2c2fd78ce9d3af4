use serde_json::json;

use super::*;

#[test]
fn nested_keys_are_redacted_case_insensitively() {
    let r = Redactor::default();
    let v = json!({"q": "weather", "auth": {"API-Key": "k1", "list": [{"Password": "p"}]}});
    let out = r.redact(&v, &Value::Null);
    assert_eq!(out["q"], "weather");
    assert_eq!(out["auth"]["API-Key"], REDACTED);
    assert_eq!(out["auth"]["list"][0]["Password"], REDACTED);
}

#[test]
fn schema_annotations_redact_innocent_names() {
    let schema = json!({"type": "object", "properties": {
        "pin": {"type": "string", "writeOnly": true},
        "inner": {"type": "object", "properties": {"code": {"type": "string", "format": "password"}}},
        "items": {"type": "array", "items": {"type": "string", "x-sensitive": true}}}});
    let v = json!({"pin": "1234", "inner": {"code": "abc"}, "items": ["a", "b"], "other": "ok"});
    let out = Redactor::default().redact(&v, &schema);
    assert_eq!(
        out,
        json!({"pin": REDACTED, "inner": {"code": REDACTED}, "items": [REDACTED, REDACTED], "other": "ok"})
    );
}

#[test]
fn secret_shaped_values_are_redacted() {
    let r = Redactor::default();
    let v = json!({"note": "Bearer abc.def", "k": "AKIAABCDEFGHIJKLMNOP", "t": "tpk_0123"});
    let out = r.redact(&v, &Value::Null);
    assert_eq!(out, json!({"note": REDACTED, "k": REDACTED, "t": REDACTED}));
    assert_eq!(
        r.redact_text("upstream said Bearer xyz failed"),
        "upstream said Bearer [REDACTED] failed"
    );
    assert!(!r.redact_text("-----BEGIN RSA PRIVATE KEY----- abc").contains("abc"));
}

#[test]
fn secrets_inside_free_text_and_arrays_of_objects_are_redacted() {
    let r = Redactor::default();
    let v = json!({
        "query": "use key=AKIAIOSFODNN7EXAMPLE please",
        "rows": [
            {"name": "a", "note": "token ghp_0123456789abcdefghijABCDEFGHIJ here"},
            {"name": "b", "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"},
            {"name": "c", "stripe": "sk_live_51HxYzAbCdEfGhIjKlMn"}
        ],
        "count": 3,
        "plain": "nothing secret in here: 12 apples"
    });
    let out = r.redact(&v, &Value::Null);
    let text = out.to_string();
    for secret in ["AKIAIOSFODNN7EXAMPLE", "ghp_0123", "eyJhbGci", "sk_live_51"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert_eq!(out["query"], "use [REDACTED] please");
    assert_eq!(out["rows"][0]["name"], "a");
    assert_eq!(out["count"], 3);
    assert_eq!(
        out["plain"], "nothing secret in here: 12 apples",
        "ordinary text is untouched"
    );
}
