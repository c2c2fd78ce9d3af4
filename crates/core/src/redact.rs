//! Redaction of secrets before anything leaves the sidecar: recursive through objects
//! and arrays, by key name, by schema annotation (`writeOnly`, `format: password`,
//! `x-sensitive`, wherever `$ref`, `allOf`/`anyOf`/`oneOf`, `patternProperties`,
//! `additionalProperties` or `items` put them), and in free text by shape and context
//! (see [`text`]).
//!
//! Key names are compared by the words they contain, not as whole strings: an agent
//! or a tool author names a field `db_password`, `x-api-key` or `AWS_SECRET_ACCESS_KEY`
//! far more often than `password`. A key is split into words at `_`, `-`, `.`, spaces
//! and other punctuation, at camelCase humps (`clientSecret`, `APIKey`) and between
//! letters and digits (`oauth2Token`), lower-cased, and is secret when a secret phrase
//! (one or more consecutive words, written together or apart: `api key` matches
//! `apiKey`, `api_key` and `apikey`) covers whole words of it. Whole words only, so
//! `author`, `keyword`, `passage` and `tokenizer` are ordinary; plural `tokens` is
//! ordinary too (`max_tokens`, `tokens_used` count LLM tokens and are kept for
//! analysis), and a phrase followed by a word that only describes it (`token_count`,
//! `password_length`, `secret_name`) is ordinary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

mod credential;
mod text;

pub use credential::scrub_credential;

pub const REDACTED: &str = "[REDACTED]";

/// Secret phrases: words, space-separated; each also matches written together
/// (`api key` matches `apikey`). `auth token`, `client secret`, `access token` and the
/// like are covered by their last word.
pub const DEFAULT_SECRET_KEYS: &[&str] = &[
    "password",
    "passwords",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "api key",
    "access key",
    "private key",
    "signing key",
    "encryption key",
    "master key",
    "authorization",
    "bearer",
    "cookie",
    "cookies",
    "credential",
    "credentials",
    "session id",
    "session key",
    "jsessionid",
    "connection string",
];

/// Last words that make a key describe a secret rather than hold one
/// (`token_count`, `password_min_length`, `secret_name`).
const DESCRIPTIVE_SUFFIXES: &[&str] = &[
    "count",
    "counts",
    "limit",
    "limits",
    "length",
    "len",
    "size",
    "type",
    "types",
    "ttl",
    "expiry",
    "expires",
    "expiration",
    "policy",
    "used",
    "usage",
    "required",
    "enabled",
    "name",
    "names",
];

/// How many schemas one value may be checked against (a bound on `allOf` fan-out).
const MAX_SCHEMAS_PER_VALUE: usize = 64;
/// How many `$ref`s deep a schema is followed (cycles stop here too).
const MAX_REF_DEPTH: usize = 16;
/// Distinct `patternProperties` regexes kept compiled; more are compiled per use.
const MAX_CACHED_PATTERNS: usize = 1024;
/// Compiled size allowed for an operator's or a schema's regex.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("redaction pattern {pattern:?} is not a valid regular expression: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("redaction key {0:?} has no letters or digits")]
    EmptyKey(String),
}

#[derive(Debug, Clone)]
pub struct Redactor {
    /// Each phrase's words joined (`api key` → `apikey`).
    phrases: Arc<[String]>,
    /// Operators' patterns for free text.
    patterns: Arc<[Regex]>,
    /// Compiled `patternProperties` keys of the schemas seen; `None` when a key does
    /// not compile (then its schema is taken to apply: over-redacting is the safe
    /// mistake).
    schema_patterns: Arc<Mutex<HashMap<String, Option<Regex>>>>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(DEFAULT_SECRET_KEYS.iter().copied())
    }
}

impl Redactor {
    /// Exactly these key phrases, and no extra patterns.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            phrases: keys
                .into_iter()
                .map(|k| words(k).joined)
                .filter(|k| !k.is_empty())
                .collect(),
            patterns: Arc::new([]),
            schema_patterns: Arc::default(),
        }
    }

    /// The defaults plus an operator's key phrases (split into words like keys are,
    /// so `pin code`, `pin_code` and `PinCode` are the same) and free-text regexes.
    /// A pattern with a capture group redacts only its first group; without, the
    /// whole match.
    pub fn with_extra<K, P>(keys: K, patterns: P) -> Result<Self, RedactError>
    where
        K: IntoIterator,
        K::Item: AsRef<str>,
        P: IntoIterator,
        P::Item: AsRef<str>,
    {
        let mut phrases: Vec<String> = DEFAULT_SECRET_KEYS.iter().map(|k| words(k).joined).collect();
        for key in keys {
            let joined = words(key.as_ref()).joined;
            if joined.is_empty() {
                return Err(RedactError::EmptyKey(key.as_ref().to_owned()));
            }
            phrases.push(joined);
        }
        let patterns = patterns
            .into_iter()
            .map(|p| compile(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            phrases: phrases.into(),
            patterns: patterns.into(),
            schema_patterns: Arc::default(),
        })
    }

    /// Whether a value under this key name is a secret, whatever it looks like.
    pub fn is_secret_key(&self, key: &str) -> bool {
        let w = words(key);
        self.phrases.iter().any(|p| w.covers(p))
    }

    /// Redacts `value`, guided by `schema` (the tool's input schema, or `Null`), which
    /// is also the document its local `$ref`s point into.
    pub fn redact(&self, value: &Value, schema: &Value) -> Value {
        self.redact_under(value, &[schema], schema)
    }

    fn redact_under(&self, value: &Value, schemas: &[&Value], root: &Value) -> Value {
        let applicable = expand(root, schemas);
        if applicable.iter().any(|s| marks_sensitive(s)) {
            return Value::String(REDACTED.to_owned());
        }
        match value {
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, v) in map {
                    let red = if self.is_secret_key(k) {
                        Value::String(REDACTED.to_owned())
                    } else {
                        self.redact_under(v, &self.property_schemas(&applicable, k), root)
                    };
                    out.insert(k.clone(), red);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.redact_under(v, &item_schemas(&applicable, i), root))
                    .collect(),
            ),
            Value::String(s) if text::looks_like_secret(s) => Value::String(REDACTED.to_owned()),
            // Free text may carry a secret among other words.
            Value::String(s) => Value::String(self.redact_text(s)),
            other => other.clone(),
        }
    }

    /// The schemas that apply to property `key` of an object under `set`: per schema,
    /// its `properties` entry and every matching `patternProperties` entry, or, when
    /// neither names the key, its `additionalProperties` (or `unevaluatedProperties`).
    fn property_schemas<'s>(&self, set: &[&'s Value], key: &str) -> Vec<&'s Value> {
        let mut out = Vec::new();
        for s in set {
            let mut named = false;
            if let Some(p) = s.get("properties").and_then(|p| p.get(key)) {
                out.push(p);
                named = true;
            }
            if let Some(Value::Object(patterns)) = s.get("patternProperties") {
                for (pattern, sub) in patterns {
                    match self.schema_pattern_matches(pattern, key) {
                        Some(true) => {
                            out.push(sub);
                            named = true;
                        }
                        // Unknown: the schema may apply, and so may additionalProperties.
                        None => out.push(sub),
                        Some(false) => {}
                    }
                }
            }
            if !named {
                out.extend(
                    ["additionalProperties", "unevaluatedProperties"]
                        .iter()
                        .filter_map(|k| s.get(*k))
                        .filter(|v| v.is_object()),
                );
            }
        }
        out
    }

    /// Whether `key` matches a `patternProperties` regex; `None` when the regex does
    /// not compile here (ECMA-262 features the `regex` crate lacks, like lookaround).
    fn schema_pattern_matches(&self, pattern: &str, key: &str) -> Option<bool> {
        let mut cache = self.schema_patterns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(compiled) = cache.get(pattern) {
            return compiled.as_ref().map(|r| r.is_match(key));
        }
        let compiled = compile(pattern).ok();
        let matches = compiled.as_ref().map(|r| r.is_match(key));
        if cache.len() < MAX_CACHED_PATTERNS {
            cache.insert(pattern.to_owned(), compiled);
        }
        matches
    }
}

fn compile(pattern: &str) -> Result<Regex, RedactError> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| RedactError::BadPattern {
            pattern: pattern.to_owned(),
            reason: e.to_string(),
        })
}

fn marks_sensitive(schema: &Value) -> bool {
    schema.get("writeOnly") == Some(&Value::Bool(true))
        || schema.get("format").and_then(Value::as_str) == Some("password")
        || schema.get("x-sensitive") == Some(&Value::Bool(true))
}

/// Every schema object that applies to a value under `schemas`: the schemas
/// themselves, what their local `$ref`s point at, and their `allOf`, `anyOf`,
/// `oneOf`, `then`, `else` and `dependentSchemas` branches, recursively (any branch
/// that may apply counts: a value is sensitive when any marks it). `not` is not
/// followed: it says what the value is not. Bounded in depth and count, so a `$ref`
/// cycle ends.
fn expand<'s>(root: &'s Value, schemas: &[&'s Value]) -> Vec<&'s Value> {
    let mut out: Vec<&Value> = Vec::new();
    let mut todo: Vec<(&Value, usize)> = schemas.iter().rev().map(|s| (*s, 0)).collect();
    while let Some((s, depth)) = todo.pop() {
        if out.len() >= MAX_SCHEMAS_PER_VALUE {
            break;
        }
        let Value::Object(obj) = s else { continue };
        if out.iter().any(|seen| std::ptr::eq(*seen, s)) {
            continue;
        }
        out.push(s);
        if let Some(target) = obj.get("$ref").and_then(Value::as_str).and_then(|r| resolve(root, r))
            && depth < MAX_REF_DEPTH
        {
            todo.push((target, depth + 1));
        }
        for k in ["allOf", "anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = obj.get(k) {
                todo.extend(branches.iter().rev().map(|b| (b, depth)));
            }
        }
        for k in ["then", "else"] {
            if let Some(b) = obj.get(k) {
                todo.push((b, depth));
            }
        }
        if let Some(Value::Object(dependent)) = obj.get("dependentSchemas") {
            todo.extend(dependent.values().map(|b| (b, depth)));
        }
    }
    out
}

/// A local reference (`#`, `#/$defs/x`, `#/definitions/x`, percent-encoded or not);
/// `None` for anything else (remote documents and anchors are not fetched).
fn resolve<'s>(root: &'s Value, reference: &str) -> Option<&'s Value> {
    let fragment = reference.strip_prefix('#')?;
    if fragment.is_empty() {
        return Some(root);
    }
    root.pointer(&percent_decode(fragment))
}

/// `%XX` escapes decoded (a lone or malformed `%` kept as it is); invalid UTF-8 after
/// decoding is replaced. For JSON pointers in `$ref`s and URL parameters alike.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The schemas that apply to item `i` of an array under `set`: `prefixItems[i]`,
/// else `items`; or, in the older tuple form, `items[i]`, else `additionalItems`.
fn item_schemas<'s>(set: &[&'s Value], i: usize) -> Vec<&'s Value> {
    let mut out = Vec::new();
    for s in set {
        if let Some(p) = s.get("prefixItems").and_then(|p| p.get(i)) {
            out.push(p);
            continue;
        }
        match s.get("items") {
            Some(Value::Array(tuple)) => match tuple.get(i) {
                Some(p) => out.push(p),
                None => out.extend(s.get("additionalItems").filter(|v| v.is_object())),
            },
            Some(v @ Value::Object(_)) => out.push(v),
            _ => {}
        }
    }
    out
}

/// A key's words, lower-cased and joined, with the byte offsets where words start
/// and end in the joined form.
struct Words {
    joined: String,
    bounds: Vec<usize>,
    last_start: usize,
}

fn words(key: &str) -> Words {
    let mut joined = String::with_capacity(key.len());
    let mut bounds = Vec::new();
    let mut last_start = 0;
    let mut prev: Option<char> = None;
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        if !c.is_alphanumeric() {
            if prev.is_some() {
                bounds.push(joined.len());
            }
            prev = None;
            continue;
        }
        let starts = match prev {
            None => true,
            Some(p) => {
                (p.is_lowercase() && c.is_uppercase())
                    || (p.is_alphabetic() != c.is_alphabetic())
                    || (p.is_uppercase() && c.is_uppercase() && chars.peek().is_some_and(|n| n.is_lowercase()))
            }
        };
        if starts {
            if bounds.last() != Some(&joined.len()) {
                bounds.push(joined.len());
            }
            last_start = joined.len();
        }
        if c.is_ascii() {
            joined.push(c.to_ascii_lowercase());
        } else {
            joined.extend(c.to_lowercase());
        }
        prev = Some(c);
    }
    if prev.is_some() {
        bounds.push(joined.len());
    }
    Words {
        joined,
        bounds,
        last_start,
    }
}

impl Words {
    /// Whether `phrase` (joined words) covers whole words of this key, and is not
    /// followed by a last word that only describes it.
    fn covers(&self, phrase: &str) -> bool {
        !phrase.is_empty()
            && self.bounds.iter().any(|&at| {
                let end = at + phrase.len();
                self.joined.get(at..end) == Some(phrase)
                    && self.bounds.binary_search(&end).is_ok()
                    && !(end <= self.last_start && DESCRIPTIVE_SUFFIXES.contains(&&self.joined[self.last_start..]))
            })
    }
}

#[cfg(test)]
#[path = "redact_tests.rs"]
mod tests;
