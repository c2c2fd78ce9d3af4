//! One conformance suite, run against both storage backends: the in-memory default and
//! PostgreSQL (each test in its own database).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::{Duration, Utc};
use serde_json::json;
use toolplane_control_plane::storage::{
    AuditFilter, BudgetWindow, DeadLetter, MemoryStore, PostgresStore, Store, StoreError, TokenFilter, ToolFilter,
};
use toolplane_core::model::*;
use toolplane_core::testutil;
use toolplane_tests::pg::TestDb;
use uuid::Uuid;

/// A backend under test; keeps its database alive for the test's duration.
struct Backend {
    store: Arc<dyn Store>,
    _db: Option<TestDb>,
}

async fn memory() -> Backend {
    Backend {
        store: Arc::new(MemoryStore::default()),
        _db: None,
    }
}

async fn postgres() -> Backend {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(&db.url, 4).await.unwrap();
    Backend {
        store: Arc::new(store),
        _db: Some(db),
    }
}

macro_rules! conformance {
    ($($test:ident),+ $(,)?) => {
        mod memory_backend {
            $(#[tokio::test] async fn $test() { super::$test(super::memory().await.store).await })+
        }
        mod postgres_backend {
            $(#[tokio::test] async fn $test() { let b = super::postgres().await; super::$test(b.store.clone()).await })+
        }
    };
}

conformance!(
    tools_round_trip_by_id_and_name,
    duplicate_tool_names_conflict,
    list_filters_and_pages_by_name,
    agents_round_trip_and_names_are_unique,
    tokens_by_digest_and_only_active_listed,
    permissions_need_agent_and_tool_and_filter,
    access_requests_are_reviewed_once_with_their_grant,
    events_are_stored_once_and_in_order,
    versions_are_immutable_and_outlive_deletion,
    outcomes_update_tool_statistics_once,
    remembered_tasks_merge_stay_bounded_and_expire,
    admin_changes_and_their_audit_events_are_stored_together,
    dead_letters_are_kept_once_and_paged,
    audit_checkpoints_are_kept_once_and_listed_in_byte_order,
    budget_use_counts_the_calls_that_reached_the_tool_under_each_grant,
    shared_learning_folds_each_invocation_and_first_verdict_once,
    agents_are_updated_and_deleted_with_their_tokens_grants_and_requests,
    lists_page_in_index_order_after_a_cursor,
    fallback_strategies_are_deleted_once_and_audited,
    tool_changes_wait_supersede_and_are_reviewed_once_with_the_new_version,
    credentials_keep_their_settings_and_expiry_and_are_deleted,
    activity_counts_recent_calls_by_minute_and_status,
);

/// The audit event an administrative change carries (its content does not matter here).
fn ev() -> AuditEvent {
    testutil::admin_event()
}

fn outcome(tool: &Tool, status: ExecutionStatus, duration_ms: u32) -> SyncEvent {
    let id = Uuid::now_v7();
    let now = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    SyncEvent::Invocation(InvocationRecord {
        invocation_id: id,
        agent_id: Uuid::new_v4(),
        task_id: String::new(),
        requested_tool_id: tool.id,
        parameters: json!({}),
        invoked_at: now,
        sidecar_id: "s".into(),
        task_category: "weather".into(),
        selection_id: None,
        caller_cancelled: false,
        result: ToolResult {
            invocation_id: id,
            tool_id: tool.id,
            tool_version: tool.version,
            status,
            output: serde_json::Value::Null,
            error: String::new(),
            duration_ms,
            tokens_used: 0,
            cost: Default::default(),
            completed_at: now,
            cache_hit: false,
            attempts: 1,
            retry_after_ms: 0,
            stale: false,
            fallback_from: None,
        },
    })
}

async fn outcomes_update_tool_statistics_once(s: Arc<dyn Store>) {
    let mut t = testutil::tool("measured");
    t.spec.reliability_score = 0.0;
    t.spec.average_latency_ms = 0;
    s.create_tool(&t, &ev()).await.unwrap();
    let first = outcome(&t, ExecutionStatus::Success, 100);
    s.append_events(std::slice::from_ref(&first)).await.unwrap();
    s.append_events(&[first]).await.unwrap(); // a resend counts once
    let got = s.get_tool(t.id).await.unwrap().unwrap();
    assert_eq!((got.spec.reliability_score, got.spec.average_latency_ms), (1.0, 100));
    s.append_events(&[
        outcome(&t, ExecutionStatus::Timeout, 1100),
        outcome(&t, ExecutionStatus::PermissionDenied, 0),
    ])
    .await
    .unwrap();
    let got = s.get_tool(t.id).await.unwrap().unwrap();
    assert!(
        (got.spec.reliability_score - 0.9).abs() < 1e-9,
        "{}",
        got.spec.reliability_score
    );
    assert_eq!(got.spec.average_latency_ms, 200);
}

async fn versions_are_immutable_and_outlive_deletion(s: Arc<dyn Store>) {
    let v1 = testutil::tool("versioned");
    s.create_tool(&v1, &ev()).await.unwrap();
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.spec.description = "second".into();
    v2.updated_at = Utc::now();
    s.update_tool(&v2, &ev()).await.unwrap();
    // A stale writer (also proposing version 2) loses.
    let mut stale = v1.clone();
    stale.version = 2;
    stale.spec.description = "stale".into();
    assert!(matches!(
        s.update_tool(&stale, &ev()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_tool(v1.id).await.unwrap().unwrap().spec.description, "second");
    assert_eq!(s.get_tool_by_name("versioned").await.unwrap().unwrap().version, 2);
    assert_eq!(
        s.get_tool_version(v1.id, 1).await.unwrap().unwrap().spec.description,
        v1.spec.description
    );
    assert_eq!(
        s.get_tool_version(v1.id, 2).await.unwrap().unwrap().spec.description,
        "second"
    );
    assert!(s.get_tool_version(v1.id, 3).await.unwrap().is_none());

    let off = s
        .set_tool_enabled(v1.id, false, Utc::now(), &ev())
        .await
        .unwrap()
        .unwrap();
    assert!(!off.spec.enabled);
    assert_eq!(off.version, 2, "enabling and disabling do not make versions");
    assert!(!s.get_tool_version(v1.id, 1).await.unwrap().unwrap().spec.enabled);

    assert!(s.delete_tool(v1.id, Utc::now(), &ev()).await.unwrap());
    assert!(!s.delete_tool(v1.id, Utc::now(), &ev()).await.unwrap());
    assert!(s.get_tool(v1.id).await.unwrap().is_none());
    assert!(s.get_tool_by_name("versioned").await.unwrap().is_none());
    assert!(s.list_tools(&ToolFilter::default(), None, 10).await.unwrap().is_empty());
    assert!(
        s.set_tool_enabled(v1.id, true, Utc::now(), &ev())
            .await
            .unwrap()
            .is_none()
    );
    let mut v3 = v2.clone();
    v3.version = 3;
    assert!(matches!(s.update_tool(&v3, &ev()).await, Err(StoreError::NotFound(_))));
    // History outlives deletion, and the name can be registered again.
    assert_eq!(
        s.get_tool_version(v1.id, 2).await.unwrap().unwrap().spec.description,
        "second"
    );
    s.create_tool(&testutil::tool("versioned"), &ev()).await.unwrap();
}

async fn tools_round_trip_by_id_and_name(s: Arc<dyn Store>) {
    let mut t = testutil::tool("word_count");
    t.spec.cost_per_call = "0.0020".parse().unwrap();
    t.spec.examples[0].expected_output = json!({"words": 2});
    // Postgres keeps microseconds.
    t.created_at = t.created_at.with_timezone(&Utc);
    s.create_tool(&t, &ev()).await.unwrap();
    let by_id = s.get_tool(t.id).await.unwrap().unwrap();
    assert_eq!(by_id.spec, t.spec);
    assert_eq!(by_id.spec.cost_per_call.to_string(), "0.0020");
    assert_eq!(by_id.version, 1);
    let by_name = s.get_tool_by_name("word_count").await.unwrap().unwrap();
    assert_eq!(by_name.id, t.id);
    assert!(s.get_tool(Uuid::new_v4()).await.unwrap().is_none());
    assert!(s.get_tool_by_name("nope").await.unwrap().is_none());
}

async fn duplicate_tool_names_conflict(s: Arc<dyn Store>) {
    s.create_tool(&testutil::tool("dup"), &ev()).await.unwrap();
    match s.create_tool(&testutil::tool("dup"), &ev()).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("dup"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn admin_changes_and_their_audit_events_are_stored_together(s: Arc<dyn Store>) {
    let recorded = |s: Arc<dyn Store>| async move {
        s.audit_events(&AuditFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.event.event_id)
            .collect::<Vec<_>>()
    };
    let t = testutil::tool("audited");
    let created = ev();
    s.create_tool(&t, &created).await.unwrap();
    assert_eq!(recorded(s.clone()).await, vec![created.event_id]);
    // A change that does not happen records nothing.
    let refused = ev();
    assert!(s.create_tool(&testutil::tool("audited"), &refused).await.is_err());
    assert!(!s.delete_tool(Uuid::now_v7(), Utc::now(), &refused).await.unwrap());
    assert!(!s.revoke_token(Uuid::now_v7(), Utc::now(), &refused).await.unwrap());
    assert!(
        s.revoke_permission(Uuid::now_v7(), Utc::now(), &|_| vec![refused.clone()])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(recorded(s.clone()).await, vec![created.event_id]);
    // A revocation's record is built from the grant it revoked.
    let a = testutil::agent("auditee");
    s.create_agent(&a, &ev()).await.unwrap();
    let g = testutil::grant(&a, &t, PermissionType::FullAccess);
    s.create_permission(&g, &ev()).await.unwrap();
    let revoked = s
        .revoke_permission(g.id, Utc::now(), &|p| {
            let mut e = ev();
            e.agent_id = Some(p.agent_id);
            vec![e]
        })
        .await
        .unwrap();
    assert!(revoked.is_some());
    let trail = s.audit_events(&AuditFilter::default()).await.unwrap();
    assert_eq!(trail.len(), 4);
    assert_eq!(trail[3].event.agent_id, Some(a.id));
}

async fn dead_letters_are_kept_once_and_paged(s: Arc<dyn Store>) {
    let letter = |event_id: &str| DeadLetter {
        id: 0,
        received_at: Utc::now(),
        source: "sidecar:x".into(),
        event_id: event_id.into(),
        kind: "audit".into(),
        error: "not stored: invalid byte sequence".into(),
        raw: vec![0, 1, 2, 255],
    };
    s.dead_letter(&[letter("a"), letter("b")]).await.unwrap();
    s.dead_letter(&[letter("b"), letter("c")]).await.unwrap(); // "b" resent
    let (all, total) = s.dead_letters(0, 10).await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(
        all.iter().map(|l| l.event_id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(all[0].raw, vec![0, 1, 2, 255]);
    let (page, _) = s.dead_letters(all[0].id, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].event_id, "b");
}

async fn list_filters_and_pages_by_name(s: Arc<dyn Store>) {
    for (name, cat, caps, enabled, provider) in [
        ("b_search", "web_search", vec!["search"], true, "acme"),
        ("a_fetch", "data_retrieval", vec!["retrieve", "search"], true, "acme"),
        ("c_calc", "analysis", vec!["analyze"], false, "internal"),
        ("d_mail", "communication", vec!["integrate"], true, "internal"),
    ] {
        let mut t = testutil::tool(name);
        t.spec.category = cat.to_owned();
        t.spec.capabilities = caps.into_iter().map(str::to_owned).collect();
        t.spec.enabled = enabled;
        t.spec.provider = provider.to_owned();
        t.spec.description = format!("The {name} Tool");
        s.create_tool(&t, &ev()).await.unwrap();
    }
    let names = |v: Vec<Tool>| v.into_iter().map(|t| t.spec.name).collect::<Vec<_>>();
    let all = ToolFilter::default();
    assert_eq!(
        names(s.list_tools(&all, None, 10).await.unwrap()),
        ["a_fetch", "b_search", "c_calc", "d_mail"]
    );
    assert_eq!(
        names(s.list_tools(&all, None, 2).await.unwrap()),
        ["a_fetch", "b_search"]
    );
    assert_eq!(
        names(s.list_tools(&all, Some("b_search"), 2).await.unwrap()),
        ["c_calc", "d_mail"]
    );
    let f = ToolFilter {
        capability: Some("search".into()),
        ..Default::default()
    };
    assert_eq!(
        names(s.list_tools(&f, None, 10).await.unwrap()),
        ["a_fetch", "b_search"]
    );
    let f = ToolFilter {
        category: Some("analysis".into()),
        ..Default::default()
    };
    assert_eq!(names(s.list_tools(&f, None, 10).await.unwrap()), ["c_calc"]);
    let f = ToolFilter {
        enabled: Some(false),
        ..Default::default()
    };
    assert_eq!(names(s.list_tools(&f, None, 10).await.unwrap()), ["c_calc"]);
    let f = ToolFilter {
        provider: Some("internal".into()),
        enabled: Some(true),
        ..Default::default()
    };
    assert_eq!(names(s.list_tools(&f, None, 10).await.unwrap()), ["d_mail"]);
    let f = ToolFilter {
        text: Some("MAIL".into()),
        ..Default::default()
    };
    assert_eq!(names(s.list_tools(&f, None, 10).await.unwrap()), ["d_mail"]);
    let f = ToolFilter {
        text: Some("%".into()),
        ..Default::default()
    };
    assert!(
        s.list_tools(&f, None, 10).await.unwrap().is_empty(),
        "% is matched literally"
    );
}

async fn agents_round_trip_and_names_are_unique(s: Arc<dyn Store>) {
    let mut a = testutil::agent("planner");
    a.skills = vec!["sql".into()];
    a.created_at = chrono::DateTime::from_timestamp(a.created_at.timestamp(), 0).unwrap();
    s.create_agent(&a, &ev()).await.unwrap();
    assert_eq!(s.get_agent(a.id).await.unwrap().unwrap(), a);
    assert!(matches!(
        s.create_agent(&testutil::agent("planner"), &ev()).await,
        Err(StoreError::Conflict(_))
    ));
    s.create_agent(&testutil::agent("analyst"), &ev()).await.unwrap();
    let names: Vec<String> = s.list_agents().await.unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["analyst", "planner"]);
}

fn token(role: Role, agent: Option<Uuid>, expires_in: Duration, revoked: bool) -> TokenRecord {
    let now = Utc::now();
    TokenRecord {
        id: Uuid::new_v4(),
        sha256: toolplane_core::token::digest(&toolplane_core::token::generate()),
        role,
        agent_id: agent,
        description: String::new(),
        created_at: now,
        expires_at: now + expires_in,
        revoked_at: revoked.then_some(now),
    }
}

async fn tokens_by_digest_and_only_active_listed(s: Arc<dyn Store>) {
    let a = testutil::agent("a");
    s.create_agent(&a, &ev()).await.unwrap();
    let live = token(Role::Agent, Some(a.id), Duration::hours(1), false);
    let expired = token(Role::Sidecar, None, Duration::hours(-1), false);
    let revoked = token(Role::Admin, None, Duration::hours(1), true);
    for t in [&live, &expired, &revoked] {
        s.create_token(t, &ev()).await.unwrap();
    }
    let found = s.token_by_digest(&live.sha256).await.unwrap().unwrap();
    assert_eq!(
        (found.id, found.role, found.agent_id),
        (live.id, Role::Agent, Some(a.id))
    );
    assert!(s.token_by_digest("0".repeat(64).as_str()).await.unwrap().is_none());
    let active: Vec<Uuid> = s
        .active_tokens(Utc::now())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(active, [live.id]);
}

async fn permissions_need_agent_and_tool_and_filter(s: Arc<dyn Store>) {
    let a = testutil::agent("a");
    let b = testutil::agent("b");
    let t = testutil::tool("t");
    let u = testutil::tool("u");
    for ag in [&a, &b] {
        s.create_agent(ag, &ev()).await.unwrap();
    }
    for tl in [&t, &u] {
        s.create_tool(tl, &ev()).await.unwrap();
    }
    let mut g1 = testutil::grant(&a, &t, PermissionType::DataRestricted);
    g1.max_sensitivity = Some(DataSensitivity::Confidential);
    g1.expires_at = Some(Utc::now() + Duration::days(1));
    let g2 = testutil::grant(&a, &u, PermissionType::FullAccess);
    let g3 = testutil::grant(&b, &t, PermissionType::ReadOnly);
    for g in [&g1, &g2, &g3] {
        s.create_permission(g, &ev()).await.unwrap();
    }
    let ids = |v: Vec<Permission>| {
        let mut v: Vec<Uuid> = v.into_iter().map(|p| p.id).collect();
        v.sort();
        v
    };
    let mut expect = vec![g1.id, g2.id];
    expect.sort();
    assert_eq!(ids(s.list_permissions(Some(a.id), None).await.unwrap()), expect);
    assert_eq!(ids(s.list_permissions(Some(a.id), Some(t.id)).await.unwrap()), [g1.id]);
    assert_eq!(s.list_permissions(None, None).await.unwrap().len(), 3);
    let got = s.list_permissions(Some(a.id), Some(t.id)).await.unwrap().remove(0);
    assert_eq!(got.kind, PermissionType::DataRestricted);
    assert_eq!(got.max_sensitivity, Some(DataSensitivity::Confidential));
    assert!(got.expires_at.is_some());

    let stray = testutil::grant(&testutil::agent("ghost"), &t, PermissionType::FullAccess);
    assert!(matches!(
        s.create_permission(&stray, &ev()).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn access_requests_are_reviewed_once_with_their_grant(s: Arc<dyn Store>) {
    let a = testutil::agent("a");
    let t = testutil::tool("t");
    s.create_agent(&a, &ev()).await.unwrap();
    s.create_tool(&t, &ev()).await.unwrap();
    let pending = AccessRequest {
        id: Uuid::now_v7(),
        agent_id: a.id,
        tool_id: t.id,
        justification: "monthly report".to_owned(),
        status: AccessRequestStatus::Pending,
        // PostgreSQL keeps microseconds.
        requested_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
        reviewed_at: None,
        reviewed_by: String::new(),
        review_reason: String::new(),
        permission_id: None,
    };
    s.create_access_request(&pending, &ev()).await.unwrap();
    assert_eq!(s.get_access_request(pending.id).await.unwrap().unwrap(), pending);
    let listed = s
        .list_access_requests(Some(AccessRequestStatus::Pending), Some(a.id))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);

    let grant = testutil::grant(&a, &t, PermissionType::ReadOnly);
    let approved = AccessRequest {
        status: AccessRequestStatus::Approved,
        reviewed_at: Some(Utc::now()),
        reviewed_by: "admin".to_owned(),
        review_reason: "ok".to_owned(),
        permission_id: Some(grant.id),
        ..pending.clone()
    };
    let got = s
        .review_access_request(&approved, Some(&grant), &|_| vec![ev()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, AccessRequestStatus::Approved);
    assert_eq!(got.permission_id, Some(grant.id));
    assert_eq!(s.list_permissions(Some(a.id), Some(t.id)).await.unwrap().len(), 1);

    // A second review (a denial racing the approval) changes nothing, and its grant
    // is not stored.
    let other_grant = testutil::grant(&a, &t, PermissionType::FullAccess);
    let denied = AccessRequest {
        status: AccessRequestStatus::Denied,
        ..approved.clone()
    };
    assert!(
        s.review_access_request(&denied, Some(&other_grant), &|_| vec![ev()])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.list_permissions(Some(a.id), Some(t.id)).await.unwrap().len(), 1);
    assert_eq!(
        s.get_access_request(pending.id).await.unwrap().unwrap().status,
        AccessRequestStatus::Approved
    );
    assert!(
        s.list_access_requests(Some(AccessRequestStatus::Pending), None)
            .await
            .unwrap()
            .is_empty()
    );
}

fn audit(invocation: Uuid, action: AuditAction) -> AuditEvent {
    AuditEvent {
        event_id: Uuid::now_v7(),
        action,
        invocation_id: Some(invocation),
        actor_id: "agent".into(),
        agent_id: Some(Uuid::new_v4()),
        tool_id: Some(Uuid::new_v4()),
        tool_version: 3,
        task_id: "task".into(),
        occurred_at: chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap(),
        sanitized_parameters: json!({"q": "x", "api_key": "[REDACTED]"}),
        result: Some(ResultSummary {
            size_bytes: 12,
            status: ExecutionStatus::Success,
            digest: "ab".repeat(32),
        }),
        success: true,
        detail: String::new(),
        compliance_frameworks: vec!["soc2".into()],
        data_classification: Some(DataSensitivity::Confidential),
        sidecar_id: "s1".into(),
        permission_id: Some(Uuid::new_v4()),
    }
}

async fn events_are_stored_once_and_in_order(s: Arc<dyn Store>) {
    let inv = Uuid::now_v7();
    let first = audit(inv, AuditAction::PermissionChecked);
    let second = audit(inv, AuditAction::ToolInvoked);
    let ts = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let record = InvocationRecord {
        invocation_id: inv,
        agent_id: Uuid::new_v4(),
        task_id: "task".into(),
        requested_tool_id: Uuid::new_v4(),
        parameters: json!({"q": "x"}),
        invoked_at: ts,
        sidecar_id: "s1".into(),
        task_category: String::new(),
        selection_id: Some(Uuid::now_v7()),
        // Stored and read back (an abandoned call's row says so).
        caller_cancelled: true,
        result: ToolResult {
            invocation_id: inv,
            tool_id: Uuid::new_v4(),
            tool_version: 2,
            status: ExecutionStatus::Timeout,
            output: serde_json::Value::Null,
            error: "slow".into(),
            duration_ms: 1500,
            tokens_used: 7,
            cost: "0.0020".parse().unwrap(),
            completed_at: ts,
            cache_hit: false,
            attempts: 2,
            retry_after_ms: 0,
            stale: false,
            fallback_from: None,
        },
    };
    let batch = vec![
        SyncEvent::Audit(first.clone()),
        SyncEvent::Invocation(record.clone()),
        SyncEvent::Audit(second.clone()),
    ];
    s.append_events(&batch).await.unwrap();
    // A resend after a lost ack stores nothing twice, on either path; the one sync
    // ingest takes gives back the invocations, which learning reads next.
    s.append_events(&batch).await.unwrap();
    let back = s.append_owned_events(batch.clone()).await.map_err(|(e, _)| e).unwrap();
    assert!(back.contains(&SyncEvent::Invocation(record.clone())));
    s.append_events(&[SyncEvent::Audit(audit(Uuid::now_v7(), AuditAction::CacheHit))])
        .await
        .unwrap();

    let got = s
        .audit_events(&AuditFilter {
            invocation_id: Some(inv),
            ..Default::default()
        })
        .await
        .unwrap();
    let events = |v: Vec<toolplane_core::audit::AuditRecord>| v.into_iter().map(|r| r.event).collect::<Vec<_>>();
    let stored = |mut e: AuditEvent| {
        e.occurred_at = toolplane_core::audit::stored_time(e.occurred_at);
        e
    };
    assert_eq!(events(got), vec![stored(first.clone()), stored(second)]);
    let all = s.audit_events(&AuditFilter::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    // One writer's chain: positions 1..3, each linked to the one before.
    assert_eq!(all.iter().map(|r| r.chain_seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(all[0].prev_hash, toolplane_core::audit::GENESIS_HASH);
    assert_eq!(all[1].prev_hash, all[0].hash);
    assert_eq!(all[2].prev_hash, all[1].hash);
    // A batch mixing a stored event with a new one stores only the new one, next in
    // its chain.
    let fourth = audit(Uuid::now_v7(), AuditAction::CacheMiss);
    s.append_owned_events(vec![SyncEvent::Audit(first.clone()), SyncEvent::Audit(fourth.clone())])
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let four = s.audit_events(&AuditFilter::default()).await.unwrap();
    assert_eq!(four.iter().map(|r| r.chain_seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(four[3].prev_hash, four[2].hash);
    assert_eq!(four[3].event, stored(fourth));
    let r = &four[3];
    assert_eq!(
        toolplane_core::audit::record_hash(&r.prev_hash, &r.chain, r.chain_seq, &r.event),
        r.hash,
        "a moved-in event hashes as a copied one"
    );
    let by_agent = s
        .audit_events(&AuditFilter {
            agent_id: first.agent_id,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events(by_agent), vec![stored(first)]);
    let after_first = s
        .audit_events(&AuditFilter {
            after_seq: Some(all[0].seq),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    // Newest first, paged backwards by the same cursor.
    let newest = s
        .audit_events(&AuditFilter {
            newest_first: true,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [four[3].seq, four[2].seq]
    );
    let older = s
        .audit_events(&AuditFilter {
            newest_first: true,
            before_seq: Some(four[2].seq),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        older.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [four[1].seq, four[0].seq]
    );
    assert_eq!(after_first.len(), 1);
    assert_eq!(
        after_first[0].seq, all[1].seq,
        "the cursor resumes after the record it names"
    );
    let usage = s.usage(None, None, None, None).await.unwrap();
    assert_eq!(usage.len(), 1, "the resent invocation counted once");
    assert_eq!(usage[0].counts.invocations, 1);
    assert_eq!(s.get_invocation(inv).await.unwrap().unwrap(), record);
    assert!(s.get_invocation(Uuid::new_v4()).await.unwrap().is_none());
}

#[tokio::test]
async fn postgres_audit_log_refuses_update_and_delete() {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(&db.url, 2).await.unwrap();
    store
        .append_events(&[SyncEvent::Audit(audit(Uuid::now_v7(), AuditAction::ToolInvoked))])
        .await
        .unwrap();
    let c = db.client().await;
    let upd = c
        .execute("UPDATE audit_events SET success = false", &[])
        .await
        .unwrap_err();
    assert!(
        upd.to_string().contains("append-only") || format!("{upd:?}").contains("append-only"),
        "{upd:?}"
    );
    let del = c.execute("DELETE FROM audit_events", &[]).await.unwrap_err();
    assert!(format!("{del:?}").contains("append-only"), "{del:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM audit_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "both refused, the row is still there");
}

#[tokio::test]
async fn postgres_replicas_starting_together_migrate_once() {
    let db = TestDb::create().await;
    let (a, b, c) = tokio::join!(
        PostgresStore::connect(&db.url, 1),
        PostgresStore::connect(&db.url, 1),
        PostgresStore::connect(&db.url, 1)
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let client = db.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".sql"))
        .count();
    assert_eq!(n, i64::try_from(files).unwrap(), "each migration applied exactly once");
}

/// Task memory: equal tasks merge, each tool keeps its most recent `per_tool`, and
/// forgetting and pruning remove exactly what they name.
async fn remembered_tasks_merge_stay_bounded_and_expire(s: Arc<dyn Store>) {
    use toolplane_control_plane::selection::memory::TaskSource;
    use toolplane_control_plane::storage::TaskEntry;
    let (a, b) = (testutil::tool("tasks_a"), testutil::tool("tasks_b"));
    s.create_tool(&a, &ev()).await.unwrap();
    s.create_tool(&b, &ev()).await.unwrap();
    let now = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let at = |days: i64| now - Duration::days(days);
    let entry = |t: &Tool, text: &str, days| TaskEntry::new(t.id, text, TaskSource::Selection, at(days));
    s.remember_tasks(
        &[
            entry(&a, "oldest", 50),
            entry(&a, "older", 40),
            entry(&a, "recent", 1),
            entry(&b, "other tool", 45),
        ],
        2,
    )
    .await
    .unwrap();
    s.remember_tasks(&[entry(&a, "Recent ", 0)], 2).await.unwrap();
    let mut kept = s.task_memory(at(365)).await.unwrap();
    kept.sort_by(|x, y| x.text.cmp(&y.text));
    let summary: Vec<(Uuid, &str, u64)> = kept.iter().map(|e| (e.tool_id, e.text.as_str(), e.uses)).collect();
    assert_eq!(
        summary,
        [(a.id, "older", 1), (b.id, "other tool", 1), (a.id, "recent", 2)]
    );
    let recent = kept.iter().find(|e| e.text == "recent").unwrap();
    assert_eq!(recent.last_seen, at(0), "a repeat refreshes the task");
    assert_eq!(s.task_memory(at(30)).await.unwrap().len(), 1);

    assert_eq!(
        s.prune_task_memory(at(42)).await.unwrap(),
        1,
        "only other tool is older"
    );
    assert!(s.forget_task(a.id, &recent.hash).await.unwrap());
    assert!(!s.forget_task(a.id, &recent.hash).await.unwrap());
    assert_eq!(s.forget_tool_tasks(a.id).await.unwrap(), 1);
    assert!(s.task_memory(at(365)).await.unwrap().is_empty());
}

async fn audit_checkpoints_are_kept_once_and_listed_in_byte_order(s: Arc<dyn Store>) {
    use toolplane_core::audit_checkpoint::{AuditCheckpoint, CheckpointSigner};
    let k1 = CheckpointSigner::from_seed_hex(&"01".repeat(32)).unwrap();
    let k2 = CheckpointSigner::from_seed_hex(&"02".repeat(32)).unwrap();
    // Nanoseconds: stored to the microsecond, which signing already truncated to.
    let at = Utc::now();
    let hash = |n: u64| format!("{n:064x}");
    // "sidecar:B" sorts before "sidecar:a" byte-wise (not in a natural-language collation).
    let mut all = Vec::new();
    for chain in ["sidecar:a", "control-plane", "sidecar:B"] {
        for n in [3, 1, 2] {
            all.push(k1.sign(chain, n, &hash(n), at));
        }
    }
    all.push(k2.sign("sidecar:a", 2, &hash(2), at));
    for c in &all {
        s.add_audit_checkpoint(c).await.unwrap();
    }
    // The same chain, position and key again (another replica): the first one stays.
    let again = k1.sign("sidecar:a", 3, &hash(3), at + Duration::seconds(5));
    s.add_audit_checkpoint(&again).await.unwrap();

    let key = |c: &AuditCheckpoint| (c.chain.clone(), c.chain_seq, c.key_id.clone());
    let mut expected = all.clone();
    expected.sort_by_key(key);
    let listed = s.audit_checkpoints(None, None, 100).await.unwrap();
    assert_eq!(listed, expected, "every checkpoint, exactly as signed, in byte order");
    assert_eq!(listed[0].chain, "control-plane");
    assert_eq!(listed[3].chain, "sidecar:B");
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = s.audit_checkpoints(None, after.take(), 4).await.unwrap();
        paged.extend(page.iter().cloned());
        match page.last() {
            Some(c) if page.len() == 4 => after = Some(key(c)),
            _ => break,
        }
    }
    assert_eq!(paged, expected, "resumed page by page");
    let one = s.audit_checkpoints(Some("sidecar:a"), None, 100).await.unwrap();
    assert_eq!(one.len(), 4);
    assert!(one.iter().all(|c| c.chain == "sidecar:a"));

    let latest = s.latest_audit_checkpoints().await.unwrap();
    let got: Vec<(String, u64, String)> = latest.iter().map(key).collect();
    let mut want = vec![
        ("control-plane".to_owned(), 3, k1.key_id().to_owned()),
        ("sidecar:B".to_owned(), 3, k1.key_id().to_owned()),
        ("sidecar:a".to_owned(), 3, k1.key_id().to_owned()),
        ("sidecar:a".to_owned(), 2, k2.key_id().to_owned()),
    ];
    want.sort_by(|a, b| (&a.0, &a.2).cmp(&(&b.0, &b.2)));
    assert_eq!(got, want, "the highest position per chain and key, by chain then key");
    assert_eq!(
        latest
            .iter()
            .find(|c| c.chain == "sidecar:a" && c.key_id == k1.key_id())
            .unwrap()
            .signed_at,
        all[0].signed_at
    );
}

#[tokio::test]
async fn postgres_audit_checkpoints_are_append_only_even_for_the_application_role() {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(&db.url, 2).await.unwrap();
    let signer = toolplane_core::audit_checkpoint::CheckpointSigner::generate();
    store
        .add_audit_checkpoint(&signer.sign("control-plane", 1, &"ab".repeat(32), Utc::now()))
        .await
        .unwrap();
    let c = db.client().await;
    for sql in [
        "UPDATE audit_checkpoints SET chain_seq = 2",
        "DELETE FROM audit_checkpoints",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        assert!(format!("{e:?}").contains("append-only"), "{sql}: {e:?}");
    }
    c.batch_execute("SET ROLE toolplane_app").await.unwrap();
    let e = c
        .batch_execute("UPDATE audit_checkpoints SET chain_seq = 2")
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("permission denied"), "{e:?}");
    c.batch_execute(
        "INSERT INTO audit_checkpoints SELECT chain, 2, head_hash, signed_at, key_id, signature, version \
         FROM audit_checkpoints",
    )
    .await
    .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM audit_checkpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the application role may read and add");
}

/// What selection reads to leave out tools whose daily budget is spent: per grant, the
/// `TOOL_INVOKED` events of the agent since the window's start, without calls that
/// never reached the tool (open circuit, rate limit) and without cache hits.
async fn budget_use_counts_the_calls_that_reached_the_tool_under_each_grant(s: Arc<dyn Store>) {
    let (agent, other_agent) = (Uuid::new_v4(), Uuid::new_v4());
    let (g1, g2, g3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let now = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let call = |who: Uuid, grant: Uuid, action: AuditAction, status: ExecutionStatus, at| {
        let mut e = audit(Uuid::now_v7(), action);
        e.agent_id = Some(who);
        e.permission_id = Some(grant);
        e.occurred_at = at;
        e.result.as_mut().unwrap().status = status;
        SyncEvent::Audit(e)
    };
    use AuditAction::{CacheHit, ToolInvoked};
    use ExecutionStatus::{CircuitOpen, ExecutionError, RateLimited, Success};
    s.append_events(&[
        call(agent, g1, ToolInvoked, Success, now),
        call(agent, g1, ToolInvoked, ExecutionError, now),
        call(agent, g1, ToolInvoked, CircuitOpen, now),
        call(agent, g1, ToolInvoked, RateLimited, now),
        call(agent, g1, CacheHit, Success, now),
        call(agent, g1, ToolInvoked, Success, now - Duration::hours(3)),
        call(other_agent, g1, ToolInvoked, Success, now),
        call(agent, g2, ToolInvoked, Success, now - Duration::hours(3)),
    ])
    .await
    .unwrap();
    let window = |permission_id, hours| BudgetWindow {
        permission_id,
        since: now - Duration::hours(hours),
    };
    let used = s
        .budget_use(agent, &[window(g1, 1), window(g2, 4), window(g3, 1)])
        .await
        .unwrap();
    assert_eq!(used.get(&g1), Some(&2), "success and failure reached the tool");
    assert_eq!(used.get(&g2), Some(&1), "each grant from its own day's start");
    assert_eq!(used.get(&g3), None);
    assert!(s.budget_use(agent, &[]).await.unwrap().is_empty());
}

/// A store that shares learning folds a resent invocation and a repeated verdict once,
/// and pages changed cells by version; the in-memory store leaves learning in process.
async fn shared_learning_folds_each_invocation_and_first_verdict_once(s: Arc<dyn Store>) {
    if !s.shares_learning() {
        assert_eq!(s.learning_cells(0).await.unwrap(), (Vec::new(), 0));
        return;
    }
    let t = testutil::tool("learned");
    s.create_tool(&t, &ev()).await.unwrap();
    let ok = outcome(&t, ExecutionStatus::Success, 100);
    let failed = outcome(&t, ExecutionStatus::Timeout, 300);
    s.append_events(&[ok.clone(), failed.clone()]).await.unwrap();
    let (cells, v1) = s.learning_cells(0).await.unwrap();
    // Two agents, one category: the aggregate, the category, and per agent both.
    assert_eq!(cells.len(), 6, "{cells:?}");
    let aggregate = |cells: &[(
        toolplane_control_plane::storage::LearningKey,
        toolplane_control_plane::storage::Cell,
    )]| {
        cells
            .iter()
            .find(|(k, _)| k.1.is_empty() && k.2.is_nil())
            .map(|(_, c)| c.clone())
            .unwrap()
    };
    let agg = aggregate(&cells);
    assert_eq!((agg.invocations, agg.success_rate()), (2, 0.5));
    // A resent batch (lost ack) changes nothing, not even the version.
    s.append_events(&[ok.clone(), failed]).await.unwrap();
    assert_eq!(s.learning_cells(v1).await.unwrap(), (Vec::new(), v1));
    // The first verdict is learned; a repeated one is stored but not counted again.
    let SyncEvent::Invocation(inv) = &ok else {
        unreachable!()
    };
    s.record_quality(inv.invocation_id, 0.4, true).await.unwrap().unwrap();
    let (changed, v2) = s.learning_cells(v1).await.unwrap();
    assert!(v2 > v1);
    assert_eq!(changed.len(), 3, "the aggregate, the category, the agent's category");
    s.record_quality(inv.invocation_id, 0.9, true).await.unwrap().unwrap();
    assert_eq!(s.learning_cells(v2).await.unwrap().1, v2);
    let (cells, _) = s.learning_cells(0).await.unwrap();
    let agg = aggregate(&cells);
    assert_eq!(agg.invocations, 2);
    assert!((agg.quality().unwrap() - 0.4).abs() < 1e-9);
    assert!(s.record_quality(Uuid::new_v4(), 0.5, true).await.unwrap().is_none());
}

fn pending_request(a: &Agent, t: &Tool) -> AccessRequest {
    AccessRequest {
        id: Uuid::now_v7(),
        agent_id: a.id,
        tool_id: t.id,
        justification: "needed".to_owned(),
        status: AccessRequestStatus::Pending,
        requested_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
        reviewed_at: None,
        reviewed_by: String::new(),
        review_reason: String::new(),
        permission_id: None,
    }
}

async fn trail_len(s: &Arc<dyn Store>) -> usize {
    s.audit_events(&AuditFilter::default()).await.unwrap().len()
}

async fn agents_are_updated_and_deleted_with_their_tokens_grants_and_requests(s: Arc<dyn Store>) {
    let mut a = testutil::agent("courier");
    a.created_at = chrono::DateTime::from_timestamp(a.created_at.timestamp(), 0).unwrap();
    let bystander = testutil::agent("bystander");
    let t = testutil::tool("t");
    let u = testutil::tool("u");
    s.create_agent(&a, &ev()).await.unwrap();
    s.create_agent(&bystander, &ev()).await.unwrap();
    s.create_tool(&t, &ev()).await.unwrap();
    s.create_tool(&u, &ev()).await.unwrap();

    // An update changes what may change, and never the name, id or creation time.
    let changed = Agent {
        name: "renamed".to_owned(),
        skills: vec!["maps".to_owned()],
        team: "logistics".to_owned(),
        task_memory_opt_out: true,
        calls_per_minute: 120,
        daily_spend_budget: Some("12.345678".parse().unwrap()),
        ..a.clone()
    };
    let before = trail_len(&s).await;
    assert!(s.update_agent(&changed, &ev()).await.unwrap());
    assert_eq!(trail_len(&s).await, before + 1, "the update is audited with it");
    let got = s.get_agent(a.id).await.unwrap().unwrap();
    assert_eq!(
        got,
        Agent {
            name: "courier".to_owned(),
            ..changed.clone()
        }
    );
    assert!(!s.update_agent(&testutil::agent("nobody"), &ev()).await.unwrap());
    assert_eq!(trail_len(&s).await, before + 1, "a refused update records nothing");

    let live = token(Role::Agent, Some(a.id), Duration::hours(1), false);
    let live2 = token(Role::Agent, Some(a.id), Duration::hours(2), false);
    let old = token(Role::Agent, Some(a.id), Duration::hours(1), true);
    let other = token(Role::Agent, Some(bystander.id), Duration::hours(1), false);
    for tk in [&live, &live2, &old, &other] {
        s.create_token(tk, &ev()).await.unwrap();
    }
    let g1 = testutil::grant(&a, &t, PermissionType::FullAccess);
    let g2 = testutil::grant(&a, &u, PermissionType::ReadOnly);
    let g3 = testutil::grant(&bystander, &t, PermissionType::FullAccess);
    for g in [&g1, &g2, &g3] {
        s.create_permission(g, &ev()).await.unwrap();
    }
    let pending = pending_request(&a, &t);
    s.create_access_request(&pending, &ev()).await.unwrap();

    let before = trail_len(&s).await;
    let removal = s
        .delete_agent(a.id, Utc::now(), &|r| {
            (0..1 + r.tokens_revoked.len() + r.grants_revoked.len())
                .map(|_| ev())
                .collect()
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removal.agent.name, "courier");
    let mut tokens = vec![live.id, live2.id];
    tokens.sort();
    assert_eq!(
        removal.tokens_revoked, tokens,
        "its unrevoked tokens, not the one revoked before"
    );
    let mut grants = vec![(g1.id, t.id), (g2.id, u.id)];
    grants.sort();
    assert_eq!(removal.grants_revoked, grants, "each with its tool");
    assert_eq!(removal.access_requests_denied, [pending.id]);
    assert_eq!(
        trail_len(&s).await,
        before + 5,
        "every event the deletion made, with it"
    );

    assert!(s.get_agent(a.id).await.unwrap().is_none());
    let names: Vec<String> = s.list_agents().await.unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["bystander"]);
    let active: Vec<Uuid> = s
        .active_tokens(Utc::now())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(active, [other.id]);
    assert!(
        s.token_by_digest(&live.sha256)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    let left: Vec<Uuid> = s
        .list_permissions(None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(left, [g3.id]);
    let req = s.get_access_request(pending.id).await.unwrap().unwrap();
    assert_eq!(req.status, AccessRequestStatus::Denied);

    // Gone for every new grant, token or update; a second delete changes and records
    // nothing; the name is free again.
    let before = trail_len(&s).await;
    assert!(matches!(
        s.create_permission(&testutil::grant(&a, &t, PermissionType::FullAccess), &ev())
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.create_token(&token(Role::Agent, Some(a.id), Duration::hours(1), false), &ev())
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!s.update_agent(&changed, &ev()).await.unwrap());
    assert!(
        s.delete_agent(a.id, Utc::now(), &|_| vec![ev()])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(trail_len(&s).await, before);
    s.create_agent(&testutil::agent("courier"), &ev()).await.unwrap();
}

async fn lists_page_in_index_order_after_a_cursor(s: Arc<dyn Store>) {
    let t = testutil::tool("t");
    s.create_tool(&t, &ev()).await.unwrap();
    let mut agents = Vec::new();
    for (name, team) in [("e", "x"), ("a", "x"), ("d", "y"), ("b", "x"), ("c", "y")] {
        let mut a = testutil::agent(name);
        a.id = Uuid::now_v7();
        a.team = team.to_owned();
        s.create_agent(&a, &ev()).await.unwrap();
        agents.push(a);
    }
    let names = |v: Vec<Agent>| v.into_iter().map(|a| a.name).collect::<Vec<_>>();
    assert_eq!(names(s.agents_page(None, None, 2).await.unwrap()), ["a", "b"]);
    assert_eq!(names(s.agents_page(None, Some("b"), 2).await.unwrap()), ["c", "d"]);
    assert_eq!(names(s.agents_page(None, Some("d"), 2).await.unwrap()), ["e"]);
    assert_eq!(
        names(s.agents_page(Some("x"), Some("a"), 10).await.unwrap()),
        ["b", "e"]
    );

    // Grants and requests page by id (UUIDv7: the order they were made in).
    let mut grants = Vec::new();
    for a in &agents {
        let mut g = testutil::grant(a, &t, PermissionType::FullAccess);
        g.id = Uuid::now_v7();
        s.create_permission(&g, &ev()).await.unwrap();
        grants.push(g.id);
        s.create_access_request(&pending_request(a, &t), &ev()).await.unwrap();
    }
    let ids = |v: Vec<Permission>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(ids(s.permissions_page(None, None, None, 3).await.unwrap()), grants[..3]);
    assert_eq!(
        ids(s.permissions_page(None, None, Some(grants[2]), 3).await.unwrap()),
        grants[3..]
    );
    assert_eq!(
        ids(s
            .permissions_page(Some(agents[1].id), Some(t.id), None, 3)
            .await
            .unwrap()),
        [grants[1]]
    );
    let revoked = s
        .revoke_permission(grants[3], Utc::now(), &|_| vec![ev()])
        .await
        .unwrap();
    assert!(revoked.is_some());
    assert_eq!(
        ids(s.permissions_page(None, None, Some(grants[2]), 3).await.unwrap()),
        [grants[4]],
        "revoked grants are not listed"
    );
    let requests = s.access_requests_page(None, None, None, 10).await.unwrap();
    assert_eq!(requests.len(), 5);
    assert!(requests.windows(2).all(|w| w[0].id < w[1].id));
    let rest = s
        .access_requests_page(Some(AccessRequestStatus::Pending), None, Some(requests[1].id), 2)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|r| r.id).collect::<Vec<_>>(),
        [requests[2].id, requests[3].id]
    );
    let mine = s
        .access_requests_page(None, Some(agents[4].id), None, 10)
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);

    // Tokens: metadata by id, active ones unless asked for all.
    let mut made = Vec::new();
    for (agent, revoked) in [(Some(agents[0].id), false), (None, false), (Some(agents[0].id), true)] {
        let mut tk = token(
            if agent.is_some() { Role::Agent } else { Role::Sidecar },
            agent,
            Duration::hours(1),
            revoked,
        );
        tk.id = Uuid::now_v7();
        s.create_token(&tk, &ev()).await.unwrap();
        made.push(tk.id);
    }
    let now = Utc::now();
    let tids = |v: Vec<TokenRecord>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let all = TokenFilter {
        include_inactive: true,
        ..Default::default()
    };
    assert_eq!(tids(s.list_tokens(&all, now, None, 10).await.unwrap()), made);
    assert_eq!(
        tids(s.list_tokens(&all, now, Some(made[0]), 1).await.unwrap()),
        [made[1]]
    );
    assert_eq!(
        tids(s.list_tokens(&TokenFilter::default(), now, None, 10).await.unwrap()),
        made[..2]
    );
    let agent_only = TokenFilter {
        agent_id: Some(agents[0].id),
        include_inactive: true,
        ..Default::default()
    };
    assert_eq!(
        tids(s.list_tokens(&agent_only, now, None, 10).await.unwrap()),
        [made[0], made[2]]
    );
    let sidecars = TokenFilter {
        role: Some(Role::Sidecar),
        ..Default::default()
    };
    assert_eq!(tids(s.list_tokens(&sidecars, now, None, 10).await.unwrap()), [made[1]]);
}

async fn fallback_strategies_are_deleted_once_and_audited(s: Arc<dyn Store>) {
    let t = testutil::tool("primary");
    let f = testutil::tool("fallback");
    s.create_tool(&t, &ev()).await.unwrap();
    s.create_tool(&f, &ev()).await.unwrap();
    let strategy = FallbackStrategy {
        tool_id: t.id,
        fallback_tool_ids: vec![f.id],
        max_attempts: 2,
        initial_backoff_ms: 0,
        max_backoff_ms: 0,
        conditions: Vec::new(),
        mode: DegradationMode::Full,
    };
    s.set_fallback(&strategy, &ev()).await.unwrap();
    assert!(s.get_fallback(t.id).await.unwrap().is_some());
    let before = trail_len(&s).await;
    assert!(s.delete_fallback(t.id, &ev()).await.unwrap());
    assert_eq!(trail_len(&s).await, before + 1);
    assert!(s.get_fallback(t.id).await.unwrap().is_none());
    assert!(s.list_fallbacks().await.unwrap().is_empty());
    assert!(!s.delete_fallback(t.id, &ev()).await.unwrap());
    assert_eq!(trail_len(&s).await, before + 1, "nothing deleted, nothing recorded");
}

fn change_of(t: &Tool, description: &str) -> ToolChange {
    let mut proposed = t.spec.clone();
    proposed.description = description.to_owned();
    ToolChange {
        id: Uuid::now_v7(),
        tool_id: t.id,
        tool_name: t.spec.name.clone(),
        base_version: t.version,
        base_hash: toolplane_core::definition::definition_hash(&t.spec),
        proposed_hash: toolplane_core::definition::definition_hash(&proposed),
        proposed,
        source: "import".into(),
        status: ToolChangeStatus::Pending,
        detected_at: toolplane_core::audit::stored_time(Utc::now()),
        reviewed_at: None,
        reviewed_by: String::new(),
        review_reason: String::new(),
    }
}

async fn tool_changes_wait_supersede_and_are_reviewed_once_with_the_new_version(s: Arc<dyn Store>) {
    let t = testutil::tool("pinned");
    s.create_tool(&t, &ev()).await.unwrap();
    let first = change_of(&t, "poisoned once");
    s.record_tool_change(&first, &ev()).await.unwrap();
    let second = change_of(&t, "poisoned twice");
    s.record_tool_change(&second, &ev()).await.unwrap();
    let pending = s
        .list_tool_changes(Some(ToolChangeStatus::Pending), Some(t.id))
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "only the newest waits");
    assert_eq!(pending[0], second, "round-trips whole");
    assert_eq!(
        s.get_tool_change(first.id).await.unwrap().unwrap().status,
        ToolChangeStatus::Superseded
    );
    assert_eq!(
        s.list_tool_changes(None, None).await.unwrap()[0].id,
        second.id,
        "newest first"
    );
    // The live tool is untouched while a change waits.
    let live = s.get_tool(t.id).await.unwrap().unwrap();
    assert_eq!((live.version, &live.spec), (t.version, &t.spec));

    // Approval: the review and the next version in one step, with both events.
    let mut next = t.clone();
    next.version = 2;
    next.spec = second.proposed.clone();
    let reviewed = ToolChange {
        status: ToolChangeStatus::Approved,
        reviewed_at: Some(Utc::now()),
        reviewed_by: "admin:x".into(),
        review_reason: "fine".into(),
        ..second.clone()
    };
    let before = s.audit_events(&AuditFilter::default()).await.unwrap().len();
    let done = s
        .review_tool_change(&reviewed, Some(&next), &[ev(), ev()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, ToolChangeStatus::Approved);
    assert_eq!(done.review_reason, "fine");
    assert_eq!(
        s.get_tool(t.id).await.unwrap().unwrap().spec.description,
        "poisoned twice"
    );
    assert_eq!(s.audit_events(&AuditFilter::default()).await.unwrap().len(), before + 2);
    // Not pending any more: a second review changes nothing.
    assert!(s.review_tool_change(&reviewed, None, &[ev()]).await.unwrap().is_none());
    assert_eq!(s.audit_events(&AuditFilter::default()).await.unwrap().len(), before + 2);

    // A stale approval (the tool moved on) is refused and leaves the change pending.
    let third = change_of(&next, "third");
    s.record_tool_change(&third, &ev()).await.unwrap();
    let stale = ToolChange {
        status: ToolChangeStatus::Approved,
        ..third.clone()
    };
    assert!(matches!(
        s.review_tool_change(&stale, Some(&next), &[ev()]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.get_tool_change(third.id).await.unwrap().unwrap().status,
        ToolChangeStatus::Pending
    );
    // Withdrawn when the server goes back; audited only when something was pending.
    let n = s.audit_events(&AuditFilter::default()).await.unwrap().len();
    assert_eq!(s.withdraw_tool_changes(t.id, Utc::now(), &ev()).await.unwrap(), 1);
    assert_eq!(s.withdraw_tool_changes(t.id, Utc::now(), &ev()).await.unwrap(), 0);
    assert_eq!(s.audit_events(&AuditFilter::default()).await.unwrap().len(), n + 1);

    // Review policies.
    let policy = ToolReviewPolicy {
        provider: "vendor".into(),
        auto_approve: true,
        updated_at: toolplane_core::audit::stored_time(Utc::now()),
    };
    s.set_tool_review_policy(&policy, &ev()).await.unwrap();
    let off = ToolReviewPolicy {
        auto_approve: false,
        ..policy.clone()
    };
    s.set_tool_review_policy(&off, &ev()).await.unwrap();
    assert_eq!(s.list_tool_review_policies().await.unwrap(), vec![off]);
}

async fn credentials_keep_their_settings_and_expiry_and_are_deleted(s: Arc<dyn Store>) {
    let tool = testutil::tool("with-credential");
    s.create_tool(&tool, &ev()).await.unwrap();
    let credential = toolplane_core::model::StoredCredential {
        tool_id: tool.id,
        auth_type: toolplane_core::model::AuthType::OAuth2,
        header_name: String::new(),
        sealed: toolplane_core::crypto::Sealed {
            key_id: "k1".into(),
            nonce: vec![1; 12],
            ciphertext: vec![2; 24],
        },
        updated_at: chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap(),
        settings: toolplane_core::model::CredentialSettings {
            oauth2: Some(toolplane_core::model::OAuth2Settings {
                token_url: "https://auth.example.com/token".into(),
                client_id: "client".into(),
                scopes: vec!["a".into(), "b".into()],
                audience: "api".into(),
            }),
            ..Default::default()
        },
        expires_at: Some(chrono::DateTime::from_timestamp(Utc::now().timestamp() + 60, 0).unwrap()),
    };
    s.set_credential(&credential, &ev()).await.unwrap();
    assert_eq!(s.list_credentials().await.unwrap(), vec![credential.clone()]);
    assert!(s.delete_credential(tool.id, &ev()).await.unwrap());
    assert!(s.list_credentials().await.unwrap().is_empty());
    assert!(!s.delete_credential(tool.id, &ev()).await.unwrap(), "deleted twice");
}

/// The admin console's overview: calls since a time, per minute and status, duration
/// percentiles (interpolated alike), the busiest tools and agents; and the status of the
/// call that followed a selection.
async fn activity_counts_recent_calls_by_minute_and_status(s: Arc<dyn Store>) {
    let t = testutil::tool("busy");
    s.create_tool(&t, &ev()).await.unwrap();
    let at = |e: SyncEvent, ago: Duration, selection: Option<Uuid>| match e {
        SyncEvent::Invocation(mut i) => {
            i.result.completed_at -= ago;
            i.invoked_at -= ago;
            i.selection_id = selection;
            SyncEvent::Invocation(i)
        }
        other => other,
    };
    let selected = Uuid::now_v7();
    s.append_events(&[
        at(outcome(&t, ExecutionStatus::Success, 100), Duration::minutes(5), None),
        at(
            outcome(&t, ExecutionStatus::Success, 300),
            Duration::minutes(5),
            Some(selected),
        ),
        at(outcome(&t, ExecutionStatus::Timeout, 1100), Duration::minutes(90), None),
        at(outcome(&t, ExecutionStatus::Success, 50), Duration::hours(30), None),
    ])
    .await
    .unwrap();
    let a = s.activity(Utc::now() - Duration::hours(24)).await.unwrap();
    assert_eq!(a.calls, 3, "the call of 30 hours ago is outside the window");
    let by_status = |st: &str| -> u64 { a.minutes.iter().filter(|m| m.1 == st).map(|m| m.2).sum() };
    assert_eq!((by_status("success"), by_status("timeout")), (2, 1));
    assert_eq!(
        a.minutes.len(),
        2,
        "two minutes (the two successes share one): {:?}",
        a.minutes
    );
    assert!(a.minutes[0].0 < a.minutes[1].0, "oldest first");
    assert!((a.p50_ms - 300.0).abs() < 1e-9, "{}", a.p50_ms);
    assert!((a.p95_ms - 1020.0).abs() < 1e-6, "{}", a.p95_ms);
    assert_eq!(a.top_tools, vec![(t.id, 3)]);
    assert_eq!(a.top_agents.len(), 3);
    let outcomes = s.selection_outcomes(&[selected, Uuid::now_v7()]).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[&selected], "success");
}
