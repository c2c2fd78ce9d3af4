//! Selection: a playground (a task, as a chosen agent → the ranked tools, their scores,
//! the reasoning, and whether the agent may use each) and the recent selections with
//! whether the call that followed succeeded.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use serde::Deserialize;
use toolplane_proto::v1 as pb;

use super::Console;
use super::page::{self, ConsoleError, Layout, PageResult};
use super::session::Viewer;

#[derive(Deserialize, Default)]
pub struct PlayQuery {
    #[serde(default)]
    task: String,
    #[serde(default)]
    agent_id: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    capabilities: String,
}

pub struct Ranked {
    pub rank: usize,
    pub id: String,
    pub name: String,
    pub matching: String,
    pub suitability: String,
    pub combined: String,
    pub access: String,
    pub allowed: bool,
}

pub struct Recent {
    pub at: String,
    pub agent: String,
    pub category: String,
    pub task: String,
    pub tool: String,
    pub confidence: String,
    pub outcome: String,
}

#[derive(Template)]
#[template(path = "console/selection.html")]
struct SelectionPage {
    layout: Layout,
    q: PlayQuery,
    agents: Vec<(String, String)>,
    ranked: Vec<Ranked>,
    confidence: String,
    reasoning: String,
    recent: Vec<Recent>,
}

/// Agents the playground's picker offers (any other by its id in the URL, `agent_id`).
const PICKER_AGENTS: u32 = 100;

pub async fn playground(State(console): State<Arc<Console>>, viewer: Viewer, Query(q): Query<PlayQuery>) -> PageResult {
    let who = &viewer.principal;
    // The picker offers the first page of agents, and the chosen one wherever it is.
    let (first, _) = console.rpc.agents_page(who, "", PICKER_AGENTS).await?;
    let mut agents: Vec<(String, String)> = first.into_iter().map(|a| (a.id, a.name)).collect();
    let chosen = q.agent_id.trim();
    if !chosen.is_empty()
        && !agents.iter().any(|(id, _)| id == chosen)
        && let Some(a) = super::agents::agent_by_id(&console, chosen).await?
    {
        agents.push((a.id, a.name));
    }
    let (mut ranked, mut confidence, mut reasoning) = (Vec::new(), String::new(), String::new());
    if !q.task.trim().is_empty() {
        let r = pb::SelectToolRequest {
            task_description: q.task.trim().to_owned(),
            required_capabilities: q
                .capabilities
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            task_category: q.category.trim().to_owned(),
            max_alternatives: 9,
            ..Default::default()
        };
        let s = match console.rpc.select(who, r).await {
            Ok(s) => s,
            // Nothing fits: an answer, not an error page.
            Err(e) if e.code() == tonic::Code::NotFound => pb::SelectToolResponse {
                reasoning: e.message().to_owned(),
                ..Default::default()
            },
            Err(e) => return Err(e.into()),
        };
        confidence = format!("{:.2}", s.confidence);
        reasoning = s.reasoning;
        for (i, t) in s.primary.into_iter().chain(s.alternatives).enumerate() {
            let tool = t.tool.unwrap_or_default();
            // The selection is the catalog's; whether this agent may use each tool is
            // the permission evaluator's answer, as a sidecar would get it.
            let (allowed, access) = match q.agent_id.trim() {
                "" => (true, String::new()),
                agent => match console.rpc.check(who, agent, &tool.id).await {
                    Ok(c) => (c.allowed, c.reason),
                    Err(e) => return Err(ConsoleError::from(e)),
                },
            };
            ranked.push(Ranked {
                rank: i + 1,
                id: tool.id,
                name: tool.name,
                matching: format!("{:.3}", t.match_score),
                suitability: format!("{:.3}", t.suitability_score),
                combined: format!("{:.3}", t.combined_score),
                access,
                allowed,
            });
        }
    }
    let store = &console.state.store;
    let err = |e| ConsoleError::from(tonic::Status::from(crate::error::ApiError::from(e)));
    let mut log = store.selection_log(None, 20).await.map_err(err)?;
    log.reverse();
    let ids: Vec<uuid::Uuid> = log.iter().map(|e| e.selection_id).collect();
    let outcomes = store.selection_outcomes(&ids).await.map_err(err)?;
    let tools = super::overview::names_of_tools(&console, who, log.iter().map(|e| e.primary_tool_id.to_string())).await;
    let names = super::agents::agent_names(
        &console,
        log.iter().filter_map(|e| e.agent_id.map(|a| a.to_string())).collect(),
    )
    .await?;
    let recent = log
        .iter()
        .map(|e| {
            let agent = e.agent_id.map(|a| a.to_string()).unwrap_or_default();
            let tool = e.primary_tool_id.to_string();
            Recent {
                at: e.selected_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                agent: names.get(&agent).cloned().unwrap_or_else(|| page::short(&agent)),
                category: e.task_category.clone(),
                task: e.task_description.chars().take(120).collect(),
                tool: tools.get(&tool).cloned().unwrap_or_else(|| page::short(&tool)),
                confidence: format!("{:.2}", e.confidence),
                outcome: outcomes
                    .get(&e.selection_id)
                    .cloned()
                    .unwrap_or_else(|| "no call yet".to_owned()),
            }
        })
        .collect();
    Ok(page::html(&SelectionPage {
        layout: Layout::of(&viewer, "selection"),
        q,
        agents,
        ranked,
        confidence,
        reasoning,
        recent,
    }))
}
