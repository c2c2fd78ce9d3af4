//! An exported audit trail (`toolctl audit export`) and its offline verification
//! (`toolctl audit verify --file`): JSON lines of records, each with the exact canonical
//! form its hash covers, and the signed checkpoints. Verifying needs only the file and
//! the public keys the verifier trusts: every chain is walked from position 1, every
//! record re-hashed, every checkpoint's signature checked and compared with the record
//! at its position.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{Break, ChainWalk, Link, canonical_hash};
use crate::audit_checkpoint::{AuditCheckpoint, Checked, TrustedKeys, check};

/// Names the file format in its header line.
pub const EXPORT_FORMAT: &str = "toolplane-audit-export/v1";

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExportLine {
    Header(ExportHeader),
    Checkpoint(AuditCheckpoint),
    Record(ExportedRecord),
}

/// What the exporting server said about itself. Informational only: a verifier takes
/// the keys it trusts from elsewhere, never from the file it checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportHeader {
    pub format: String,
    pub exported_at: DateTime<Utc>,
    pub public_key: String,
    #[serde(default)]
    pub trusted_public_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedRecord {
    pub sequence: u64,
    pub event_id: Uuid,
    pub chain: String,
    pub chain_seq: u64,
    pub prev_hash: String,
    pub hash: String,
    /// The record's canonical JSON form, byte for byte what `hash` covers.
    pub canonical: String,
}

/// How far each chain of a trail is vouched for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChainSummary {
    pub records: u64,
    pub last_position: u64,
    /// The highest position a verified checkpoint covers; records after it are only
    /// hash-chained.
    pub signed_up_to: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OfflineReport {
    pub records_checked: u64,
    pub checkpoints_checked: u64,
    /// Signed by keys the verifier does not trust.
    pub checkpoints_unverifiable: u64,
    pub chains: BTreeMap<String, ChainSummary>,
    /// The first problem found; the counts above say what was checked before it.
    #[serde(skip)]
    pub broken: Option<Break>,
}

impl OfflineReport {
    pub fn intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Verifies an exported trail, stopping at the first problem. A trail with records but no checkpoint signed by a trusted key fails:
/// without one, a consistent rewrite cannot be told from the original.
pub fn verify(
    mut records: Vec<ExportedRecord>,
    checkpoints: &[AuditCheckpoint],
    trusted: &TrustedKeys,
) -> OfflineReport {
    records.sort_by(|a, b| (&a.chain, a.chain_seq).cmp(&(&b.chain, b.chain_seq)));
    let mut report = OfflineReport::default();
    let mut walk = ChainWalk::default();
    let mut at: HashMap<(&str, u64), &ExportedRecord> = HashMap::with_capacity(records.len());
    for r in &records {
        let fail = |problem: String| Break {
            seq: r.sequence,
            event_id: r.event_id,
            chain: r.chain.clone(),
            chain_seq: r.chain_seq,
            problem,
        };
        if let Some(problem) = misplaced(r) {
            report.broken = Some(fail(problem));
            return report;
        }
        let link = Link {
            seq: r.sequence,
            event_id: r.event_id,
            chain: &r.chain,
            chain_seq: r.chain_seq,
            prev_hash: &r.prev_hash,
            hash: &r.hash,
        };
        if let Err(b) = walk.next_link(&link, None, || canonical_hash(&r.prev_hash, r.canonical.as_bytes())) {
            report.broken = Some(b);
            return report;
        }
        report.records_checked += 1;
        let c = report.chains.entry(r.chain.clone()).or_default();
        c.records += 1;
        c.last_position = r.chain_seq;
        at.insert((r.chain.as_str(), r.chain_seq), r);
    }
    for cp in checkpoints {
        let record = at.get(&(cp.chain.as_str(), cp.chain_seq));
        match check(cp, trusted, record.map(|r| r.hash.as_str())) {
            Ok(Checked::Holds) => {
                report.checkpoints_checked += 1;
                let c = report.chains.entry(cp.chain.clone()).or_default();
                c.signed_up_to = c.signed_up_to.max(cp.chain_seq);
            }
            Ok(Checked::Unverifiable) => report.checkpoints_unverifiable += 1,
            Err(problem) => {
                let b = Break {
                    seq: record.map_or(0, |r| r.sequence),
                    event_id: record.map_or(Uuid::nil(), |r| r.event_id),
                    chain: cp.chain.clone(),
                    chain_seq: cp.chain_seq,
                    problem,
                };
                report.broken = Some(b);
                return report;
            }
        }
    }
    if report.records_checked > 0 && report.checkpoints_checked == 0 {
        let b = Break {
            seq: 0,
            event_id: Uuid::nil(),
            chain: String::new(),
            chain_seq: 0,
            problem: format!(
                "no checkpoint in the trail is signed by a trusted key ({} signed by other keys): \
                 the hash chains hold, but a consistent rewrite would too",
                report.checkpoints_unverifiable
            ),
        };
        report.broken = Some(b);
    }
    report
}

/// Trims each chain of an export to its gap-free run of positions from its first
/// record; returns the records kept, in (chain, position) order, and how many were
/// left out. The trail streams in global order, and a transaction that took a lower
/// sequence number can commit after the stream passed it: its records then show up as
/// a gap with later ones after it. Those all arrived during the export, after its
/// checkpoints were read, so no checkpoint covers them and leaving them out loses
/// nothing that could be verified.
pub fn settled(mut records: Vec<ExportedRecord>) -> (Vec<ExportedRecord>, u64) {
    records.sort_by(|a, b| (&a.chain, a.chain_seq).cmp(&(&b.chain, b.chain_seq)));
    let total = records.len();
    let mut last: Option<(String, u64)> = None;
    let mut cut: Option<String> = None;
    records.retain(|r| {
        if cut.as_deref() == Some(r.chain.as_str()) {
            return false;
        }
        let keep = match &last {
            Some((c, n)) if *c == r.chain => r.chain_seq == n + 1,
            _ => true,
        };
        if keep {
            last = Some((r.chain.clone(), r.chain_seq));
        } else {
            cut = Some(r.chain.clone());
        }
        keep
    });
    let left_out = (total - records.len()) as u64;
    (records, left_out)
}

/// The canonical form names its own chain, position and event; a record whose outer
/// fields say otherwise was moved or relabelled.
fn misplaced(r: &ExportedRecord) -> Option<String> {
    let v: serde_json::Value = match serde_json::from_str(&r.canonical) {
        Ok(v) => v,
        Err(e) => return Some(format!("the canonical form is not JSON: {e}")),
    };
    let same = v["chain"].as_str() == Some(r.chain.as_str())
        && v["chain_seq"].as_u64() == Some(r.chain_seq)
        && v["event_id"].as_str() == Some(r.event_id.hyphenated().to_string().as_str());
    (!same).then(|| "the canonical form names another chain, position or event (relabelled?)".to_owned())
}

#[cfg(test)]
#[path = "audit_export_tests.rs"]
mod tests;
