use chrono::Utc;
use serde_json::Value;
use toolplane_core::model::{AuditAction, AuditEvent, SyncEvent};
use uuid::Uuid;

use super::*;

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
    let o = Outbox::new(10);
    let (a, b, c) = (event(), event(), event());
    for e in [&a, &b, &c] {
        o.push(e.clone());
    }
    let batch = o.take_batch(2);
    assert_eq!(batch, vec![a.clone(), b.clone()]);
    o.ack([a.event_id()]);
    assert_eq!(o.pending(), 2);
    o.requeue_in_flight();
    assert_eq!(o.take_batch(10), vec![b.clone(), c.clone()]);
    o.ack([b.event_id(), c.event_id()]);
    assert_eq!(o.pending(), 0);
}

#[test]
fn overflow_is_counted_not_silent() {
    let o = Outbox::new(1);
    o.push(event());
    o.push(event());
    assert_eq!(o.pending(), 1);
    assert_eq!(o.dropped(), 1);
}
