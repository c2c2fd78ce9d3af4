//! JSON plumbing: `google.protobuf.Struct`/`Value` ↔ `serde_json::Value`, canonical
//! JSON (sorted keys, no whitespace) and its stable SHA-256 digest.

use prost_types::{ListValue, Struct, Value as PbValue, value::Kind};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

pub fn value_from_pb(v: PbValue) -> Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(value_from_pb).collect()),
        Some(Kind::StructValue(s)) => Value::Object(map_from_struct(s)),
    }
}

/// Struct carries every number as f64; integral values come back as JSON integers so
/// `{"type": "integer"}` schemas accept what the caller meant.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        #[allow(clippy::cast_possible_truncation)]
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

pub fn map_from_struct(s: Struct) -> Map<String, Value> {
    s.fields.into_iter().map(|(k, v)| (k, value_from_pb(v))).collect()
}

pub fn struct_to_json(s: Option<Struct>) -> Value {
    s.map_or(Value::Null, |s| Value::Object(map_from_struct(s)))
}

pub fn value_to_pb(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(value_to_pb).collect(),
        }),
        Value::Object(o) => Kind::StructValue(map_to_struct(o)),
    };
    PbValue { kind: Some(kind) }
}

pub fn map_to_struct(m: &Map<String, Value>) -> Struct {
    Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), value_to_pb(v))).collect(),
    }
}

/// `None` for anything but an object (Struct can only carry objects).
pub fn json_to_struct(v: &Value) -> Option<Struct> {
    v.as_object().map(map_to_struct)
}

/// Canonical form: object keys sorted at every depth, no insignificant whitespace.
/// Sorted explicitly so a dependency turning on serde_json's `preserve_order` cannot
/// change cache keys or audit digests. Written straight into one buffer: it runs for
/// every cache key, result digest and audit hash, on the hot path.
pub fn canonical(v: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    write_canonical(v, &mut out);
    // serde_json writes only UTF-8, and the rest is ASCII punctuation.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

pub(crate) fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(k, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

/// serde_json's own compact form of a string, number, bool or null (what `to_string`
/// gives), without the intermediate `String`.
fn write_scalar<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and these values always serialize.
    let _ = serde_json::to_writer(&mut *out, v);
}

pub fn digest(v: &Value) -> String {
    summary(v).1
}

/// Size of the canonical form and its digest, serialising once (the audit summary of
/// every result needs both).
pub fn summary(v: &Value) -> (u64, String) {
    let c = canonical(v);
    (c.len() as u64, hex::encode(Sha256::digest(c.as_bytes())))
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
