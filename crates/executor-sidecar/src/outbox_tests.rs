use chrono::Utc;
use serde_json::Value;
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
    let batch = o.take_batch(2);
    assert_eq!(batch, wire(&[&a, &b]));
    o.ack([a.event_id()]);
    assert_eq!(o.pending(), 2);
    o.requeue_in_flight();
    assert_eq!(o.take_batch(10), wire(&[&b, &c]));
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
        o.take_batch(2);
        o.ack([a.event_id()]);
    }
    let o = Outbox::open(&dir, false, 10, FullPolicy::Reject).unwrap();
    assert_eq!(o.take_batch(10), wire(&[&b, &c]));
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
    assert_eq!(o.take_batch(10), wire(&[&a]));
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
