use toolplane_core::model::{ExecutionStatus, Tool};
use toolplane_core::testutil::tool;

use super::*;
use crate::storage::MemoryStore;

fn outcome(t: &Tool, status: ExecutionStatus, duration_ms: u32) -> SyncEvent {
    SyncEvent::Invocation(toolplane_core::testutil::invocation(t.id, status, duration_ms))
}

/// Stores outcomes as a sidecar batch would, then runs one statistics push; returns
/// whether it made a new revision.
async fn store_and_push(state: &AppState, events: &[SyncEvent]) -> bool {
    state.store.append_events(events).await.unwrap();
    state.stats_stored(events);
    let before = *state.subscribe().borrow();
    state.push_stats().await;
    *state.subscribe().borrow() != before
}

#[tokio::test]
async fn a_push_is_made_only_when_statistics_moved_from_what_sidecars_hold() {
    let state = AppState::new(Arc::new(MemoryStore::default()), ToolPolicy::default(), None);
    let mut t = tool("steady_lookup");
    t.spec.reliability_score = 1.0;
    t.spec.average_latency_ms = 10;
    let admin = Principal::Admin { token_id: None };
    let event = state.admin_event(&admin, AuditAction::ToolRegistered, None, Some(t.id), String::new());
    state.store.create_tool(&t, &event).await.unwrap();
    state.bump();
    let held = state.snapshot().await.unwrap();
    assert_eq!(held.tools.len(), 1);

    // The first outcome seeds the statistics with what the tool already says.
    assert!(!store_and_push(&state, &[outcome(&t, ExecutionStatus::Success, 10)]).await);
    // 10 -> 11 ms: under 2 ms of drift.
    assert!(!store_and_push(&state, &[outcome(&t, ExecutionStatus::Success, 20)]).await);
    // Nothing stored since: nothing to push.
    state.push_stats().await;
    assert!(Arc::ptr_eq(&held, &state.snapshot().await.unwrap()), "no rebuild");

    // 11 -> 30 ms: pushed, and the new snapshot carries it.
    assert!(store_and_push(&state, &[outcome(&t, ExecutionStatus::Success, 200)]).await);
    let now = state.snapshot().await.unwrap();
    assert_eq!(now.tools[0].spec.average_latency_ms, 30);

    // One failure: reliability 1.0 -> 0.9.
    assert!(store_and_push(&state, &[outcome(&t, ExecutionStatus::ExecutionError, 30)]).await);
    let now = state.snapshot().await.unwrap();
    assert!((now.tools[0].spec.reliability_score - 0.9).abs() < 1e-9);

    // Refusals say nothing about the tool: not even looked at.
    assert!(!store_and_push(&state, &[outcome(&t, ExecutionStatus::PermissionDenied, 0)]).await);
}

#[tokio::test]
async fn a_tool_the_last_snapshot_does_not_hold_is_pushed() {
    let state = AppState::new(Arc::new(MemoryStore::default()), ToolPolicy::default(), None);
    state.snapshot().await.unwrap();
    let t = tool("newcomer");
    let admin = Principal::Admin { token_id: None };
    let event = state.admin_event(&admin, AuditAction::ToolRegistered, None, Some(t.id), String::new());
    state.store.create_tool(&t, &event).await.unwrap();
    assert!(store_and_push(&state, &[outcome(&t, ExecutionStatus::Success, 10)]).await);
}

#[test]
fn drift_thresholds() {
    let spec = |reliability_score: f64, average_latency_ms: u32| ToolSpec {
        reliability_score,
        average_latency_ms,
        ..toolplane_core::testutil::tool_spec("t")
    };
    assert!(!stats_drifted(&spec(0.95, 100), &spec(0.955, 104)));
    assert!(stats_drifted(&spec(0.95, 100), &spec(0.94, 100)));
    assert!(stats_drifted(&spec(0.95, 100), &spec(0.95, 105)));
    assert!(!stats_drifted(&spec(1.0, 0), &spec(1.0, 1)), "sub-millisecond jitter");
    assert!(stats_drifted(&spec(1.0, 0), &spec(1.0, 2)));
}
