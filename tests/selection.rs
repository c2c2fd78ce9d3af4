//! Selection end to end: `SelectTool` over gRPC against the real control plane on
//! PostgreSQL, outcomes streamed by a real sidecar calling real tools, and the
//! learning RPCs.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, channel, executor, http_tool};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane, sidecar};
use toolplane_tests::tool_server::ToolServer;

const WAIT: Duration = Duration::from_secs(20);

fn tool(name: &str, description: &str, caps: &[&str], endpoint: &str) -> pb::Tool {
    let mut t = http_tool(name, endpoint);
    t.description = description.to_owned();
    t.category = "weather".to_owned();
    t.capabilities = caps.iter().map(|c| (*c).to_owned()).collect();
    t
}

fn names(r: &pb::SelectToolResponse) -> Vec<String> {
    r.primary
        .iter()
        .chain(&r.alternatives)
        .map(|s| s.tool.as_ref().unwrap().name.clone())
        .collect()
}

#[tokio::test]
async fn selection_ranks_what_the_agent_may_use_explains_it_and_learns_from_outcomes() {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let forecast = "Daily weather forecast for a city: temperature, rain and wind";
    let flaky = admin
        .register(tool("forecast_a", forecast, &["weather"], &tools.url("/fail")))
        .await
        .unwrap();
    let solid = admin
        .register(tool("forecast_b", forecast, &["weather"], &tools.url("/word_count")))
        .await
        .unwrap();
    let mut pricey = tool("forecast_premium", forecast, &["weather"], &tools.url("/word_count"));
    pricey.cost_per_call = "1.50".to_owned();
    let pricey = admin.register(pricey).await.unwrap();
    let mut secret = tool("forecast_classified", forecast, &["weather"], &tools.url("/word_count"));
    secret.requirements.as_mut().unwrap().data_sensitivity = pb::DataSensitivity::Restricted as i32;
    let secret = admin.register(secret).await.unwrap();
    let words = admin
        .register(tool(
            "word_count",
            "Counts the words of a text",
            &["analyze"],
            &tools.url("/word_count"),
        ))
        .await
        .unwrap();
    let ungranted = admin
        .register(tool(
            "forecast_forbidden",
            forecast,
            &["weather"],
            &tools.url("/word_count"),
        ))
        .await
        .unwrap();
    let agent = admin.agent("forecaster").await;
    for t in [&flaky, &solid, &pricey, &secret, &words] {
        admin.grant_full(&agent.id, &t.id).await;
    }
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let mut selector = pb::tool_selector_client::ToolSelectorClient::new(channel(&cp.url(), Some(&token)).await);
    let ask = |text: &str| pb::SelectToolRequest {
        task_description: text.to_owned(),
        task_category: "weather".to_owned(),
        max_alternatives: 5,
        ..Default::default()
    };

    // Only tools the agent may use, the fitting ones first, reasons from the numbers.
    let r = selector
        .select_tool(ask("will it rain in Paris tomorrow? weather forecast"))
        .await
        .unwrap()
        .into_inner();
    let ranked = names(&r);
    assert!(
        !ranked.contains(&ungranted.name),
        "never a tool the agent may not use: {ranked:?}"
    );
    assert!(ranked[0].starts_with("forecast_"), "{ranked:?}");
    assert_eq!(
        ranked.last().unwrap(),
        "word_count",
        "the unrelated tool ranks last: {ranked:?}"
    );
    assert!(r.confidence > 0.0 && r.confidence < 1.0, "{}", r.confidence);
    assert!(
        r.reasoning.starts_with(&format!("chose {}", ranked[0])),
        "{}",
        r.reasoning
    );
    assert!(r.reasoning.contains("over "), "{}", r.reasoning);
    let close = r.confidence;
    let r = selector
        .select_tool(ask("count the words in my essay"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&r)[0], "word_count");
    assert!(
        r.confidence > close,
        "a clear winner is more certain: {} vs {close}",
        r.confidence
    );

    // Constraints and capabilities.
    let mut limited = ask("weather forecast");
    limited.constraints = Some(pb::SelectionConstraints {
        max_cost: "0.01".to_owned(),
        max_data_sensitivity: pb::DataSensitivity::Internal as i32,
        ..Default::default()
    });
    let ranked = names(&selector.select_tool(limited).await.unwrap().into_inner());
    assert!(
        !ranked.contains(&pricey.name) && !ranked.contains(&secret.name),
        "{ranked:?}"
    );
    let mut need = ask("anything");
    need.required_capabilities = vec!["translate".to_owned()];
    let e = selector.select_tool(need).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("translate"), "{}", e.message());
    let e = selector
        .select_tool(pb::SelectToolRequest {
            max_alternatives: 50,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let fields: Vec<String> = e
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["task_description", "max_alternatives"]);

    // Outcomes through a real sidecar: forecast_a fails, forecast_b works.
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar(&cp, &sidecar_token).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    let call = |name: &str| pb::InvokeRequest {
        tool: Some(pb::invoke_request::Tool::ToolName(name.to_owned())),
        parameters: toolplane_core::json::json_to_struct(&json!({"text": "Paris"})),
        task_id: "t".to_owned(),
        task_category: "weather".to_owned(),
        selection_id: String::new(),
    };
    eventually("the sidecar to serve", WAIT, || {
        let mut ex = ex.clone();
        let req = call("forecast_b");
        async move { ex.invoke(req).await.ok() }
    })
    .await;
    let mut last_b = String::new();
    for _ in 0..6 {
        ex.clone().invoke(call("forecast_a")).await.unwrap();
        last_b = ex
            .clone()
            .invoke(call("forecast_b"))
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap()
            .invocation_id;
    }
    let mut learning = pb::learning_client::LearningClient::new(channel(&cp.url(), Some(&token)).await);
    let r = eventually("selection to learn from the outcomes", WAIT, || {
        let mut s = selector.clone();
        async move {
            let r = s
                .select_tool(ask("weather forecast for Paris"))
                .await
                .unwrap()
                .into_inner();
            (names(&r)[0] == "forecast_b").then_some(r)
        }
    })
    .await;
    let p = r.primary.as_ref().unwrap();
    let a = r
        .alternatives
        .iter()
        .find(|s| s.tool.as_ref().unwrap().name == "forecast_a")
        .unwrap();
    assert!(
        p.suitability_score > a.suitability_score + 0.2,
        "{} vs {}",
        p.suitability_score,
        a.suitability_score
    );
    assert!(
        r.reasoning.contains("over forecast_a") && r.reasoning.contains("suitability"),
        "{}",
        r.reasoning
    );
    assert!(r.reasoning.contains("of this agent's calls"), "{}", r.reasoning);

    // Quality reports: own invocations only, 0..1.
    eventually("the invocation stored, then its quality", WAIT, || {
        let (mut l, id) = (learning.clone(), last_b.clone());
        async move {
            l.report_outcome(pb::ReportOutcomeRequest {
                invocation_id: id,
                quality: 0.9,
                task_succeeded: true,
                comment: String::new(),
            })
            .await
            .ok()
        }
    })
    .await;
    let e = learning
        .report_outcome(pb::ReportOutcomeRequest {
            invocation_id: last_b.clone(),
            quality: 3.0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let other = admin.agent("nosy").await;
    let other_token = admin.token(pb::Role::Agent, &other.id).await;
    let mut nosy = pb::learning_client::LearningClient::new(channel(&cp.url(), Some(&other_token)).await);
    let e = nosy
        .report_outcome(pb::ReportOutcomeRequest {
            invocation_id: last_b,
            quality: 0.0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // What was learned, as operators see it.
    let mut as_admin = pb::learning_client::LearningClient::new(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    let rows = as_admin
        .get_effectiveness(pb::GetEffectivenessRequest {
            tool_id: solid.id.clone(),
            task_category: "weather".to_owned(),
            agent_id: agent.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .rows;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].invocations >= 7 && rows[0].success_rate == 1.0, "{:?}", rows[0]);
    assert!((rows[0].quality - 0.9).abs() < 1e-9);
    let recs = as_admin
        .get_recommendations(pb::GetRecommendationsRequest {
            task_category: "weather".to_owned(),
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .recommendations;
    assert_eq!(recs[0].tool_id, solid.id);
    assert!(recs[0].reason.contains("agents followed"), "{}", recs[0].reason);

    // Every decision is logged, task text included.
    let client = db.client().await;
    let logged: i64 = client
        .query_one(
            "SELECT count(*) FROM tool_selection_log WHERE agent_id = $1::text::uuid",
            &[&agent.id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(logged >= 4, "{logged}");
}

#[tokio::test]
async fn execute_task_selects_calls_and_moves_on_when_the_primary_fails() {
    let tools = ToolServer::start().await;
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let counts = "Counts the words of a text";
    // Same description: the tie goes to the first registered, which fails.
    let broken = admin
        .register(tool("count_words_v1", counts, &["analyze"], &tools.url("/fail")))
        .await
        .unwrap();
    let working = admin
        .register(tool("count_words_v2", counts, &["analyze"], &tools.url("/word_count")))
        .await
        .unwrap();
    let forbidden = admin
        .register(tool(
            "count_words_premium",
            counts,
            &["analyze"],
            &tools.url("/word_count"),
        ))
        .await
        .unwrap();
    let agent = admin.agent("tasker").await;
    admin.grant_full(&agent.id, &broken.id).await;
    admin.grant_full(&agent.id, &working.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar(&cp, &sidecar_token).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    let task = |text: &str| pb::ExecuteTaskRequest {
        task_description: text.to_owned(),
        parameters: toolplane_core::json::json_to_struct(&json!({"text": "one two three"})),
        task_id: "essay".to_owned(),
        task_category: "counting".to_owned(),
        ..Default::default()
    };
    let r = eventually("the sidecar to serve", WAIT, || {
        let mut ex = ex.clone();
        let t = task("count the words of my essay");
        async move { ex.execute_task(t).await.ok() }
    })
    .await
    .into_inner();
    let sel = r.selection.unwrap();
    assert_eq!(
        sel.primary.as_ref().unwrap().tool.as_ref().unwrap().name,
        "count_words_v1"
    );
    let names: Vec<String> = sel
        .alternatives
        .iter()
        .map(|s| s.tool.as_ref().unwrap().name.clone())
        .collect();
    assert!(!names.contains(&forbidden.name), "{names:?}");
    let result = r.result.unwrap();
    assert_eq!(
        result.status,
        pb::ToolExecutionStatus::Success as i32,
        "{}",
        result.error
    );
    assert_eq!(
        result.tool_id, working.id,
        "the alternative answered after the primary failed"
    );
    assert_eq!(
        toolplane_core::json::struct_to_json(result.output.and_then(|v| match v.kind {
            Some(prost_types::value::Kind::StructValue(s)) => Some(s),
            _ => None,
        })),
        json!({"words": 3})
    );
    assert_eq!(tools.hits("/fail"), 1, "the primary was really called");

    // Parameters no candidate accepts: INVALID_ARGUMENT naming the pointer.
    let mut bad = task("count the words of my essay");
    bad.parameters = toolplane_core::json::json_to_struct(&json!({"text": 42}));
    let e = ex.clone().execute_task(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("parameters/text"), "{}", e.message());

    // Without the control plane there is no selection: UNAVAILABLE, said plainly.
    drop(cp);
    let e = eventually("the control plane to be gone", WAIT, || {
        let mut ex = ex.clone();
        let t = task("count the words of my essay");
        async move { ex.execute_task(t).await.err().filter(|e| e.code() == Code::Unavailable) }
    })
    .await;
    assert!(
        e.message().contains("selection needs the control plane"),
        "{}",
        e.message()
    );
}
