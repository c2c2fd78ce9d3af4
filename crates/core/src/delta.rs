//! Snapshot deltas: what changed between two snapshots, so the control plane pushes a
//! change instead of the whole registry, and a sidecar applies it to what it holds.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use uuid::Uuid;

use crate::model::{Agent, Credential, FallbackStrategy, Permission, Snapshot, TokenRecord, Tool};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotDelta {
    pub from_revision: u64,
    pub revision: u64,
    pub upserted_tools: Vec<Arc<Tool>>,
    pub removed_tools: Vec<Uuid>,
    pub upserted_permissions: Vec<Permission>,
    pub removed_permissions: Vec<Uuid>,
    pub upserted_agents: Vec<Agent>,
    pub removed_agents: Vec<Uuid>,
    pub upserted_tokens: Vec<TokenRecord>,
    pub removed_tokens: Vec<Uuid>,
    pub upserted_credentials: Vec<Credential>,
    /// Tool ids whose credential is gone.
    pub removed_credentials: Vec<Uuid>,
    pub upserted_fallbacks: Vec<FallbackStrategy>,
    /// Tool ids whose fallback strategy is gone.
    pub removed_fallbacks: Vec<Uuid>,
    /// The scope from `revision` on; `None`: unchanged.
    pub scope: Option<crate::model::Scope>,
}

impl SnapshotDelta {
    pub fn is_empty(&self) -> bool {
        self.upserted_tools.is_empty()
            && self.removed_tools.is_empty()
            && self.upserted_permissions.is_empty()
            && self.removed_permissions.is_empty()
            && self.upserted_agents.is_empty()
            && self.removed_agents.is_empty()
            && self.upserted_tokens.is_empty()
            && self.removed_tokens.is_empty()
            && self.upserted_credentials.is_empty()
            && self.removed_credentials.is_empty()
            && self.upserted_fallbacks.is_empty()
            && self.removed_fallbacks.is_empty()
            && self.scope.is_none()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("delta from revision {delta_from} does not apply to revision {held}")]
pub struct RevisionMismatch {
    pub held: u64,
    pub delta_from: u64,
}

fn diff_by<T: Clone + PartialEq, K: Eq + Hash + Copy>(old: &[T], new: &[T], key: fn(&T) -> K) -> (Vec<T>, Vec<K>) {
    diff_by_with(old, new, key, |a, b| a == b)
}

/// [`diff_by`] with `same` saying whether an item is unchanged.
fn diff_by_with<T: Clone, K: Eq + Hash + Copy>(
    old: &[T],
    new: &[T],
    key: fn(&T) -> K,
    same: fn(&T, &T) -> bool,
) -> (Vec<T>, Vec<K>) {
    let before: HashMap<K, &T> = old.iter().map(|t| (key(t), t)).collect();
    let after: HashSet<K> = new.iter().map(key).collect();
    let upserted = new
        .iter()
        .filter(|t| before.get(&key(t)).is_none_or(|b| !same(b, t)))
        .cloned()
        .collect();
    let removed = old.iter().map(key).filter(|k| !after.contains(k)).collect();
    (upserted, removed)
}

fn apply_by<T, K: Eq + Hash + Copy>(items: &mut Vec<T>, upserted: Vec<T>, removed: &[K], key: fn(&T) -> K) {
    let gone: HashSet<K> = removed.iter().copied().chain(upserted.iter().map(key)).collect();
    items.retain(|t| !gone.contains(&key(t)));
    items.extend(upserted);
}

/// What turns `old` into `new`.
pub fn diff(old: &Snapshot, new: &Snapshot) -> SnapshotDelta {
    // A tool shared with the old snapshot is unchanged without comparing its schemas.
    let (upserted_tools, removed_tools) =
        diff_by_with(&old.tools, &new.tools, |t| t.id, |a, b| Arc::ptr_eq(a, b) || a == b);
    let (upserted_permissions, removed_permissions) = diff_by(&old.permissions, &new.permissions, |p| p.id);
    let (upserted_agents, removed_agents) = diff_by(&old.agents, &new.agents, |a| a.id);
    let (upserted_tokens, removed_tokens) = diff_by(&old.tokens, &new.tokens, |t| t.id);
    let (upserted_credentials, removed_credentials) = diff_by(&old.credentials, &new.credentials, |c| c.tool_id);
    let (upserted_fallbacks, removed_fallbacks) = diff_by(&old.fallbacks, &new.fallbacks, |f| f.tool_id);
    SnapshotDelta {
        from_revision: old.revision,
        revision: new.revision,
        upserted_tools,
        removed_tools,
        upserted_permissions,
        removed_permissions,
        upserted_agents,
        removed_agents,
        upserted_tokens,
        removed_tokens,
        upserted_credentials,
        removed_credentials,
        upserted_fallbacks,
        removed_fallbacks,
        scope: (old.scope != new.scope).then(|| new.scope.clone().unwrap_or_default()),
    }
}

/// Applies `delta` to `snapshot`, which must be at `delta.from_revision`.
pub fn apply(snapshot: &mut Snapshot, delta: SnapshotDelta) -> Result<(), RevisionMismatch> {
    if snapshot.revision != delta.from_revision {
        return Err(RevisionMismatch {
            held: snapshot.revision,
            delta_from: delta.from_revision,
        });
    }
    apply_by(&mut snapshot.tools, delta.upserted_tools, &delta.removed_tools, |t| {
        t.id
    });
    apply_by(
        &mut snapshot.permissions,
        delta.upserted_permissions,
        &delta.removed_permissions,
        |p| p.id,
    );
    apply_by(
        &mut snapshot.agents,
        delta.upserted_agents,
        &delta.removed_agents,
        |a| a.id,
    );
    apply_by(
        &mut snapshot.tokens,
        delta.upserted_tokens,
        &delta.removed_tokens,
        |t| t.id,
    );
    apply_by(
        &mut snapshot.credentials,
        delta.upserted_credentials,
        &delta.removed_credentials,
        |c| c.tool_id,
    );
    apply_by(
        &mut snapshot.fallbacks,
        delta.upserted_fallbacks,
        &delta.removed_fallbacks,
        |f| f.tool_id,
    );
    if delta.scope.is_some() {
        snapshot.scope = delta.scope;
    }
    snapshot.revision = delta.revision;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PermissionType;
    use crate::testutil::{agent, grant, tool};

    fn sorted(mut s: Snapshot) -> Snapshot {
        s.tools.sort_by_key(|t| t.id);
        s.permissions.sort_by_key(|p| p.id);
        s.agents.sort_by_key(|a| a.id);
        s
    }

    #[test]
    fn applying_the_diff_yields_the_new_snapshot() {
        let (a, b) = (agent("a"), agent("b"));
        let (t1, t2, t3) = (tool("t1"), tool("t2"), tool("t3"));
        let g1 = grant(&a, &t1, PermissionType::FullAccess);
        let old = Snapshot {
            revision: 5,
            tools: vec![t1.clone().into(), t2.clone().into()],
            permissions: vec![g1.clone()],
            agents: vec![a.clone()],
            ..Default::default()
        };
        let mut t2b = t2.clone();
        t2b.version = 2;
        let g2 = grant(&b, &t3, PermissionType::ReadOnly);
        let new = Snapshot {
            revision: 9,
            tools: vec![t2b.clone().into(), t3.clone().into()],
            permissions: vec![g2.clone()],
            agents: vec![a.clone(), b.clone()],
            ..Default::default()
        };
        let d = diff(&old, &new);
        assert_eq!(d.removed_tools, vec![t1.id]);
        assert_eq!(d.upserted_tools.len(), 2, "changed t2 and new t3; unchanged nothing");
        assert_eq!(d.upserted_agents, vec![b]);
        let mut held = old.clone();
        apply(&mut held, d.clone()).unwrap();
        assert_eq!(sorted(held), sorted(new.clone()));
        assert!(diff(&new, &new).is_empty());
        let mut stale = old;
        stale.revision = 4;
        assert_eq!(apply(&mut stale, d), Err(RevisionMismatch { held: 4, delta_from: 5 }));
    }

    /// Learned statistics move without a new version; the delta must still carry the
    /// tool, or sidecars order fallbacks by numbers frozen at the last admin change.
    #[test]
    fn a_tool_whose_learned_statistics_moved_is_in_the_delta() {
        let (t1, t2) = (tool("t1"), tool("t2"));
        let old = Snapshot {
            revision: 1,
            tools: vec![t1.clone().into(), t2.clone().into()],
            ..Default::default()
        };
        let mut learned = t1.clone();
        learned.spec.reliability_score = 0.4;
        learned.spec.average_latency_ms = 900;
        let new = Snapshot {
            revision: 2,
            tools: vec![learned.clone().into(), t2.into()],
            ..Default::default()
        };
        let d = diff(&old, &new);
        assert_eq!(d.upserted_tools, vec![Arc::new(learned)]);
        let mut held = old;
        apply(&mut held, d).unwrap();
        assert_eq!(held.tools[1].spec.reliability_score, 0.4);
    }
}
