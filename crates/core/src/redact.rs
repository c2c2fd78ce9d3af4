//! Redaction of secrets before anything leaves the sidecar: recursive through objects
//! and arrays, by key name, by schema annotation (`writeOnly`, `format: password`,
//! `x-sensitive`) and by the shape of common secret values.

use serde_json::{Map, Value};

use crate::token::TOKEN_PREFIX;

pub const REDACTED: &str = "[REDACTED]";

/// Key names that always hold secrets, compared case-insensitively with `-` and `_`
/// removed, so `API-Key`, `api_key` and `apiKey` all match.
pub const DEFAULT_SECRET_KEYS: &[&str] = &[
    "apikey",
    "token",
    "accesstoken",
    "refreshtoken",
    "password",
    "passwd",
    "secret",
    "clientsecret",
    "authorization",
    "cookie",
    "privatekey",
    "credentials",
    "sessionid",
];

#[derive(Debug, Clone)]
pub struct Redactor {
    keys: Vec<String>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(DEFAULT_SECRET_KEYS.iter().copied())
    }
}

fn normalize(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

impl Redactor {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            keys: keys.into_iter().map(normalize).collect(),
        }
    }

    fn is_secret_key(&self, key: &str) -> bool {
        let k = normalize(key);
        self.keys.contains(&k)
    }

    /// Redacts `value`, guided by `schema` (the tool's input schema, or `Null`).
    pub fn redact(&self, value: &Value, schema: &Value) -> Value {
        if schema_marks_sensitive(schema) {
            return Value::String(REDACTED.to_owned());
        }
        match value {
            Value::Object(map) => {
                let props = &schema["properties"];
                let mut out = Map::new();
                for (k, v) in map {
                    let sub = props.get(k).unwrap_or(&schema["additionalProperties"]);
                    let red = if self.is_secret_key(k) {
                        Value::String(REDACTED.to_owned())
                    } else {
                        self.redact(v, sub)
                    };
                    out.insert(k.clone(), red);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.redact(v, &schema["items"])).collect()),
            Value::String(s) if looks_like_secret(s) => Value::String(REDACTED.to_owned()),
            // Free text may carry a secret among other words.
            Value::String(s) => Value::String(self.redact_text(s)),
            other => other.clone(),
        }
    }

    /// Redacts secret-shaped words in free text (error messages, log lines).
    pub fn redact_text(&self, text: &str) -> String {
        if text.contains("PRIVATE KEY-----") {
            return REDACTED.to_owned();
        }
        let mut out = Vec::new();
        let mut hide_next = false;
        for word in text.split(' ') {
            if hide_next && !word.is_empty() {
                out.push(REDACTED.to_owned());
                hide_next = false;
                continue;
            }
            hide_next = word.eq_ignore_ascii_case("bearer");
            let parts = word.split(['=', ':', ';', ',', '(', ')', '[', ']', '{', '}', '<', '>']);
            if looks_like_secret(word) || parts.into_iter().any(looks_like_secret) {
                out.push(REDACTED.to_owned());
            } else {
                out.push(word.to_owned());
            }
        }
        out.join(" ")
    }
}

fn schema_marks_sensitive(schema: &Value) -> bool {
    schema["writeOnly"] == Value::Bool(true)
        || schema["format"] == "password"
        || schema["x-sensitive"] == Value::Bool(true)
}

/// Values whose shape gives them away: bearer headers, toolplane tokens, AWS access
/// key ids, PEM private keys, and the prefixed keys of common providers (GitHub,
/// Slack, Stripe, OpenAI-style `sk-`), and JWTs.
fn looks_like_secret(s: &str) -> bool {
    let trimmed = s.trim_matches(|c: char| c == '"' || c == '\'' || c == ',' || c == '.');
    let lower = trimmed.to_ascii_lowercase();
    lower.starts_with("bearer ")
        || trimmed.starts_with(TOKEN_PREFIX)
        || is_aws_key_id(trimmed)
        || trimmed.contains("PRIVATE KEY-----")
        || is_prefixed_key(trimmed)
        || is_jwt(trimmed)
}

/// Provider keys: a known prefix followed by a long run of key characters.
fn is_prefixed_key(s: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "ghp_",
        "gho_",
        "ghs_",
        "ghu_",
        "github_pat_",
        "xoxb-",
        "xoxp-",
        "xoxa-",
        "sk_live_",
        "sk_test_",
        "rk_live_",
        "sk-",
    ];
    PREFIXES.iter().any(|p| {
        s.strip_prefix(p).is_some_and(|rest| {
            rest.len() >= 16 && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
    })
}

fn is_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && s.starts_with("eyJ")
        && parts
            .iter()
            .all(|p| p.len() >= 8 && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

fn is_aws_key_id(s: &str) -> bool {
    s.len() == 20
        && (s.starts_with("AKIA") || s.starts_with("ASIA"))
        && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

#[cfg(test)]
#[path = "redact_tests.rs"]
mod tests;
