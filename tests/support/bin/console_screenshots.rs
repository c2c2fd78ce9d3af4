//! `make console-screenshots`: boots a control plane with the console on, a real sidecar
//! and tool server, fills them with demo data (tools with versions, agents, grants,
//! tokens, pending access requests, selections, real calls, and 24 hours of earlier
//! calls sent the way a sidecar sends them), then saves a PNG of every console page
//! taken by headless Chromium.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use fantoccini::Locator;
use rand::Rng;
use serde_json::json;
use toolplane_core::convert::ts;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::permissions_client::PermissionsClient;
use toolplane_proto::v1::tool_selector_client::ToolSelectorClient;
use toolplane_tests::browser::Browser;
use toolplane_tests::fake_sidecar::FakeSidecar;
use toolplane_tests::grpc::{Admin, channel, executor, http_tool, invoke_request};
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane_with, sidecar};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, free_port};

const TOOLS: &[(&str, &str, &str, &str)] = &[
    (
        "word_count",
        "analysis",
        "Counts the words, sentences and paragraphs of a text",
        "text-kit",
    ),
    (
        "sentiment",
        "analysis",
        "Scores the sentiment of a review or message from -1 to 1",
        "text-kit",
    ),
    (
        "currency_convert",
        "finance",
        "Converts an amount between currencies at today's rate",
        "fx-data",
    ),
    (
        "invoice_lookup",
        "finance",
        "Finds an invoice by number and returns its lines and status",
        "billing",
    ),
    (
        "weather_now",
        "weather",
        "Current weather and a 24 hour forecast for a city",
        "meteo",
    ),
    ("geocode", "maps", "Turns an address into coordinates", "maps-co"),
    ("translate", "language", "Translates text between 40 languages", "lingo"),
    (
        "summarize",
        "language",
        "Summarizes a long document into a few sentences",
        "lingo",
    ),
    (
        "ticket_create",
        "support",
        "Opens a support ticket for a customer",
        "helpdesk",
    ),
    (
        "ticket_search",
        "support",
        "Searches support tickets by customer and text",
        "helpdesk",
    ),
    (
        "sql_readonly",
        "data",
        "Runs a read-only SQL query on the analytics replica",
        "warehouse",
    ),
    ("sha256", "utility", "Hashes a text with SHA-256", "builtin"),
];

#[tokio::main]
async fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "docs/console".to_owned()));
    std::fs::create_dir_all(&out).unwrap();
    let tools = ToolServer::start().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cp = control_plane_with(None, &[("TOOLPLANE_CONSOLE_LISTEN", &listen)]).await;
    toolplane_tests::wait_for_port(port).await;
    let base = format!("http://{listen}/");
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;

    let mut registered = Vec::new();
    for (i, (name, category, description, provider)) in TOOLS.iter().enumerate() {
        let mut t = http_tool(name, &tools.url("/word_count"));
        t.category = (*category).to_owned();
        t.description = (*description).to_owned();
        t.provider = (*provider).to_owned();
        t.capabilities = vec![(*category).to_owned(), "read".to_owned()];
        t.compliance_frameworks = vec!["SOC2".to_owned()];
        if *category == "finance" {
            t.compliance_frameworks.push("PCI-DSS".to_owned());
        }
        if i % 4 == 3 {
            t.requirements.as_mut().unwrap().rate_limit_rpm = 120;
        }
        registered.push(admin.register(t).await.unwrap());
    }
    // A second version of one tool, for the diff.
    let mut v2 = registered[0].clone();
    v2.description = "Counts the words, sentences and paragraphs of a text (Unicode aware)".to_owned();
    v2.requirements.as_mut().unwrap().timeout_ms = 2500;
    v2.cacheable = true;
    v2.cache_ttl_seconds = 300;
    admin
        .registry
        .update_tool(pb::UpdateToolRequest { tool: Some(v2) })
        .await
        .unwrap();
    admin
        .registry
        .set_tool_enabled(pb::SetToolEnabledRequest {
            tool_id: registered[11].id.clone(),
            enabled: false,
        })
        .await
        .unwrap();
    admin
        .registry
        .set_fallback_strategy(pb::SetFallbackStrategyRequest {
            strategy: Some(pb::FallbackStrategy {
                tool_id: registered[0].id.clone(),
                fallback_tool_ids: vec![registered[7].id.clone()],
                max_attempts: 3,
                initial_backoff_ms: 100,
                max_backoff_ms: 2000,
                conditions: vec![pb::FallbackCondition::OnTimeout as i32],
                mode: pb::DegradationMode::Cached as i32,
            }),
        })
        .await
        .unwrap();

    let mut agents = Vec::new();
    for (name, team) in [
        ("research-bot", "research"),
        ("billing-agent", "finance"),
        ("support-assistant", "support"),
    ] {
        let a = admin
            .identity
            .create_agent(pb::CreateAgentRequest {
                name: name.to_owned(),
                skills: vec!["text".to_owned(), team.to_owned()],
                team: team.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .agent
            .unwrap();
        agents.push(a);
    }
    for (ai, ti) in [(0, 0), (0, 1), (0, 6), (0, 7), (1, 2), (1, 3), (2, 8), (2, 9), (2, 0)] {
        admin.grant_full(&agents[ai].id, &registered[ti].id).await;
    }
    admin
        .permissions
        .grant(pb::GrantRequest {
            permission: Some(pb::Permission {
                agent_id: agents[1].id.clone(),
                tool_id: registered[10].id.clone(),
                r#type: pb::PermissionType::LimitedInvocations as i32,
                max_invocations_per_day: 50,
                expires_at: Some(ts(Utc::now() + chrono::Duration::days(30))),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    admin
        .permissions
        .grant(pb::GrantRequest {
            permission: Some(pb::Permission {
                agent_id: agents[2].id.clone(),
                tool_id: registered[4].id.clone(),
                r#type: pb::PermissionType::TimeRestricted as i32,
                allowed_hours: (8..18).collect(),
                time_zone: "Europe/Berlin".to_owned(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for a in &agents {
        tokens.push(admin.token(pb::Role::Agent, &a.id).await);
    }
    let sidecar_token = admin.issue(pb::Role::Sidecar, "").await;
    admin.token(pb::Role::Auditor, "").await;
    let sc = sidecar(&cp, &sidecar_token.token).await;

    // Pending access requests, asked by the agents themselves.
    for (ai, ti, why) in [
        (
            0,
            2,
            "Research notes quote prices in EUR; need conversions for the summary tables.",
        ),
        (2, 3, "Customers ask about unpaid invoices in support chats."),
    ] {
        let mut p = PermissionsClient::new(channel(&cp.url(), Some(&tokens[ai])).await);
        p.request_access(pb::RequestAccessRequest {
            tool_id: registered[ti].id.clone(),
            justification: why.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    // One more, reviewed and denied.
    let mut p = PermissionsClient::new(channel(&cp.url(), Some(&tokens[1])).await);
    let asked = p
        .request_access(pb::RequestAccessRequest {
            tool_id: registered[10].id.clone(),
            justification: "Month-end reconciliation needs ad-hoc queries.".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    admin
        .permissions
        .review_access_request(pb::ReviewAccessRequestRequest {
            request_id: asked.id,
            approve: false,
            reason: "Already holds a daily-limited grant; ask the data team for a report.".to_owned(),
            grant: None,
        })
        .await
        .unwrap();

    // Selections and real calls through the sidecar.
    let mut selected = Vec::new();
    for (ai, task) in [
        (0, "count the words in this abstract"),
        (0, "translate the survey answers to English"),
        (2, "open a ticket for the customer whose order is late"),
        (1, "convert 250 EUR to USD"),
    ] {
        let mut sel = ToolSelectorClient::new(channel(&cp.url(), Some(&tokens[ai])).await);
        if let Ok(r) = sel
            .select_tool(pb::SelectToolRequest {
                task_description: task.to_owned(),
                ..Default::default()
            })
            .await
        {
            let r = r.into_inner();
            selected.push((ai, r.primary.and_then(|p| p.tool).map(|t| t.name), r.selection_id));
        }
    }
    let url = sc.url();
    let token = tokens[0].clone();
    eventually("the sidecar to serve", Duration::from_secs(30), || {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let mut ex = executor(&url, Some(&token)).await;
            ex.invoke(invoke_request("word_count", &json!({"text": "warm up"})))
                .await
                .ok()
        }
    })
    .await;
    for (ai, tool, selection_id) in selected.into_iter().take(3) {
        let Some(tool) = tool else { continue };
        let mut ex = executor(&url, Some(&tokens[ai])).await;
        let mut r = invoke_request(&tool, &json!({"text": "a selected call"}));
        r.selection_id = selection_id;
        let _ = ex.invoke(r).await;
    }
    let mut ex = executor(&url, Some(&tokens[0])).await;
    for i in 0..20 {
        let _ = ex
            .invoke(invoke_request(
                "word_count",
                &json!({"text": format!("call number {i}")}),
            ))
            .await;
    }

    // 24 hours of earlier calls, sent as a sidecar sends them.
    let mut fake = FakeSidecar::connect(&cp.url(), &sidecar_token.token, "sidecar-eu-1").await;
    let mut rng = rand::rng();
    let now = Utc::now();
    let mut batch = Vec::new();
    let statuses = [
        (pb::ToolExecutionStatus::Success, 0.86),
        (pb::ToolExecutionStatus::ExecutionError, 0.04),
        (pb::ToolExecutionStatus::Timeout, 0.02),
        (pb::ToolExecutionStatus::RateLimited, 0.05),
        (pb::ToolExecutionStatus::PermissionDenied, 0.03),
    ];
    for minute in (0..24 * 60).step_by(3) {
        let hour = (minute / 60) as f64;
        let load = 2.0 + 6.0 * (1.0 + ((hour - 8.0) / 24.0 * std::f64::consts::TAU).sin());
        let calls = (load * rng.random_range(0.6..1.4)) as usize;
        for _ in 0..calls {
            let at =
                now - chrono::Duration::minutes(24 * 60 - minute) + chrono::Duration::seconds(rng.random_range(0..180));
            let (ai, ti) =
                [(0, 0), (0, 1), (0, 6), (0, 7), (1, 2), (1, 3), (2, 8), (2, 9), (2, 0)][rng.random_range(0..9)];
            let mut roll: f64 = rng.random();
            let mut status = pb::ToolExecutionStatus::Success;
            for (s, p) in statuses {
                if roll < p {
                    status = s;
                    break;
                }
                roll -= p;
            }
            let id = uuid::Uuid::now_v7().to_string();
            let tool = &registered[ti];
            let duration = rng.random_range(40..400) + if ti == 3 { 300 } else { 0 };
            batch.push(pb::SyncEvent {
                event_id: id.clone(),
                payload: Some(pb::sync_event::Payload::Invocation(pb::InvocationRecord {
                    invocation_id: id.clone(),
                    agent_id: agents[ai].id.clone(),
                    task_id: format!("task-{}", rng.random_range(1000..9999)),
                    requested_tool_id: tool.id.clone(),
                    invoked_at: Some(ts(at)),
                    result: Some(pb::ToolResult {
                        invocation_id: id.clone(),
                        tool_id: tool.id.clone(),
                        tool_version: tool.version,
                        status: status as i32,
                        duration_ms: duration,
                        cost: "0.0020".to_owned(),
                        completed_at: Some(ts(at)),
                        cache_hit: rng.random_bool(0.18),
                        attempts: 1,
                        ..Default::default()
                    }),
                    sidecar_id: "sidecar-eu-1".to_owned(),
                    task_category: tool.category.clone(),
                    ..Default::default()
                })),
            });
            if batch.len() % 10 == 1 {
                let event_id = uuid::Uuid::now_v7().to_string();
                batch.push(pb::SyncEvent {
                    event_id: event_id.clone(),
                    payload: Some(pb::sync_event::Payload::Audit(pb::AuditEvent {
                        event_id,
                        action: if status == pb::ToolExecutionStatus::PermissionDenied {
                            pb::AuditAction::PermissionChecked
                        } else {
                            pb::AuditAction::ToolInvoked
                        } as i32,
                        invocation_id: id.clone(),
                        actor_id: agents[ai].id.clone(),
                        agent_id: agents[ai].id.clone(),
                        tool_id: tool.id.clone(),
                        tool_version: tool.version,
                        task_id: "demo".to_owned(),
                        occurred_at: Some(ts(at)),
                        success: status == pb::ToolExecutionStatus::Success,
                        detail: format!("{} by {}", tool.name, agents[ai].name),
                        compliance_frameworks: tool.compliance_frameworks.clone(),
                        sidecar_id: "sidecar-eu-1".to_owned(),
                        ..Default::default()
                    })),
                });
            }
            if batch.len() >= 200 {
                fake.send(std::mem::take(&mut batch)).await;
            }
        }
    }
    if !batch.is_empty() {
        fake.send(batch).await;
    }

    // The pages.
    let b = Browser::start(1440, 1500).await;
    b.login(&base, ADMIN_TOKEN).await;
    let pages = [
        ("overview", String::new()),
        ("tools", "tools".to_owned()),
        ("tool", format!("tools/{}?a=1&b=2", registered[0].id)),
        ("agents", "agents".to_owned()),
        ("agent", format!("agents/{}", agents[1].id)),
        ("access", "access".to_owned()),
        ("audit", "audit".to_owned()),
        ("report", "audit/report?framework=SOC2".to_owned()),
        (
            "selection",
            "selection?task=convert+250+EUR+to+USD&agent_id=".to_owned() + &agents[1].id,
        ),
    ];
    for (name, path) in pages {
        b.client.goto(&format!("{base}{path}")).await.unwrap();
        b.client.wait().for_element(Locator::Css("main h1")).await.unwrap();
        let png = b.client.screenshot().await.unwrap();
        let file = out.join(format!("{name}.png"));
        std::fs::write(&file, png).unwrap();
        println!("wrote {}", file.display());
    }
    b.client.clone().close().await.unwrap();
}
