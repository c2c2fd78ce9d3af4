//! The permission evaluator: given an agent's grants for one tool, may it call the tool
//! now, under which grant, and if not, why not.
//!
//! How several grants for one agent and tool combine (the union, cheapest first):
//! 1. A disabled tool, or an agent lacking the tool's required skills, is refused
//!    whatever the grants say.
//! 2. Expired grants do not count.
//! 3. Any grant that holds now and is not metered (`FULL_ACCESS`, `READ_ONLY` for tools
//!    that do not write, `DATA_RESTRICTED` up to its level, `TIME_RESTRICTED` inside its
//!    hours) allows the call, and the decision names it.
//! 4. Otherwise, `LIMITED_INVOCATIONS` grants allow it if one of them still has budget
//!    today: the decision lists their quotas and the enforcement point (the sidecar)
//!    consumes one call from the first with budget left, atomically across sidecars.
//! 5. A refusal lists what each grant lacked, so an operator can debug it.

use chrono::{DateTime, Datelike, Days, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use crate::model::{Agent, Permission, PermissionType, SideEffects, Tool};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub permission_id: Option<Uuid>,
    pub reason: String,
    /// Non-empty when only `LIMITED_INVOCATIONS` grants allow the call: one of these
    /// must still have budget for it to proceed.
    pub quotas: Vec<Quota>,
}

/// One day's allowance of a `LIMITED_INVOCATIONS` grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub permission_id: Uuid,
    pub limit: u32,
    /// The current day in the grant's time zone.
    pub day: NaiveDate,
    /// The next midnight in the grant's time zone, when the count starts over.
    pub resets_at: DateTime<Utc>,
}

impl Quota {
    /// The counter's name: one per grant and local day.
    pub fn counter_key(&self) -> String {
        format!("{}:{}", self.permission_id, self.day)
    }
}

impl Decision {
    fn deny(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            permission_id: None,
            reason: reason.into(),
            quotas: Vec::new(),
        }
    }
}

/// The grant's time zone; empty means UTC.
pub fn parse_time_zone(name: &str) -> Result<Tz, String> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone (e.g. Europe/Berlin)"))
}

/// The day `now` falls on in `tz`, and the UTC instant that day ends.
pub fn local_day(now: DateTime<Utc>, tz: Tz) -> (NaiveDate, DateTime<Utc>) {
    let day = now.with_timezone(&tz).date_naive();
    let next = day.checked_add_days(Days::new(1)).unwrap_or(day);
    let midnight = next.and_hms_opt(0, 0, 0).unwrap_or_default();
    // Where midnight is skipped by a DST change, the day ends at the first instant that
    // exists after it.
    let resets_at = (0..=3)
        .find_map(|h| {
            tz.from_local_datetime(&(midnight + chrono::Duration::hours(h)))
                .earliest()
        })
        .map_or(now + chrono::Duration::days(1), |t| t.with_timezone(&Utc));
    (day, resets_at)
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
    let mut quotas = Vec::new();
    for g in grants
        .into_iter()
        .filter(|g| g.agent_id == agent.id && g.tool_id == tool.id)
    {
        match holds(g, tool, now) {
            Ok(None) => {
                return Decision {
                    allowed: true,
                    permission_id: Some(g.id),
                    reason: format!("allowed by {} grant {}", g.kind, g.id),
                    quotas: Vec::new(),
                };
            }
            Ok(Some(q)) => quotas.push(q),
            Err(why) => refusals.push(format!("grant {} ({}): {why}", g.id, g.kind)),
        }
    }
    if let Some(first) = quotas.first() {
        let limits: Vec<String> = quotas
            .iter()
            .map(|q| {
                format!(
                    "{} ({} per day, resets {})",
                    q.permission_id,
                    q.limit,
                    q.resets_at.to_rfc3339()
                )
            })
            .collect();
        return Decision {
            allowed: true,
            permission_id: Some(first.permission_id),
            reason: format!(
                "allowed by limited_invocations grant {} while a daily budget lasts",
                limits.join(", ")
            ),
            quotas,
        };
    }
    if refusals.is_empty() {
        Decision::deny(format!("agent {} has no grant for tool {}", agent.name, tool.spec.name))
    } else {
        Decision::deny(refusals.join("; "))
    }
}

/// `Ok(None)`: the grant allows the call outright; `Ok(Some(quota))`: it allows it
/// while the quota lasts; `Err(why)`: it does not allow it now.
fn holds(g: &Permission, tool: &Tool, now: DateTime<Utc>) -> Result<Option<Quota>, String> {
    if let Some(exp) = g.expires_at
        && exp <= now
    {
        return Err(format!("expired at {}", exp.to_rfc3339()));
    }
    match g.kind {
        PermissionType::FullAccess => Ok(None),
        PermissionType::ReadOnly => match tool.spec.side_effects {
            SideEffects::Write => Err("read-only grant, and the tool writes".to_owned()),
            _ => Ok(None),
        },
        PermissionType::DataRestricted => match g.max_sensitivity {
            Some(max) if tool.spec.requirements.data_sensitivity <= max => Ok(None),
            Some(max) => Err(format!(
                "tool sensitivity {} is above the granted {}",
                tool.spec.requirements.data_sensitivity, max
            )),
            None => Err("no max_sensitivity set".to_owned()),
        },
        PermissionType::TimeRestricted => {
            let tz = parse_time_zone(&g.time_zone)?;
            let local = now.with_timezone(&tz);
            if g.allowed_hours.contains(&local.hour()) {
                Ok(None)
            } else {
                Err(format!(
                    "it is {:02}:{:02} on {} in {tz}, outside the allowed hours {:?}",
                    local.hour(),
                    local.minute(),
                    local.weekday(),
                    g.allowed_hours
                ))
            }
        }
        PermissionType::LimitedInvocations => {
            if g.max_invocations_per_day == 0 {
                return Err("a daily limit of 0 allows nothing".to_owned());
            }
            let tz = parse_time_zone(&g.time_zone)?;
            let (day, resets_at) = local_day(now, tz);
            Ok(Some(Quota {
                permission_id: g.id,
                limit: g.max_invocations_per_day,
                day,
                resets_at,
            }))
        }
    }
}

#[cfg(test)]
#[path = "permission_tests.rs"]
mod tests;
