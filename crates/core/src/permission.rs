//! The permission evaluator: given an agent's grants for one tool, may it call the tool
//! now, under which grant, and if not, why not.
//!
//! Several grants for one agent and tool combine as a union: the call is allowed if any
//! unexpired grant allows it, and the decision names that grant. A refusal lists what
//! each grant lacked, so an operator can debug it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{Agent, Permission, PermissionType, SideEffects, Tool};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub permission_id: Option<Uuid>,
    pub reason: String,
}

impl Decision {
    fn deny(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            permission_id: None,
            reason: reason.into(),
        }
    }
}

/// Permission types this version enforces. Grants of other types are refused at grant
/// time, and fail closed here.
pub fn is_enforced(kind: PermissionType) -> bool {
    matches!(
        kind,
        PermissionType::FullAccess | PermissionType::ReadOnly | PermissionType::DataRestricted
    )
}

/// Skills the tool requires that the agent lacks.
pub fn missing_skills(agent: &Agent, tool: &Tool) -> Vec<String> {
    tool.spec
        .requirements
        .required_agent_skills
        .iter()
        .filter(|s| !agent.skills.contains(s))
        .cloned()
        .collect()
}

/// `grants` may hold grants of other agents and tools; only `agent`'s for `tool` count.
pub fn evaluate<'a>(
    agent: &Agent,
    tool: &Tool,
    grants: impl IntoIterator<Item = &'a Permission>,
    now: DateTime<Utc>,
) -> Decision {
    if !tool.spec.enabled {
        return Decision::deny(format!("tool {} is disabled", tool.spec.name));
    }
    let missing = missing_skills(agent, tool);
    if !missing.is_empty() {
        return Decision::deny(format!(
            "agent {} lacks the skills tool {} requires: {}",
            agent.name,
            tool.spec.name,
            missing.join(", ")
        ));
    }
    let mut refusals = Vec::new();
    for g in grants
        .into_iter()
        .filter(|g| g.agent_id == agent.id && g.tool_id == tool.id)
    {
        match refusal(g, tool, now) {
            None => {
                return Decision {
                    allowed: true,
                    permission_id: Some(g.id),
                    reason: format!("allowed by {} grant {}", g.kind, g.id),
                };
            }
            Some(why) => refusals.push(format!("grant {} ({}): {why}", g.id, g.kind)),
        }
    }
    if refusals.is_empty() {
        Decision::deny(format!("agent {} has no grant for tool {}", agent.name, tool.spec.name))
    } else {
        Decision::deny(refusals.join("; "))
    }
}

fn refusal(g: &Permission, tool: &Tool, now: DateTime<Utc>) -> Option<String> {
    if let Some(exp) = g.expires_at
        && exp <= now
    {
        return Some(format!("expired at {}", exp.to_rfc3339()));
    }
    match g.kind {
        PermissionType::FullAccess => None,
        PermissionType::ReadOnly => {
            (tool.spec.side_effects == SideEffects::Write).then(|| "read-only grant, and the tool writes".to_owned())
        }
        PermissionType::DataRestricted => match g.max_sensitivity {
            Some(max) if tool.spec.requirements.data_sensitivity <= max => None,
            Some(max) => Some(format!(
                "tool sensitivity {} is above the granted {}",
                tool.spec.requirements.data_sensitivity, max
            )),
            None => Some("no max_sensitivity set".to_owned()),
        },
        PermissionType::LimitedInvocations | PermissionType::TimeRestricted => {
            Some("this permission type is not enforced by this version; refused".to_owned())
        }
    }
}

#[cfg(test)]
#[path = "permission_tests.rs"]
mod tests;
