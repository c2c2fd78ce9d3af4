//! Audit: the trail filtered by agent, tool, task, action, outcome and time, paged by
//! cursor, each record with its chain position; "verify chain"; the compliance report
//! per framework with CSV and JSON download.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use toolplane_core::convert::ts;
use toolplane_proto::v1 as pb;

use super::Console;
use super::page::{self, ConsoleError, Layout, PageResult};
use super::session::Viewer;

const PAGE_SIZE: u32 = 50;

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    pub agent_id: String,
    #[serde(default)]
    pub tool_id: String,
    #[serde(default)]
    pub task_id: String,
    #[serde(default)]
    pub action: String,
    /// `ok`, `failed` or empty.
    #[serde(default)]
    pub outcome: String,
    /// `YYYY-MM-DDTHH:MM` (a datetime-local input), UTC.
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub cursor: String,
}

pub struct AuditRow {
    pub sequence: u64,
    pub chain: String,
    pub chain_short: String,
    pub chain_sequence: u64,
    pub hash: String,
    pub at: String,
    pub action: String,
    pub actor: String,
    pub actor_short: String,
    pub agent_id: String,
    pub agent_short: String,
    pub tool_id: String,
    pub tool_short: String,
    pub task_id: String,
    pub success: bool,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    layout: Layout,
    q: AuditQuery,
    actions: Vec<String>,
    rows: Vec<AuditRow>,
    next: String,
    verified: Option<pb::VerifyAuditChainResponse>,
}

fn time_field(field: &str, v: &str) -> Result<Option<prost_types::Timestamp>, ConsoleError> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let parsed = NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S"))
        .map(|t| t.and_utc())
        .or_else(|_| DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)))
        .map_err(|_| ConsoleError::BadRequest(format!("{field}: a time as YYYY-MM-DDTHH:MM (UTC)")))?;
    Ok(Some(ts(parsed)))
}

fn action_name(a: i32) -> String {
    pb::AuditAction::try_from(a)
        .map(|a| a.as_str_name().trim_start_matches("AUDIT_ACTION_").to_lowercase())
        .unwrap_or_default()
}

/// `sidecar:01a2…` for `sidecar:<uuid>`, the first 8 characters of a bare id; names as they are.
fn shorten(id: &str) -> String {
    let (prefix, rest) = id.rsplit_once(':').map_or(("", id), |(p, r)| (p, r));
    if uuid::Uuid::parse_str(rest).is_err() {
        return id.to_owned();
    }
    let short = super::page::short(rest);
    if prefix.is_empty() {
        short
    } else {
        format!("{prefix}:{short}")
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn trail_page(
    console: &Console,
    viewer: &Viewer,
    q: AuditQuery,
    verified: Option<pb::VerifyAuditChainResponse>,
) -> PageResult {
    let action = match q.action.trim() {
        "" => pb::AuditAction::Unspecified,
        a => pb::AuditAction::from_str_name(&format!("AUDIT_ACTION_{}", a.to_uppercase()))
            .ok_or_else(|| ConsoleError::BadRequest(format!("action: no audit action {a:?}")))?,
    };
    let success = match q.outcome.as_str() {
        "ok" => Some(true),
        "failed" => Some(false),
        _ => None,
    };
    let r = pb::QueryAuditTrailRequest {
        agent_id: q.agent_id.trim().to_owned(),
        tool_id: q.tool_id.trim().to_owned(),
        task_id: q.task_id.trim().to_owned(),
        action: action as i32,
        success,
        since: time_field("since", &q.since)?,
        until: time_field("until", &q.until)?,
        cursor: q.cursor.trim().to_owned(),
        limit: PAGE_SIZE,
        newest_first: true,
        ..Default::default()
    };
    let (records, cursor) = console.rpc.audit_page(&viewer.principal, r).await?;
    let next = if cursor.is_empty() {
        String::new()
    } else {
        format!(
            "agent_id={}&tool_id={}&task_id={}&action={}&outcome={}&since={}&until={}&cursor={}",
            enc(&q.agent_id),
            enc(&q.tool_id),
            enc(&q.task_id),
            enc(&q.action),
            enc(&q.outcome),
            enc(&q.since),
            enc(&q.until),
            enc(&cursor)
        )
    };
    let rows = records
        .into_iter()
        .map(|r| {
            let e = r.event.unwrap_or_default();
            AuditRow {
                sequence: r.sequence,
                chain_short: shorten(&r.chain),
                chain: r.chain,
                chain_sequence: r.chain_sequence,
                hash: r.hash.chars().take(12).collect(),
                at: page::time(e.occurred_at.as_ref()),
                action: action_name(e.action),
                actor_short: shorten(&e.actor_id),
                actor: e.actor_id,
                agent_short: shorten(&e.agent_id),
                agent_id: e.agent_id,
                tool_short: shorten(&e.tool_id),
                tool_id: e.tool_id,
                task_id: e.task_id,
                success: e.success,
                detail: e.detail,
            }
        })
        .collect();
    let actions = (1..=20).map(action_name).filter(|a| !a.is_empty()).collect();
    Ok(page::html(&AuditPage {
        layout: Layout::of(viewer, "audit"),
        q,
        actions,
        rows,
        next,
        verified,
    }))
}

pub async fn trail(State(console): State<Arc<Console>>, viewer: Viewer, Query(q): Query<AuditQuery>) -> PageResult {
    trail_page(&console, &viewer, q, None).await
}

/// Verifying reads only, so it is a GET (an auditor may run it too).
pub async fn verify(State(console): State<Arc<Console>>, viewer: Viewer) -> PageResult {
    let verified = console.rpc.verify_chain(&viewer.principal).await?;
    trail_page(&console, &viewer, AuditQuery::default(), Some(verified)).await
}

#[derive(Deserialize)]
pub struct ReportQuery {
    #[serde(default)]
    framework: String,
    /// `csv`, `json` or empty (show).
    #[serde(default)]
    format: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

#[derive(Template)]
#[template(path = "console/report.html")]
struct ReportPage {
    layout: Layout,
    framework: String,
    since: String,
    until: String,
    report: pb::GenerateComplianceReportResponse,
    download: String,
    /// The report's agents and tools as (id, name).
    agents: Vec<(String, String)>,
    tools: Vec<(String, String)>,
}

/// Names shown for at most this many of a report's tools (the rest by id).
const NAMED_TOOLS: usize = 200;

pub async fn report(State(console): State<Arc<Console>>, viewer: Viewer, Query(q): Query<ReportQuery>) -> PageResult {
    let framework = q.framework.trim().to_owned();
    if framework.is_empty() {
        return Err(ConsoleError::BadRequest(
            "framework: name one (e.g. SOC2, HIPAA)".into(),
        ));
    }
    let r = pb::GenerateComplianceReportRequest {
        framework: framework.clone(),
        since: time_field("since", &q.since)?,
        until: time_field("until", &q.until)?,
    };
    let report = console.rpc.compliance_report(&viewer.principal, r).await?;
    let json = toolplane_core::json::struct_to_json(report.report.clone());
    let file: String = framework
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let attach = |ext: &str| {
        HeaderValue::from_str(&format!("attachment; filename=\"compliance-{file}.{ext}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
    };
    match q.format.as_str() {
        "csv" => {
            let csv = json.get("csv").and_then(|c| c.as_str()).unwrap_or_default().to_owned();
            Ok((
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/csv; charset=utf-8"),
                    ),
                    (header::CONTENT_DISPOSITION, attach("csv")),
                ],
                csv,
            )
                .into_response())
        }
        "json" => {
            let mut json = json;
            if let Some(o) = json.as_object_mut() {
                o.remove("csv");
            }
            Ok((
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (header::CONTENT_DISPOSITION, attach("json")),
                ],
                page::pretty(&json),
            )
                .into_response())
        }
        _ => {
            let who = &viewer.principal;
            let agent_names =
                super::agents::agent_names(&console, report.agents.iter().take(NAMED_TOOLS).cloned().collect()).await?;
            let tool_names =
                super::overview::names_of_tools(&console, who, report.tools.iter().take(NAMED_TOOLS).cloned()).await;
            let named = |ids: &[String], names: &std::collections::HashMap<String, String>| {
                ids.iter()
                    .map(|id| (id.clone(), names.get(id).cloned().unwrap_or_else(|| id.clone())))
                    .collect::<Vec<_>>()
            };
            let agents = named(&report.agents, &agent_names);
            let tools = named(&report.tools, &tool_names);
            let download = format!(
                "framework={}&since={}&until={}",
                enc(&framework),
                enc(&q.since),
                enc(&q.until)
            );
            Ok(page::html(&ReportPage {
                layout: Layout::of(&viewer, "audit"),
                framework,
                since: q.since,
                until: q.until,
                report,
                download,
                agents,
                tools,
            }))
        }
    }
}
