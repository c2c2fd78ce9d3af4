use serde_json::json;

use super::credential::{STANDARD, base64_encode};
use super::*;

fn r() -> Redactor {
    Redactor::default()
}

#[test]
fn nested_keys_are_redacted_case_insensitively() {
    let v = json!({"q": "weather", "auth": {"API-Key": "k1", "list": [{"Password": "p"}]}});
    let out = r().redact(&v, &Value::Null);
    assert_eq!(out["q"], "weather");
    assert_eq!(out["auth"]["API-Key"], REDACTED);
    assert_eq!(out["auth"]["list"][0]["Password"], REDACTED);
}

#[test]
fn compound_key_names_are_secret_by_their_words() {
    let r = r();
    for key in [
        "db_password",
        "x-api-key",
        "X-API-KEY",
        "github_token",
        "auth_token",
        "AWS_SECRET_ACCESS_KEY",
        "aws_access_key_id",
        "clientSecret",
        "client.secret",
        "APIKey",
        "apikey",
        "api_key",
        "oauth2Token",
        "refresh-token",
        "Set-Cookie",
        "sessionId",
        "JSESSIONID",
        "private_key_pem",
        "user pwd",
        "DATABASE_PASSWD",
        "ssh_passphrase",
        "Proxy-Authorization",
        "google_credentials",
        "db.connection_string",
        "password2",
    ] {
        assert!(r.is_secret_key(key), "{key} should be secret");
    }
    // Whole words only; counts and descriptions of secrets are not secrets.
    for key in [
        "author",
        "authority",
        "keyword",
        "keys",
        "passage",
        "compass",
        "tokenizer",
        "max_tokens",
        "tokens_used",
        "token_count",
        "password_min_length",
        "secret_name",
        "token_type",
        "session",
        "text",
        "",
    ] {
        assert!(!r.is_secret_key(key), "{key} should be ordinary");
    }
    let v = json!({"db_password": "hunter2", "max_tokens": 512, "author": "ann", "x-api-key": "k"});
    let out = r.redact(&v, &Value::Null);
    assert_eq!(
        out,
        json!({"db_password": REDACTED, "max_tokens": 512, "author": "ann", "x-api-key": REDACTED})
    );
}

#[test]
fn schema_annotations_redact_innocent_names() {
    let schema = json!({"type": "object", "properties": {
        "pin": {"type": "string", "writeOnly": true},
        "inner": {"type": "object", "properties": {"code": {"type": "string", "format": "password"}}},
        "items": {"type": "array", "items": {"type": "string", "x-sensitive": true}}}});
    let v = json!({"pin": "1234", "inner": {"code": "abc"}, "items": ["a", "b"], "other": "ok"});
    let out = r().redact(&v, &schema);
    assert_eq!(
        out,
        json!({"pin": REDACTED, "inner": {"code": REDACTED}, "items": [REDACTED, REDACTED], "other": "ok"})
    );
}

#[test]
fn refs_into_defs_and_definitions_are_followed() {
    let schema = json!({
        "type": "object",
        "properties": {
            "login": {"$ref": "#/$defs/login"},
            "legacy": {"$ref": "#/definitions/legacy"},
            "escaped": {"$ref": "#/$defs/a~1b%20c"},
        },
        "$defs": {
            "login": {"type": "object", "properties": {"user": {"type": "string"}, "pin": {"$ref": "#/$defs/pin"}}},
            "pin": {"type": "string", "writeOnly": true},
            "a/b c": {"format": "password"},
        },
        "definitions": {"legacy": {"type": "string", "x-sensitive": true}},
    });
    let v = json!({"login": {"user": "ann", "pin": "1234"}, "legacy": "x", "escaped": "y"});
    let out = r().redact(&v, &schema);
    assert_eq!(
        out,
        json!({"login": {"user": "ann", "pin": REDACTED}, "legacy": REDACTED, "escaped": REDACTED})
    );
}

#[test]
fn combinators_mark_a_value_when_any_branch_does() {
    let schema = json!({
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}},
            {"properties": {"a": {"writeOnly": true}}},
        ],
        "anyOf": [{"properties": {"b": {"format": "password"}}}, {"properties": {"b": {"type": "integer"}}}],
        "oneOf": [{"properties": {"c": {"oneOf": [{"type": "string"}, {"x-sensitive": true}]}}}],
        "properties": {"d": {"type": "string"}},
    });
    let v = json!({"a": "1", "b": "2", "c": "3", "d": "4"});
    let out = r().redact(&v, &schema);
    assert_eq!(out, json!({"a": REDACTED, "b": REDACTED, "c": REDACTED, "d": "4"}));
}

#[test]
fn pattern_and_additional_properties_apply_by_key() {
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "patternProperties": {"^pin_": {"writeOnly": true}, "(": {"type": "string"}},
        "additionalProperties": {"type": "object", "properties": {"otp": {"format": "password"}}},
    });
    let v = json!({"name": "n", "pin_home": "1", "extra": {"otp": "2", "note": "ok"}});
    let out = r().redact(&v, &schema);
    assert_eq!(
        out,
        json!({"name": "n", "pin_home": REDACTED, "extra": {"otp": REDACTED, "note": "ok"}})
    );
    // A pattern this engine cannot compile (lookahead) is taken to apply.
    let schema = json!({"patternProperties": {"^(?!x)": {"writeOnly": true}}});
    let out = r().redact(&json!({"anything": "v"}), &schema);
    assert_eq!(out, json!({"anything": REDACTED}));
    // additionalProperties applies only to keys nothing else names.
    let schema = json!({"properties": {"a": {"type": "string"}}, "additionalProperties": {"writeOnly": true}});
    let out = r().redact(&json!({"a": "x", "b": "y"}), &schema);
    assert_eq!(out, json!({"a": "x", "b": REDACTED}));
}

#[test]
fn tuple_and_prefix_items_apply_by_position() {
    let schema = json!({"type": "array", "prefixItems": [{"type": "string"}, {"writeOnly": true}], "items": {"x-sensitive": true}});
    let out = r().redact(&json!(["a", "b", "c"]), &schema);
    assert_eq!(out, json!(["a", REDACTED, REDACTED]));
    let schema = json!({"items": [{"format": "password"}, {"type": "string"}], "additionalItems": {"writeOnly": true}});
    let out = r().redact(&json!(["a", "b", "c"]), &schema);
    assert_eq!(out, json!([REDACTED, "b", REDACTED]));
}

#[test]
fn ref_cycles_end_and_recursive_schemas_still_work() {
    let schema = json!({
        "$ref": "#/$defs/a",
        "$defs": {
            "a": {"$ref": "#/$defs/b"},
            "b": {"allOf": [{"$ref": "#/$defs/a"}, {"$ref": "#"}]},
            "node": {"type": "object", "properties": {"key": {"writeOnly": true}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}},
        },
        "properties": {"tree": {"$ref": "#/$defs/node"}},
    });
    let v = json!({"tree": {"key": "k0", "children": [{"key": "k1", "children": [{"key": "k2"}]}]}, "x": "ok"});
    let out = r().redact(&v, &schema);
    assert_eq!(
        out,
        json!({"tree": {"key": REDACTED, "children": [{"key": REDACTED, "children": [{"key": REDACTED}]}]}, "x": "ok"})
    );
}

#[test]
fn secret_shaped_values_are_redacted() {
    let r = r();
    let v = json!({"note": "Bearer abc.def", "k": "AKIAABCDEFGHIJKLMNOP", "t": "tpk_0123"});
    let out = r.redact(&v, &Value::Null);
    assert_eq!(out, json!({"note": REDACTED, "k": REDACTED, "t": REDACTED}));
    assert_eq!(
        r.redact_text("upstream said Bearer xyz failed"),
        "upstream said Bearer [REDACTED] failed"
    );
}

#[test]
fn secrets_inside_free_text_and_arrays_of_objects_are_redacted() {
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
    let out = r().redact(&v, &Value::Null);
    let text = out.to_string();
    for secret in ["AKIAIOSFODNN7EXAMPLE", "ghp_0123", "eyJhbGci", "sk_live_51"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert_eq!(out["query"], "use key=[REDACTED] please");
    assert_eq!(out["rows"][0]["name"], "a");
    assert_eq!(out["count"], 3);
    assert_eq!(
        out["plain"], "nothing secret in here: 12 apples",
        "ordinary text is untouched"
    );
}

#[test]
fn key_value_pairs_in_text_are_redacted_whatever_the_whitespace() {
    let r = r();
    let cases = [
        ("db_password=hunter2 next", "db_password=[REDACTED] next"),
        ("password = hunter2", "password = [REDACTED]"),
        (
            "error:\n  db_password:\thunter2\n  host: db1",
            "error:\n  db_password:\t[REDACTED]\n  host: db1",
        ),
        (
            "line one\napi_key=abc123\nline three",
            "line one\napi_key=[REDACTED]\nline three",
        ),
        ("token:\n\n   abc", "token:\n\n   [REDACTED]"),
        (
            r#"{"password": "p w d", "user": "ann"}"#,
            r#"{"password": "[REDACTED]", "user": "ann"}"#,
        ),
        (
            r#"{"clientSecret":"a\"b","n":1}"#,
            r#"{"clientSecret":"[REDACTED]","n":1}"#,
        ),
        (r#"{\"password\":\"abc\"}"#, r#"{\"password\":\"[REDACTED]\"}"#),
        ("'secret': 'x y'", "'secret': '[REDACTED]'"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer [REDACTED]"),
        (
            "Authorization:  Basic dXNlcjpwYXNz\r\n",
            "Authorization:  Basic [REDACTED]\r\n",
        ),
        ("Cookie: a=1; sid=2\nHost: x", "Cookie: [REDACTED]\nHost: x"),
        ("error: token=abc, retry", "error: token=[REDACTED], retry"),
        (
            "author: ann, keyword=rust, passage: 3",
            "author: ann, keyword=rust, passage: 3",
        ),
        ("max_tokens=512", "max_tokens=512"),
    ];
    for (input, want) in cases {
        assert_eq!(r.redact_text(input), want, "for {input:?}");
    }
}

#[test]
fn bearer_and_basic_credentials_are_redacted() {
    let r = r();
    assert_eq!(
        r.redact_text("sent\tbearer\n  eyJabc.def-ghi_jkl== to it"),
        "sent\tbearer\n  [REDACTED] to it"
    );
    let basic = base64_encode(b"ann:s3cret", STANDARD);
    assert_eq!(
        r.redact_text(&format!("header was Basic {basic} then")),
        "header was Basic [REDACTED] then"
    );
    // Not a credential: prose, and base64 that is no user:pass.
    assert_eq!(r.redact_text("a basic example"), "a basic example");
    assert_eq!(
        r.redact_text("Basic authentication failed"),
        "Basic authentication failed"
    );
}

#[test]
fn url_query_secrets_and_user_passwords_are_redacted() {
    let r = r();
    assert_eq!(
        r.redact_text("GET https://api.example.com/v1/items?token=abc123&page=2&api_key=k%2F1 failed"),
        "GET https://api.example.com/v1/items?token=[REDACTED]&page=2&api_key=[REDACTED] failed"
    );
    assert_eq!(
        r.redact_text("cannot connect to postgres://app:s3cr3t@db:5432/app\n"),
        "cannot connect to postgres://app:[REDACTED]@db:5432/app\n"
    );
    assert_eq!(
        r.redact_text("see https://example.com:8443/a?q=1"),
        "see https://example.com:8443/a?q=1"
    );
}

#[test]
fn pem_private_key_blocks_are_redacted() {
    let r = r();
    let text = "key follows:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\ndef==\n-----END RSA PRIVATE KEY-----\nafter";
    assert_eq!(r.redact_text(text), "key follows:\n[REDACTED]\nafter");
    let cut = r.redact_text("-----BEGIN OPENSSH PRIVATE KEY----- abc def");
    assert_eq!(cut, REDACTED, "an unterminated block is redacted to the end");
}

#[test]
fn token_shapes_are_found_among_other_words_with_their_whitespace_kept() {
    let r = r();
    let text = "a\n\tghp_0123456789abcdefghijABCDEFGHIJ.\n  b AKIAIOSFODNN7EXAMPLE  c";
    assert_eq!(r.redact_text(text), "a\n\t[REDACTED].\n  b [REDACTED]  c");
}

#[test]
fn redaction_is_idempotent() {
    let r = r();
    let once = r.redact_text("password=x Bearer y https://u:p@h ?token=z");
    assert_eq!(r.redact_text(&once), once);
}

#[test]
fn configured_keys_and_patterns_are_added_to_the_defaults() {
    let r = Redactor::with_extra(["pin code", "ssn"], [r"acct-\d{6}", r"(?i)employee id (\d+)"]).unwrap();
    assert!(r.is_secret_key("PinCode") && r.is_secret_key("user_pin_code") && r.is_secret_key("SSN"));
    assert!(r.is_secret_key("db_password"), "the defaults stay");
    assert!(!r.is_secret_key("pin") && !r.is_secret_key("lessn"));
    let v = json!({"pinCode": "1234", "note": "bill acct-123456 now; Employee ID 42 and ssn=123-45-6789"});
    let out = r.redact(&v, &Value::Null);
    assert_eq!(
        out,
        json!({"pinCode": REDACTED, "note": "bill [REDACTED] now; Employee ID [REDACTED] and ssn=[REDACTED]"})
    );
    let plain = Redactor::default();
    assert!(!plain.is_secret_key("ssn"));
    assert!(matches!(
        Redactor::with_extra(Vec::<&str>::new(), ["("]),
        Err(RedactError::BadPattern { .. })
    ));
    assert!(matches!(
        Redactor::with_extra(["--"], Vec::<&str>::new()),
        Err(RedactError::EmptyKey(_))
    ));
}

#[test]
fn a_credential_is_scrubbed_in_its_encodings() {
    let secret = "s3cr:et/+ key";
    let b64 = base64_encode(secret.as_bytes(), STANDARD);
    let text = format!(
        "raw {secret} | url s3cr%3Aet%2F%2B%20key | lower s3cr%3aet%2f%2b%20key | form s3cr%3Aet%2F%2B+key | b64 {b64} | json {}",
        serde_json::to_string(secret).unwrap()
    );
    let out = scrub_credential(&text, secret);
    assert_eq!(
        out,
        "raw [REDACTED] | url [REDACTED] | lower [REDACTED] | form [REDACTED] | b64 [REDACTED] | json \"[REDACTED]\""
    );
    // A stored `Basic` header value: its token, the decoded user:pass and the password.
    let header = format!("Basic {}", base64_encode(b"ann:pw-9f8e7d", STANDARD));
    let out = scrub_credential("got ann:pw-9f8e7d, password pw-9f8e7d", &header);
    assert_eq!(out, "got [REDACTED], password [REDACTED]");
    assert_eq!(scrub_credential("nothing here", ""), "nothing here");
}

#[test]
fn base64_round_trips() {
    for s in ["", "a", "ab", "abc", "abcd", "user:pass"] {
        let enc = base64_encode(s.as_bytes(), STANDARD);
        assert_eq!(super::credential::base64_decode(&enc).unwrap(), s.as_bytes());
    }
    assert_eq!(base64_encode(b"user:pass", STANDARD), "dXNlcjpwYXNz");
    assert_eq!(base64_encode(b"ab", STANDARD), "YWI=");
    assert!(super::credential::base64_decode("not base64!").is_none());
}
