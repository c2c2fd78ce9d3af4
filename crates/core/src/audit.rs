//! The audit trail's tamper evidence: every stored event is hash-chained (SHA-256 over
//! the previous hash and the record's canonical form) within its writer's chain, and a
//! walk over the chains finds the first edited, missing or reordered record.
//!
//! Chains are per writer (the control plane's admin events, each sidecar's events) so
//! writers never serialise on one another; within a chain, positions run from 1 without
//! gaps, which is what makes a deleted record visible.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::json::canonical;
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

fn canonical_record(chain: &str, chain_seq: u64, e: &AuditEvent) -> String {
    let opt = |u: Option<Uuid>| u.map(|u| u.to_string());
    let v = json!({
        "chain": chain,
        "chain_seq": chain_seq,
        "event_id": e.event_id.to_string(),
        "action": e.action.as_str(),
        "invocation_id": opt(e.invocation_id),
        "actor_id": e.actor_id,
        "agent_id": opt(e.agent_id),
        "tool_id": opt(e.tool_id),
        "tool_version": e.tool_version,
        "task_id": e.task_id,
        "occurred_at": stored_time(e.occurred_at).to_rfc3339_opts(SecondsFormat::Micros, true),
        "sanitized_parameters": e.sanitized_parameters,
        "result": e.result.as_ref().map(|r| json!({
            "size_bytes": r.size_bytes, "status": r.status.as_str(), "digest": r.digest,
        })),
        "success": e.success,
        "detail": e.detail,
        "compliance_frameworks": e.compliance_frameworks,
        "data_classification": e.data_classification.map(|d| d.as_str()),
        "sidecar_id": e.sidecar_id,
        "permission_id": opt(e.permission_id),
    });
    canonical(&v)
}

/// The hash of a record at `chain_seq` of `chain` whose predecessor hashed to `prev`.
pub fn record_hash(prev: &str, chain: &str, chain_seq: u64, e: &AuditEvent) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical_record(chain, chain_seq, e).as_bytes());
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
        let fail = |problem: String| Break {
            seq: r.seq,
            event_id: r.event.event_id,
            chain: r.chain.clone(),
            chain_seq: r.chain_seq,
            problem,
        };
        if self.opens_chain(r) {
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
        if record_hash(&r.prev_hash, &r.chain, r.chain_seq, &r.event) != r.hash {
            return Err(fail(
                "content does not match its hash (edited after it was written)".to_owned(),
            ));
        }
        self.current = Some((r.chain.clone(), r.chain_seq, r.hash.clone()));
        self.last.insert(r.chain.clone(), r.chain_seq);
        self.checked += 1;
        Ok(())
    }
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
