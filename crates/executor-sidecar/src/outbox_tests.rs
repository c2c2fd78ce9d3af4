use std::path::Path;

use chrono::Utc;
use serde_json::{Value, json};
use toolplane_core::model::{AuditAction, AuditEvent, SyncEvent};
use uuid::Uuid;

use super::*;

/// What `take_batch` hands out for these events.
fn wire(events: &[&SyncEvent]) -> Vec<Encoded> {
    events.iter().map(|e| Encoded::new(e)).collect()
}

fn event() -> SyncEvent {
    SyncEvent::Audit(AuditEvent {
        event_id: Uuid::now_v7(),
        action: AuditAction::ToolInvoked,
        invocation_id: None,
        actor_id: "a".into(),
        agent_id: None,
        tool_id: None,
        tool_version: 1,
        task_id: String::new(),
        occurred_at: Utc::now(),
        sanitized_parameters: Value::Null,
        result: None,
        success: true,
        detail: String::new(),
        compliance_frameworks: vec![],
        data_classification: None,
        sidecar_id: String::new(),
        permission_id: None,
    })
}

#[test]
fn only_acked_events_leave_and_unacked_are_resent_first() {
    let o = Outbox::new(10, FullPolicy::Reject);
    let (a, b, c) = (event(), event(), event());
    for e in [&a, &b, &c] {
        o.push(e.clone());
    }
    let batch = o.take_batch(2, MAX_BATCH_BYTES);
    assert_eq!(batch, wire(&[&a, &b]));
    o.ack([a.event_id()]);
    assert_eq!(o.pending(), 2);
    o.requeue_in_flight();
    assert_eq!(o.take_batch(10, MAX_BATCH_BYTES), wire(&[&b, &c]));
    o.ack([b.event_id(), c.event_id()]);
    assert_eq!(o.pending(), 0);
}

#[test]
fn overflow_is_counted_not_silent() {
    let o = Outbox::new(1, FullPolicy::Drop);
    o.push(event());
    o.push(event());
    assert_eq!(o.pending(), 1);
    assert_eq!(o.dropped(), 1);
}

#[test]
fn a_reopened_spool_holds_exactly_the_unacked_events() {
    let dir = std::env::temp_dir().join(format!("tp-spool-{}", Uuid::new_v4()));
    let (a, b, c) = (event(), event(), event());
    {
        let o = Outbox::open(&dir, false, 10, FullPolicy::Reject).unwrap();
        for e in [&a, &b, &c] {
            o.push(e.clone());
        }
        o.take_batch(2, MAX_BATCH_BYTES);
        o.ack([a.event_id()]);
    }
    let o = Outbox::open(&dir, false, 10, FullPolicy::Reject).unwrap();
    assert_eq!(o.take_batch(10, MAX_BATCH_BYTES), wire(&[&b, &c]));
    o.ack([b.event_id(), c.event_id()]);
    drop(o);
    let o = Outbox::open(&dir, false, 10, FullPolicy::Reject).unwrap();
    assert_eq!(o.pending(), 0);
    assert_eq!(
        std::fs::metadata(dir.join("events.log")).unwrap().len(),
        0,
        "compacted once all acked"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_last_record_is_ignored() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("tp-spool-{}", Uuid::new_v4()));
    let a = event();
    {
        let o = Outbox::open(&dir, true, 10, FullPolicy::Reject).unwrap();
        o.push(a.clone());
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("events.log"))
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    let o = Outbox::open(&dir, false, 10, FullPolicy::Reject).unwrap();
    assert_eq!(o.take_batch(10, MAX_BATCH_BYTES), wire(&[&a]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reject_policy_refuses_calls_when_full() {
    let o = Outbox::new(1, FullPolicy::Reject);
    assert!(o.accepts_calls());
    o.push(event());
    assert!(!o.accepts_calls());
    let d = Outbox::new(1, FullPolicy::Drop);
    d.push(event());
    assert!(d.accepts_calls());
}

fn audit_event(e: &SyncEvent) -> &AuditEvent {
    match e {
        SyncEvent::Audit(a) => a,
        SyncEvent::Invocation(_) => panic!("not an audit event"),
    }
}

fn decoded(e: &Encoded) -> SyncEvent {
    use prost::Message;
    let pb = toolplane_proto::v1::SyncEvent::decode(e.bytes.as_ref()).unwrap();
    toolplane_core::convert::sync_event_from_pb(pb).unwrap()
}

fn with(task_id: &str, params: Value) -> SyncEvent {
    let mut e = event();
    if let SyncEvent::Audit(a) = &mut e {
        a.task_id = task_id.to_owned();
        a.sanitized_parameters = params;
    }
    e
}

#[test]
fn a_call_admitted_just_below_capacity_keeps_all_its_events() {
    let o = Outbox::new(5, FullPolicy::Reject);
    for _ in 0..3 {
        o.push(event());
    }
    let room = o.reserve(2).expect("two events still fit");
    assert!(o.reserve(1).is_none(), "the room is held for the admitted call");
    assert!(!o.accepts_calls());
    o.push_all(vec![event(), event()]);
    assert_eq!(o.pending(), 5);
    assert_eq!(o.dropped(), 0, "nothing the admitted call pushed was dropped");
    drop(room);
    assert!(o.reserve(1).is_none(), "full of its events now");
    o.take_batch(2, MAX_BATCH_BYTES).iter().for_each(|e| o.ack([e.id]));
    let again = o.reserve(2);
    assert!(again.is_some(), "acks make room again");
    assert_eq!(o.outstanding(), 5);
    drop(again);
    assert_eq!(o.outstanding(), 3);
}

#[test]
fn the_drop_policy_reserves_nothing() {
    let o = Outbox::new(1, FullPolicy::Drop);
    let _a = o.reserve(10).unwrap();
    let _b = o.reserve(10).unwrap();
    assert_eq!(o.outstanding(), 0);
}

#[test]
fn batches_are_bounded_in_bytes_and_a_huge_event_goes_alone() {
    let o = Outbox::new(1000, FullPolicy::Reject);
    // Each just under the per-value bound, so cleaning keeps them whole (~3 KB each).
    for i in 0..20 {
        o.push(with("t", json!({"v": "x".repeat(3000), "i": i})));
    }
    let mut seen = 0;
    loop {
        let batch = o.take_batch(BATCH, 10_000);
        if batch.is_empty() {
            break;
        }
        let bytes: usize = batch.iter().map(|e| e.bytes.len()).sum();
        assert!(bytes <= 10_000, "{bytes}");
        seen += batch.len();
        assert!(batch.len() >= 3 || seen == 20, "as many as fit: {}", batch.len());
    }
    assert_eq!(seen, 20);
    o.push(with("t", json!({"v": "x".repeat(3000)})));
    let alone = o.take_batch(BATCH, 100);
    assert_eq!(alone.len(), 1, "an event over the bound is still sent");
}

#[test]
fn what_an_agent_sent_is_cleaned_before_it_is_queued() {
    let o = Outbox::new(10, FullPolicy::Reject);
    o.push(with(
        &format!("a\u{0}{}", "b".repeat(5000)),
        json!({"k\u{0}": "v\u{0}", "huge": "h".repeat(100_000)}),
    ));
    let batch = o.take_batch(10, MAX_BATCH_BYTES);
    let e = decoded(&batch[0]);
    let a = audit_event(&e);
    assert!(a.task_id.starts_with("a\\u0000bbb"), "{}", a.task_id);
    assert!(a.task_id.len() <= toolplane_core::audit_clean::MAX_TASK_ID_BYTES);
    assert_eq!(a.sanitized_parameters["k\\u0000"], "v\\u0000");
    assert!(a.sanitized_parameters["huge"]["$omitted"]["size_bytes"].is_u64());
    assert!(batch[0].bytes.len() < 2000);
}

/// Writes `events` as spool records, with `between` after the record at each index.
fn spool_file(dir: &Path, records: &[(&SyncEvent, &[u8])]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = Vec::new();
    for (e, after) in records {
        Encoded::new(e).write_record(&mut out);
        out.extend_from_slice(after);
    }
    std::fs::write(dir.join("events.log"), out).unwrap();
}

#[test]
fn a_torn_record_in_the_middle_loses_only_itself() {
    let dir = std::env::temp_dir().join(format!("tp-spool-{}", Uuid::new_v4()));
    let (a, b, c, d) = (event(), event(), event(), event());
    // b's record torn halfway (the disk filled up), then c and d appended once there
    // was room again; garbage and a record with a bad checksum in between.
    let mut torn = Vec::new();
    Encoded::new(&b).write_record(&mut torn);
    torn.truncate(torn.len() / 2);
    let mut bad_crc = Vec::new();
    Encoded::new(&event()).write_record(&mut bad_crc);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    bad_crc.extend_from_slice(&[0, 1, 2, 0xE7, 0x70, 3]);
    spool_file(&dir, &[(&a, &torn), (&c, &bad_crc), (&d, b"")]);
    let o = Outbox::open(&dir, false, 10, FullPolicy::Reject).unwrap();
    assert_eq!(o.take_batch(10, MAX_BATCH_BYTES), wire(&[&a, &c, &d]));
    drop(o);
    // Rewritten at start-up: reopening finds exactly the same, undamaged.
    let o = Outbox::open(&dir, false, 10, FullPolicy::Reject).unwrap();
    assert_eq!(o.take_batch(10, MAX_BATCH_BYTES), wire(&[&a, &c, &d]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_spool_of_the_old_format_is_read_cleaned_and_rewritten() {
    let dir = std::env::temp_dir().join(format!("tp-spool-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let clean = event();
    // What an older sidecar spooled as it was: a NUL the control plane would refuse.
    let dirty = with("poison\u{0}", json!({}));
    let mut old = Vec::new();
    for e in [&clean, &dirty] {
        let bytes = Encoded::new(e).bytes;
        old.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_le_bytes());
        old.extend_from_slice(&bytes);
    }
    std::fs::write(dir.join("events.log"), &old).unwrap();
    let o = Outbox::open(&dir, false, 10, FullPolicy::Reject).unwrap();
    let batch = o.take_batch(10, MAX_BATCH_BYTES);
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0], wire(&[&clean])[0]);
    assert_eq!(batch[1].id, dirty.event_id());
    assert_eq!(audit_event(&decoded(&batch[1])).task_id, "poison\\u0000");
    drop(o);
    let now = std::fs::read(dir.join("events.log")).unwrap();
    assert!(
        now.starts_with(&[0xE7, 0x70, 0x5A, 0x1C]),
        "rewritten in the current format"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn crc32_is_the_ieee_one() {
    assert_eq!(crate::spool::crc32(b"123456789"), 0xCBF4_3926);
}

fn spool_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("events.log")).map_or(0, |m| m.len())
}

#[tokio::test]
async fn concurrent_calls_share_one_spool_write_and_none_answers_before_it() {
    let dir = std::env::temp_dir().join(format!("tp-spool-{}", Uuid::new_v4()));
    let o = Outbox::open(&dir, false, 100, FullPolicy::Reject).unwrap();
    let rooms: Vec<_> = (0..3).map(|_| o.reserve(2).unwrap()).collect();
    let calls = rooms.into_iter().map(|room| {
        let (o, dir) = (&o, &dir);
        async move {
            o.push_all(vec![event(), event()]);
            drop(room);
            o.spooled().await;
            spool_len(dir)
        }
    });
    let seen = futures::future::join_all(calls).await;
    let all = spool_len(&dir);
    assert!(all > 0);
    // The first call led: it waited for the others, and one write served all three.
    assert_eq!(seen, vec![all; 3], "every call answered with all six events written");
    drop(o);
    let o = Outbox::open(&dir, false, 100, FullPolicy::Reject).unwrap();
    assert_eq!(o.pending(), 6);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_leader_dropped_while_gathering_still_writes_the_group() {
    let dir = std::env::temp_dir().join(format!("tp-spool-{}", Uuid::new_v4()));
    let o = Outbox::open(&dir, false, 100, FullPolicy::Reject).unwrap();
    let other = o.reserve(1).unwrap();
    let room = o.reserve(1).unwrap();
    o.push(event());
    drop(room);
    let mut wait = Box::pin(o.spooled());
    assert!(futures::poll!(wait.as_mut()).is_pending(), "waits for the other call");
    assert_eq!(spool_len(&dir), 0, "nothing written while the group gathers");
    drop(wait);
    assert!(spool_len(&dir) > 0, "written when the leader went away");
    drop(other);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nothing_is_handed_out_for_sending_before_it_is_spooled() {
    let dir = std::env::temp_dir().join(format!("tp-spool-{}", Uuid::new_v4()));
    let o = Outbox::open(&dir, false, 100, FullPolicy::Reject).unwrap();
    let a = event();
    o.push(a.clone());
    assert_eq!(spool_len(&dir), 0);
    assert_eq!(o.take_batch(10, MAX_BATCH_BYTES), wire(&[&a]));
    assert!(spool_len(&dir) > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
