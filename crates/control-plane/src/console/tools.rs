//! Tools: the catalog (search, filters, pages by cursor) and a tool's page (versions
//! and the diff between two, schemas, examples, fallback, rate limit, effectiveness
//! per category, enable/disable).

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use serde_json::Value;
use toolplane_core::convert::tool_spec_from_pb;
use toolplane_core::json::struct_to_json;
use toolplane_proto::v1 as pb;

use super::page::{self, ConsoleError, Layout, PageResult};
use super::session::Viewer;
use super::{Console, charts};

const PAGE_SIZE: u32 = 50;

#[derive(Deserialize, Default)]
pub struct ToolQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    capability: String,
    #[serde(default)]
    provider: String,
    /// `yes`, `no` or empty (both).
    #[serde(default)]
    enabled: String,
    #[serde(default)]
    page: String,
}

pub struct ToolRow {
    pub id: String,
    pub name: String,
    pub category: String,
    pub provider: String,
    pub description: String,
    pub capabilities: String,
    pub version: u32,
    pub enabled: bool,
}

#[derive(Template)]
#[template(path = "console/tools.html")]
struct ToolsPage {
    layout: Layout,
    q: ToolQuery,
    tools: Vec<ToolRow>,
    /// The query string of the next page, or empty at the end.
    next: String,
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub async fn list(State(console): State<Arc<Console>>, viewer: Viewer, Query(q): Query<ToolQuery>) -> PageResult {
    let enabled = match q.enabled.as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    };
    let r = pb::ListToolsRequest {
        category: q.category.trim().to_owned(),
        capability: q.capability.trim().to_owned(),
        enabled,
        provider: q.provider.trim().to_owned(),
        text: q.q.trim().to_owned(),
        page_size: PAGE_SIZE,
        page_token: q.page.clone(),
    };
    let listed = console.rpc.list_tools(&viewer.principal, r).await?;
    let next = if listed.next_page_token.is_empty() {
        String::new()
    } else {
        format!(
            "q={}&category={}&capability={}&provider={}&enabled={}&page={}",
            enc(&q.q),
            enc(&q.category),
            enc(&q.capability),
            enc(&q.provider),
            enc(&q.enabled),
            enc(&listed.next_page_token)
        )
    };
    let tools = listed
        .tools
        .into_iter()
        .map(|t| ToolRow {
            description: t.description.chars().take(140).collect(),
            capabilities: t.capabilities.join(", "),
            id: t.id,
            name: t.name,
            category: t.category,
            provider: t.provider,
            version: t.version,
            enabled: t.enabled,
        })
        .collect();
    Ok(page::html(&ToolsPage {
        layout: Layout::of(&viewer, "tools"),
        q,
        tools,
        next,
    }))
}

#[derive(Deserialize, Default)]
pub struct DiffQuery {
    #[serde(default)]
    a: Option<u32>,
    #[serde(default)]
    b: Option<u32>,
}

pub struct DiffRow {
    pub field: String,
    pub before: String,
    pub after: String,
}

pub struct EffRow {
    pub category: String,
    pub invocations: u64,
    pub success: String,
    pub latency: String,
    pub quality: String,
    pub trend: String,
}

pub struct Example {
    pub description: String,
    pub input: String,
    pub output: String,
}

#[derive(Template)]
#[template(path = "console/tool.html")]
struct ToolPage {
    layout: Layout,
    tool: pb::Tool,
    capabilities: String,
    side_effects: String,
    sensitivity: String,
    rate_limit: String,
    timeout: String,
    input_schema: String,
    output_schema: String,
    examples: Vec<Example>,
    fallback: String,
    versions: Vec<u32>,
    a: u32,
    b: u32,
    diff: Vec<DiffRow>,
    effectiveness: Vec<EffRow>,
    chart: String,
}

fn spec_json(t: &pb::Tool) -> serde_json::Map<String, Value> {
    match tool_spec_from_pb(t.clone()).map(serde_json::to_value) {
        Ok(Ok(Value::Object(m))) => m,
        _ => serde_json::Map::new(),
    }
}

fn display(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => page::pretty(v),
    }
}

pub async fn show_tool(console: &Console, viewer: &Viewer, id: &str, d: DiffQuery) -> PageResult {
    let who = &viewer.principal;
    let tool = console.rpc.get_tool(who, id, 0).await?;
    let latest = tool.version.max(1);
    let b = d.b.unwrap_or(latest).clamp(1, latest);
    let a = d.a.unwrap_or(b.saturating_sub(1).max(1)).clamp(1, latest);
    let diff = if a == b {
        Vec::new()
    } else {
        let (before, after) = (
            console.rpc.get_tool(who, &tool.id, a).await?,
            console.rpc.get_tool(who, &tool.id, b).await?,
        );
        let (before, after) = (spec_json(&before), spec_json(&after));
        let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| DiffRow {
                field: k.clone(),
                before: display(before.get(k)),
                after: display(after.get(k)),
            })
            .collect()
    };
    let fallback = match console.rpc.fallback(who, &tool.id).await? {
        None => "none".to_owned(),
        Some(f) => {
            let mut names = Vec::new();
            for fid in &f.fallback_tool_ids {
                names.push(match console.rpc.get_tool(who, fid, 0).await {
                    Ok(t) => t.name,
                    Err(_) => page::short(fid),
                });
            }
            let mode = pb::DegradationMode::try_from(f.mode)
                .map(|m| m.as_str_name().trim_start_matches("DEGRADATION_MODE_").to_lowercase())
                .unwrap_or_default();
            format!(
                "then {} — up to {} attempts, backoff {}–{} ms, mode {}",
                if names.is_empty() {
                    "nothing".to_owned()
                } else {
                    names.join(", ")
                },
                f.max_attempts,
                f.initial_backoff_ms,
                f.max_backoff_ms,
                mode
            )
        }
    };
    let mut by_category: std::collections::BTreeMap<String, (u64, f64, f64, f64, String)> = Default::default();
    for r in console.rpc.effectiveness(who, &tool.id).await? {
        // Per category over all agents: weight by invocations.
        let e = by_category.entry(r.task_category.clone()).or_default();
        let n = r.invocations as f64;
        e.1 += r.success_rate * n;
        e.2 += r.ewma_duration_ms * n;
        e.3 += r.quality * n;
        e.0 += r.invocations;
        e.4 = pb::Trend::try_from(r.trend)
            .map(|t| t.as_str_name().trim_start_matches("TREND_").to_lowercase())
            .unwrap_or_default();
    }
    let mut chart_rows = Vec::new();
    let effectiveness = by_category
        .into_iter()
        .map(|(category, (n, s, l, q, trend))| {
            let d = (n as f64).max(1.0);
            chart_rows.push((category.clone(), s / d, n));
            EffRow {
                category: if category.is_empty() {
                    "(none)".to_owned()
                } else {
                    category
                },
                invocations: n,
                success: format!("{:.0} %", 100.0 * s / d),
                latency: format!("{:.0} ms", l / d),
                quality: if q > 0.0 {
                    format!("{:.2}", q / d)
                } else {
                    "—".to_owned()
                },
                trend,
            }
        })
        .collect();
    let req = tool.requirements.clone().unwrap_or_default();
    let schema = tool.schema.clone().unwrap_or_default();
    let examples = schema
        .examples
        .iter()
        .map(|e| Example {
            description: e.description.clone(),
            input: page::pretty(&e.input.clone().map(toolplane_core::json::value_from_pb)),
            output: page::pretty(&e.expected_output.clone().map(toolplane_core::json::value_from_pb)),
        })
        .collect();
    let name = |n: &str, prefix: &str| n.trim_start_matches(prefix).to_lowercase();
    Ok(page::html(&ToolPage {
        layout: Layout::of(viewer, "tools"),
        capabilities: tool.capabilities.join(", "),
        side_effects: name(tool.side_effects().as_str_name(), "SIDE_EFFECTS_"),
        sensitivity: name(req.data_sensitivity().as_str_name(), "DATA_SENSITIVITY_"),
        rate_limit: if req.rate_limit_rpm == 0 {
            "none".to_owned()
        } else {
            format!("{} calls / min", req.rate_limit_rpm)
        },
        timeout: format!("{} ms", req.timeout_ms),
        input_schema: page::pretty(&struct_to_json(schema.input_schema.clone())),
        output_schema: page::pretty(&struct_to_json(schema.output_schema.clone())),
        examples,
        fallback,
        versions: (1..=latest).rev().collect(),
        a,
        b,
        diff,
        chart: charts::success_by_category(&chart_rows),
        effectiveness,
        tool,
    }))
}

pub async fn show(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(d): Query<DiffQuery>,
) -> PageResult {
    show_tool(&console, &viewer, &id, d).await
}

#[derive(Deserialize)]
pub struct EnabledForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    enabled: String,
}

pub async fn set_enabled(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<EnabledForm>,
) -> PageResult {
    viewer.check_csrf(&f.csrf)?;
    let enabled = match f.enabled.as_str() {
        "true" => true,
        "false" => false,
        _ => return Err(ConsoleError::BadRequest("enabled: say true or false".into())),
    };
    console.rpc.set_tool_enabled(&viewer.principal, &id, enabled).await?;
    Ok(Redirect::to(&format!("/tools/{}", enc(&id))).into_response())
}
