//! Bounds and cleans what an agent controls before it enters an audit event or an
//! invocation record, so that no single call can produce an event the audit store
//! refuses (PostgreSQL takes no NUL in `text` or `jsonb`), an index cannot hold (a
//! multi-megabyte `task_id`), or a batch cannot carry.
//!
//! Cleaning is deterministic and idempotent (a cleaned event is left as it is), so the
//! sidecar can clean once when an event is queued, again when it reads an old spool,
//! and the control plane can clean what it receives, all with the same result. What
//! is cut is never silently lost: a cut text says how many bytes went and carries a
//! short SHA-256 of the original; an omitted parameter value is replaced by a marker
//! with its size and full SHA-256 (of its canonical JSON), so a caller who kept the
//! original can prove it is the one audited.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::json::canonical;
use crate::model::{AuditEvent, InvocationRecord, SyncEvent};

/// Most bytes of a `task_id`: enough for any identifier, small enough to index.
pub const MAX_TASK_ID_BYTES: usize = 256;
/// Most bytes of a `task_category` (learning keys on it).
pub const MAX_TASK_CATEGORY_BYTES: usize = 64;
/// Most bytes of an identifier the sidecar writes (`actor_id`, `sidecar_id`, a
/// compliance framework's name).
pub const MAX_ID_BYTES: usize = 256;
/// Most bytes of free text: an audit event's `detail`, a result's `error`.
pub const MAX_TEXT_BYTES: usize = 4 * 1024;
/// Most bytes (compact JSON) of one parameter value, at any depth; a larger value is
/// replaced by an [`OMITTED`] marker.
pub const MAX_PARAMETER_VALUE_BYTES: usize = 4 * 1024;
/// Most bytes (compact JSON) of a whole parameters object; beyond it the largest
/// values are omitted first, and if that is not enough, the whole object.
pub const MAX_PARAMETERS_BYTES: usize = 64 * 1024;
/// What a NUL character becomes: the visible text `\u0000`.
pub const NUL_ESCAPE: &str = "\\u0000";
/// Key of the marker that stands for an omitted value:
/// `{"$omitted": {"size_bytes": N, "sha256": "<hex>"}}`.
pub const OMITTED: &str = "$omitted";
/// Hex digits of the SHA-256 a cut text's marker carries.
const SHORT_DIGEST_HEX: usize = 16;

/// Cleans every string an event carries, in place.
pub fn clean_event(e: &mut SyncEvent) {
    match e {
        SyncEvent::Audit(a) => clean_audit(a),
        SyncEvent::Invocation(i) => clean_invocation(i),
    }
}

pub fn clean_audit(e: &mut AuditEvent) {
    clean_text(&mut e.actor_id, MAX_ID_BYTES);
    clean_text(&mut e.task_id, MAX_TASK_ID_BYTES);
    clean_text(&mut e.detail, MAX_TEXT_BYTES);
    clean_text(&mut e.sidecar_id, MAX_ID_BYTES);
    for f in &mut e.compliance_frameworks {
        clean_text(f, MAX_ID_BYTES);
    }
    if let Some(r) = &mut e.result {
        clean_text(&mut r.digest, MAX_ID_BYTES);
    }
    clean_parameters(&mut e.sanitized_parameters);
}

pub fn clean_invocation(i: &mut InvocationRecord) {
    clean_text(&mut i.task_id, MAX_TASK_ID_BYTES);
    clean_text(&mut i.task_category, MAX_TASK_CATEGORY_BYTES);
    clean_text(&mut i.sidecar_id, MAX_ID_BYTES);
    clean_text(&mut i.result.error, MAX_TEXT_BYTES);
    clean_parameters(&mut i.parameters);
    clean_parameters(&mut i.result.output);
}

/// Escapes NUL characters and caps `s` at `max` bytes (at a character boundary, the
/// cut marked). `max` should leave room for the marker (about 60 bytes).
pub fn clean_text(s: &mut String, max: usize) {
    if s.len() <= max && !s.contains('\0') {
        return;
    }
    *s = cleaned_text(s, max);
}

/// Text for bytes that may be anything (a tool's error body): invalid UTF-8 replaced
/// (U+FFFD), NUL escaped, capped at `max` bytes.
pub fn text_from_bytes(bytes: &[u8], max: usize) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    clean_text(&mut s, max);
    s
}

fn cut_marker(cut_bytes: usize, digest: &str) -> String {
    format!("…[{cut_bytes} bytes cut; sha256 {digest}]")
}

fn cleaned_text(s: &str, max: usize) -> String {
    let nuls = s.bytes().filter(|b| *b == 0).count();
    let escaped_len = s.len() + nuls * (NUL_ESCAPE.len() - 1);
    if escaped_len <= max {
        return s.replace('\0', NUL_ESCAPE);
    }
    let full = hex::encode(Sha256::digest(s.as_bytes()));
    let digest = &full[..SHORT_DIGEST_HEX];
    // Room for the longest marker this text can need, so the result stays within max.
    let budget = max.saturating_sub(cut_marker(s.len(), digest).len());
    let mut out = String::with_capacity(max);
    let mut kept = 0;
    for (i, c) in s.char_indices() {
        let add = if c == '\0' { NUL_ESCAPE.len() } else { c.len_utf8() };
        if out.len() + add > budget {
            break;
        }
        if c == '\0' {
            out.push_str(NUL_ESCAPE);
        } else {
            out.push(c);
        }
        kept = i + c.len_utf8();
    }
    out.push_str(&cut_marker(s.len() - kept, digest));
    out
}

/// Counts what serde_json writes, without keeping it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Size of `v` as compact JSON (NUL counts as its six-byte escape, as JSON writes it).
pub fn json_size(v: &Value) -> usize {
    let mut c = Counter(0);
    // Counting cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// The marker standing for `v`: its compact size and the SHA-256 of its canonical JSON.
pub fn omitted_marker(v: &Value) -> Value {
    json!({ OMITTED: {
        "size_bytes": json_size(v),
        "sha256": hex::encode(Sha256::digest(canonical(v).as_bytes())),
    }})
}

/// Bounds a parameters object (or a result output): NUL escaped in keys and strings,
/// every value over [`MAX_PARAMETER_VALUE_BYTES`] replaced by a marker, and the whole
/// within [`MAX_PARAMETERS_BYTES`].
pub fn clean_parameters(v: &mut Value) {
    match v {
        Value::Object(m) => {
            escape_keys(m);
            for child in m.values_mut() {
                clean_value(child, MAX_PARAMETER_VALUE_BYTES);
            }
        }
        Value::Array(a) => {
            for child in a.iter_mut() {
                clean_value(child, MAX_PARAMETER_VALUE_BYTES);
            }
        }
        other => {
            clean_value(other, MAX_PARAMETER_VALUE_BYTES);
            return;
        }
    }
    let mut total = json_size(v);
    if total <= MAX_PARAMETERS_BYTES {
        return;
    }
    // Omit the largest values first (ties by position, so the result is the same every
    // time), while omitting one still makes the whole smaller.
    let marker_size = json_size(&omitted_marker(&Value::Null));
    let mut sizes: Vec<(usize, usize)> = children(v)
        .enumerate()
        .map(|(i, c)| (json_size(c), i))
        .filter(|(size, _)| *size > marker_size + 64)
        .collect();
    sizes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (size, i) in sizes {
        if total <= MAX_PARAMETERS_BYTES {
            break;
        }
        if let Some(child) = children_mut(v).nth(i) {
            *child = omitted_marker(child);
            total = total - size + json_size(child);
        }
    }
    if total > MAX_PARAMETERS_BYTES {
        // Many small values or huge keys: nothing short of the whole will do. (Its
        // digest is of the object with its values already bounded.)
        *v = omitted_marker(v);
    }
}

fn children(v: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    match v {
        Value::Object(m) => Box::new(m.values()),
        Value::Array(a) => Box::new(a.iter()),
        _ => Box::new(std::iter::empty()),
    }
}

fn children_mut(v: &mut Value) -> Box<dyn Iterator<Item = &mut Value> + '_> {
    match v {
        Value::Object(m) => Box::new(m.values_mut()),
        Value::Array(a) => Box::new(a.iter_mut()),
        _ => Box::new(std::iter::empty()),
    }
}

/// A value within `limit` keeps its shape (NULs escaped); a larger one, judged on what
/// the agent sent, becomes a marker as a whole. (A marker is far below any limit, so a
/// cleaned value is left as it is.)
fn clean_value(v: &mut Value, limit: usize) {
    if json_size(v) > limit {
        *v = omitted_marker(v);
        return;
    }
    escape_nul(v);
}

fn escape_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', NUL_ESCAPE),
        Value::Array(a) => a.iter_mut().for_each(escape_nul),
        Value::Object(m) => {
            escape_keys(m);
            m.values_mut().for_each(escape_nul);
        }
        _ => {}
    }
}

/// Escapes NUL in keys. A key that escapes to one already present keeps the value
/// that came first in key order (the other is replaced, never merged).
fn escape_keys(m: &mut Map<String, Value>) {
    if !m.keys().any(|k| k.contains('\0')) {
        return;
    }
    let old = std::mem::take(m);
    for (k, v) in old {
        let k = if k.contains('\0') {
            k.replace('\0', NUL_ESCAPE)
        } else {
            k
        };
        m.entry(k).or_insert(v);
    }
}

#[cfg(test)]
#[path = "audit_clean_tests.rs"]
mod tests;
