//! The embedded default: all state in process, lost on restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, NaiveDate, Utc};
use toolplane_core::audit::{AuditRecord, ChainHead, chain_of, stored_time};
use toolplane_core::audit_checkpoint::AuditCheckpoint;
use toolplane_core::model::{AccessRequest, AccessRequestStatus, FallbackStrategy, StoredCredential};
use toolplane_core::model::{Agent, AuditEvent, InvocationRecord, Permission, SyncEvent, TokenRecord, Tool};
use toolplane_core::model::{ToolChange, ToolChangeStatus, ToolReviewPolicy};
use toolplane_core::stats::{self, ToolStats};
use toolplane_core::usage::{self, UsageCounts, UsageKey};
use uuid::Uuid;

use super::{
    AgentRemoval, AuditFilter, AuditOf, DeadLetter, SelectionLogEntry, Store, StoreError, StoreResult, TaskEntry,
    TokenFilter, ToolFilter, UsageRow,
};

#[derive(Default)]
struct State {
    /// Live tools at their current version.
    tools: HashMap<Uuid, Tool>,
    /// Every version ever stored, deleted tools included.
    versions: HashMap<(Uuid, u32), Tool>,
    /// Live tool names, ordered for listing.
    names: BTreeMap<String, Uuid>,
    credentials: HashMap<Uuid, StoredCredential>,
    fallbacks: HashMap<Uuid, FallbackStrategy>,
    /// Live agents.
    agents: HashMap<Uuid, Agent>,
    /// Deleted agents, kept for history.
    deleted_agents: HashMap<Uuid, Agent>,
    tokens: HashMap<String, TokenRecord>,
    permissions: Vec<Permission>,
    access_requests: Vec<AccessRequest>,
    /// Boxed, as are invocations: growing the collection then moves pointers, not
    /// records (moving whole records on every doubling was over half of the control
    /// plane's CPU per call under `make bench-invoke`'s load).
    #[allow(clippy::vec_box)]
    audit: Vec<Box<AuditRecord>>,
    audit_ids: HashSet<Uuid>,
    chain_heads: HashMap<String, ChainHead>,
    dead_letters: Vec<DeadLetter>,
    dead_letter_keys: HashSet<(String, String)>,
    usage: BTreeMap<UsageKey, UsageCounts>,
    invocations: HashMap<Uuid, Box<InvocationRecord>>,
    /// Invocation ids in arrival order.
    invocation_order: Vec<Uuid>,
    quality: HashMap<Uuid, f64>,
    selections: Vec<SelectionLogEntry>,
    /// Tool → task hash → remembered task.
    tasks: HashMap<Uuid, HashMap<String, TaskEntry>>,
    /// Outcomes observed per tool, for the statistics.
    outcomes: HashMap<Uuid, u64>,
    /// Tool changes in the order they were found.
    tool_changes: Vec<ToolChange>,
    review_policies: BTreeMap<String, ToolReviewPolicy>,
}

#[derive(Default)]
pub struct MemoryStore {
    state: RwLock<State>,
    /// Signed audit checkpoints by (chain, chain_seq, key_id).
    checkpoints: RwLock<BTreeMap<(String, u64, String), AuditCheckpoint>>,
}

impl MemoryStore {
    // A panic while holding the lock cannot leave State half-written in a way later
    // readers could misread (every write is a single insert), so poisoning is ignored.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Appends an audit event to its chain; an event id already stored is skipped.
    fn append_audit(&mut self, a: &AuditEvent) {
        if !self.audit_ids.contains(&a.event_id) {
            self.append_owned_audit(a.clone());
        }
    }

    fn append_owned_audit(&mut self, mut event: AuditEvent) {
        if !self.audit_ids.insert(event.event_id) {
            return;
        }
        let chain = chain_of(&event);
        event.occurred_at = stored_time(event.occurred_at);
        let (chain_seq, prev_hash, hash) = self
            .chain_heads
            .entry(chain.clone())
            .or_default()
            .append(&chain, &event);
        let seq = self.audit.len() as u64 + 1;
        self.audit.push(Box::new(AuditRecord {
            event,
            seq,
            recorded_at: Utc::now(),
            chain,
            chain_seq,
            prev_hash,
            hash,
        }));
    }

    fn append_invocation(&mut self, i: &InvocationRecord) {
        if self.invocations.contains_key(&i.invocation_id) {
            return;
        }
        self.invocations.insert(i.invocation_id, Box::new(i.clone()));
        self.invocation_order.push(i.invocation_id);
        let (key, counts) = usage::contribution(i);
        self.usage.entry(key).or_default().add(&counts);
        let r = &i.result;
        if r.cache_hit || !stats::counts(r.status) {
            return;
        }
        let outcomes = self.outcomes.entry(r.tool_id).or_default();
        let prev_outcomes = *outcomes;
        *outcomes += 1;
        if let Some(t) = self.tools.get_mut(&r.tool_id) {
            let next = stats::observe(
                ToolStats {
                    reliability_score: t.spec.reliability_score,
                    average_latency_ms: t.spec.average_latency_ms,
                    outcomes: prev_outcomes,
                },
                r.status,
                r.duration_ms,
            );
            t.spec.reliability_score = next.reliability_score;
            t.spec.average_latency_ms = next.average_latency_ms;
        }
    }
}

fn matches(tool: &Tool, f: &ToolFilter) -> bool {
    let s = &tool.spec;
    f.category.as_ref().is_none_or(|c| &s.category == c)
        && f.capability.as_ref().is_none_or(|c| s.capabilities.contains(c))
        && f.enabled.is_none_or(|e| s.enabled == e)
        && f.provider.as_ref().is_none_or(|p| &s.provider == p)
        && f.text.as_ref().is_none_or(|t| {
            let t = t.to_lowercase();
            s.name.to_lowercase().contains(&t) || s.description.to_lowercase().contains(&t)
        })
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn create_tool(&self, tool: &Tool, audit: &AuditEvent) -> StoreResult<()> {
        let mut st = self.write();
        if st.names.contains_key(&tool.spec.name) {
            return Err(StoreError::Conflict(format!(
                "a tool named {:?} already exists",
                tool.spec.name
            )));
        }
        st.names.insert(tool.spec.name.clone(), tool.id);
        st.tools.insert(tool.id, tool.clone());
        st.versions.insert((tool.id, tool.version), tool.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn update_tool(&self, tool: &Tool, audit: &AuditEvent) -> StoreResult<()> {
        let mut st = self.write();
        let Some(current) = st.tools.get(&tool.id) else {
            return Err(StoreError::NotFound(format!("tool {}", tool.id)));
        };
        if current.version + 1 != tool.version {
            return Err(StoreError::Conflict(format!(
                "tool {} is at version {}, not {}; retry",
                tool.spec.name,
                current.version,
                tool.version.saturating_sub(1)
            )));
        }
        if current.spec.name != tool.spec.name {
            if st.names.contains_key(&tool.spec.name) {
                return Err(StoreError::Conflict(format!(
                    "a tool named {:?} already exists",
                    tool.spec.name
                )));
            }
            let old = current.spec.name.clone();
            st.names.remove(&old);
            st.names.insert(tool.spec.name.clone(), tool.id);
        }
        st.tools.insert(tool.id, tool.clone());
        st.versions.insert((tool.id, tool.version), tool.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn get_tool_version(&self, id: Uuid, version: u32) -> StoreResult<Option<Tool>> {
        let st = self.read();
        Ok(st.versions.get(&(id, version)).map(|v| {
            let mut v = v.clone();
            v.spec.enabled = st.tools.get(&id).is_some_and(|t| t.spec.enabled);
            v
        }))
    }

    async fn set_tool_enabled(
        &self,
        id: Uuid,
        enabled: bool,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<Option<Tool>> {
        let mut st = self.write();
        let Some(tool) = st.tools.get_mut(&id).map(|t| {
            t.spec.enabled = enabled;
            t.updated_at = at;
            t.clone()
        }) else {
            return Ok(None);
        };
        st.append_audit(audit);
        Ok(Some(tool))
    }

    async fn delete_tool(&self, id: Uuid, _at: DateTime<Utc>, audit: &AuditEvent) -> StoreResult<bool> {
        let mut st = self.write();
        match st.tools.remove(&id) {
            Some(t) => {
                st.names.remove(&t.spec.name);
                st.append_audit(audit);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn get_tool(&self, id: Uuid) -> StoreResult<Option<Tool>> {
        Ok(self.read().tools.get(&id).cloned())
    }

    async fn get_tool_by_name(&self, name: &str) -> StoreResult<Option<Tool>> {
        let st = self.read();
        Ok(st.names.get(name).and_then(|id| st.tools.get(id)).cloned())
    }

    async fn list_tools(&self, filter: &ToolFilter, after: Option<&str>, limit: usize) -> StoreResult<Vec<Tool>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let st = self.read();
        let lower = after.map_or(Unbounded, |a| Excluded(a.to_owned()));
        Ok(st
            .names
            .range((lower, Unbounded))
            .filter_map(|(_, id)| st.tools.get(id))
            .filter(|t| matches(t, filter))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn set_credential(&self, credential: &StoredCredential, audit: &AuditEvent) -> StoreResult<()> {
        let mut st = self.write();
        if !st.tools.contains_key(&credential.tool_id) {
            return Err(StoreError::NotFound(format!("tool {}", credential.tool_id)));
        }
        st.credentials.insert(credential.tool_id, credential.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn delete_credential(&self, tool_id: Uuid, audit: &AuditEvent) -> StoreResult<bool> {
        let mut st = self.write();
        if st.credentials.remove(&tool_id).is_none() {
            return Ok(false);
        }
        st.append_audit(audit);
        Ok(true)
    }

    async fn list_credentials(&self) -> StoreResult<Vec<StoredCredential>> {
        let st = self.read();
        Ok(st
            .credentials
            .values()
            .filter(|c| st.tools.contains_key(&c.tool_id))
            .cloned()
            .collect())
    }

    async fn set_fallback(&self, strategy: &FallbackStrategy, audit: &AuditEvent) -> StoreResult<()> {
        let mut st = self.write();
        if !st.tools.contains_key(&strategy.tool_id) {
            return Err(StoreError::NotFound(format!("tool {}", strategy.tool_id)));
        }
        st.fallbacks.insert(strategy.tool_id, strategy.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn get_fallback(&self, tool_id: Uuid) -> StoreResult<Option<FallbackStrategy>> {
        Ok(self.read().fallbacks.get(&tool_id).cloned())
    }

    async fn list_fallbacks(&self) -> StoreResult<Vec<FallbackStrategy>> {
        let st = self.read();
        Ok(st
            .fallbacks
            .values()
            .filter(|f| st.tools.contains_key(&f.tool_id))
            .cloned()
            .collect())
    }

    async fn delete_fallback(&self, tool_id: Uuid, audit: &AuditEvent) -> StoreResult<bool> {
        let mut st = self.write();
        if st.fallbacks.remove(&tool_id).is_none() {
            return Ok(false);
        }
        st.append_audit(audit);
        Ok(true)
    }

    async fn create_agent(&self, agent: &Agent, audit: &AuditEvent) -> StoreResult<()> {
        let mut st = self.write();
        if st.agents.values().any(|a| a.name == agent.name) {
            return Err(StoreError::Conflict(format!(
                "an agent named {:?} already exists",
                agent.name
            )));
        }
        st.agents.insert(agent.id, agent.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn get_agent(&self, id: Uuid) -> StoreResult<Option<Agent>> {
        Ok(self.read().agents.get(&id).cloned())
    }

    async fn list_agents(&self) -> StoreResult<Vec<Agent>> {
        let mut agents: Vec<Agent> = self.read().agents.values().cloned().collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(agents)
    }

    async fn agents_page(&self, team: Option<&str>, after: Option<&str>, limit: usize) -> StoreResult<Vec<Agent>> {
        let st = self.read();
        let mut agents: Vec<&Agent> = st
            .agents
            .values()
            .filter(|a| team.is_none_or(|t| a.team == t) && after.is_none_or(|n| a.name.as_str() > n))
            .collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(agents.into_iter().take(limit).cloned().collect())
    }

    async fn update_agent(&self, agent: &Agent, audit: &AuditEvent) -> StoreResult<bool> {
        let mut st = self.write();
        let Some(live) = st.agents.get_mut(&agent.id) else {
            return Ok(false);
        };
        *live = Agent {
            id: live.id,
            name: live.name.clone(),
            created_at: live.created_at,
            ..agent.clone()
        };
        st.append_audit(audit);
        Ok(true)
    }

    async fn delete_agent(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditOf<'_, AgentRemoval>,
    ) -> StoreResult<Option<AgentRemoval>> {
        let mut st = self.write();
        let Some(agent) = st.agents.remove(&id) else {
            return Ok(None);
        };
        let mut tokens_revoked: Vec<Uuid> = st
            .tokens
            .values_mut()
            .filter(|t| t.agent_id == Some(id) && t.revoked_at.is_none())
            .map(|t| {
                t.revoked_at = Some(at);
                t.id
            })
            .collect();
        tokens_revoked.sort();
        let mut grants_revoked: Vec<(Uuid, Uuid)> = st
            .permissions
            .iter()
            .filter(|p| p.agent_id == id)
            .map(|p| (p.id, p.tool_id))
            .collect();
        grants_revoked.sort();
        st.permissions.retain(|p| p.agent_id != id);
        let mut access_requests_denied: Vec<Uuid> = st
            .access_requests
            .iter_mut()
            .filter(|r| r.agent_id == id && r.status == AccessRequestStatus::Pending)
            .map(|r| {
                r.status = AccessRequestStatus::Denied;
                r.reviewed_at = Some(at);
                r.review_reason = "the agent was deleted".to_owned();
                r.id
            })
            .collect();
        access_requests_denied.sort();
        st.deleted_agents.insert(id, agent.clone());
        let removal = AgentRemoval {
            agent,
            tokens_revoked,
            grants_revoked,
            access_requests_denied,
        };
        audit(&removal).iter().for_each(|e| st.append_audit(e));
        Ok(Some(removal))
    }

    async fn list_tokens(
        &self,
        filter: &TokenFilter,
        now: DateTime<Utc>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<TokenRecord>> {
        let st = self.read();
        let mut tokens: Vec<&TokenRecord> = st
            .tokens
            .values()
            .filter(|t| {
                filter.agent_id.is_none_or(|a| t.agent_id == Some(a))
                    && filter.role.is_none_or(|r| t.role == r)
                    && (filter.include_inactive || t.is_active(now))
                    && after.is_none_or(|a| t.id > a)
            })
            .collect();
        tokens.sort_by_key(|t| t.id);
        Ok(tokens.into_iter().take(limit).cloned().collect())
    }

    async fn create_token(&self, token: &TokenRecord, audit: &AuditEvent) -> StoreResult<()> {
        let mut st = self.write();
        if let Some(agent) = token.agent_id
            && !st.agents.contains_key(&agent)
        {
            return Err(StoreError::NotFound(format!("agent {agent}")));
        }
        if st.tokens.contains_key(&token.sha256) {
            return Err(StoreError::Conflict("token digest collision".to_owned()));
        }
        st.tokens.insert(token.sha256.clone(), token.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn token_by_digest(&self, sha256: &str) -> StoreResult<Option<TokenRecord>> {
        Ok(self.read().tokens.get(sha256).cloned())
    }

    async fn revoke_token(&self, id: Uuid, at: DateTime<Utc>, audit: &AuditEvent) -> StoreResult<bool> {
        let mut st = self.write();
        let revoked = st
            .tokens
            .values_mut()
            .find(|t| t.id == id && t.revoked_at.is_none())
            .map(|t| t.revoked_at = Some(at))
            .is_some();
        if revoked {
            st.append_audit(audit);
        }
        Ok(revoked)
    }

    async fn revoke_permission(
        &self,
        id: Uuid,
        _at: DateTime<Utc>,
        audit: &AuditOf<'_, Permission>,
    ) -> StoreResult<Option<Permission>> {
        let mut st = self.write();
        let Some(i) = st.permissions.iter().position(|p| p.id == id) else {
            return Ok(None);
        };
        let revoked = st.permissions.remove(i);
        audit(&revoked).iter().for_each(|e| st.append_audit(e));
        Ok(Some(revoked))
    }

    async fn active_tokens(&self, now: DateTime<Utc>) -> StoreResult<Vec<TokenRecord>> {
        Ok(self
            .read()
            .tokens
            .values()
            .filter(|t| t.is_active(now))
            .cloned()
            .collect())
    }

    async fn create_permission(&self, permission: &Permission, audit: &AuditEvent) -> StoreResult<()> {
        let mut st = self.write();
        if !st.agents.contains_key(&permission.agent_id) {
            return Err(StoreError::NotFound(format!("agent {}", permission.agent_id)));
        }
        if !st.tools.contains_key(&permission.tool_id) {
            return Err(StoreError::NotFound(format!("tool {}", permission.tool_id)));
        }
        st.permissions.push(permission.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn create_access_request(&self, request: &AccessRequest, audit: &AuditEvent) -> StoreResult<()> {
        let mut st = self.write();
        if !st.agents.contains_key(&request.agent_id) {
            return Err(StoreError::NotFound(format!("agent {}", request.agent_id)));
        }
        if !st.tools.contains_key(&request.tool_id) {
            return Err(StoreError::NotFound(format!("tool {}", request.tool_id)));
        }
        st.access_requests.push(request.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn get_access_request(&self, id: Uuid) -> StoreResult<Option<AccessRequest>> {
        Ok(self.read().access_requests.iter().find(|r| r.id == id).cloned())
    }

    async fn review_access_request(
        &self,
        reviewed: &AccessRequest,
        grant: Option<&Permission>,
        audit: &AuditOf<'_, AccessRequest>,
    ) -> StoreResult<Option<AccessRequest>> {
        let mut st = self.write();
        let Some(i) = st
            .access_requests
            .iter()
            .position(|r| r.id == reviewed.id && r.status == AccessRequestStatus::Pending)
        else {
            return Ok(None);
        };
        if let Some(g) = grant {
            if !st.tools.contains_key(&g.tool_id) {
                return Err(StoreError::NotFound(format!("tool {}", g.tool_id)));
            }
            st.permissions.push(g.clone());
        }
        st.access_requests[i] = reviewed.clone();
        audit(reviewed).iter().for_each(|e| st.append_audit(e));
        Ok(Some(reviewed.clone()))
    }

    async fn list_access_requests(
        &self,
        status: Option<AccessRequestStatus>,
        agent_id: Option<Uuid>,
    ) -> StoreResult<Vec<AccessRequest>> {
        Ok(self
            .read()
            .access_requests
            .iter()
            .filter(|r| status.is_none_or(|s| r.status == s) && agent_id.is_none_or(|a| r.agent_id == a))
            .cloned()
            .collect())
    }

    async fn permissions_page(
        &self,
        agent_id: Option<Uuid>,
        tool_id: Option<Uuid>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Permission>> {
        let st = self.read();
        let mut page: Vec<&Permission> = st
            .permissions
            .iter()
            .filter(|p| {
                agent_id.is_none_or(|a| p.agent_id == a)
                    && tool_id.is_none_or(|t| p.tool_id == t)
                    && after.is_none_or(|a| p.id > a)
            })
            .collect();
        page.sort_by_key(|p| p.id);
        Ok(page.into_iter().take(limit).cloned().collect())
    }

    async fn access_requests_page(
        &self,
        status: Option<AccessRequestStatus>,
        agent_id: Option<Uuid>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<AccessRequest>> {
        let st = self.read();
        let mut page: Vec<&AccessRequest> = st
            .access_requests
            .iter()
            .filter(|r| {
                status.is_none_or(|s| r.status == s)
                    && agent_id.is_none_or(|a| r.agent_id == a)
                    && after.is_none_or(|a| r.id > a)
            })
            .collect();
        page.sort_by_key(|r| r.id);
        Ok(page.into_iter().take(limit).cloned().collect())
    }

    async fn list_permissions(&self, agent_id: Option<Uuid>, tool_id: Option<Uuid>) -> StoreResult<Vec<Permission>> {
        Ok(self
            .read()
            .permissions
            .iter()
            .filter(|p| agent_id.is_none_or(|a| p.agent_id == a) && tool_id.is_none_or(|t| p.tool_id == t))
            .cloned()
            .collect())
    }

    async fn append_events(&self, events: &[SyncEvent]) -> StoreResult<()> {
        let mut st = self.write();
        for e in events {
            match e {
                SyncEvent::Audit(a) => st.append_audit(a),
                SyncEvent::Invocation(i) => st.append_invocation(i),
            }
        }
        Ok(())
    }

    /// Audit events are moved into the trail (nothing reads them after); invocations
    /// are copied and given back for learning.
    async fn append_owned_events(
        &self,
        events: Vec<SyncEvent>,
    ) -> Result<Vec<SyncEvent>, (StoreError, Vec<SyncEvent>)> {
        let mut st = self.write();
        let mut invocations = Vec::new();
        for e in events {
            match e {
                SyncEvent::Audit(a) => st.append_owned_audit(a),
                SyncEvent::Invocation(i) => {
                    st.append_invocation(&i);
                    invocations.push(SyncEvent::Invocation(i));
                }
            }
        }
        Ok(invocations)
    }

    async fn audit_events(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let st = self.read();
        let limit = if f.limit == 0 { usize::MAX } else { f.limit };
        let records = st.audit.iter().map(|r| &**r);
        let picked: Vec<&AuditRecord> = if f.newest_first {
            records.rev().filter(|r| f.matches(r)).take(limit).collect()
        } else {
            records.filter(|r| f.matches(r)).take(limit).collect()
        };
        Ok(picked.into_iter().cloned().collect())
    }

    async fn audit_chain_page(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        after: Option<(String, u64)>,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let st = self.read();
        let mut page: Vec<AuditRecord> = st
            .audit
            .iter()
            .filter(|r| {
                since.is_none_or(|t| r.event.occurred_at >= t)
                    && until.is_none_or(|t| r.event.occurred_at < t)
                    && after
                        .as_ref()
                        .is_none_or(|(c, n)| (r.chain.as_str(), r.chain_seq) > (c.as_str(), *n))
            })
            .map(|r| AuditRecord::clone(r))
            .collect();
        page.sort_by(|a, b| (&a.chain, a.chain_seq).cmp(&(&b.chain, b.chain_seq)));
        page.truncate(limit);
        Ok(page)
    }

    async fn audit_link(&self, chain: &str, chain_seq: u64) -> StoreResult<Option<String>> {
        Ok(self
            .read()
            .audit
            .iter()
            .find(|r| r.chain == chain && r.chain_seq == chain_seq)
            .map(|r| r.hash.clone()))
    }

    async fn dead_letter(&self, letters: &[DeadLetter]) -> StoreResult<()> {
        let mut s = self.write();
        for l in letters {
            if s.dead_letter_keys.insert((l.source.clone(), l.event_id.clone())) {
                let id = s.dead_letters.len() as u64 + 1;
                s.dead_letters.push(DeadLetter { id, ..l.clone() });
            }
        }
        Ok(())
    }

    async fn dead_letters(&self, after_id: u64, limit: usize) -> StoreResult<(Vec<DeadLetter>, u64)> {
        let s = self.read();
        let page = s
            .dead_letters
            .iter()
            .filter(|l| l.id > after_id)
            .take(limit)
            .cloned()
            .collect();
        Ok((page, s.dead_letters.len() as u64))
    }

    async fn audit_chain_heads(&self) -> StoreResult<Vec<(String, u64)>> {
        let mut heads: Vec<(String, u64)> = self
            .read()
            .chain_heads
            .iter()
            .map(|(c, h)| (c.clone(), h.seq))
            .collect();
        heads.sort();
        Ok(heads)
    }

    async fn usage(
        &self,
        agent_id: Option<Uuid>,
        tool_id: Option<Uuid>,
        since: Option<NaiveDate>,
        until: Option<NaiveDate>,
    ) -> StoreResult<Vec<UsageRow>> {
        let mut rows: Vec<UsageRow> = self
            .read()
            .usage
            .iter()
            .filter(|(k, _)| {
                agent_id.is_none_or(|a| k.agent_id == a)
                    && tool_id.is_none_or(|t| k.tool_id == t)
                    && since.is_none_or(|d| k.day >= d)
                    && until.is_none_or(|d| k.day <= d)
            })
            .map(|(k, c)| UsageRow {
                key: k.clone(),
                counts: c.clone(),
            })
            .collect();
        rows.sort_by(|a, b| {
            (a.key.day, a.key.tool_id, a.key.agent_id).cmp(&(b.key.day, b.key.tool_id, b.key.agent_id))
        });
        Ok(rows)
    }

    async fn get_invocation(&self, invocation_id: Uuid) -> StoreResult<Option<InvocationRecord>> {
        Ok(self
            .read()
            .invocations
            .get(&invocation_id)
            .map(|i| InvocationRecord::clone(i)))
    }

    async fn selection_outcomes(&self, selection_ids: &[Uuid]) -> StoreResult<HashMap<Uuid, String>> {
        let wanted: HashSet<Uuid> = selection_ids.iter().copied().collect();
        let st = self.read();
        let mut out: HashMap<Uuid, (DateTime<Utc>, String)> = HashMap::new();
        for i in st.invocations.values() {
            if let Some(s) = i.selection_id.filter(|s| wanted.contains(s)) {
                let at = i.result.completed_at;
                if out.get(&s).is_none_or(|(t, _)| *t < at) {
                    out.insert(s, (at, i.result.status.to_string()));
                }
            }
        }
        Ok(out.into_iter().map(|(k, (_, v))| (k, v)).collect())
    }

    async fn activity(&self, since: DateTime<Utc>) -> StoreResult<super::Activity> {
        use chrono::{DurationRound, TimeDelta};
        let st = self.read();
        let mut minutes: BTreeMap<(DateTime<Utc>, String), u64> = BTreeMap::new();
        let (mut tools, mut agents): (HashMap<Uuid, u64>, HashMap<Uuid, u64>) = Default::default();
        let mut durations = Vec::new();
        let mut cache_hits = 0;
        for i in st.invocations.values().filter(|i| i.result.completed_at >= since) {
            let minute = i
                .result
                .completed_at
                .duration_trunc(TimeDelta::minutes(1))
                .unwrap_or(i.result.completed_at);
            *minutes.entry((minute, i.result.status.to_string())).or_default() += 1;
            *tools.entry(i.result.tool_id).or_default() += 1;
            *agents.entry(i.agent_id).or_default() += 1;
            durations.push(f64::from(i.result.duration_ms));
            cache_hits += u64::from(i.result.cache_hit);
        }
        durations.sort_by(f64::total_cmp);
        let top = |m: HashMap<Uuid, u64>| {
            let mut v: Vec<(Uuid, u64)> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            v.truncate(super::ACTIVITY_TOP);
            v
        };
        Ok(super::Activity {
            minutes: minutes.into_iter().map(|((m, s), n)| (m, s, n)).collect(),
            calls: durations.len() as u64,
            cache_hits,
            p50_ms: percentile(&durations, 0.5),
            p95_ms: percentile(&durations, 0.95),
            top_tools: top(tools),
            top_agents: top(agents),
        })
    }

    async fn recent_invocations(&self, limit: usize) -> StoreResult<Vec<(InvocationRecord, Option<f64>)>> {
        let st = self.read();
        let skip = st.invocation_order.len().saturating_sub(limit);
        Ok(st.invocation_order[skip..]
            .iter()
            .filter_map(|id| {
                st.invocations
                    .get(id)
                    .map(|i| (InvocationRecord::clone(i), st.quality.get(id).copied()))
            })
            .collect())
    }

    async fn record_quality(
        &self,
        invocation_id: Uuid,
        quality: f64,
        _task_succeeded: bool,
    ) -> StoreResult<Option<InvocationRecord>> {
        let mut st = self.write();
        let Some(i) = st.invocations.get(&invocation_id).map(|i| InvocationRecord::clone(i)) else {
            return Ok(None);
        };
        st.quality.insert(invocation_id, quality);
        Ok(Some(i))
    }

    async fn log_selection(&self, entry: &SelectionLogEntry) -> StoreResult<()> {
        let mut st = self.write();
        // Bounded: the embedded default keeps the latest decisions only.
        if st.selections.len() >= 10_000 {
            st.selections.remove(0);
        }
        st.selections.push(entry.clone());
        Ok(())
    }

    async fn selection_log(&self, agent_id: Option<Uuid>, limit: usize) -> StoreResult<Vec<SelectionLogEntry>> {
        let st = self.read();
        let mut out: Vec<SelectionLogEntry> = st
            .selections
            .iter()
            .rev()
            .filter(|e| agent_id.is_none_or(|a| e.agent_id == Some(a)))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn get_selection(&self, selection_id: Uuid) -> StoreResult<Option<SelectionLogEntry>> {
        Ok(self
            .read()
            .selections
            .iter()
            .rev()
            .find(|e| e.selection_id == selection_id)
            .cloned())
    }

    async fn remember_tasks(&self, entries: &[TaskEntry], per_tool: usize) -> StoreResult<()> {
        let mut st = self.write();
        let mut touched = HashSet::new();
        for e in entries {
            touched.insert(e.tool_id);
            st.tasks
                .entry(e.tool_id)
                .or_default()
                .entry(e.hash.clone())
                .and_modify(|x| {
                    x.uses += e.uses;
                    x.last_seen = x.last_seen.max(e.last_seen);
                })
                .or_insert_with(|| e.clone());
        }
        for tool in touched {
            let Some(tasks) = st.tasks.get_mut(&tool) else {
                continue;
            };
            let excess = tasks.len().saturating_sub(per_tool);
            if excess > 0 {
                let mut aged: Vec<(DateTime<Utc>, String)> =
                    tasks.values().map(|x| (x.last_seen, x.hash.clone())).collect();
                aged.sort();
                for (_, hash) in aged.into_iter().take(excess) {
                    tasks.remove(&hash);
                }
            }
        }
        Ok(())
    }

    async fn forget_task(&self, tool_id: Uuid, hash: &str) -> StoreResult<bool> {
        Ok(self
            .write()
            .tasks
            .get_mut(&tool_id)
            .is_some_and(|t| t.remove(hash).is_some()))
    }

    async fn forget_tool_tasks(&self, tool_id: Uuid) -> StoreResult<u64> {
        Ok(self.write().tasks.remove(&tool_id).map_or(0, |t| t.len() as u64))
    }

    async fn task_memory(&self, since: DateTime<Utc>) -> StoreResult<Vec<TaskEntry>> {
        Ok(self
            .read()
            .tasks
            .values()
            .flat_map(HashMap::values)
            .filter(|x| x.last_seen > since)
            .cloned()
            .collect())
    }

    async fn prune_task_memory(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let mut st = self.write();
        let mut n = 0;
        for tasks in st.tasks.values_mut() {
            let was = tasks.len();
            tasks.retain(|_, x| x.last_seen >= before);
            n += (was - tasks.len()) as u64;
        }
        st.tasks.retain(|_, t| !t.is_empty());
        Ok(n)
    }

    async fn record_tool_change(&self, change: &ToolChange, audit: &AuditEvent) -> StoreResult<()> {
        let mut st = self.write();
        if !st.tools.contains_key(&change.tool_id) {
            return Err(StoreError::NotFound(format!("tool {}", change.tool_id)));
        }
        for c in st.tool_changes.iter_mut() {
            if c.tool_id == change.tool_id && c.status == ToolChangeStatus::Pending {
                c.status = ToolChangeStatus::Superseded;
                c.reviewed_at = Some(change.detected_at);
            }
        }
        st.tool_changes.push(change.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn withdraw_tool_changes(&self, tool_id: Uuid, at: DateTime<Utc>, audit: &AuditEvent) -> StoreResult<u64> {
        let mut st = self.write();
        let mut n = 0;
        for c in st.tool_changes.iter_mut() {
            if c.tool_id == tool_id && c.status == ToolChangeStatus::Pending {
                c.status = ToolChangeStatus::Superseded;
                c.reviewed_at = Some(at);
                n += 1;
            }
        }
        if n > 0 {
            st.append_audit(audit);
        }
        Ok(n)
    }

    async fn get_tool_change(&self, id: Uuid) -> StoreResult<Option<ToolChange>> {
        Ok(self.read().tool_changes.iter().find(|c| c.id == id).cloned())
    }

    async fn list_tool_changes(
        &self,
        status: Option<ToolChangeStatus>,
        tool_id: Option<Uuid>,
    ) -> StoreResult<Vec<ToolChange>> {
        Ok(self
            .read()
            .tool_changes
            .iter()
            .rev()
            .filter(|c| status.is_none_or(|s| c.status == s) && tool_id.is_none_or(|t| c.tool_id == t))
            .cloned()
            .collect())
    }

    async fn review_tool_change(
        &self,
        reviewed: &ToolChange,
        new_version: Option<&Tool>,
        audit: &[AuditEvent],
    ) -> StoreResult<Option<ToolChange>> {
        let mut st = self.write();
        let Some(i) = st
            .tool_changes
            .iter()
            .position(|c| c.id == reviewed.id && c.status == ToolChangeStatus::Pending)
        else {
            return Ok(None);
        };
        if let Some(tool) = new_version {
            let Some(current) = st.tools.get(&tool.id) else {
                return Err(StoreError::NotFound(format!("tool {}", tool.id)));
            };
            if current.version + 1 != tool.version || current.spec.name != tool.spec.name {
                return Err(StoreError::Conflict(format!(
                    "tool {} is at version {}, not {}; retry",
                    tool.spec.name,
                    current.version,
                    tool.version.saturating_sub(1)
                )));
            }
            st.tools.insert(tool.id, tool.clone());
            st.versions.insert((tool.id, tool.version), tool.clone());
        }
        st.tool_changes[i] = reviewed.clone();
        audit.iter().for_each(|e| st.append_audit(e));
        Ok(Some(reviewed.clone()))
    }

    async fn set_tool_review_policy(&self, policy: &ToolReviewPolicy, audit: &AuditEvent) -> StoreResult<()> {
        let mut st = self.write();
        st.review_policies.insert(policy.provider.clone(), policy.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn list_tool_review_policies(&self) -> StoreResult<Vec<ToolReviewPolicy>> {
        Ok(self.read().review_policies.values().cloned().collect())
    }

    async fn add_audit_checkpoint(&self, checkpoint: &AuditCheckpoint) -> StoreResult<()> {
        let mut all = self.checkpoints.write().unwrap_or_else(|e| e.into_inner());
        let key = |c: &AuditCheckpoint| (c.chain.clone(), c.chain_seq, c.key_id.clone());
        all.entry(key(checkpoint)).or_insert_with(|| checkpoint.clone());
        Ok(())
    }

    async fn latest_audit_checkpoints(&self) -> StoreResult<Vec<AuditCheckpoint>> {
        let all = self.checkpoints.read().unwrap_or_else(|e| e.into_inner());
        let mut latest: BTreeMap<(&str, &str), &AuditCheckpoint> = BTreeMap::new();
        // In position order, so the last one kept per chain and key is the highest.
        for c in all.values() {
            latest.insert((&c.chain, &c.key_id), c);
        }
        Ok(latest.into_values().cloned().collect())
    }

    async fn audit_checkpoints(
        &self,
        chain: Option<&str>,
        after: Option<(String, u64, String)>,
        limit: usize,
    ) -> StoreResult<Vec<AuditCheckpoint>> {
        use std::ops::Bound;
        let all = self.checkpoints.read().unwrap_or_else(|e| e.into_inner());
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(all
            .range((from, Bound::Unbounded))
            .map(|(_, c)| c)
            .filter(|c| chain.is_none_or(|ch| c.chain == ch))
            .take(limit)
            .cloned()
            .collect())
    }
}

/// The `q` quantile of sorted values, interpolated as PostgreSQL's `percentile_cont`.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => {
            let at = q * (n - 1) as f64;
            let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
        }
    }
}
