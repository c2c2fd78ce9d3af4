//! The registry/permission snapshot the sidecar serves from, indexed for the hot path
//! (schemas compiled once per tool version), swapped atomically when a new one arrives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use jsonschema::Validator;
use toolplane_core::model::{Agent, Credential, FallbackStrategy, Permission, Snapshot, TokenRecord, Tool};
use toolplane_core::schema;
use uuid::Uuid;

use crate::error::ExecError;

pub struct CompiledTool {
    pub tool: Tool,
    pub input: Validator,
    pub output: Option<Validator>,
}

pub struct SnapshotIndex {
    pub revision: u64,
    tools: HashMap<Uuid, Arc<CompiledTool>>,
    names: HashMap<String, Uuid>,
    agents: HashMap<Uuid, Agent>,
    /// Agent names (unique) to ids: an identity provider's token may name its agent.
    agent_names: HashMap<String, Uuid>,
    tokens: HashMap<String, TokenRecord>,
    grants: HashMap<(Uuid, Uuid), Vec<Permission>>,
    credentials: HashMap<Uuid, Credential>,
    fallbacks: HashMap<Uuid, FallbackStrategy>,
}

impl SnapshotIndex {
    /// Indexes `s`, reusing the compiled schemas of tools unchanged since `previous`.
    pub fn build(s: Snapshot, previous: Option<&SnapshotIndex>) -> Self {
        let mut tools = HashMap::new();
        let mut names = HashMap::new();
        for tool in s.tools {
            if let Some(same) = previous.and_then(|p| p.tools.get(&tool.id)).filter(|c| c.tool == tool) {
                names.insert(tool.spec.name.clone(), tool.id);
                tools.insert(tool.id, same.clone());
                continue;
            }
            // The control plane refuses invalid schemas; a tool that still fails to
            // compile here is left out (and so NOT_FOUND) rather than served unchecked.
            let input = match schema::compile("input_schema", &tool.spec.input_schema) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(tool = %tool.spec.name, error = %e, "skipping tool with uncompilable input schema");
                    continue;
                }
            };
            let output = if tool.spec.output_schema.is_null() {
                None
            } else {
                schema::compile("output_schema", &tool.spec.output_schema).ok()
            };
            names.insert(tool.spec.name.clone(), tool.id);
            tools.insert(tool.id, Arc::new(CompiledTool { tool, input, output }));
        }
        let mut grants: HashMap<(Uuid, Uuid), Vec<Permission>> = HashMap::new();
        for p in s.permissions {
            grants.entry((p.agent_id, p.tool_id)).or_default().push(p);
        }
        Self {
            revision: s.revision,
            tools,
            names,
            agent_names: s.agents.iter().map(|a| (a.name.clone(), a.id)).collect(),
            agents: s.agents.into_iter().map(|a| (a.id, a)).collect(),
            tokens: s.tokens.into_iter().map(|t| (t.sha256.clone(), t)).collect(),
            grants,
            credentials: s.credentials.into_iter().map(|c| (c.tool_id, c)).collect(),
            fallbacks: s.fallbacks.into_iter().map(|f| (f.tool_id, f)).collect(),
        }
    }

    pub fn tool(&self, id: Uuid) -> Option<&Arc<CompiledTool>> {
        self.tools.get(&id)
    }

    pub fn tool_by_name(&self, name: &str) -> Option<&Arc<CompiledTool>> {
        self.names.get(name).and_then(|id| self.tools.get(id))
    }

    pub fn agent(&self, id: Uuid) -> Option<&Agent> {
        self.agents.get(&id)
    }

    /// The id of the agent named `name`.
    pub fn agent_by_name(&self, name: &str) -> Option<Uuid> {
        self.agent_names.get(name).copied()
    }

    pub fn token(&self, sha256: &str) -> Option<&TokenRecord> {
        self.tokens.get(sha256)
    }

    pub fn grants(&self, agent: Uuid, tool: Uuid) -> &[Permission] {
        self.grants.get(&(agent, tool)).map_or(&[], Vec::as_slice)
    }

    pub fn credential(&self, tool: Uuid) -> Option<&Credential> {
        self.credentials.get(&tool)
    }

    pub fn fallback(&self, tool: Uuid) -> Option<&FallbackStrategy> {
        self.fallbacks.get(&tool)
    }

    /// Every tool, in no particular order.
    pub fn tools(&self) -> impl Iterator<Item = &Arc<CompiledTool>> {
        self.tools.values()
    }

    pub fn tool_count(&self) -> usize {
        self.tools.len()
    }
}

/// The current snapshot, shared by every request and replaced whole, with when the
/// control plane was last heard from: a snapshot is only as good as the last proof that
/// nothing changed since, so past `max_age` without one it is not served at all.
#[derive(Clone)]
pub struct SharedSnapshot {
    inner: Arc<RwLock<Option<Arc<SnapshotIndex>>>>,
    /// Milliseconds from `epoch` to the last word from the control plane, plus one;
    /// 0 before any. An atomic, as every call reads it.
    heard: Arc<AtomicU64>,
    epoch: Instant,
    max_age: Duration,
}

impl Default for SharedSnapshot {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_AGE)
    }
}

/// What `TOOLPLANE_MAX_SNAPSHOT_AGE` defaults to.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);

impl SharedSnapshot {
    pub fn new(max_age: Duration) -> Self {
        Self {
            inner: Arc::default(),
            heard: Arc::default(),
            epoch: Instant::now(),
            max_age,
        }
    }

    /// The snapshot held, fresh or not (for building the next one; never to serve).
    pub fn current(&self) -> Option<Arc<SnapshotIndex>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The snapshot to serve a call from: refused when there is none yet, or when the
    /// control plane has not been heard from for longer than the maximum age (it may
    /// have revoked tokens and grants this sidecar has not learnt of).
    pub fn serving(&self) -> Result<Arc<SnapshotIndex>, ExecError> {
        let snap = self.current().ok_or(ExecError::NoSnapshot)?;
        match self.age() {
            Some(age) if age <= self.max_age => Ok(snap),
            Some(age) => Err(ExecError::Stale {
                age,
                since: self.heard_at().unwrap_or_else(Utc::now),
                max_age: self.max_age,
            }),
            None => Err(ExecError::NoSnapshot),
        }
    }

    /// Whether calls are admitted now (a snapshot, recently confirmed).
    pub fn is_fresh(&self) -> bool {
        self.serving().is_ok()
    }

    pub fn install(&self, index: SnapshotIndex) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(index));
        self.heard();
    }

    /// Records that the control plane just proved the snapshot current (a heartbeat
    /// or an ack on the stream that delivered it).
    pub fn heard(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.heard.store(ms.saturating_add(1), Ordering::Release);
    }

    /// Time since the control plane was last heard from; `None` before the first
    /// snapshot.
    pub fn age(&self) -> Option<Duration> {
        match self.heard.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.epoch.elapsed().saturating_sub(Duration::from_millis(ms - 1))),
        }
    }

    /// When the control plane was last heard from, by the wall clock.
    pub fn heard_at(&self) -> Option<DateTime<Utc>> {
        let age = chrono::Duration::from_std(self.age()?).ok()?;
        Some(Utc::now() - age)
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(revision: u64) -> SnapshotIndex {
        SnapshotIndex::build(
            Snapshot {
                revision,
                ..Default::default()
            },
            None,
        )
    }

    #[test]
    fn a_snapshot_not_confirmed_within_the_maximum_age_is_not_served() {
        let shared = SharedSnapshot::new(Duration::from_millis(80));
        assert!(matches!(shared.serving(), Err(ExecError::NoSnapshot)));
        shared.install(empty(3));
        assert_eq!(shared.serving().map(|s| s.revision).ok(), Some(3));
        std::thread::sleep(Duration::from_millis(120));
        let Err(e @ ExecError::Stale { .. }) = shared.serving() else {
            panic!("a stale snapshot was served");
        };
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("TOOLPLANE_MAX_SNAPSHOT_AGE"),
            "{}",
            status.message()
        );
        // Still held for building the next one, just not served.
        assert!(shared.current().is_some());
        shared.heard();
        assert!(shared.is_fresh());
        assert!(shared.age().is_some_and(|a| a < Duration::from_millis(80)));
    }
}
