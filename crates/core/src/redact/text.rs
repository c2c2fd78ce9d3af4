//! Secrets in free text (error messages, task descriptions, log lines): found as
//! byte spans, merged, and each replaced by `[REDACTED]`; everything else, whitespace
//! included, is kept as it was. What is found:
//! - the value after a secret-named key: `password=…`, `db_password: …`,
//!   `"apiKey": "…"`, `?token=…&api_key=…`, whatever whitespace (newlines, tabs)
//!   surrounds the `=` or `:`;
//! - the credential after `Bearer`, and after `Basic` when it decodes to `user:pass`;
//! - the password of a URL's `user:pass@`;
//! - PEM private key blocks;
//! - well-known token shapes (toolplane tokens, AWS key ids, GitHub, Slack, Stripe
//!   and `sk-` keys, JWTs);
//! - the operator's patterns.

use std::sync::LazyLock;

use regex::Regex;

use super::credential::base64_decode;
use super::{REDACTED, Redactor};
use crate::token::TOKEN_PREFIX;

#[allow(clippy::expect_used)]
fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a built-in redaction pattern compiles")
}

/// A key (maybe quoted, maybe with JSON-escaped quotes) and its `=` or `:`.
static KEY_SEP: LazyLock<Regex> = LazyLock::new(|| re(r#"(?:\\?["'])?([A-Za-z0-9_.\-]{1,128})(?:\\?["'])?\s*[:=]\s*"#));
static BEARER: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]+=*)"));
static BASIC: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)\bbasic\s+([A-Za-z0-9+/]{4,}={0,2})"));
/// An authorization scheme opening a value (`Authorization: Bearer …`).
static SCHEME: LazyLock<Regex> = LazyLock::new(|| re(r"^(?i:bearer|basic|digest|token|negotiate)\s+"));
static URL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s/?#@:]*:([^\s/?#@]+)@"));
static PEM: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\z)")
});

/// Runs of the characters tokens are made of (`[A-Za-z0-9_.-]`), with their offsets.
fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    let bytes = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < bytes.len() && !is_word(bytes[at]) {
            at += 1;
        }
        let start = at;
        while at < bytes.len() && is_word(bytes[at]) {
            at += 1;
        }
        // ASCII bytes only, so both ends are character boundaries.
        (at > start).then(|| (start, &text[start..at]))
    })
}

fn contains_ignore_ascii_case(text: &str, needle: &str) -> bool {
    text.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Characters that end an unquoted value.
fn ends_value(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            ',' | ';' | '&' | '"' | '\'' | '<' | '>' | '(' | ')' | '{' | '}' | '[' | ']'
        )
}

impl Redactor {
    /// Redacts secrets in free text (error messages, log lines, task descriptions),
    /// keeping the rest of the text, whitespace included, as it was.
    pub fn redact_text(&self, text: &str) -> String {
        let mut spans = Vec::new();
        // Each rule runs only when the text has what it looks for: this runs on every
        // string parameter of every call.
        if text.contains("-----BEGIN") {
            spans.extend(PEM.find_iter(text).map(|m| (m.start(), m.end())));
        }
        if text.contains([':', '=']) {
            for c in KEY_SEP.captures_iter(text) {
                let (Some(key), Some(all)) = (c.get(1), c.get(0)) else {
                    continue;
                };
                if self.is_secret_key(key.as_str()) {
                    let whole_line = key.as_str().to_ascii_lowercase().contains("cookie");
                    spans.extend(value_span(text, all.end(), whole_line));
                }
            }
        }
        if contains_ignore_ascii_case(text, "bearer") {
            for c in BEARER.captures_iter(text) {
                spans.extend(c.get(1).map(|m| (m.start(), m.end())));
            }
        }
        if contains_ignore_ascii_case(text, "basic") {
            for c in BASIC.captures_iter(text) {
                if let Some(m) = c.get(1)
                    && base64_decode(m.as_str()).is_some_and(|d| d.contains(&b':'))
                {
                    spans.push((m.start(), m.end()));
                }
            }
        }
        if text.contains("://") {
            for c in URL_PASSWORD.captures_iter(text) {
                spans.extend(c.get(1).map(|m| (m.start(), m.end())));
            }
        }
        for (start, word) in words(text) {
            let word = word.trim_end_matches(['.', '-']);
            if word.len() > TOKEN_PREFIX.len() && looks_like_secret(word) {
                spans.push((start, start + word.len()));
            }
        }
        for p in self.patterns.iter() {
            for c in p.captures_iter(text) {
                spans.extend(c.get(1).or_else(|| c.get(0)).map(|m| (m.start(), m.end())));
            }
        }
        replace_spans(text, spans)
    }
}

/// The value starting at `start` (after a secret key's separator): a quoted string's
/// contents, the rest of the line for cookies, the credential after an authorization
/// scheme, or a run up to whitespace or a delimiter.
fn value_span(text: &str, start: usize, whole_line: bool) -> Option<(usize, usize)> {
    let rest = text.get(start..)?;
    for quote in ["\\\"", "\"", "'"] {
        if let Some(body) = rest.strip_prefix(quote) {
            let from = start + quote.len();
            let len = closing_quote(body, quote).unwrap_or_else(|| body.find('\n').unwrap_or(body.len()));
            return (len > 0).then_some((from, from + len));
        }
    }
    if whole_line {
        let len = rest.find(['\n', '\r']).unwrap_or(rest.len());
        return (len > 0).then_some((start, start + len));
    }
    let skip = SCHEME.find(rest).map_or(0, |m| m.end());
    let value = &rest[skip..];
    let len = value.find(ends_value).unwrap_or(value.len());
    (len > 0).then_some((start + skip, start + skip + len))
}

/// Where the quoted string `body` (after its opening `quote`) ends.
fn closing_quote(body: &str, quote: &str) -> Option<usize> {
    if quote != "\"" {
        return body.find(quote);
    }
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// `text` with each span (merged where they overlap or touch) replaced by
/// `[REDACTED]`.
fn replace_spans(text: &str, mut spans: Vec<(usize, usize)>) -> String {
    if spans.is_empty() {
        return text.to_owned();
    }
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in merged {
        out.push_str(&text[at..start]);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// Values whose shape gives them away: bearer headers, toolplane tokens, AWS access
/// key ids, PEM private keys, and the prefixed keys of common providers (GitHub,
/// Slack, Stripe, OpenAI-style `sk-`), and JWTs.
pub(super) fn looks_like_secret(s: &str) -> bool {
    let trimmed = s.trim_matches(|c: char| c == '"' || c == '\'' || c == ',' || c == '.');
    trimmed.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
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
    s.starts_with("eyJ")
        && s.split('.').count() == 3
        && s.split('.')
            .all(|p| p.len() >= 8 && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

fn is_aws_key_id(s: &str) -> bool {
    s.len() == 20
        && (s.starts_with("AKIA") || s.starts_with("ASIA"))
        && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}
