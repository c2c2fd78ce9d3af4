//! Agents and access: agents with their grants and tokens (issue — the new token shown
//! once —, revoke), grant and revoke forms for every permission type with the
//! evaluator's explanation, and the pending access-request queue (approve with the
//! grant's shape, deny with a reason).

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use chrono::Utc;
use serde::Deserialize;
use toolplane_core::convert::{opt_ts, role_from_pb};
use toolplane_proto::v1 as pb;
use uuid::Uuid;

use super::Console;
use super::page::{self, ConsoleError, Layout, PageResult};
use super::session::Viewer;

pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub team: String,
    pub skills: String,
    pub created: String,
}

pub struct TokenRow {
    pub id: String,
    pub role: String,
    pub description: String,
    pub expires: String,
}

#[derive(Template)]
#[template(path = "console/agents.html")]
struct AgentsPage {
    layout: Layout,
    agents: Vec<AgentRow>,
    /// The query string of the next page of agents, or empty at the end.
    next: String,
    other_tokens: Vec<TokenRow>,
    issued: Option<Issued>,
}

/// One agent by id, read from the store (the viewer is an admin or auditor, who may read
/// every agent); `None` for an unknown or deleted one.
pub(crate) async fn agent_by_id(console: &Console, id: &str) -> Result<Option<pb::Agent>, ConsoleError> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Ok(None);
    };
    let agent = console
        .state
        .store
        .get_agent(id)
        .await
        .map_err(|e| ConsoleError::from(tonic::Status::from(crate::error::ApiError::from(e))))?;
    Ok(agent.as_ref().map(toolplane_core::convert::agent_to_pb))
}

/// The names of the agents `ids` names (each looked up once), for tables that show a
/// page of rows naming agents; an unknown id is left out.
pub(crate) async fn agent_names(console: &Console, ids: Vec<String>) -> Result<HashMap<String, String>, ConsoleError> {
    let mut names = HashMap::new();
    for id in ids {
        if names.contains_key(&id) {
            continue;
        }
        if let Some(a) = agent_by_id(console, &id).await? {
            names.insert(id, a.name);
        }
    }
    Ok(names)
}

/// Agents per page of the agents list.
const AGENTS_PAGE: u32 = 50;

#[derive(Deserialize, Default)]
pub struct AgentsQuery {
    #[serde(default)]
    page: String,
}

/// A token just issued: shown on this one response, never again.
pub struct Issued {
    pub id: String,
    pub token: String,
    pub role: String,
    pub expires: String,
}

fn token_row(t: &pb::TokenInfo) -> TokenRow {
    TokenRow {
        id: t.token_id.clone(),
        role: pb::Role::try_from(t.role)
            .map(|r| r.as_str_name().trim_start_matches("ROLE_").to_lowercase())
            .unwrap_or_default(),
        description: t.description.clone(),
        expires: t
            .expires_at
            .as_ref()
            .and_then(|e| chrono::DateTime::from_timestamp(e.seconds, 0))
            .map(|e| e.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default(),
    }
}

/// The active tokens of `role` (admin, sidecar and auditor tokens on the agents page).
async fn tokens_of_role(console: &Console, viewer: &Viewer, role: pb::Role) -> Result<Vec<TokenRow>, ConsoleError> {
    let r = pb::ListTokensRequest {
        role: role as i32,
        ..Default::default()
    };
    Ok(console
        .rpc
        .tokens(&viewer.principal, r)
        .await?
        .iter()
        .map(token_row)
        .collect())
}

async fn agents_page(console: &Console, viewer: &Viewer, page_token: &str, issued: Option<Issued>) -> PageResult {
    let who = &viewer.principal;
    let (agents, next_token) = console.rpc.agents_page(who, page_token, AGENTS_PAGE).await?;
    let rows = agents
        .into_iter()
        .map(|a| AgentRow {
            created: page::time(a.created_at.as_ref()),
            skills: a.skills.join(", "),
            id: a.id,
            name: a.name,
            team: a.team,
        })
        .collect();
    let next = if next_token.is_empty() {
        String::new()
    } else {
        format!(
            "page={}",
            url::form_urlencoded::byte_serialize(next_token.as_bytes()).collect::<String>()
        )
    };
    let mut other_tokens = Vec::new();
    for role in [pb::Role::Admin, pb::Role::Sidecar, pb::Role::Auditor] {
        other_tokens.extend(tokens_of_role(console, viewer, role).await?);
    }
    Ok(page::html(&AgentsPage {
        layout: Layout::of(viewer, "agents"),
        agents: rows,
        next,
        other_tokens,
        issued,
    }))
}

pub async fn list(State(console): State<Arc<Console>>, viewer: Viewer, Query(q): Query<AgentsQuery>) -> PageResult {
    agents_page(&console, &viewer, &q.page, None).await
}

pub struct GrantRow {
    pub id: String,
    pub tool_id: String,
    pub tool: String,
    pub kind: String,
    pub allows: String,
    pub verdict: String,
    pub allowed: bool,
    pub expires: String,
    pub granted_by: String,
}

#[derive(Template)]
#[template(path = "console/agent.html")]
struct AgentPage {
    layout: Layout,
    agent: pb::Agent,
    grants: Vec<GrantRow>,
    tokens: Vec<TokenRow>,
    issued: Option<Issued>,
    /// The evaluator's verdict on a grant just made.
    explained: String,
}

fn kind_name(kind: i32) -> String {
    pb::PermissionType::try_from(kind)
        .map(|k| k.as_str_name().trim_start_matches("PERMISSION_TYPE_").to_lowercase())
        .unwrap_or_default()
}

/// What a grant's shape allows, in words.
pub fn allows(p: &pb::Permission) -> String {
    let tz = if p.time_zone.is_empty() { "UTC" } else { &p.time_zone };
    let mut s = match pb::PermissionType::try_from(p.r#type) {
        Ok(pb::PermissionType::FullAccess) => "every call".to_owned(),
        Ok(pb::PermissionType::ReadOnly) => "calls only while the tool has no side effects".to_owned(),
        Ok(pb::PermissionType::LimitedInvocations) => {
            format!(
                "up to {} calls a day ({tz} days), counted across all sidecars",
                p.max_invocations_per_day
            )
        }
        Ok(pb::PermissionType::TimeRestricted) => {
            let hours: Vec<String> = p.allowed_hours.iter().map(|h| format!("{h:02}h")).collect();
            format!("calls during {} ({tz})", hours.join(", "))
        }
        Ok(pb::PermissionType::DataRestricted) => {
            let s = pb::DataSensitivity::try_from(p.max_sensitivity)
                .map(|s| s.as_str_name().trim_start_matches("DATA_SENSITIVITY_").to_lowercase())
                .unwrap_or_default();
            format!("calls while the tool's data sensitivity is at most {s}")
        }
        _ => "nothing (unknown type)".to_owned(),
    };
    if let Some(t) = &p.expires_at {
        s.push_str(&format!(", until {} UTC", page::time(Some(t))));
    }
    s
}

async fn agent_page(
    console: &Console,
    viewer: &Viewer,
    id: &str,
    issued: Option<Issued>,
    explained: String,
) -> PageResult {
    let who = &viewer.principal;
    let agent = agent_by_id(console, id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("agent {id} not found")))?;
    let permissions = console.rpc.permissions(who, id, "").await?;
    let tool_names = super::overview::names_of_tools(console, who, permissions.iter().map(|p| p.tool_id.clone())).await;
    let mut verdicts: HashMap<String, (bool, String)> = HashMap::new();
    for p in &permissions {
        if !verdicts.contains_key(&p.tool_id) {
            let c = console.rpc.check(who, id, &p.tool_id).await?;
            verdicts.insert(p.tool_id.clone(), (c.allowed, c.reason));
        }
    }
    let grants = permissions
        .iter()
        .map(|p| GrantRow {
            id: p.id.clone(),
            tool_id: p.tool_id.clone(),
            tool: tool_names
                .get(&p.tool_id)
                .cloned()
                .unwrap_or_else(|| page::short(&p.tool_id)),
            kind: kind_name(p.r#type),
            allows: allows(p),
            verdict: verdicts.get(&p.tool_id).map(|v| v.1.clone()).unwrap_or_default(),
            allowed: verdicts.get(&p.tool_id).is_some_and(|v| v.0),
            expires: page::time(p.expires_at.as_ref()),
            granted_by: p.granted_by.clone(),
        })
        .collect();
    let mine = pb::ListTokensRequest {
        agent_id: id.to_owned(),
        ..Default::default()
    };
    let tokens = console.rpc.tokens(who, mine).await?.iter().map(token_row).collect();
    Ok(page::html(&AgentPage {
        layout: Layout::of(viewer, "agents"),
        agent,
        grants,
        tokens,
        issued,
        explained,
    }))
}

pub async fn show(State(console): State<Arc<Console>>, viewer: Viewer, Path(id): Path<String>) -> PageResult {
    agent_page(&console, &viewer, &id, None, String::new()).await
}

#[derive(Deserialize)]
pub struct IssueForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    agent_id: String,
    #[serde(default)]
    ttl_hours: String,
    #[serde(default)]
    description: String,
}

pub async fn issue_token(State(console): State<Arc<Console>>, viewer: Viewer, Form(f): Form<IssueForm>) -> PageResult {
    viewer.check_csrf(&f.csrf)?;
    let role = pb::Role::from_str_name(&format!("ROLE_{}", f.role.to_uppercase()))
        .filter(|r| role_from_pb(*r as i32).is_some())
        .ok_or_else(|| ConsoleError::BadRequest("role: choose admin, agent, sidecar or auditor".into()))?;
    let ttl_seconds = match f.ttl_hours.trim() {
        "" => 0,
        h => h
            .parse::<u32>()
            .ok()
            .and_then(|h| h.checked_mul(3600))
            .ok_or_else(|| ConsoleError::BadRequest("ttl_hours: a whole number of hours".into()))?,
    };
    let r = console
        .rpc
        .issue_token(
            &viewer.principal,
            pb::IssueTokenRequest {
                role: role as i32,
                agent_id: f.agent_id.trim().to_owned(),
                ttl_seconds,
                description: if f.description.trim().is_empty() {
                    format!("console, by {}", viewer.who())
                } else {
                    f.description.trim().to_owned()
                },
            },
        )
        .await?;
    let issued = Some(Issued {
        id: r.token_id,
        token: r.token,
        role: f.role.to_lowercase(),
        expires: page::time(r.expires_at.as_ref()),
    });
    if f.agent_id.trim().is_empty() {
        agents_page(&console, &viewer, "", issued).await
    } else {
        agent_page(&console, &viewer, f.agent_id.trim(), issued, String::new()).await
    }
}

#[derive(Deserialize)]
pub struct RevokeTokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token_id: String,
    #[serde(default)]
    back: String,
}

/// Where to go after a form: an agent's page or the agents list, nowhere else.
fn back_to(agent_id: &str) -> String {
    match Uuid::parse_str(agent_id.trim()) {
        Ok(id) => format!("/agents/{id}"),
        Err(_) => "/agents".to_owned(),
    }
}

pub async fn revoke_token(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Form(f): Form<RevokeTokenForm>,
) -> PageResult {
    viewer.check_csrf(&f.csrf)?;
    console.rpc.revoke_token(&viewer.principal, f.token_id.trim()).await?;
    Ok(Redirect::to(&back_to(&f.back)).into_response())
}

/// A grant's shape as the forms send it (every field a string, empty meaning unset).
#[derive(Deserialize, Default)]
pub struct ShapeForm {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    max_per_day: String,
    #[serde(default)]
    hours: String,
    #[serde(default)]
    time_zone: String,
    #[serde(default)]
    max_sensitivity: String,
    #[serde(default)]
    expires_in_hours: String,
}

impl ShapeForm {
    /// The grant on the wire; the service checks it field by field.
    fn permission(&self, agent_id: &str, tool_id: &str) -> Result<pb::Permission, ConsoleError> {
        let bad = |m: &str| ConsoleError::BadRequest(m.to_owned());
        let kind = pb::PermissionType::from_str_name(&format!("PERMISSION_TYPE_{}", self.kind.trim().to_uppercase()))
            .ok_or_else(|| {
            bad("kind: choose full_access, read_only, limited_invocations, time_restricted or data_restricted")
        })?;
        let max_per_day = match self.max_per_day.trim() {
            "" => 0,
            n => n.parse().map_err(|_| bad("max_per_day: a whole number"))?,
        };
        let hours = self
            .hours
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| h.parse::<u32>().map_err(|_| bad("hours: comma-separated hours 0-23")))
            .collect::<Result<Vec<_>, _>>()?;
        let sensitivity = match self.max_sensitivity.trim() {
            "" => pb::DataSensitivity::Unspecified,
            s => pb::DataSensitivity::from_str_name(&format!("DATA_SENSITIVITY_{}", s.to_uppercase()))
                .ok_or_else(|| bad("max_sensitivity: public, internal, confidential or restricted"))?,
        };
        let expires_at = match self.expires_in_hours.trim() {
            "" => None,
            h => {
                let h: i64 = h
                    .parse()
                    .map_err(|_| bad("expires_in_hours: a whole number of hours"))?;
                let at = Utc::now()
                    .checked_add_signed(
                        chrono::Duration::try_hours(h).ok_or_else(|| bad("expires_in_hours: too large"))?,
                    )
                    .ok_or_else(|| bad("expires_in_hours: too large"))?;
                opt_ts(Some(at))
            }
        };
        Ok(pb::Permission {
            agent_id: agent_id.to_owned(),
            tool_id: tool_id.to_owned(),
            r#type: kind as i32,
            max_invocations_per_day: max_per_day,
            allowed_hours: hours,
            time_zone: self.time_zone.trim().to_owned(),
            max_sensitivity: sensitivity as i32,
            expires_at,
            ..Default::default()
        })
    }
}

#[derive(Deserialize)]
pub struct GrantForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    agent_id: String,
    /// A tool's name or id.
    #[serde(default)]
    tool: String,
    #[serde(flatten)]
    shape: ShapeForm,
}

pub async fn grant(State(console): State<Arc<Console>>, viewer: Viewer, Form(f): Form<GrantForm>) -> PageResult {
    viewer.check_csrf(&f.csrf)?;
    let who = &viewer.principal;
    let tool = f.tool.trim();
    let tool_id = match Uuid::parse_str(tool) {
        Ok(id) => id.to_string(),
        Err(_) => console.rpc.tool_by_name(who, tool).await?.id,
    };
    let agent_id = f.agent_id.trim();
    let granted = console.rpc.grant(who, f.shape.permission(agent_id, &tool_id)?).await?;
    let c = console.rpc.check(who, agent_id, &tool_id).await?;
    let explained = format!(
        "Granted {} ({}). The evaluator now says: {} — {}",
        kind_name(granted.r#type),
        allows(&granted),
        if c.allowed { "allowed" } else { "refused" },
        c.reason
    );
    agent_page(&console, &viewer, agent_id, None, explained).await
}

#[derive(Deserialize)]
pub struct RevokeGrantForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    permission_id: String,
    #[serde(default)]
    back: String,
}

pub async fn revoke_grant(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Form(f): Form<RevokeGrantForm>,
) -> PageResult {
    viewer.check_csrf(&f.csrf)?;
    console
        .rpc
        .revoke_grant(&viewer.principal, f.permission_id.trim())
        .await?;
    Ok(Redirect::to(&back_to(&f.back)).into_response())
}

pub struct RequestRow {
    pub id: String,
    pub agent_id: String,
    pub agent: String,
    pub tool_id: String,
    pub tool: String,
    pub justification: String,
    pub requested: String,
    pub status: String,
    pub reviewed_by: String,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "console/access.html")]
struct AccessPage {
    layout: Layout,
    pending: Vec<RequestRow>,
    reviewed: Vec<RequestRow>,
    /// Query strings of the next pages of each list, or empty at their ends.
    next_pending: String,
    next_reviewed: String,
}

/// Requests per page of the access-request lists.
const REQUESTS_PAGE: u32 = 50;

#[derive(Deserialize, Default)]
pub struct AccessQuery {
    /// Cursor of the pending list.
    #[serde(default)]
    pending: String,
    /// Cursor of the list of all requests the reviewed ones are shown from.
    #[serde(default)]
    reviewed: String,
}

pub async fn access_queue(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(q): Query<AccessQuery>,
) -> PageResult {
    let who = &viewer.principal;
    let (pending, pending_next) = console
        .rpc
        .access_requests(who, pb::AccessRequestStatus::Pending, &q.pending, REQUESTS_PAGE)
        .await?;
    // Reviewed requests, oldest first, a page of all requests at a time (pending ones
    // left out of the table: they are above).
    let (any, reviewed_next) = console
        .rpc
        .access_requests(who, pb::AccessRequestStatus::Unspecified, &q.reviewed, REQUESTS_PAGE)
        .await?;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let next = |pending: &str, reviewed: &str| format!("pending={}&reviewed={}", enc(pending), enc(reviewed));
    let next_pending = if pending_next.is_empty() {
        String::new()
    } else {
        next(&pending_next, &q.reviewed)
    };
    let next_reviewed = if reviewed_next.is_empty() {
        String::new()
    } else {
        next(&q.pending, &reviewed_next)
    };
    let pending_status = pb::AccessRequestStatus::Pending as i32;
    let reviewed: Vec<pb::AccessRequest> = any.into_iter().filter(|r| r.status != pending_status).collect();
    let all: Vec<&pb::AccessRequest> = pending.iter().chain(&reviewed).collect();
    let agents = agent_names(&console, all.iter().map(|r| r.agent_id.clone()).collect()).await?;
    let tools = super::overview::names_of_tools(&console, who, all.iter().map(|r| r.tool_id.clone())).await;
    let row = |r: &pb::AccessRequest| RequestRow {
        id: r.id.clone(),
        agent_id: r.agent_id.clone(),
        agent: agents
            .get(&r.agent_id)
            .cloned()
            .unwrap_or_else(|| page::short(&r.agent_id)),
        tool_id: r.tool_id.clone(),
        tool: tools
            .get(&r.tool_id)
            .cloned()
            .unwrap_or_else(|| page::short(&r.tool_id)),
        justification: r.justification.clone(),
        requested: page::time(r.requested_at.as_ref()),
        status: pb::AccessRequestStatus::try_from(r.status)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("ACCESS_REQUEST_STATUS_")
                    .to_lowercase()
            })
            .unwrap_or_default(),
        reviewed_by: r.reviewed_by.clone(),
        reason: r.review_reason.clone(),
    };
    let pending = pending.iter().map(row).collect();
    let reviewed = reviewed.iter().map(row).collect();
    Ok(page::html(&AccessPage {
        layout: Layout::of(&viewer, "access"),
        pending,
        reviewed,
        next_pending,
        next_reviewed,
    }))
}

#[derive(Deserialize)]
pub struct ReviewForm {
    #[serde(default)]
    csrf: String,
    /// `approve` or `deny`.
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
    #[serde(flatten)]
    shape: ShapeForm,
}

pub async fn review(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<ReviewForm>,
) -> PageResult {
    viewer.check_csrf(&f.csrf)?;
    let approve = match f.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(ConsoleError::BadRequest("decision: approve or deny".into())),
    };
    let grant = if approve {
        // The request names the agent and the tool; the form gives the grant's shape.
        Some(f.shape.permission("", "")?)
    } else {
        None
    };
    console
        .rpc
        .review(
            &viewer.principal,
            pb::ReviewAccessRequestRequest {
                request_id: id,
                approve,
                reason: f.reason.trim().to_owned(),
                grant,
            },
        )
        .await?;
    Ok(Redirect::to("/access").into_response())
}
