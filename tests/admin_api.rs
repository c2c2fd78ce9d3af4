//! The complete admin API over the real binaries: agents changed and deleted (a
//! deleted agent's tokens refused by its sidecar at once, its history kept), token
//! metadata listed without the token, fallback strategies deleted, every list paged
//! (2 500 agents and 10 000 grants on PostgreSQL), every change audited, and all of it
//! through `toolctl -o json` too.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::Code;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, channel, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, bin, control_plane, sidecar};
use toolplane_tests::tool_server::ToolServer;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// The fields an INVALID_ARGUMENT names (its `BadRequest` detail).
fn bad_fields(s: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    s.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

async fn trail(cp: &Proc, req: pb::QueryAuditTrailRequest) -> Vec<pb::AuditEvent> {
    let mut audit = pb::audit_client::AuditClient::new(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    let mut stream = audit.query_audit_trail(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        out.push(r.record.unwrap().event.unwrap());
    }
    out
}

async fn actions(cp: &Proc, action: pb::AuditAction) -> Vec<pb::AuditEvent> {
    trail(
        cp,
        pb::QueryAuditTrailRequest {
            action: action as i32,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn agents_change_and_go_and_a_deleted_agents_tokens_are_refused_at_once() {
    let tools = ToolServer::start().await;
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let tool = admin
        .register(http_tool("counter", &tools.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("courier").await;
    let grant = admin.grant_full(&agent.id, &tool.id).await;
    let issued = admin.issue(pb::Role::Agent, &agent.id).await;
    let token = issued.token.clone();
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar(&cp, &sidecar_token).await;

    // UpdateAgent: only the fields the mask names, each checked, naming the field.
    let r = admin
        .identity
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: agent.id.clone(),
                skills: vec!["maps".to_owned()],
                team: "logistics".to_owned(),
                task_memory_opt_out: true,
                calls_per_minute: 600,
                daily_spend_budget: "12.50".to_owned(),
                name: "ignored".to_owned(),
                ..Default::default()
            }),
            update_mask: mask(&["skills", "team", "task_memory_opt_out", "daily_spend_budget"]),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(
        (
            r.name.as_str(),
            r.skills.as_slice(),
            r.team.as_str(),
            r.task_memory_opt_out
        ),
        ("courier", &["maps".to_owned()][..], "logistics", true)
    );
    assert_eq!(
        (r.calls_per_minute, r.daily_spend_budget.as_str()),
        (0, "12.5"),
        "not in the mask: unchanged"
    );
    let update = |agent: pb::Agent, paths: &[&str]| pb::UpdateAgentRequest {
        agent: Some(agent),
        update_mask: mask(paths),
    };
    let this = |f: fn(&mut pb::Agent)| {
        let mut a = pb::Agent {
            id: agent.id.clone(),
            ..Default::default()
        };
        f(&mut a);
        a
    };
    for (req, field) in [
        (update(this(|_| ()), &[]), "update_mask"),
        (update(this(|_| ()), &["name"]), "update_mask.paths[0]"),
        (update(this(|_| ()), &["team", "colour"]), "update_mask.paths[1]"),
        (
            update(
                this(|a| a.daily_spend_budget = "0.0000001".to_owned()),
                &["daily_spend_budget"],
            ),
            "agent.daily_spend_budget",
        ),
        (
            update(
                this(|a| a.daily_spend_budget = "-1".to_owned()),
                &["daily_spend_budget"],
            ),
            "agent.daily_spend_budget",
        ),
        (
            update(this(|a| a.calls_per_minute = 2_000_000), &["calls_per_minute"]),
            "agent.calls_per_minute",
        ),
        (update(pb::Agent::default(), &["team"]), "agent.id"),
    ] {
        let s = admin.identity.update_agent(req).await.unwrap_err();
        assert_eq!(bad_fields(&s), [field], "{}", s.message());
    }
    let s = admin
        .identity
        .update_agent(update(
            pb::Agent {
                id: Uuid::now_v7().to_string(),
                ..Default::default()
            },
            &["team"],
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let mut as_agent = pb::identity_client::IdentityClient::new(channel(&cp.url(), Some(&token)).await);
    let s = as_agent
        .update_agent(update(this(|_| ()), &["team"]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let s = as_agent
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let updated = actions(&cp, pb::AuditAction::AgentUpdated).await;
    assert_eq!(updated.len(), 1, "one audited change; refused ones record nothing");
    assert!(
        updated[0].detail.contains("team: \"\" -> \"logistics\""),
        "{}",
        updated[0].detail
    );

    // ListTokens: metadata only, never the token or its digest.
    let listed = admin
        .identity
        .list_tokens(pb::ListTokensRequest {
            agent_id: agent.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert_eq!(listed.tokens[0].token_id, issued.token_id);
    assert_eq!(listed.tokens[0].role, pb::Role::Agent as i32);
    let shown = format!("{listed:?}");
    let digest = toolplane_core::token::digest(&token);
    assert!(!shown.contains(&token) && !shown.contains(&digest), "{shown}");
    let sidecars = admin
        .identity
        .list_tokens(pb::ListTokensRequest {
            role: pb::Role::Sidecar as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sidecars.tokens.len(), 1);

    // The agent works through its sidecar, and has a pending access request.
    let mut ex = executor(&sc.url(), Some(&token)).await;
    eventually("the sidecar to serve the agent", WAIT, || {
        let mut ex = ex.clone();
        async move { ex.invoke(invoke_request("counter", &json!({"text": "a b"}))).await.ok() }
    })
    .await;
    let other = admin
        .register(http_tool("other", &tools.url("/word_count")))
        .await
        .unwrap();
    let mut agent_perms = pb::permissions_client::PermissionsClient::new(channel(&cp.url(), Some(&token)).await);
    agent_perms
        .request_access(pb::RequestAccessRequest {
            tool_id: other.id.clone(),
            justification: "reports".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();

    // DeleteAgent: tokens and grants revoked, the request denied, all in one audited
    // step; the sidecar refuses the token with the next delta.
    let r = admin
        .identity
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let deleted_at = Instant::now();
    assert_eq!(
        (r.tokens_revoked, r.grants_revoked, r.access_requests_denied),
        (1, 1, 1)
    );
    let code = eventually("the sidecar to refuse the deleted agent's token", WAIT, || {
        let mut ex = ex.clone();
        async move {
            match ex.invoke(invoke_request("counter", &json!({"text": "a b"}))).await {
                Err(s) if s.code() != Code::Unavailable => Some(s.code()),
                _ => None,
            }
        }
    })
    .await;
    let refused_after = deleted_at.elapsed();
    println!("the sidecar refused the deleted agent's token {refused_after:?} after DeleteAgent returned");
    assert_eq!(code, Code::Unauthenticated);
    assert!(refused_after < Duration::from_secs(2), "{refused_after:?}");
    let s = agent_perms
        .list_permissions(pb::ListPermissionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "the control plane refuses it too");
    assert!(
        ex.invoke(invoke_request("counter", &json!({"text": "a"})))
            .await
            .is_err()
    );

    let agents = admin
        .identity
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(agents.agents.is_empty());
    let grants = admin
        .permissions
        .list_permissions(pb::ListPermissionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(grants.permissions.is_empty());
    let requests = admin
        .permissions
        .list_access_requests(pb::ListAccessRequestsRequest {
            agent_id: agent.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(requests[0].status, pb::AccessRequestStatus::Denied as i32);
    let all_tokens = admin
        .identity
        .list_tokens(pb::ListTokensRequest {
            agent_id: agent.id.clone(),
            include_inactive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert!(all_tokens[0].revoked_at.is_some(), "listed as revoked with --all");

    // History is kept: the agent's calls (streamed from the sidecar, so they may
    // arrive after the deletion) and every part of its removal are in the trail.
    let history = eventually("the agent's calls in the trail", WAIT, || async {
        let history = trail(
            &cp,
            pb::QueryAuditTrailRequest {
                agent_id: agent.id.clone(),
                ..Default::default()
            },
        )
        .await;
        history
            .iter()
            .any(|e| e.action == pb::AuditAction::ToolInvoked as i32)
            .then_some(history)
    })
    .await;
    let has = |a: pb::AuditAction| history.iter().any(|e| e.action == a as i32);
    assert!(has(pb::AuditAction::AgentDeleted) && has(pb::AuditAction::TokenRevoked));
    assert!(
        history
            .iter()
            .any(|e| e.action == pb::AuditAction::PermissionRevoked as i32
                && e.detail.contains(&grant.id)
                && e.tool_id == tool.id)
    );
    for (req, code) in [
        (agent.id.clone(), Code::NotFound),
        ("not-an-id".to_owned(), Code::InvalidArgument),
    ] {
        let s = admin
            .identity
            .delete_agent(pb::DeleteAgentRequest { agent_id: req })
            .await
            .unwrap_err();
        assert_eq!(s.code(), code);
    }
    // Gone for good: no new token or grant; its name is free again.
    let s = admin
        .identity
        .issue_token(pb::IssueTokenRequest {
            role: pb::Role::Agent as i32,
            agent_id: agent.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let again = admin.agent("courier").await;
    assert_ne!(again.id, agent.id);
}

#[tokio::test]
async fn a_fallback_strategy_is_deleted_once_and_audited() {
    let tools = ToolServer::start().await;
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let primary = admin.register(http_tool("primary", &tools.url("/fail"))).await.unwrap();
    let backup = admin
        .register(http_tool("backup", &tools.url("/word_count")))
        .await
        .unwrap();
    admin
        .registry
        .set_fallback_strategy(pb::SetFallbackStrategyRequest {
            strategy: Some(pb::FallbackStrategy {
                tool_id: primary.id.clone(),
                fallback_tool_ids: vec![backup.id.clone()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let delete = |id: &str| pb::DeleteFallbackStrategyRequest { tool_id: id.to_owned() };
    admin
        .registry
        .delete_fallback_strategy(delete(&primary.id))
        .await
        .unwrap();
    let s = admin
        .registry
        .get_fallback_strategy(pb::GetFallbackStrategyRequest {
            tool_id: primary.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let s = admin
        .registry
        .delete_fallback_strategy(delete(&primary.id))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let s = admin.registry.delete_fallback_strategy(delete("x")).await.unwrap_err();
    assert_eq!(bad_fields(&s), ["tool_id"]);
    let agent = admin.agent("a").await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let mut as_agent = pb::tool_registry_client::ToolRegistryClient::new(channel(&cp.url(), Some(&token)).await);
    let s = as_agent
        .delete_fallback_strategy(delete(&primary.id))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let events = actions(&cp, pb::AuditAction::FallbackStrategyDeleted).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].tool_id, primary.id);
    assert!(events[0].detail.contains("primary"), "{}", events[0].detail);
}

/// Pages through a list with `fetch(page_token)` (returning the page's ids and the next
/// token); every id, in order.
async fn all_pages<F, Fut>(mut fetch: F) -> (Vec<String>, usize)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<String>, String), tonic::Status>>,
{
    let (mut ids, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let (page, next) = fetch(token).await.unwrap();
        ids.extend(page);
        pages += 1;
        if next.is_empty() {
            return (ids, pages);
        }
        token = next;
    }
}

#[tokio::test]
async fn lists_page_through_2500_agents_and_10000_grants_on_postgresql() {
    const AGENTS: usize = 2_500;
    const GRANTS: usize = 10_000;
    let db = TestDb::create().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let tools: Vec<pb::Tool> = {
        let mut v = Vec::new();
        for name in ["t0", "t1", "t2", "t3"] {
            v.push(admin.register(http_tool(name, "http://127.0.0.1:9/x")).await.unwrap());
        }
        v
    };
    // Batch inserts: the set-up is about paging, not about 12 500 admin calls.
    let setup = Instant::now();
    let client = db.client().await;
    let agent_ids: Vec<Uuid> = (0..AGENTS).map(|_| Uuid::now_v7()).collect();
    let names: Vec<String> = (0..AGENTS)
        .map(|i| format!("agent-{:05}", (i * 7919) % AGENTS))
        .collect();
    let teams: Vec<String> = (0..AGENTS).map(|i| format!("team-{}", i % 5)).collect();
    client
        .execute(
            "INSERT INTO agents (id, name, team, created_at) \
             SELECT id, name, team, now() FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, name, team)",
            &[&agent_ids, &names, &teams],
        )
        .await
        .unwrap();
    let grant_ids: Vec<Uuid> = (0..GRANTS).map(|_| Uuid::now_v7()).collect();
    let grant_agents: Vec<Uuid> = (0..GRANTS).map(|i| agent_ids[i % AGENTS]).collect();
    let tool_ids: Vec<Uuid> = tools.iter().map(|t| t.id.parse().unwrap()).collect();
    let grant_tools: Vec<Uuid> = (0..GRANTS).map(|i| tool_ids[i / AGENTS]).collect();
    client
        .execute(
            "INSERT INTO permissions (id, agent_id, tool_id, kind, granted_at, granted_by) \
             SELECT id, a, t, 'full_access', now(), 'test' FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS u(id, a, t)",
            &[&grant_ids, &grant_agents, &grant_tools],
        )
        .await
        .unwrap();
    client.execute("ANALYZE agents", &[]).await.unwrap();
    client.execute("ANALYZE permissions", &[]).await.unwrap();
    println!(
        "set-up: {AGENTS} agents and {GRANTS} grants inserted in {:?}",
        setup.elapsed()
    );

    let identity = admin.identity.clone();
    for size in [0u32, 1000] {
        let started = Instant::now();
        let (ids, pages) = all_pages(|page_token| {
            let mut c = identity.clone();
            async move {
                let r = c
                    .list_agents(pb::ListAgentsRequest {
                        page_size: size,
                        page_token,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok((r.agents.into_iter().map(|a| a.name).collect(), r.next_page_token))
            }
        })
        .await;
        println!(
            "ListAgents: {} agents in {pages} pages of {size} in {:?}",
            ids.len(),
            started.elapsed()
        );
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "every agent once, by name");
        assert_eq!(pages, AGENTS.div_ceil(if size == 0 { 100 } else { size as usize }));
    }
    let (team, _) = all_pages(|page_token| {
        let mut c = identity.clone();
        async move {
            let r = c
                .list_agents(pb::ListAgentsRequest {
                    team: "team-3".to_owned(),
                    page_size: 200,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((r.agents.into_iter().map(|a| a.team).collect(), r.next_page_token))
        }
    })
    .await;
    assert_eq!(team.len(), AGENTS / 5);
    assert!(team.iter().all(|t| t == "team-3"));

    let permissions = admin.permissions.clone();
    let page_of = |agent_id: String, tool_id: String, page_size: u32| {
        let permissions = permissions.clone();
        move |page_token: String| {
            let mut c = permissions.clone();
            let (agent_id, tool_id) = (agent_id.clone(), tool_id.clone());
            async move {
                let r = c
                    .list_permissions(pb::ListPermissionsRequest {
                        agent_id,
                        tool_id,
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((r.permissions.into_iter().map(|p| p.id).collect(), r.next_page_token))
            }
        }
    };
    let started = Instant::now();
    let (ids, pages) = all_pages(page_of(String::new(), String::new(), 1000)).await;
    println!(
        "ListPermissions: {} grants in {pages} pages of 1000 in {:?}",
        ids.len(),
        started.elapsed()
    );
    let expect: Vec<String> = grant_ids.iter().map(Uuid::to_string).collect();
    assert_eq!(ids, expect, "every grant once, in grant order");
    assert_eq!(pages, GRANTS / 1000);
    let (by_tool, _) = all_pages(page_of(String::new(), tools[2].id.clone(), 333)).await;
    assert_eq!(by_tool.len(), AGENTS);
    assert_eq!(by_tool.iter().collect::<HashSet<_>>().len(), AGENTS);
    let (by_agent, pages) = all_pages(page_of(agent_ids[17].to_string(), String::new(), 1)).await;
    assert_eq!((by_agent.len(), pages), (4, 4));

    // A grant revoked between two pages neither repeats nor shifts the rest.
    let mut c = permissions.clone();
    let first = c
        .list_permissions(pb::ListPermissionsRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    admin
        .permissions
        .revoke(pb::RevokeRequest {
            permission_id: first.permissions[3].id.clone(),
        })
        .await
        .unwrap();
    let second = c
        .list_permissions(pb::ListPermissionsRequest {
            page_size: 10,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.permissions[0].id, expect[10]);

    // Bad paging input names its field; a token of one list is refused by another.
    for (size, token, field) in [(1001, String::new(), "page_size"), (0, "zz".to_owned(), "page_token")] {
        let s = c
            .list_permissions(pb::ListPermissionsRequest {
                page_size: size,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&s), [field]);
    }
    let agents_token = identity
        .clone()
        .list_agents(pb::ListAgentsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    let s = c
        .list_permissions(pb::ListPermissionsRequest {
            page_token: agents_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&s), ["page_token"]);

    // Each page is read on an index, in the order it is returned (an agent's few
    // grants may be fetched through the agent's index and then sorted).
    for (sql, sorted) in [
        (
            format!(
                "EXPLAIN SELECT * FROM permissions WHERE revoked_at IS NULL AND id > '{}' ORDER BY id LIMIT 1001",
                grant_ids[5000]
            ),
            true,
        ),
        (
            format!(
                "EXPLAIN SELECT * FROM permissions WHERE revoked_at IS NULL AND agent_id = '{}' ORDER BY id LIMIT 101",
                agent_ids[3]
            ),
            false,
        ),
        (
            "EXPLAIN SELECT * FROM agents WHERE deleted_at IS NULL AND name > 'agent-01000' ORDER BY name LIMIT 101"
                .to_owned(),
            true,
        ),
    ] {
        let plan: Vec<String> = client
            .query(sql.as_str(), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("Index"), "{sql}:\n{plan}");
        assert!(!sorted || !plan.contains("Sort"), "{sql}:\n{plan}");
    }
}

fn toolctl(cp: &Proc, args: &[&str]) -> Value {
    let out = std::process::Command::new(bin("toolctl"))
        .args(["--server", &cp.url(), "-o", "json"])
        .args(args)
        .env("TOOLPLANE_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "toolctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn toolctl_drives_the_admin_api_with_json_output() {
    let tools = ToolServer::start().await;
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    admin.register(http_tool("primary", &tools.url("/fail"))).await.unwrap();
    admin
        .register(http_tool("backup", &tools.url("/word_count")))
        .await
        .unwrap();

    let a = toolctl(
        &cp,
        &[
            "agents",
            "create",
            "scout",
            "--team",
            "ops",
            "--calls-per-minute",
            "60",
            "--daily-spend-budget",
            "5",
        ],
    );
    let id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (a["calls_per_minute"].as_u64(), a["daily_spend_budget"].as_str()),
        (Some(60), Some("5"))
    );
    let u = toolctl(
        &cp,
        &[
            "agents",
            "update",
            &id,
            "--skill",
            "sql",
            "--skill",
            "maps",
            "--daily-spend-budget",
            "none",
        ],
    );
    assert_eq!(u["skills"], json!(["sql", "maps"]));
    assert_eq!(
        (u["team"].as_str(), u["daily_spend_budget"].as_str()),
        (Some("ops"), Some(""))
    );
    let listed = toolctl(&cp, &["agents", "list", "--team", "ops"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);

    let issued = toolctl(&cp, &["tokens", "issue", "--role", "agent", "--agent", &id]);
    let secret = issued["token"].as_str().unwrap().to_owned();
    let tokens = toolctl(&cp, &["tokens", "list", "--agent", &id]);
    assert_eq!(tokens[0]["token_id"], issued["token_id"]);
    assert_eq!(tokens[0]["role"], "ROLE_AGENT");
    assert!(!tokens.to_string().contains(&secret));

    toolctl(&cp, &["fallbacks", "set", "primary", "--fallback", "backup"]);
    let f = toolctl(&cp, &["fallbacks", "get", "primary"]);
    assert_eq!(f["fallback_tool_ids"].as_array().unwrap().len(), 1);
    toolctl(&cp, &["fallbacks", "delete", "primary"]);

    let d = toolctl(&cp, &["agents", "delete", &id]);
    assert_eq!(
        (d["tokens_revoked"].as_u64(), d["grants_revoked"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(toolctl(&cp, &["agents", "list"]), json!([]));
    assert_eq!(toolctl(&cp, &["tokens", "list", "--agent", &id]), json!([]));
    let all = toolctl(&cp, &["tokens", "list", "--agent", &id, "--all"]);
    assert!(all[0]["revoked_at"].is_string());
}
