use chrono::Utc;
use serde_json::json;

use super::*;
use crate::audit::{ChainHead, canonical_form, record_hash};
use crate::audit_checkpoint::CheckpointSigner;
use crate::model::{AuditAction, AuditEvent};

fn event(chain: &str, n: u64) -> AuditEvent {
    AuditEvent {
        event_id: Uuid::now_v7(),
        action: AuditAction::ToolInvoked,
        invocation_id: None,
        actor_id: "agent".to_owned(),
        agent_id: None,
        tool_id: None,
        tool_version: 1,
        task_id: format!("task-{n}"),
        occurred_at: Utc::now(),
        // 1.0 and a large integer: numbers a protobuf round trip would change.
        sanitized_parameters: json!({"n": n, "ratio": 1.0, "big": 9_007_199_254_740_993_u64}),
        result: None,
        success: true,
        detail: format!("call {n}"),
        compliance_frameworks: Vec::new(),
        data_classification: None,
        sidecar_id: chain.trim_start_matches("sidecar:").to_owned(),
        permission_id: None,
    }
}

/// `n` records on each of two chains, as an export holds them.
fn trail(n: u64) -> (Vec<AuditEvent>, Vec<ExportedRecord>) {
    let mut events = Vec::new();
    let mut out = Vec::new();
    for chain in ["sidecar:a", "sidecar:b"] {
        let mut head = ChainHead::default();
        for i in 1..=n {
            let e = event(chain, i);
            let (chain_seq, prev_hash, hash) = head.append(chain, &e);
            out.push(ExportedRecord {
                sequence: out.len() as u64 + 1,
                event_id: e.event_id,
                chain: chain.to_owned(),
                chain_seq,
                prev_hash,
                hash,
                canonical: canonical_form(chain, chain_seq, &e),
            });
            events.push(e);
        }
    }
    (events, out)
}

fn key() -> CheckpointSigner {
    CheckpointSigner::from_seed_hex(&"11".repeat(32)).unwrap()
}

fn trusted() -> TrustedKeys {
    TrustedKeys::new([key().public_key().clone()])
}

/// Checkpoints of both chains at position `at`.
fn checkpoints(records: &[ExportedRecord], at: u64) -> Vec<AuditCheckpoint> {
    records
        .iter()
        .filter(|r| r.chain_seq == at)
        .map(|r| key().sign(&r.chain, r.chain_seq, &r.hash, Utc::now()))
        .collect()
}

#[test]
fn an_untouched_trail_verifies_and_says_how_far_it_is_signed() {
    let (_, records) = trail(5);
    let cps = checkpoints(&records, 4);
    let report = verify(records, &cps, &trusted());
    assert!(report.intact(), "{:?}", report.broken);
    assert_eq!(report.records_checked, 10);
    assert_eq!(report.checkpoints_checked, 2);
    assert_eq!(
        report.chains["sidecar:a"],
        ChainSummary {
            records: 5,
            last_position: 5,
            signed_up_to: 4
        }
    );
}

#[test]
fn the_canonical_form_is_what_the_hash_covers() {
    let (events, records) = trail(1);
    let r = &records[0];
    assert_eq!(record_hash(&r.prev_hash, &r.chain, 1, &events[0]), r.hash);
    assert_eq!(canonical_hash(&r.prev_hash, r.canonical.as_bytes()), r.hash);
    assert!(r.canonical.contains("\"ratio\":1.0"), "{}", r.canonical);
}

/// Edits record `victim` of chain a and recomputes every later hash of the chain, as
/// someone with write access to the database could.
fn rewrite(events: &[AuditEvent], records: &mut [ExportedRecord], victim: u64) {
    let mut head = ChainHead::default();
    for (e, r) in events
        .iter()
        .zip(records.iter_mut())
        .filter(|(_, r)| r.chain == "sidecar:a")
    {
        let mut e = e.clone();
        if r.chain_seq == victim {
            e.detail = "nothing happened".to_owned();
        }
        let (_, prev, hash) = head.append(&r.chain, &e);
        r.prev_hash = prev;
        r.hash = hash;
        r.canonical = canonical_form(&r.chain, r.chain_seq, &e);
    }
}

#[test]
fn a_consistent_rewrite_passes_the_hash_walk_but_not_the_checkpoint() {
    let (events, original) = trail(5);
    let cps = checkpoints(&original, 4);
    let mut records = original.clone();
    rewrite(&events, &mut records, 2);
    // Without checkpoints the rewrite is invisible...
    let unsigned = verify(records.clone(), &[], &trusted()).broken.unwrap();
    assert!(unsigned.problem.contains("no checkpoint"), "{}", unsigned.problem);
    // ...with them it is named at the checkpointed position.
    let report = verify(records.clone(), &cps, &trusted());
    assert_eq!(report.records_checked, 10, "every link held");
    let b = report.broken.unwrap();
    assert_eq!((b.chain.as_str(), b.chain_seq), ("sidecar:a", 4));
    assert_eq!(b.event_id, records[3].event_id);
    assert!(b.problem.contains("rewritten after it was signed"), "{}", b.problem);
    assert!(b.problem.contains(&key().key_id().to_owned()), "{}", b.problem);
    // A rewrite after the checkpoint is only hash-chained: it passes, and the report
    // says position 5 is not signed.
    let mut records = original;
    rewrite(&events, &mut records, 5);
    let report = verify(records, &cps, &trusted());
    assert!(report.intact(), "{:?}", report.broken);
    assert_eq!(report.chains["sidecar:a"].signed_up_to, 4);
}

#[test]
fn a_wrong_key_verifies_nothing() {
    let (_, records) = trail(3);
    let cps = checkpoints(&records, 3);
    let wrong = TrustedKeys::new([CheckpointSigner::generate().public_key().clone()]);
    let report = verify(records, &cps, &wrong);
    assert_eq!(report.checkpoints_unverifiable, 2);
    let b = report.broken.unwrap();
    assert!(
        b.problem
            .contains("no checkpoint in the trail is signed by a trusted key"),
        "{}",
        b.problem
    );
}

#[test]
fn edits_deletions_and_relabels_are_found() {
    let (_, records) = trail(4);
    let cps = checkpoints(&records, 4);
    // An edited canonical form.
    let mut edited = records.clone();
    edited[1].canonical = edited[1].canonical.replace("call 2", "call 9");
    let b = verify(edited, &cps, &trusted()).broken.unwrap();
    assert!(b.problem.contains("edited"), "{}", b.problem);
    // The first record of a chain left out.
    let b = verify(records[1..].to_vec(), &cps, &trusted()).broken.unwrap();
    assert!(b.problem.contains("missing link"), "{}", b.problem);
    // The checkpointed record cut off the end.
    let mut cut = records.clone();
    cut.remove(3);
    let b = verify(cut, &cps, &trusted()).broken.unwrap();
    assert!(b.problem.contains("missing, yet"), "{}", b.problem);
    // A record's outer fields claiming another event.
    let mut relabelled = records.clone();
    relabelled[0].event_id = Uuid::now_v7();
    let b = verify(relabelled, &cps, &trusted()).broken.unwrap();
    assert!(b.problem.contains("relabelled"), "{}", b.problem);
    // A checkpoint edited to match a rewrite.
    let mut forged = cps.clone();
    forged[0].head_hash = "00".repeat(32);
    let b = verify(records, &forged, &trusted()).broken.unwrap();
    assert!(b.problem.contains("not genuine"), "{}", b.problem);
}

#[test]
fn lines_round_trip_as_tagged_json() {
    let (_, records) = trail(1);
    let cp = checkpoints(&records, 1).remove(0);
    for line in [ExportLine::Record(records[0].clone()), ExportLine::Checkpoint(cp)] {
        let text = serde_json::to_string(&line).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<ExportLine>(&text).unwrap(), line);
    }
}

#[test]
fn records_that_arrived_during_an_export_after_a_gap_are_left_out() {
    let (_, records) = trail(5);
    // Chain a's third record committed late: the stream passed it.
    let mut streamed: Vec<ExportedRecord> = records
        .iter()
        .filter(|r| !(r.chain == "sidecar:a" && r.chain_seq == 3))
        .cloned()
        .collect();
    streamed.reverse();
    let (kept, left_out) = settled(streamed);
    assert_eq!(left_out, 2, "positions 4 and 5 of chain a");
    let a: Vec<u64> = kept
        .iter()
        .filter(|r| r.chain == "sidecar:a")
        .map(|r| r.chain_seq)
        .collect();
    let b: Vec<u64> = kept
        .iter()
        .filter(|r| r.chain == "sidecar:b")
        .map(|r| r.chain_seq)
        .collect();
    assert_eq!((a, b), (vec![1, 2], vec![1, 2, 3, 4, 5]));
    let cps = checkpoints(&records, 2);
    assert!(verify(kept, &cps, &trusted()).intact());
    let (all, none) = settled(records.clone());
    assert_eq!((all.len(), none), (records.len(), 0));
}
