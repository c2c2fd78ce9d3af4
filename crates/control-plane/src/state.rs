//! What every service shares: the store, the registration policy and the change
//! counter that tells connected sidecars a new snapshot is due.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;
use tokio::sync::watch;
use toolplane_core::crypto::Keyring;
use toolplane_core::model::{
    AuditAction, AuditEvent, Credential, InvocationRecord, Principal, Snapshot, SyncEvent, Tool, ToolSpec,
};
use toolplane_core::validate::ToolPolicy;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::selection::Selector;
use crate::selection::learning::Outcome;
use crate::storage::Store;

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub policy: ToolPolicy,
    /// Seals and opens tool credentials; `None` when no master key is configured.
    pub keyring: Option<Keyring>,
    /// Names this replica in change notifications, so it ignores its own.
    pub replica_id: Uuid,
    revision: watch::Sender<u64>,
    /// Tools whose learned statistics stored outcomes moved since the last push
    /// ([`Self::push_stats`]).
    stats_moved: std::sync::Mutex<HashSet<Uuid>>,
    /// The latest snapshot built, shared by every sidecar session.
    built: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
    /// The selection index and what the fleet learned about tools.
    pub selector: Selector,
    /// Latest selection decisions, for the calls that follow them (task memory).
    pub recent_selections: crate::task_memory::RecentSelections,
    /// The version of the shared learning cells this replica has loaded.
    learning_version: tokio::sync::Mutex<u64>,
    task_memory_version: tokio::sync::Mutex<u64>,
    /// The guarded client for MCP servers (imports, re-lists); set at start-up with
    /// the configured CA bundle ([`Self::set_mcp_http`]).
    mcp_http: std::sync::OnceLock<toolplane_runtime::egress::McpHttp>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, policy: ToolPolicy, keyring: Option<Keyring>) -> Arc<Self> {
        // Start from the wall clock so revisions keep growing across restarts.
        let start = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(1);
        Arc::new(Self {
            store,
            policy,
            keyring,
            replica_id: Uuid::now_v7(),
            revision: watch::Sender::new(start),
            stats_moved: Default::default(),
            built: tokio::sync::Mutex::new(None),
            selector: Selector::default(),
            recent_selections: Default::default(),
            learning_version: tokio::sync::Mutex::new(0),
            task_memory_version: tokio::sync::Mutex::new(0),
            mcp_http: std::sync::OnceLock::new(),
        })
    }

    /// Sets the MCP client (once, at start-up).
    pub fn set_mcp_http(&self, http: toolplane_runtime::egress::McpHttp) {
        let _ = self.mcp_http.set(http);
    }

    /// The guarded MCP client: the one set at start-up, else one trusting the public
    /// roots only.
    pub fn mcp_http(&self) -> Result<toolplane_runtime::egress::McpHttp, String> {
        if let Some(h) = self.mcp_http.get() {
            return Ok(h.clone());
        }
        let h = toolplane_runtime::egress::McpHttp::new(self.policy.allow_link_local_endpoints, None)
            .map_err(|e| format!("cannot build the MCP client: {e}"))?;
        Ok(self.mcp_http.get_or_init(|| h).clone())
    }

    /// Feeds an invocation outcome to selection's learning. Cache hits and calls that
    /// never reached the tool (refused, rate limited) say nothing about the tool. A
    /// store that shares learning already folded it in (see [`Self::refresh_learning`]).
    pub fn learn(&self, i: &InvocationRecord, quality: Option<f64>) {
        if self.store.shares_learning() {
            return;
        }
        let Some(outcome) = Outcome::of(i) else {
            return;
        };
        self.selector.learning.record(&outcome);
        if let Some(q) = quality {
            self.selector.learning.record_quality(
                i.result.tool_id,
                i.agent_id,
                &i.task_category,
                q,
                true,
                outcome.success,
            );
        }
    }

    /// Start-up: loads the shared learning cells, or relearns in process from the most
    /// recent stored invocations.
    pub async fn relearn(&self, limit: usize) -> ApiResult<usize> {
        if self.store.shares_learning() {
            return self.refresh_learning().await;
        }
        let recent = self.store.recent_invocations(limit).await?;
        for (i, q) in &recent {
            self.learn(i, *q);
        }
        Ok(recent.len())
    }

    /// Loads the shared learning cells changed since the last refresh; returns how many.
    pub async fn refresh_learning(&self) -> ApiResult<usize> {
        let mut version = self.learning_version.lock().await;
        let (cells, now) = self.store.learning_cells(*version).await?;
        let n = cells.len();
        self.selector.learning.load(cells);
        *version = now;
        drop(version);
        Ok(n + self.refresh_task_memory().await?)
    }

    /// Applies the remembered tasks other replicas changed (and this one: the stored
    /// totals replace what it counted); returns how many changed.
    async fn refresh_task_memory(&self) -> ApiResult<usize> {
        let memory = &self.selector.memory;
        if !memory.config().enabled() {
            return Ok(0);
        }
        let mut version = self.task_memory_version.lock().await;
        let changes = self.store.task_memory_changes(*version).await?;
        let cutoff = Utc::now() - memory.config().retention;
        let n = changes.remembered.len() + changes.forgotten.len();
        for e in changes.remembered {
            if e.last_seen >= cutoff {
                memory.set(e);
            }
        }
        for (tool, hash) in changes.forgotten {
            memory.forget(tool, &hash);
        }
        *version = changes.top;
        Ok(n)
    }

    /// Credentials of live tools, decrypted for the sync stream. One that does not
    /// decrypt (a retired key was dropped, or the row was tampered with) is left out
    /// and logged, so its tool is called without it rather than not at all.
    async fn credentials(&self) -> ApiResult<Vec<Credential>> {
        let stored = self.store.list_credentials().await?;
        let Some(keyring) = &self.keyring else {
            if !stored.is_empty() {
                tracing::error!(
                    count = stored.len(),
                    "credentials are stored but no master key is configured"
                );
            }
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(stored.len());
        for c in stored {
            match keyring.open(&c.sealed, c.tool_id.as_bytes()) {
                Ok(secret) => out.push(Credential {
                    tool_id: c.tool_id,
                    auth_type: c.auth_type,
                    header_name: c.header_name,
                    secret: String::from_utf8_lossy(&secret).into_owned(),
                    settings: c.settings,
                    expires_at: c.expires_at,
                }),
                Err(e) => {
                    tracing::error!(tool_id = %c.tool_id, key_id = %c.sealed.key_id, error = %e, "cannot open credential")
                }
            }
        }
        Ok(out)
    }

    /// Called after every write that sidecars must see: wakes this replica's sidecar
    /// sessions and tells the other replicas (PostgreSQL NOTIFY).
    pub fn changed(&self) {
        self.bump();
        self.notify_replicas();
    }

    /// Tells the other replicas (through the store) that this one changed something.
    fn notify_replicas(&self) {
        let (store, origin) = (self.store.clone(), self.replica_id);
        tokio::spawn(async move {
            if let Err(e) = store.publish_change(origin).await {
                tracing::warn!(error = %e, "could not notify other replicas of a change");
            }
        });
    }

    /// A stored batch held outcomes that move tools' learned reliability and latency
    /// (the store updated them with the batch): they are due at the next push.
    pub fn stats_stored(&self, stored: &[SyncEvent]) {
        let mut moved = None;
        for e in stored {
            if let SyncEvent::Invocation(i) = e
                && !i.result.cache_hit
                && toolplane_core::stats::counts(i.result.status)
            {
                moved
                    .get_or_insert_with(|| {
                        self.stats_moved
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                    })
                    .insert(i.result.tool_id);
            }
        }
    }

    /// Sends learned statistics on if outcomes moved them far enough from what
    /// sidecars hold ([`stats_drifted`]) since the last push: a new revision here
    /// (sidecars get the tools whose numbers changed as a delta) and a NOTIFY to the
    /// other replicas, which rebuild from the database. The database's admin change
    /// revision is left alone: statistics are not an admin change, and a lost NOTIFY
    /// costs only until the next push or change.
    ///
    /// Under steady load outcomes touch the statistics every period without moving
    /// them much, so the moved tools are looked at first; and when they did move, the
    /// new revision is the last snapshot with those tools' numbers replaced, sharing
    /// every other tool with it. Rebuilding instead reads, indexes and diffs the whole
    /// catalog: ~110–190 ms of CPU with 10 000 tools in memory, every period.
    pub async fn push_stats(&self) {
        let moved = std::mem::take(
            &mut *self
                .stats_moved
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if moved.is_empty() {
            return;
        }
        // Held to the end: no session builds or reads a snapshot half way through.
        let mut built = self.built.lock().await;
        let revision = *self.revision.borrow();
        let held = built.as_ref().filter(|s| s.revision == revision).cloned();
        let patch = match &held {
            Some(held) if moved.len() <= STATS_CHECK_MAX_TOOLS => self.stats_patch(held, &moved).await,
            _ => None,
        };
        let (Some(held), Some(patch)) = (held, patch) else {
            // Nothing current to compare with, a tool it does not hold, or too many
            // tools moved to look up one by one: the rebuild reads them all anyway.
            drop(built);
            self.changed();
            tracing::debug!(tools = moved.len(), "pushed learned tool statistics with a rebuild");
            return;
        };
        if patch.is_empty() {
            return;
        }
        let mut next = Snapshot::clone(&held);
        next.revision = revision + 1;
        let now = Utc::now();
        next.tokens.retain(|t| t.is_active(now));
        let count = patch.len();
        for (i, tool) in patch {
            next.tools[i] = tool;
        }
        // Only if no change came in since `revision` was read; one that did gets its
        // own rebuild, which carries these numbers too.
        if self.revision.send_if_modified(|r| {
            let current = *r == revision;
            if current {
                *r = revision + 1;
            }
            current
        }) {
            *built = Some(Arc::new(next));
            self.notify_replicas();
            tracing::debug!(revision = revision + 1, tools = count, "pushed learned tool statistics");
        }
    }

    /// The tools of `held` (by position) whose statistics in the store drifted from
    /// it, with those statistics. `None` when one of `moved` is not in `held` or cannot
    /// be read: then only a rebuild says what sidecars should hold.
    async fn stats_patch(&self, held: &Snapshot, moved: &HashSet<Uuid>) -> Option<Vec<(usize, Arc<Tool>)>> {
        let at: HashMap<Uuid, usize> = held
            .tools
            .iter()
            .enumerate()
            .filter(|(_, t)| moved.contains(&t.id))
            .map(|(i, t)| (t.id, i))
            .collect();
        let mut patch = Vec::new();
        for id in moved {
            let i = *at.get(id)?;
            let was = &held.tools[i];
            let now = self.store.get_tool(*id).await.ok()??;
            if stats_drifted(&was.spec, &now.spec) {
                let mut tool = Tool::clone(was);
                tool.spec.reliability_score = now.spec.reliability_score;
                tool.spec.average_latency_ms = now.spec.average_latency_ms;
                patch.push((i, Arc::new(tool)));
            }
        }
        Some(patch)
    }

    /// Calls [`Self::push_stats`] every `every`, so statistics reach sidecars within
    /// about that long of the batch that moved them and never more often.
    pub fn spawn_stats_push(self: &Arc<Self>, every: std::time::Duration) {
        let state = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match state.upgrade() {
                    Some(s) => s.push_stats().await,
                    None => return,
                }
            }
        });
    }

    /// A change happened elsewhere (another replica): rebuild and push.
    pub fn bump(&self) {
        self.revision.send_modify(|r| *r += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The snapshot at the current revision, built once and shared.
    pub async fn snapshot(&self) -> ApiResult<Arc<Snapshot>> {
        let revision = *self.revision.borrow();
        let mut built = self.built.lock().await;
        if let Some(s) = built.as_ref().filter(|s| s.revision == revision) {
            return Ok(s.clone());
        }
        let snapshot = Arc::new(self.build_snapshot(revision).await?);
        *built = Some(snapshot.clone());
        Ok(snapshot)
    }

    async fn build_snapshot(&self, revision: u64) -> ApiResult<Snapshot> {
        let mut tools = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_tools(&Default::default(), after.as_deref(), 1000)
                .await?;
            let done = page.len() < 1000;
            after = page.last().map(|t| t.spec.name.clone());
            tools.extend(page.into_iter().map(Arc::new));
            if done {
                break;
            }
        }
        Ok(Snapshot {
            revision,
            tools,
            permissions: self.store.list_permissions(None, None).await?,
            agents: self.store.list_agents().await?,
            tokens: self.store.active_tokens(Utc::now()).await?,
            credentials: self.credentials().await?,
            fallbacks: self.store.list_fallbacks().await?,
            scope: None,
        })
    }

    /// The audit event of an administrative action, for the store to append in the
    /// same transaction as the change itself.
    pub fn admin_event(
        &self,
        actor: &Principal,
        action: AuditAction,
        agent_id: Option<Uuid>,
        tool_id: Option<Uuid>,
        detail: String,
    ) -> AuditEvent {
        AuditEvent {
            event_id: Uuid::now_v7(),
            action,
            invocation_id: None,
            actor_id: actor.actor_id(),
            agent_id,
            tool_id,
            tool_version: 0,
            task_id: String::new(),
            occurred_at: Utc::now(),
            sanitized_parameters: Value::Null,
            result: None,
            success: true,
            detail,
            compliance_frameworks: Vec::new(),
            data_classification: None,
            sidecar_id: String::new(),
            permission_id: None,
        }
    }
}

/// Most tools whose statistics a push looks up one by one before deciding; when more
/// moved, the push rebuilds the snapshot (which reads them all anyway).
const STATS_CHECK_MAX_TOOLS: usize = 64;

/// Whether learned statistics moved enough to be worth a push: reliability by a
/// point (0.01) or more, average latency by 2 ms and 5 % of the held value or more. Smaller drift waits
/// for the next push that carries a larger one, or the next admin change.
fn stats_drifted(held: &ToolSpec, now: &ToolSpec) -> bool {
    let latency = held.average_latency_ms.abs_diff(now.average_latency_ms);
    (held.reliability_score - now.reliability_score).abs() >= 0.01
        || (latency >= 2 && u64::from(latency) * 20 >= u64::from(held.average_latency_ms))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
