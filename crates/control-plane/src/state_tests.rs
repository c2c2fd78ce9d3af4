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

/// A statistics push patches the moved tool into the last snapshot: the result is what
/// a rebuild from the store gives, shares every other tool with the snapshot before,
/// and its delta carries the moved tool alone.
#[tokio::test]
async fn a_statistics_push_patches_the_last_snapshot_and_equals_a_rebuild() {
    let state = AppState::new(Arc::new(MemoryStore::default()), ToolPolicy::default(), None);
    let admin = Principal::Admin { token_id: None };
    let tools: Vec<Tool> = (0..5)
        .map(|i| {
            let mut t = tool(&format!("t{i}"));
            (t.spec.reliability_score, t.spec.average_latency_ms) = (1.0, 10);
            t
        })
        .collect();
    for t in &tools {
        let event = state.admin_event(&admin, AuditAction::ToolRegistered, None, Some(t.id), String::new());
        state.store.create_tool(t, &event).await.unwrap();
    }
    state.bump();
    let before = state.snapshot().await.unwrap();
    let moved = &tools[2];
    // Seeds at what the tool says (no push), then a failure: reliability 1.0 -> 0.9.
    assert!(!store_and_push(&state, &[outcome(moved, ExecutionStatus::Success, 10)]).await);
    assert!(store_and_push(&state, &[outcome(moved, ExecutionStatus::ExecutionError, 10)]).await);
    let after = state.snapshot().await.unwrap();
    assert_eq!(after.revision, before.revision + 1);
    for (old, new) in before.tools.iter().zip(&after.tools) {
        assert_eq!(old.id, new.id, "same order");
        assert_eq!(Arc::ptr_eq(old, new), old.id != moved.id, "{}", old.spec.name);
    }
    let delta = toolplane_core::delta::diff(&before, &after);
    assert_eq!(
        delta.upserted_tools.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![moved.id]
    );
    let rebuilt = state.build_snapshot(after.revision).await.unwrap();
    assert_eq!(*after, rebuilt, "a patch holds what a rebuild reads");
    assert!(
        (after
            .tools
            .iter()
            .find(|t| t.id == moved.id)
            .unwrap()
            .spec
            .reliability_score
            - 0.9)
            .abs()
            < 1e-9
    );
}

/// An admin change made since the last snapshot was built: the push rebuilds, so
/// sidecars get the change too, instead of patching the snapshot that lacks it.
#[tokio::test]
async fn a_push_after_an_admin_change_rebuilds_rather_than_patching() {
    let state = AppState::new(Arc::new(MemoryStore::default()), ToolPolicy::default(), None);
    let admin = Principal::Admin { token_id: None };
    let t = tool("raced");
    let event = state.admin_event(&admin, AuditAction::ToolRegistered, None, Some(t.id), String::new());
    state.store.create_tool(&t, &event).await.unwrap();
    state.bump();
    store_and_push(&state, &[outcome(&t, ExecutionStatus::Success, 10)]).await;
    let held = state.snapshot().await.unwrap();
    state
        .store
        .append_events(&[outcome(&t, ExecutionStatus::ExecutionError, 10)])
        .await
        .unwrap();
    state.stats_stored(&[outcome(&t, ExecutionStatus::ExecutionError, 10)]);
    let other = tool("registered_meanwhile");
    let event = state.admin_event(&admin, AuditAction::ToolRegistered, None, Some(other.id), String::new());
    state.store.create_tool(&other, &event).await.unwrap();
    state.bump();
    state.push_stats().await;
    let now = state.snapshot().await.unwrap();
    assert!(
        now.revision >= held.revision + 2,
        "the change's revision, then the push's"
    );
    assert_eq!(now.tools.len(), 2);
    assert_eq!(now, Arc::new(state.build_snapshot(now.revision).await.unwrap()));
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
