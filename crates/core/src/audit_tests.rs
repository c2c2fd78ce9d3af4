use chrono::{SecondsFormat, Utc};
use serde_json::json;

use super::*;
use crate::model::{AuditAction, DataSensitivity};

fn event(n: u32) -> AuditEvent {
    AuditEvent {
        event_id: Uuid::now_v7(),
        action: AuditAction::ToolInvoked,
        invocation_id: Some(Uuid::now_v7()),
        actor_id: "agent".to_owned(),
        agent_id: Some(Uuid::nil()),
        tool_id: Some(Uuid::nil()),
        tool_version: n,
        task_id: format!("task-{n}"),
        occurred_at: Utc::now(),
        sanitized_parameters: json!({"n": n, "nested": {"b": 1, "a": [1, 2]}}),
        result: None,
        success: true,
        detail: String::new(),
        compliance_frameworks: vec!["SOC2".to_owned()],
        data_classification: Some(DataSensitivity::Internal),
        sidecar_id: "s1".to_owned(),
        permission_id: None,
    }
}

fn chain(n: u32) -> Vec<AuditRecord> {
    let mut head = ChainHead::default();
    (1..=n)
        .map(|i| {
            let e = event(i);
            let (chain_seq, prev_hash, hash) = head.append("sidecar:s1", &e);
            AuditRecord {
                event: e,
                seq: u64::from(i) * 10,
                recorded_at: Utc::now(),
                chain: "sidecar:s1".to_owned(),
                chain_seq,
                prev_hash,
                hash,
            }
        })
        .collect()
}

fn walk(records: &[AuditRecord]) -> Result<u64, Break> {
    let mut w = ChainWalk::default();
    for r in records {
        w.next(r, None)?;
    }
    Ok(w.checked)
}

#[test]
fn an_untouched_chain_verifies() {
    assert_eq!(walk(&chain(5)), Ok(5));
}

#[test]
fn an_edited_payload_is_named() {
    let mut c = chain(5);
    c[2].event.sanitized_parameters = json!({"n": 999});
    let b = walk(&c).unwrap_err();
    assert_eq!((b.chain_seq, b.seq), (3, 30));
    assert!(b.problem.contains("edited"), "{}", b.problem);
}

#[test]
fn a_deleted_record_is_a_missing_link() {
    let mut c = chain(5);
    c.remove(1);
    let b = walk(&c).unwrap_err();
    assert_eq!(b.chain_seq, 3);
    assert!(b.problem.contains("records 2..2"), "{}", b.problem);
}

#[test]
fn swapped_positions_break_the_links() {
    let mut c = chain(5);
    let (a, b) = (c[1].chain_seq, c[2].chain_seq);
    c[1].chain_seq = b;
    c[2].chain_seq = a;
    c.sort_by_key(|r| r.chain_seq);
    let b = walk(&c).unwrap_err();
    assert_eq!(b.chain_seq, 2);
    assert!(b.problem.contains("broken link"), "{}", b.problem);
}

#[test]
fn a_walk_starting_mid_chain_needs_the_predecessor() {
    let c = chain(4);
    let mut w = ChainWalk::default();
    assert!(w.opens_chain(&c[2]));
    assert!(w.next(&c[2], None).unwrap_err().problem.contains("does not exist"));
    let mut w = ChainWalk::default();
    assert!(w.next(&c[2], Some(&c[0].hash)).is_err(), "the wrong predecessor");
    let mut w = ChainWalk::default();
    w.next(&c[2], Some(&c[1].hash)).unwrap();
    w.next(&c[3], None).unwrap();
    assert_eq!(w.last["sidecar:s1"], 4);
}

#[test]
fn the_hash_ignores_sub_microsecond_time_and_key_order() {
    let e = event(1);
    let mut f = e.clone();
    f.occurred_at = stored_time(e.occurred_at);
    f.sanitized_parameters = json!({"nested": {"a": [1, 2], "b": 1}, "n": 1});
    assert_eq!(
        record_hash(GENESIS_HASH, "c", 1, &e),
        record_hash(GENESIS_HASH, "c", 1, &f)
    );
    assert_ne!(
        record_hash(GENESIS_HASH, "c", 1, &e),
        record_hash(GENESIS_HASH, "c", 2, &e)
    );
}

/// How records were first put in canonical form: the object built with `json!`, then
/// canonicalised. Every stored hash depends on the form staying byte for byte the same.
fn canonical_record_reference(chain: &str, chain_seq: u64, e: &AuditEvent) -> String {
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
    crate::json::canonical(&v)
}

#[test]
fn the_canonical_record_is_unchanged_byte_for_byte() {
    use crate::model::{ExecutionStatus, ResultSummary};
    let plain = event(3);
    let full = AuditEvent {
        actor_id: "agent \"quoted\" ünï 🙂".to_owned(),
        agent_id: None,
        tool_id: None,
        invocation_id: None,
        permission_id: Some(Uuid::now_v7()),
        result: Some(ResultSummary {
            size_bytes: 42,
            status: ExecutionStatus::PartialSuccess,
            digest: "ab\ncd".to_owned(),
        }),
        success: false,
        detail: "line\nbreak\ttab \u{1}".to_owned(),
        compliance_frameworks: vec![],
        data_classification: None,
        sidecar_id: String::new(),
        sanitized_parameters: json!({"z": null, "a": [{"y": 1.5, "x": "<b>"}], "m": -7}),
        ..event(u32::MAX)
    };
    for (chain, seq, e) in [("sidecar:s1", 1, &plain), ("control-plane", u64::MAX, &full)] {
        assert_eq!(
            String::from_utf8(canonical_record(chain, seq, e)).unwrap(),
            canonical_record_reference(chain, seq, e)
        );
    }
}
