//! The registry/permission snapshot the sidecar serves from, indexed for the hot path,
//! swapped atomically when a new one arrives. Schemas are compiled on a tool's first
//! call into a bounded cache (`TOOLPLANE_VALIDATOR_CACHE`), not for every tool held.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use jsonschema::Validator;
use toolplane_core::model::{Agent, Credential, FallbackStrategy, Permission, Scope, Snapshot, TokenRecord, Tool};
use toolplane_core::schema;
use uuid::Uuid;

use crate::error::ExecError;
use crate::scope_fetch::{ScopeFetcher, ScopeMode};

/// A tool's compiled input and output schemas.
pub struct Validators {
    pub input: Validator,
    pub output: Option<Validator>,
}

/// What `TOOLPLANE_VALIDATOR_CACHE` defaults to: tools whose compiled schemas are kept.
pub const DEFAULT_VALIDATOR_CACHE: u64 = 4096;

/// Compiled schemas by tool id and schema fingerprint, shared by every snapshot the
/// sidecar installs (an unchanged tool keeps its entry across snapshots).
#[derive(Clone)]
pub struct ValidatorCache(moka::sync::Cache<(Uuid, u64), Arc<Validators>>);

impl ValidatorCache {
    pub fn new(capacity: u64) -> Self {
        Self(moka::sync::Cache::new(capacity.max(1)))
    }

    pub fn len(&self) -> u64 {
        self.0.run_pending_tasks();
        self.0.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ValidatorCache {
    fn default() -> Self {
        Self::new(DEFAULT_VALIDATOR_CACHE)
    }
}

pub struct CompiledTool {
    pub tool: Tool,
    /// Of the tool's schemas (and its id and version): the cache key.
    fingerprint: u64,
    cache: ValidatorCache,
}

impl CompiledTool {
    fn new(tool: Tool, cache: ValidatorCache) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tool.version.hash(&mut h);
        tool.spec.input_schema.to_string().hash(&mut h);
        tool.spec.output_schema.to_string().hash(&mut h);
        Self {
            fingerprint: h.finish(),
            tool,
            cache,
        }
    }

    /// The tool's compiled schemas, compiled on first use. The control plane refuses
    /// invalid schemas; one that still fails to compile here makes every call of the
    /// tool fail (INTERNAL, naming the schema) rather than run unchecked.
    pub fn validators(&self) -> Result<Arc<Validators>, ExecError> {
        self.cache
            .0
            .try_get_with((self.tool.id, self.fingerprint), || {
                let input = schema::compile("input_schema", &self.tool.spec.input_schema)?;
                let output = if self.tool.spec.output_schema.is_null() {
                    None
                } else {
                    schema::compile("output_schema", &self.tool.spec.output_schema).ok()
                };
                Ok::<_, toolplane_core::Violations>(Arc::new(Validators { input, output }))
            })
            .map_err(|e| {
                tracing::error!(tool = %self.tool.spec.name, error = %e, "uncompilable schema");
                ExecError::Internal(format!(
                    "the schema of tool {:?} does not compile: {e}",
                    self.tool.spec.name
                ))
            })
    }
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
    /// `None`: the whole catalog.
    scope: Option<Scope>,
}

impl SnapshotIndex {
    /// Indexes `s`, reusing the entries of tools unchanged since `previous`.
    pub fn build(s: Snapshot, previous: Option<&SnapshotIndex>, validators: &ValidatorCache) -> Self {
        let mut tools = HashMap::new();
        let mut names = HashMap::new();
        for tool in s.tools {
            names.insert(tool.spec.name.clone(), tool.id);
            if let Some(same) = previous.and_then(|p| p.tools.get(&tool.id)).filter(|c| c.tool == *tool) {
                tools.insert(tool.id, same.clone());
                continue;
            }
            let tool = Arc::unwrap_or_clone(tool);
            tools.insert(tool.id, Arc::new(CompiledTool::new(tool, validators.clone())));
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
            scope: s.scope,
        }
    }

    pub fn find(&self, r: &ToolRef<'_>) -> Option<&Arc<CompiledTool>> {
        match r {
            ToolRef::Id(id) => self.tool(*id),
            ToolRef::Name(name) => self.tool_by_name(name),
        }
    }

    /// Whether `agent`'s tools are held (always, with the whole catalog).
    pub fn holds_agent(&self, agent: Uuid) -> bool {
        self.scope.as_ref().is_none_or(|s| s.agents.contains(&agent))
    }

    /// The latest scope request this snapshot answers.
    pub fn scope_request_id(&self) -> u64 {
        self.scope.as_ref().map_or(0, |s| s.request_id)
    }

    /// The tools held on demand (beyond the agents' own).
    pub fn on_demand_tools(&self) -> BTreeSet<Uuid> {
        self.scope.as_ref().map(|s| s.tools.clone()).unwrap_or_default()
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

/// How a call names its tool.
pub enum ToolRef<'a> {
    Id(Uuid),
    Name(&'a str),
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
    /// Bumped on every install, for calls waiting for a scope request's answer.
    installs: Arc<tokio::sync::watch::Sender<u64>>,
    fetcher: Arc<ScopeFetcher>,
}

impl Default for SharedSnapshot {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_AGE)
    }
}

/// What `TOOLPLANE_MAX_SNAPSHOT_AGE` defaults to.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);

impl SharedSnapshot {
    /// Holding the whole catalog.
    pub fn new(max_age: Duration) -> Self {
        Self::scoped(max_age, Arc::new(ScopeFetcher::new(ScopeMode::All, Duration::ZERO)))
    }

    /// Holding what `fetcher` asks for.
    pub fn scoped(max_age: Duration, fetcher: Arc<ScopeFetcher>) -> Self {
        Self {
            inner: Arc::default(),
            heard: Arc::default(),
            epoch: Instant::now(),
            max_age,
            installs: Arc::new(tokio::sync::watch::Sender::new(0)),
            fetcher,
        }
    }

    pub fn fetcher(&self) -> &ScopeFetcher {
        &self.fetcher
    }

    /// The snapshot to serve `agent`'s call from, holding the agent's tools: asks the
    /// control plane for them first when this sidecar does not hold them yet.
    pub async fn serving_agent(&self, agent: Uuid) -> Result<Arc<SnapshotIndex>, ExecError> {
        let snap = self.serving()?;
        if snap.holds_agent(agent) {
            return Ok(snap);
        }
        self.fetcher.ask_agent(agent);
        self.wait(|s| s.holds_agent(agent), || format!("the tools of agent {agent}"))
            .await
    }

    /// After `reference` (a tool id or name) was not found in a scoped snapshot: asks
    /// the control plane for it and returns the snapshot that answers (holding the tool
    /// if it exists). `None` when the whole catalog is held (nothing to ask).
    async fn fetch_tool(&self, reference: &str) -> Result<Option<Arc<SnapshotIndex>>, ExecError> {
        if !self.fetcher.is_scoped() {
            return Ok(None);
        }
        let shown = || format!("tool {:?}", reference.chars().take(128).collect::<String>());
        let request = self.fetcher.ask_tool(reference).ok_or_else(|| ExecError::ScopeFetch {
            what: shown(),
            why: "too many lookups are waiting for the control plane".to_owned(),
        })?;
        self.wait(|s| s.scope_request_id() >= request, shown).await.map(Some)
    }

    /// The tool `r` names in `snap`; outside a scoped sidecar's scope (not granted, or
    /// absent) asked for on demand first, so the call is refused or served as with the
    /// whole catalog. Returns the snapshot the tool was found in.
    pub async fn resolve_tool(
        &self,
        snap: Arc<SnapshotIndex>,
        r: &ToolRef<'_>,
    ) -> Result<(Arc<SnapshotIndex>, Arc<CompiledTool>), ExecError> {
        if let Some(t) = snap.find(r).cloned() {
            return Ok((snap, t));
        }
        let (reference, shown) = match r {
            ToolRef::Id(id) => (id.to_string(), id.to_string()),
            ToolRef::Name(name) => ((*name).to_owned(), format!("{name:?}")),
        };
        let snap = self.fetch_tool(&reference).await?.unwrap_or(snap);
        let found = snap.find(r).cloned();
        found
            .map(|t| (snap, t))
            .ok_or_else(|| ExecError::NotFound(format!("tool {shown} not found")))
    }

    /// Waits until an installed snapshot satisfies `done`, at most the fetch timeout.
    async fn wait(
        &self,
        done: impl Fn(&SnapshotIndex) -> bool,
        what: impl Fn() -> String,
    ) -> Result<Arc<SnapshotIndex>, ExecError> {
        let mut installs = self.installs.subscribe();
        let deadline = tokio::time::Instant::now() + self.fetcher.timeout;
        loop {
            let snap = self.serving()?;
            if done(&snap) {
                return Ok(snap);
            }
            if !matches!(tokio::time::timeout_at(deadline, installs.changed()).await, Ok(Ok(()))) {
                return Err(ExecError::ScopeFetch {
                    what: what(),
                    why: format!(
                        "the control plane did not send them within {} ms (TOOLPLANE_SCOPE_FETCH_TIMEOUT_MS)",
                        self.fetcher.timeout.as_millis()
                    ),
                });
            }
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
        let answered = index.scope_request_id();
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(index));
        self.heard();
        self.fetcher.answered(answered);
        self.installs.send_modify(|n| *n = n.wrapping_add(1));
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
            &ValidatorCache::default(),
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
