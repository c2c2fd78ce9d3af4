//! The registry/permission snapshot the sidecar serves from, indexed for the hot path
//! (schemas compiled once per tool version), swapped atomically when a new one arrives.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jsonschema::Validator;
use toolplane_core::model::{Agent, Credential, FallbackStrategy, Permission, Snapshot, TokenRecord, Tool};
use toolplane_core::schema;
use uuid::Uuid;

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

/// The current snapshot, shared by every request and replaced whole.
#[derive(Default, Clone)]
pub struct SharedSnapshot {
    inner: Arc<RwLock<Option<Arc<SnapshotIndex>>>>,
    /// When the last snapshot or delta arrived (for the snapshot-age metric).
    installed_at: Arc<RwLock<Option<std::time::Instant>>>,
}

impl SharedSnapshot {
    pub fn current(&self) -> Option<Arc<SnapshotIndex>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn install(&self, index: SnapshotIndex) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(index));
        *self.installed_at.write().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }

    /// Time since the last snapshot or delta; `None` before the first.
    pub fn age(&self) -> Option<std::time::Duration> {
        self.installed_at
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }
}
