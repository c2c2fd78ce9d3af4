//! The audit trail's tamper evidence: every stored event is hash-chained (SHA-256 over
//! the previous hash and the record's canonical form) within its writer's chain, and a
//! walk over the chains finds the first edited, missing or reordered record.
//!
//! Chains are per writer (the control plane's admin events, each sidecar's events) so
//! writers never serialise on one another; within a chain, positions run from 1 without
//! gaps, which is what makes a deleted record visible.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::AuditEvent;

/// `prev_hash` of the first record of every chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The chain of events written by the control plane itself.
pub const CONTROL_PLANE_CHAIN: &str = "control-plane";

/// An audit event as stored, with its place in the trail.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub event: AuditEvent,
    /// Global insertion order (query cursors).
    pub seq: u64,
    pub recorded_at: DateTime<Utc>,
    pub chain: String,
    pub chain_seq: u64,
    pub prev_hash: String,
    pub hash: String,
}

/// The chain an event is written to.
pub fn chain_of(e: &AuditEvent) -> String {
    if e.sidecar_id.is_empty() {
        CONTROL_PLANE_CHAIN.to_owned()
    } else {
        format!("sidecar:{}", e.sidecar_id)
    }
}

/// Storage keeps microseconds; hashing what is stored keeps the hash reproducible.
pub fn stored_time(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// The canonical form of a record: the JSON object of its fields with keys sorted,
/// no whitespace. Written field by field, in sorted key order, straight into one
/// buffer (it runs for every stored event); byte for byte what canonicalising the
/// object would give, which the tests check against exactly that.
fn canonical_record(chain: &str, chain_seq: u64, e: &AuditEvent) -> Vec<u8> {
    use crate::json::write_canonical;
    let mut out = Vec::with_capacity(512);
    let field = |out: &mut Vec<u8>, key: &str| {
        out.push(if out.is_empty() { b'{' } else { b',' });
        scalar(out, key);
        out.push(b':');
    };
    let uuid = |out: &mut Vec<u8>, u: Option<Uuid>| match u {
        Some(u) => scalar(out, u.hyphenated().encode_lower(&mut Uuid::encode_buffer())),
        None => out.extend_from_slice(b"null"),
    };
    field(&mut out, "action");
    scalar(&mut out, e.action.as_str());
    field(&mut out, "actor_id");
    scalar(&mut out, &e.actor_id);
    field(&mut out, "agent_id");
    uuid(&mut out, e.agent_id);
    field(&mut out, "chain");
    scalar(&mut out, chain);
    field(&mut out, "chain_seq");
    scalar(&mut out, &chain_seq);
    field(&mut out, "compliance_frameworks");
    scalar(&mut out, &e.compliance_frameworks);
    field(&mut out, "data_classification");
    scalar(&mut out, &e.data_classification.map(|d| d.as_str()));
    field(&mut out, "detail");
    scalar(&mut out, &e.detail);
    field(&mut out, "event_id");
    uuid(&mut out, Some(e.event_id));
    field(&mut out, "invocation_id");
    uuid(&mut out, e.invocation_id);
    field(&mut out, "occurred_at");
    scalar(
        &mut out,
        &stored_time(e.occurred_at).to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    field(&mut out, "permission_id");
    uuid(&mut out, e.permission_id);
    field(&mut out, "result");
    match &e.result {
        Some(r) => {
            out.extend_from_slice(b"{\"digest\":");
            scalar(&mut out, &r.digest);
            out.extend_from_slice(b",\"size_bytes\":");
            scalar(&mut out, &r.size_bytes);
            out.extend_from_slice(b",\"status\":");
            scalar(&mut out, r.status.as_str());
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    field(&mut out, "sanitized_parameters");
    write_canonical(&e.sanitized_parameters, &mut out);
    field(&mut out, "sidecar_id");
    scalar(&mut out, &e.sidecar_id);
    field(&mut out, "success");
    scalar(&mut out, &e.success);
    field(&mut out, "task_id");
    scalar(&mut out, &e.task_id);
    field(&mut out, "tool_id");
    uuid(&mut out, e.tool_id);
    field(&mut out, "tool_version");
    scalar(&mut out, &e.tool_version);
    out.push(b'}');
    out
}

/// serde_json's compact form of a string, number, bool, null or list of strings.
fn scalar<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing into a Vec cannot fail, and these values always serialize.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// The hash of a record at `chain_seq` of `chain` whose predecessor hashed to `prev`.
pub fn record_hash(prev: &str, chain: &str, chain_seq: u64, e: &AuditEvent) -> String {
    canonical_hash(prev, &canonical_record(chain, chain_seq, e))
}

/// The exact bytes a record's hash covers (after its predecessor's hash), as text: an
/// exported trail carries them so it can be re-hashed offline without depending on how
/// JSON numbers survive a round trip through protobuf.
pub fn canonical_form(chain: &str, chain_seq: u64, e: &AuditEvent) -> String {
    // serde_json writes only UTF-8, and the rest is ASCII punctuation.
    String::from_utf8(canonical_record(chain, chain_seq, e))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// SHA-256 over the predecessor's hash and a record's canonical form.
pub fn canonical_hash(prev: &str, canonical: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical);
    hex::encode(h.finalize())
}

/// Assigns the next positions of a chain whose last record is (`seq`, `hash`).
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

impl ChainHead {
    /// Position, previous hash and hash of the next record.
    pub fn append(&mut self, chain: &str, e: &AuditEvent) -> (u64, String, String) {
        let seq = self.seq + 1;
        let prev = std::mem::take(&mut self.hash);
        let hash = record_hash(&prev, chain, seq, e);
        self.seq = seq;
        self.hash = hash.clone();
        (seq, prev, hash)
    }
}

/// The first broken or missing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub seq: u64,
    pub event_id: Uuid,
    pub chain: String,
    pub chain_seq: u64,
    pub problem: String,
}

/// A record's place in its chain, without its content.
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    pub seq: u64,
    pub event_id: Uuid,
    pub chain: &'a str,
    pub chain_seq: u64,
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

/// A walk over records in (chain, chain_seq) order.
#[derive(Debug, Default)]
pub struct ChainWalk {
    current: Option<(String, u64, String)>,
    pub checked: u64,
    /// The last position seen per chain.
    pub last: BTreeMap<String, u64>,
}

impl ChainWalk {
    /// Whether `r` is the first record of its chain in this walk: then the caller
    /// passes the hash of its predecessor (stored record or retention anchor) to
    /// [`ChainWalk::next`].
    pub fn opens_chain(&self, r: &AuditRecord) -> bool {
        self.current.as_ref().is_none_or(|(c, _, _)| *c != r.chain)
    }

    /// Checks one record. `predecessor` matters only when `r` opens its chain in this
    /// walk and is not the chain's first record: `None` means nothing before it exists.
    pub fn next(&mut self, r: &AuditRecord, predecessor: Option<&str>) -> Result<(), Break> {
        let link = Link {
            seq: r.seq,
            event_id: r.event.event_id,
            chain: &r.chain,
            chain_seq: r.chain_seq,
            prev_hash: &r.prev_hash,
            hash: &r.hash,
        };
        self.next_link(&link, predecessor, || {
            record_hash(&r.prev_hash, &r.chain, r.chain_seq, &r.event)
        })
    }

    /// [`ChainWalk::next`] for a record known by its links only; `content_hash`
    /// recomputes its hash from its content (an exported trail's canonical form).
    pub fn next_link(
        &mut self,
        r: &Link<'_>,
        predecessor: Option<&str>,
        content_hash: impl FnOnce() -> String,
    ) -> Result<(), Break> {
        let fail = |problem: String| Break {
            seq: r.seq,
            event_id: r.event_id,
            chain: r.chain.to_owned(),
            chain_seq: r.chain_seq,
            problem,
        };
        if self.current.as_ref().is_none_or(|(c, _, _)| c != r.chain) {
            let expected = if r.chain_seq == 1 {
                GENESIS_HASH
            } else {
                predecessor.ok_or_else(|| {
                    fail(format!(
                        "missing link: record {} of chain {} (before this one) does not exist",
                        r.chain_seq - 1,
                        r.chain
                    ))
                })?
            };
            if r.prev_hash != expected {
                return Err(fail(
                    "broken link: prev_hash does not match the record before it".to_owned(),
                ));
            }
        } else if let Some((_, last_seq, last_hash)) = &self.current {
            if r.chain_seq != last_seq + 1 {
                return Err(fail(if r.chain_seq > last_seq + 1 {
                    format!(
                        "missing link: records {}..{} of chain {} are gone (deleted?)",
                        last_seq + 1,
                        r.chain_seq - 1,
                        r.chain
                    )
                } else {
                    format!("position {} appears twice or out of order", r.chain_seq)
                }));
            }
            if r.prev_hash != *last_hash {
                return Err(fail(
                    "broken link: prev_hash does not match the record before it (reordered or replaced?)".to_owned(),
                ));
            }
        }
        if content_hash() != r.hash {
            return Err(fail(
                "content does not match its hash (edited after it was written)".to_owned(),
            ));
        }
        self.current = Some((r.chain.to_owned(), r.chain_seq, r.hash.to_owned()));
        self.last.insert(r.chain.to_owned(), r.chain_seq);
        self.checked += 1;
        Ok(())
    }
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
