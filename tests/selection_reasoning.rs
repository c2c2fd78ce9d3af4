//! `SelectTool`'s `reasoning` names only signals that had evidence: on a fresh install
//! (real control plane on PostgreSQL, no call made yet) it claims no past tasks and no
//! learned suitability and says text relevance alone decided; after real calls through
//! a real sidecar (outcomes streamed, the task remembered) it names both, with their
//! numbers.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use toolplane_core::json::json_to_struct;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, channel, executor, http_tool};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane, sidecar};
use toolplane_tests::tool_server::ToolServer;

const WAIT: Duration = Duration::from_secs(20);
const CALLS: usize = 3;

fn tool(name: &str, description: &str, endpoint: &str) -> pb::Tool {
    let mut t = http_tool(name, endpoint);
    t.description = description.to_owned();
    t.category = "general".to_owned();
    t.capabilities = vec![];
    t
}

fn ask(text: &str) -> pb::SelectToolRequest {
    pb::SelectToolRequest {
        task_description: text.to_owned(),
        task_category: "weather".to_owned(),
        max_alternatives: 2,
        ..Default::default()
    }
}

fn primary(r: &pb::SelectToolResponse) -> String {
    r.primary.as_ref().unwrap().tool.as_ref().unwrap().name.clone()
}

#[tokio::test]
async fn reasoning_names_history_and_learning_only_once_they_exist() {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let forecast = admin
        .register(tool(
            "weather_forecast",
            "Daily weather forecast for a city: temperature, rain and wind",
            &tools.url("/word_count"),
        ))
        .await
        .unwrap();
    let tracker = admin
        .register(tool(
            "shipment_tracker",
            "Track a parcel shipment by its tracking number, also when weather delays it",
            &tools.url("/word_count"),
        ))
        .await
        .unwrap();
    let agent = admin.agent("forecaster").await;
    admin.grant_full(&agent.id, &forecast.id).await;
    admin.grant_full(&agent.id, &tracker.id).await;
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let mut selector = pb::tool_selector_client::ToolSelectorClient::new(channel(&cp.url(), Some(&token)).await);
    let query = "will it rain in Paris tomorrow? weather forecast";

    // A fresh install: no call, no remembered task — and the explanation says so.
    let r = selector.select_tool(ask(query)).await.unwrap().into_inner();
    assert_eq!(primary(&r), "weather_forecast", "{}", r.reasoning);
    assert!(
        r.reasoning.starts_with("chose weather_forecast (combined "),
        "{}",
        r.reasoning
    );
    for claim in ["past tasks", "suitability", "calls"] {
        assert!(
            !r.reasoning.contains(claim),
            "claims {claim:?} on a fresh install: {}",
            r.reasoning
        );
    }
    assert!(r.reasoning.contains("rests on text relevance alone"), "{}", r.reasoning);
    assert!(r.reasoning.contains("over shipment_tracker"), "{}", r.reasoning);

    // History: successful calls through a real sidecar after a selection, so the
    // outcomes are learned and the task remembered for the forecast.
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar(&cp, &sidecar_token).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    let earlier = selector
        .select_tool(ask("will it rain in Lisbon tomorrow"))
        .await
        .unwrap()
        .into_inner();
    let call = pb::InvokeRequest {
        tool: Some(pb::invoke_request::Tool::ToolId(forecast.id.clone())),
        parameters: json_to_struct(&json!({"text": "Lisbon"})),
        task_category: "weather".to_owned(),
        selection_id: earlier.selection_id.clone(),
        ..Default::default()
    };
    eventually("the sidecar to serve", WAIT, || {
        let (mut ex, call) = (ex.clone(), call.clone());
        async move { ex.invoke(call).await.ok() }
    })
    .await;
    for _ in 1..CALLS {
        let r = ex
            .clone()
            .invoke(call.clone())
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap();
        assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
    }
    let told = format!("from {CALLS} of this agent's calls");
    let r = eventually("the outcomes and the task to be learned", WAIT, || {
        let mut s = selector.clone();
        let told = told.clone();
        async move {
            let r = s.select_tool(ask(query)).await.unwrap().into_inner();
            (r.reasoning.contains(&told) && r.reasoning.contains("past tasks")).then_some(r)
        }
    })
    .await;
    assert_eq!(primary(&r), "weather_forecast", "{}", r.reasoning);
    assert!(
        r.reasoning.contains("similar past tasks 1.00 (of 1 remembered for it)"),
        "{}",
        r.reasoning
    );
    let suitability = r.primary.as_ref().unwrap().suitability_score;
    assert!(
        r.reasoning.contains(&format!("suitability {suitability:.2} {told}")),
        "{}",
        r.reasoning
    );
    assert!(!r.reasoning.contains("rests on"), "{}", r.reasoning);
    // The tracker has neither: nothing is claimed for it.
    let over = r.reasoning.split("; over ").nth(1).unwrap();
    assert!(over.starts_with("shipment_tracker"), "{}", r.reasoning);
    assert!(
        !over.contains("calls") && !over.contains("remembered"),
        "{}",
        r.reasoning
    );
}
