use super::*;
use crate::delta::{apply, diff};
use crate::model::{AuthType, Credential, DegradationMode, FallbackStrategy, PermissionType, Role};
use crate::testutil::{agent, grant, tool};

fn credential(tool: Uuid, secret: &str) -> Credential {
    Credential {
        tool_id: tool,
        auth_type: AuthType::ApiKey,
        header_name: String::new(),
        secret: secret.to_owned(),
        settings: Default::default(),
        expires_at: None,
    }
}

fn token(role: Role, agent: Option<Uuid>) -> TokenRecord {
    let now = chrono::Utc::now();
    TokenRecord {
        id: Uuid::new_v4(),
        sha256: Uuid::new_v4().simple().to_string(),
        role,
        agent_id: agent,
        description: String::new(),
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
        revoked_at: None,
    }
}

fn fallback(tool: Uuid, to: Vec<Uuid>) -> FallbackStrategy {
    FallbackStrategy {
        tool_id: tool,
        fallback_tool_ids: to,
        max_attempts: 1,
        initial_backoff_ms: 10,
        max_backoff_ms: 10,
        conditions: vec![],
        mode: DegradationMode::Full,
    }
}

/// Comparable regardless of order.
fn sorted(mut s: Snapshot) -> Snapshot {
    s.tools.sort_by_key(|t| t.id);
    s.permissions.sort_by_key(|p| p.id);
    s.agents.sort_by_key(|a| a.id);
    s.tokens.sort_by_key(|t| t.id);
    s.credentials.sort_by_key(|c| c.tool_id);
    s.fallbacks.sort_by_key(|f| f.tool_id);
    s
}

fn scope_of(agents: &[Uuid], tools: &[Uuid], request_id: u64) -> Scope {
    Scope {
        agents: agents.iter().copied().collect(),
        tools: tools.iter().copied().collect(),
        request_id,
    }
}

/// Brings a sidecar holding `old` under `old_scope` to `new` under `scope` with the
/// scoped delta, and checks it then holds exactly what a fresh scoped snapshot would.
fn step(old: &Snapshot, old_scope: &Scope, new: &Snapshot, scope: &Scope) -> SnapshotDelta {
    let old_catalog = Arc::new(Catalog::new(Arc::new(old.clone())));
    let new_catalog = Arc::new(Catalog::new(Arc::new(new.clone())));
    let (mut sidecar, held) = Held::scoped(&old_catalog, old_scope);
    let (delta, now) = scoped_delta(&held, &new_catalog, &diff(old, new), scope);
    apply(&mut sidecar, delta.clone()).expect("the delta applies to what the sidecar holds");
    let (expected, tools) = new_catalog.scoped(scope);
    assert_eq!(sorted(sidecar), sorted(expected));
    assert_eq!(now.tools, tools);
    delta
}

#[test]
fn a_scope_holds_its_agents_tools_their_fallbacks_and_credentials_only() {
    let (a, b) = (agent("a"), agent("b"));
    let (t1, t2, t3, t4) = (tool("t1"), tool("t2"), tool("t3"), tool("t4"));
    let s = Snapshot {
        revision: 1,
        tools: [&t1, &t2, &t3, &t4].map(|t| Arc::new(t.clone())).to_vec(),
        permissions: vec![
            grant(&a, &t1, PermissionType::FullAccess),
            grant(&b, &t2, PermissionType::FullAccess),
        ],
        agents: vec![a.clone(), b.clone()],
        credentials: vec![credential(t1.id, "one"), credential(t2.id, "two")],
        fallbacks: vec![fallback(t1.id, vec![t3.id])],
        ..Default::default()
    };
    let catalog = Catalog::new(Arc::new(s));
    let (held, tools) = catalog.scoped(&scope_of(&[a.id], &[], 0));
    assert_eq!(
        tools,
        HashSet::from([t1.id, t3.id]),
        "the grant and the fallback it names"
    );
    assert_eq!(held.permissions.len(), 1);
    assert_eq!(held.agents.len(), 2, "agents are whole");
    assert_eq!(held.credentials.len(), 1, "only the held tools' credentials");
    assert_eq!(held.credentials[0].secret, "one");
    assert_eq!(catalog.tool_ref("t4"), Some(t4.id));
    assert_eq!(catalog.tool_ref(&Uuid::new_v4().to_string()), None);
    assert_eq!(catalog.agent_ref("b"), Some(b.id));
    assert_eq!(catalog.agent_ref(&"x".repeat(MAX_REF_CHARS + 1)), None);
}

#[test]
fn scoped_deltas_keep_a_sidecar_equal_to_a_fresh_scoped_snapshot() {
    let (a, b) = (agent("a"), agent("b"));
    let tools: Vec<_> = (0..8).map(|i| tool(&format!("t{i}"))).collect();
    let g0 = grant(&a, &tools[0], PermissionType::FullAccess);
    let g1 = grant(&a, &tools[1], PermissionType::ReadOnly);
    let gb = grant(&b, &tools[5], PermissionType::FullAccess);
    let s0 = Snapshot {
        revision: 10,
        tools: tools.iter().cloned().map(Arc::new).collect(),
        permissions: vec![g0.clone(), g1.clone(), gb.clone()],
        agents: vec![a.clone(), b.clone()],
        credentials: vec![credential(tools[0].id, "zero"), credential(tools[5].id, "five")],
        tokens: vec![token(Role::Agent, Some(b.id)), token(Role::Sidecar, None)],
        ..Default::default()
    };
    let only_a = scope_of(&[a.id], &[], 0);
    let held = Catalog::new(Arc::new(s0.clone())).scoped(&only_a).0;
    assert_eq!(held.tokens.len(), 1, "agents' tokens only, B's included");
    assert_eq!(held.tokens[0].role, Role::Agent);

    // A new grant brings its tool; the credential of a held tool rotates.
    let mut s1 = s0.clone();
    s1.revision = 11;
    let g2 = grant(&a, &tools[2], PermissionType::FullAccess);
    s1.permissions.push(g2.clone());
    s1.credentials[0].secret = "zero-rotated".into();
    let d = step(&s0, &only_a, &s1, &only_a);
    assert_eq!(d.upserted_tools.len(), 1);
    assert_eq!(d.upserted_permissions, vec![g2.clone()]);

    // A change to a tool nobody in scope uses costs the sidecar nothing but the revision.
    let mut s2 = s1.clone();
    s2.revision = 12;
    Arc::make_mut(&mut s2.tools[6]).spec.description = "changed elsewhere".into();
    s2.credentials[1].secret = "five-rotated".into();
    s2.tokens.push(token(Role::Sidecar, None));
    s2.tokens.push(token(Role::Admin, None));
    let d = step(&s1, &only_a, &s2, &only_a);
    assert!(d.is_empty(), "{d:?}");
    // Unsent, the next delta continues from the revision the sidecar holds.
    let c1 = Arc::new(Catalog::new(Arc::new(s1.clone())));
    let c2 = Arc::new(Catalog::new(Arc::new(s2.clone())));
    let (_, h1) = Held::scoped(&c1, &only_a);
    let (_, h2) = scoped_delta(&h1, &c2, &diff(&s1, &s2), &only_a);
    let h2 = Held::unsent(h2, &h1);
    let mut s3x = s2.clone();
    s3x.revision = 99;
    s3x.permissions.retain(|p| p.id != g0.id);
    let (d, _) = scoped_delta(
        &h2,
        &Arc::new(Catalog::new(Arc::new(s3x.clone()))),
        &diff(&s2, &s3x),
        &only_a,
    );
    assert_eq!((d.from_revision, d.revision), (11, 99));
    assert_eq!(d.removed_permissions, vec![g0.id]);

    // Revoke, a held tool updated, a fallback naming a new tool, a held tool deleted.
    let mut s3 = s2.clone();
    s3.revision = 13;
    s3.permissions.retain(|p| p.id != g1.id);
    Arc::make_mut(&mut s3.tools[0]).spec.description = "updated".into();
    Arc::make_mut(&mut s3.tools[0]).version = 2;
    s3.fallbacks.push(fallback(tools[0].id, vec![tools[7].id]));
    s3.tools.retain(|t| t.id != tools[2].id);
    s3.permissions.retain(|p| p.id != g2.id);
    s3.tokens.retain(|t| t.role != Role::Sidecar);
    s3.tokens.push(token(Role::Agent, Some(a.id)));
    let d = step(&s2, &only_a, &s3, &only_a);
    assert_eq!(d.removed_permissions.len(), 2);
    assert!(d.removed_tools.contains(&tools[1].id) && d.removed_tools.contains(&tools[2].id));
    assert!(d.removed_tokens.is_empty(), "sidecar tokens were never held");
    assert_eq!(d.upserted_tokens.len(), 1);

    // The scope widens: another agent and a tool asked for on demand.
    let wider = scope_of(&[a.id, b.id], &[tools[4].id], 3);
    let d = step(&s3, &only_a, &s3, &wider);
    assert_eq!(d.scope, Some(wider.clone()));
    assert_eq!(d.from_revision, d.revision);
    assert!(d.upserted_credentials.iter().any(|c| c.secret == "five-rotated"));

    // The fallback strategy goes; its credential goes; the tool asked for is deleted.
    let mut s4 = s3.clone();
    s4.revision = 14;
    s4.fallbacks.clear();
    s4.credentials.retain(|c| c.tool_id != tools[0].id);
    s4.tools.retain(|t| t.id != tools[4].id);
    step(&s3, &wider, &s4, &wider);
}
