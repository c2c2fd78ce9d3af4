//! `Identity`'s admin surface beyond creation: changing and deleting agents, listing
//! tokens (metadata only) and listing agents a page at a time.

use chrono::Utc;
use toolplane_core::Violations;
use toolplane_core::convert::{parse_budget, role_from_pb};
use toolplane_core::model::{Agent, AuditAction, Principal, TokenRecord};
use toolplane_proto::v1 as pb;

use super::IdentityService;
use crate::error::{ApiError, ApiResult};
use crate::services::paging::PageRequest;
use crate::services::{opt_uuid, required, uuid_field};
use crate::storage::{AgentRemoval, TokenFilter};

pub const MAX_SKILLS: usize = 64;
pub const MAX_TEAM_LEN: usize = 128;
/// Most calls per minute an agent's own limit may allow.
pub const MAX_CALLS_PER_MINUTE: u32 = 1_000_000;

/// Checks the fields an admin sets on an agent (at creation or update), `prefix`
/// naming where they sit in the request.
pub(super) fn check_agent_fields(v: &mut Violations, prefix: &str, skills: &[String], team: &str, cpm: u32) {
    if skills.len() > MAX_SKILLS {
        v.push(
            format!("{prefix}skills"),
            format!("has more than the limit of {MAX_SKILLS} items"),
        );
    }
    if let Some(i) = skills.iter().position(|s| s.is_empty() || s.len() > 128) {
        v.push(format!("{prefix}skills[{i}]"), "must be 1 to 128 characters");
    }
    if team.len() > MAX_TEAM_LEN {
        v.push(
            format!("{prefix}team"),
            format!("is longer than the limit of {MAX_TEAM_LEN} characters"),
        );
    }
    if cpm > MAX_CALLS_PER_MINUTE {
        v.push(
            format!("{prefix}calls_per_minute"),
            format!("must be at most {MAX_CALLS_PER_MINUTE}"),
        );
    }
}

/// The fields `UpdateAgent` may change.
const UPDATABLE: [&str; 5] = [
    "skills",
    "team",
    "task_memory_opt_out",
    "calls_per_minute",
    "daily_spend_budget",
];

impl IdentityService {
    pub(super) async fn update_agent(&self, who: &Principal, req: pb::UpdateAgentRequest) -> ApiResult<Agent> {
        let patch = required("agent", req.agent)?;
        let id = uuid_field("agent.id", &patch.id)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Violations::default();
        if paths.is_empty() {
            v.push(
                "update_mask",
                format!("name the fields to change (any of {})", UPDATABLE.join(", ")),
            );
        }
        for (i, p) in paths.iter().enumerate() {
            if !UPDATABLE.contains(&p.as_str()) {
                let why = if ["id", "name", "created_at"].contains(&p.as_str()) {
                    format!("{p:?} cannot be changed")
                } else {
                    format!(
                        "{p:?} is not a field of Agent that can be changed ({})",
                        UPDATABLE.join(", ")
                    )
                };
                v.push(format!("update_mask.paths[{i}]"), why);
            }
        }
        let has = |f: &str| paths.iter().any(|p| p == f);
        check_agent_fields(
            &mut v,
            "agent.",
            if has("skills") { &patch.skills } else { &[] },
            if has("team") { &patch.team } else { "" },
            if has("calls_per_minute") {
                patch.calls_per_minute
            } else {
                0
            },
        );
        let budget = if has("daily_spend_budget") {
            match parse_budget("agent.daily_spend_budget", &patch.daily_spend_budget) {
                Ok(b) => b,
                Err(e) => {
                    v.0.extend(e.0);
                    None
                }
            }
        } else {
            None
        };
        v.into_result()?;
        let current = self
            .state
            .store
            .get_agent(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("agent {id} not found")))?;
        let mut next = current.clone();
        if has("skills") {
            next.skills = patch.skills;
        }
        if has("team") {
            next.team = patch.team;
        }
        if has("task_memory_opt_out") {
            next.task_memory_opt_out = patch.task_memory_opt_out;
        }
        if has("calls_per_minute") {
            next.calls_per_minute = patch.calls_per_minute;
        }
        if has("daily_spend_budget") {
            next.daily_spend_budget = budget;
        }
        let detail = format!("updated agent {}: {}", next.name, describe_changes(&current, &next));
        let audit = self
            .state
            .admin_event(who, AuditAction::AgentUpdated, Some(id), None, detail);
        if !self.state.store.update_agent(&next, &audit).await? {
            return Err(ApiError::NotFound(format!("agent {id} not found")));
        }
        self.state.changed();
        tracing::info!(agent = %next.name, %id, actor = %who.actor_id(), "agent updated");
        Ok(next)
    }

    pub(super) async fn delete_agent(&self, who: &Principal, req: pb::DeleteAgentRequest) -> ApiResult<AgentRemoval> {
        let id = uuid_field("agent_id", &req.agent_id)?;
        let audit = |r: &AgentRemoval| {
            let mut events = vec![self.state.admin_event(
                who,
                AuditAction::AgentDeleted,
                Some(id),
                None,
                format!(
                    "deleted agent {}: {} tokens and {} grants revoked, {} pending access requests denied",
                    r.agent.name,
                    r.tokens_revoked.len(),
                    r.grants_revoked.len(),
                    r.access_requests_denied.len()
                ),
            )];
            events.extend(r.tokens_revoked.iter().map(|t| {
                self.state.admin_event(
                    who,
                    AuditAction::TokenRevoked,
                    Some(id),
                    None,
                    format!("revoked token {t} (agent {} deleted)", r.agent.name),
                )
            }));
            events.extend(r.grants_revoked.iter().map(|(g, tool)| {
                self.state.admin_event(
                    who,
                    AuditAction::PermissionRevoked,
                    Some(id),
                    Some(*tool),
                    format!("revoked grant {g} (agent {} deleted)", r.agent.name),
                )
            }));
            events
        };
        let removal = self
            .state
            .store
            .delete_agent(id, Utc::now(), &audit)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("agent {id} not found")))?;
        // Sidecars drop its tokens and grants with the next delta.
        self.state.changed();
        tracing::info!(agent = %removal.agent.name, %id, actor = %who.actor_id(), "agent deleted");
        Ok(removal)
    }

    pub(super) async fn list_tokens(&self, req: pb::ListTokensRequest) -> ApiResult<(Vec<TokenRecord>, String)> {
        let page = PageRequest::parse("tokens", req.page_size, &req.page_token)?;
        let filter = TokenFilter {
            agent_id: opt_uuid("agent_id", &req.agent_id)?,
            role: match req.role {
                0 => None,
                r => Some(role_from_pb(r).ok_or_else(|| Violations::single("role", format!("{r} is not a Role")))?),
            },
            include_inactive: req.include_inactive,
        };
        let tokens = self
            .state
            .store
            .list_tokens(&filter, Utc::now(), page.after_id()?, page.fetch())
            .await?;
        Ok(page.finish(tokens, |t| t.id.to_string()))
    }

    pub(super) async fn list_agents(&self, req: pb::ListAgentsRequest) -> ApiResult<(Vec<Agent>, String)> {
        let page = PageRequest::parse("agents", req.page_size, &req.page_token)?;
        let team = (!req.team.is_empty()).then_some(req.team.as_str());
        let agents = self
            .state
            .store
            .agents_page(team, page.after.as_deref(), page.fetch())
            .await?;
        Ok(page.finish(agents, |a| a.name.clone()))
    }
}

/// "team: a -> b, calls_per_minute: 0 -> 60" (what an update changed).
fn describe_changes(old: &Agent, new: &Agent) -> String {
    let mut out = Vec::new();
    if old.skills != new.skills {
        out.push(format!("skills: {:?} -> {:?}", old.skills, new.skills));
    }
    if old.team != new.team {
        out.push(format!("team: {:?} -> {:?}", old.team, new.team));
    }
    if old.task_memory_opt_out != new.task_memory_opt_out {
        out.push(format!(
            "task_memory_opt_out: {} -> {}",
            old.task_memory_opt_out, new.task_memory_opt_out
        ));
    }
    if old.calls_per_minute != new.calls_per_minute {
        out.push(format!(
            "calls_per_minute: {} -> {}",
            old.calls_per_minute, new.calls_per_minute
        ));
    }
    if old.daily_spend_budget != new.daily_spend_budget {
        let show = |d: Option<rust_decimal::Decimal>| d.map_or_else(|| "none".to_owned(), |d| d.to_string());
        out.push(format!(
            "daily_spend_budget: {} -> {}",
            show(old.daily_spend_budget),
            show(new.daily_spend_budget)
        ));
    }
    if out.is_empty() {
        "no change".to_owned()
    } else {
        out.join(", ")
    }
}
