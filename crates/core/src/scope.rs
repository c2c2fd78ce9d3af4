//! Scoped snapshots: the part of the catalog a sidecar serving some agents holds, and
//! what to send it when the catalog or its scope changes.
//!
//! A sidecar holds the tools its agents can use (their grants, the fallbacks those
//! name, and tools it asked for on demand), with only their permissions, credentials
//! and fallback strategies; agents and agents' token digests are whole (small), so it
//! authenticates any agent and knows whose tools to ask for. Other tokens (admins,
//! auditors, other sidecars) are left out: they call no tools, and with one token per
//! sidecar they would make every snapshot grow with the fleet. What a change costs a sidecar is then
//! computed from the catalog's one delta per revision and the scope's own permissions,
//! never from a pass over the whole catalog per sidecar.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use uuid::Uuid;

use crate::delta::SnapshotDelta;
use crate::model::{Role, Scope, Snapshot, TokenRecord};

/// A catalog snapshot with the lookups scoping needs, built once per revision.
#[derive(Debug)]
pub struct Catalog {
    pub snapshot: Arc<Snapshot>,
    tools: HashMap<Uuid, usize>,
    tool_names: HashMap<String, Uuid>,
    agents: HashSet<Uuid>,
    agent_names: HashMap<String, Uuid>,
    /// Agent id to the positions of its permissions.
    grants: HashMap<Uuid, Vec<usize>>,
    /// Permission id to its agent.
    permission_agents: HashMap<Uuid, Uuid>,
    credentials: HashMap<Uuid, usize>,
    fallbacks: HashMap<Uuid, usize>,
    tokens: HashMap<Uuid, usize>,
}

/// Longest agent or tool reference (an id or a name) a scope request may carry.
pub const MAX_REF_CHARS: usize = 256;

impl Catalog {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        let s = &snapshot;
        let mut grants: HashMap<Uuid, Vec<usize>> = HashMap::new();
        for (i, p) in s.permissions.iter().enumerate() {
            grants.entry(p.agent_id).or_default().push(i);
        }
        Self {
            tools: s.tools.iter().enumerate().map(|(i, t)| (t.id, i)).collect(),
            tool_names: s.tools.iter().map(|t| (t.spec.name.clone(), t.id)).collect(),
            agents: s.agents.iter().map(|a| a.id).collect(),
            agent_names: s.agents.iter().map(|a| (a.name.clone(), a.id)).collect(),
            grants,
            permission_agents: s.permissions.iter().map(|p| (p.id, p.agent_id)).collect(),
            credentials: s.credentials.iter().enumerate().map(|(i, c)| (c.tool_id, i)).collect(),
            fallbacks: s.fallbacks.iter().enumerate().map(|(i, f)| (f.tool_id, i)).collect(),
            tokens: s.tokens.iter().enumerate().map(|(i, t)| (t.id, i)).collect(),
            snapshot,
        }
    }

    pub fn revision(&self) -> u64 {
        self.snapshot.revision
    }

    pub fn token(&self, id: Uuid) -> Option<&TokenRecord> {
        self.tokens.get(&id).map(|&i| &self.snapshot.tokens[i])
    }

    pub fn has_tool(&self, id: Uuid) -> bool {
        self.tools.contains_key(&id)
    }

    /// The agent an id or name refers to. An id is taken as it is, known or not: a
    /// sidecar asking for an agent registered a moment later holds its tools once its
    /// grants arrive, and one asking for an unknown id learns there are none.
    pub fn agent_ref(&self, r: &str) -> Option<Uuid> {
        if r.len() > MAX_REF_CHARS {
            return None;
        }
        Uuid::parse_str(r).ok().or_else(|| self.agent_names.get(r).copied())
    }

    /// The existing tool an id or name refers to.
    pub fn tool_ref(&self, r: &str) -> Option<Uuid> {
        if r.len() > MAX_REF_CHARS {
            return None;
        }
        Uuid::parse_str(r)
            .ok()
            .filter(|id| self.tools.contains_key(id))
            .or_else(|| self.tool_names.get(r).copied())
    }

    /// Whether the agent exists.
    pub fn has_agent(&self, id: Uuid) -> bool {
        self.agents.contains(&id)
    }

    /// The tools `scope` holds: its agents' granted tools, the tools it asked for, and
    /// the fallbacks the strategies of all of those name (that exist).
    pub fn tools_of(&self, scope: &Scope) -> HashSet<Uuid> {
        let s = &self.snapshot;
        let mut held: HashSet<Uuid> = scope
            .agents
            .iter()
            .flat_map(|a| self.grants.get(a).into_iter().flatten())
            .map(|&i| s.permissions[i].tool_id)
            .chain(scope.tools.iter().copied())
            .filter(|t| self.tools.contains_key(t))
            .collect();
        let fallbacks: Vec<Uuid> = held
            .iter()
            .filter_map(|t| self.fallbacks.get(t))
            .flat_map(|&i| s.fallbacks[i].fallback_tool_ids.iter().copied())
            .filter(|t| self.tools.contains_key(t))
            .collect();
        held.extend(fallbacks);
        held
    }

    /// The snapshot a sidecar under `scope` holds, and its tools.
    pub fn scoped(&self, scope: &Scope) -> (Snapshot, HashSet<Uuid>) {
        let s = &self.snapshot;
        let held = self.tools_of(scope);
        let snapshot = Snapshot {
            revision: s.revision,
            tools: held.iter().map(|t| s.tools[self.tools[t]].clone()).collect(),
            permissions: scope
                .agents
                .iter()
                .flat_map(|a| self.grants.get(a).into_iter().flatten())
                .map(|&i| s.permissions[i].clone())
                .collect(),
            agents: s.agents.clone(),
            tokens: s.tokens.iter().filter(|t| is_agents(t)).cloned().collect(),
            credentials: held
                .iter()
                .filter_map(|t| self.credentials.get(t))
                .map(|&i| s.credentials[i].clone())
                .collect(),
            fallbacks: held
                .iter()
                .filter_map(|t| self.fallbacks.get(t))
                .map(|&i| s.fallbacks[i].clone())
                .collect(),
            scope: Some(scope.clone()),
        };
        (snapshot, held)
    }
}

/// Whether a scoped sidecar holds the token: an agent's (only agents call tools).
fn is_agents(t: &TokenRecord) -> bool {
    t.role == Role::Agent
}

/// What a sidecar holds, as its session remembers it: the scoped view of `catalog`,
/// under the revision number `revision` (older than the catalog's when the changes
/// since did not concern the sidecar and so were not sent).
#[derive(Debug, Clone)]
pub struct Held {
    pub catalog: Arc<Catalog>,
    pub revision: u64,
    pub scope: Scope,
    pub tools: HashSet<Uuid>,
}

impl Held {
    /// What a sidecar holds after receiving `catalog.scoped(scope)`.
    pub fn scoped(catalog: &Arc<Catalog>, scope: &Scope) -> (Snapshot, Self) {
        let (snapshot, tools) = catalog.scoped(scope);
        let held = Self {
            catalog: catalog.clone(),
            revision: catalog.revision(),
            scope: scope.clone(),
            tools,
        };
        (snapshot, held)
    }

    /// What a sidecar holding the whole catalog holds (no scope, no tool set).
    pub fn whole(catalog: &Arc<Catalog>) -> Self {
        Self {
            catalog: catalog.clone(),
            revision: catalog.revision(),
            scope: Scope::default(),
            tools: HashSet::new(),
        }
    }

    /// The sidecar received nothing for the changes up to `now`'s catalog (its view
    /// did not change): deltas continue from the revision it holds.
    pub fn unsent(mut now: Self, held: &Self) -> Self {
        now.revision = held.revision;
        now
    }
}

/// The delta that brings a sidecar from `held` to `new` under `scope`, given
/// `catalog_delta` (the catalog's own delta from `held`'s catalog to `new`, computed
/// once for every sidecar). Costs the scope's permissions and the catalog delta, not
/// the catalog. An empty delta (see [`SnapshotDelta::is_empty`]) need not be sent: then
/// keep [`Held::unsent`].
pub fn scoped_delta(
    held: &Held,
    new: &Arc<Catalog>,
    catalog_delta: &SnapshotDelta,
    scope: &Scope,
) -> (SnapshotDelta, Held) {
    let s = &new.snapshot;
    let tools = new.tools_of(scope);
    let fresh = |t: &Uuid| !held.tools.contains(t);
    let changed_tools: HashSet<Uuid> = catalog_delta.upserted_tools.iter().map(|t| t.id).collect();
    // Credentials and strategies to send: a newly held tool's, and a held tool's that
    // changed.
    let fresh_or = |changed: HashSet<Uuid>| -> HashSet<Uuid> {
        tools
            .iter()
            .filter(|t| fresh(t) || changed.contains(t))
            .copied()
            .collect()
    };
    let send_credentials = fresh_or(catalog_delta.upserted_credentials.iter().map(|c| c.tool_id).collect());
    let send_fallbacks = fresh_or(catalog_delta.upserted_fallbacks.iter().map(|f| f.tool_id).collect());
    let gone: Vec<Uuid> = held.tools.iter().filter(|t| !tools.contains(t)).copied().collect();
    let kept: HashSet<Uuid> = held.tools.intersection(&tools).copied().collect();
    let new_agents: Vec<Uuid> = scope.agents.difference(&held.scope.agents).copied().collect();

    let mut upserted_permissions: Vec<_> = catalog_delta
        .upserted_permissions
        .iter()
        .filter(|p| scope.agents.contains(&p.agent_id) && !new_agents.contains(&p.agent_id))
        .cloned()
        .collect();
    upserted_permissions.extend(
        new_agents
            .iter()
            .flat_map(|a| new.grants.get(a).into_iter().flatten())
            .map(|&i| s.permissions[i].clone()),
    );
    let mut removed_permissions: Vec<Uuid> = catalog_delta
        .removed_permissions
        .iter()
        .filter(|id| {
            held.catalog
                .permission_agents
                .get(id)
                .is_some_and(|a| held.scope.agents.contains(a))
        })
        .copied()
        .collect();
    // Agents that left the scope take their permissions with them.
    for a in held.scope.agents.difference(&scope.agents) {
        removed_permissions.extend(
            held.catalog
                .grants
                .get(a)
                .into_iter()
                .flatten()
                .map(|&i| held.catalog.snapshot.permissions[i].id),
        );
    }

    let delta = SnapshotDelta {
        from_revision: held.revision,
        revision: new.revision(),
        upserted_tools: tools
            .iter()
            .filter(|t| fresh(t) || changed_tools.contains(t))
            .map(|t| s.tools[new.tools[t]].clone())
            .collect(),
        removed_tools: gone.clone(),
        upserted_permissions,
        removed_permissions,
        upserted_agents: catalog_delta.upserted_agents.clone(),
        removed_agents: catalog_delta.removed_agents.clone(),
        upserted_tokens: catalog_delta
            .upserted_tokens
            .iter()
            .filter(|t| is_agents(t))
            .cloned()
            .collect(),
        removed_tokens: catalog_delta
            .removed_tokens
            .iter()
            .filter(|id| held.catalog.token(**id).is_some_and(is_agents))
            .copied()
            .collect(),
        upserted_credentials: per_tool_upserts(&send_credentials, &new.credentials, &s.credentials),
        removed_credentials: per_tool_removals(
            &catalog_delta.removed_credentials,
            &kept,
            &gone,
            &held.catalog.credentials,
        ),
        upserted_fallbacks: per_tool_upserts(&send_fallbacks, &new.fallbacks, &s.fallbacks),
        removed_fallbacks: per_tool_removals(&catalog_delta.removed_fallbacks, &kept, &gone, &held.catalog.fallbacks),
        scope: (held.scope != *scope).then(|| scope.clone()),
    };
    let now = Held {
        catalog: new.clone(),
        revision: new.revision(),
        scope: scope.clone(),
        tools,
    };
    (delta, now)
}

/// The per-tool items (credentials, strategies) of the tools in `send`, from `items`.
fn per_tool_upserts<T: Clone>(send: &HashSet<Uuid>, at: &HashMap<Uuid, usize>, items: &[T]) -> Vec<T> {
    send.iter()
        .filter_map(|t| at.get(t))
        .map(|&i| items[i].clone())
        .collect()
}

/// Per-tool items to remove: those the catalog removed for tools held before and still
/// held, and those of tools no longer held that had one (`had`: the old catalog's).
fn per_tool_removals(removed: &[Uuid], kept: &HashSet<Uuid>, gone: &[Uuid], had: &HashMap<Uuid, usize>) -> Vec<Uuid> {
    removed
        .iter()
        .filter(|t| kept.contains(t))
        .chain(gone.iter().filter(|t| had.contains_key(t)))
        .copied()
        .collect()
}

#[cfg(test)]
#[path = "scope_tests.rs"]
mod tests;
