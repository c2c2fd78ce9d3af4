//! One storage trait for the control plane's state, with an in-memory backend (the
//! embedded default) and a PostgreSQL backend. Both pass the same conformance suite
//! (`tests/storage_conformance.rs`).

mod memory;
mod migrate;
mod pg_tls;
mod postgres;
mod postgres_admin;
mod postgres_audit;
mod postgres_checkpoints;
mod postgres_learning;
mod postgres_review;
mod postgres_task_memory;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use toolplane_core::audit::AuditRecord;
use toolplane_core::audit_checkpoint::AuditCheckpoint;
use toolplane_core::model::{AccessRequest, AccessRequestStatus, FallbackStrategy, StoredCredential};
use toolplane_core::model::{
    Agent, AuditAction, AuditEvent, InvocationRecord, Permission, SyncEvent, TokenRecord, Tool,
};
use toolplane_core::model::{ToolChange, ToolChangeStatus, ToolReviewPolicy};
use toolplane_core::usage::{UsageCounts, UsageKey};
use uuid::Uuid;

pub use crate::selection::learning::{Cell, FollowStats, Key as LearningKey};
pub use crate::selection::memory::TaskEntry;

pub use memory::MemoryStore;
pub use postgres::{PostgresStore, spawn_change_listener};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was broken; the message names what collided.
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The database cannot be reached right now; callers may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Builds an administrative change's audit events from what the change found (e.g. the
/// grant a revocation revoked), for changes whose record names it.
pub type AuditOf<'a, T> = dyn Fn(&T) -> Vec<AuditEvent> + Send + Sync + 'a;

#[derive(Debug, Clone, Default)]
pub struct ToolFilter {
    pub category: Option<String>,
    pub capability: Option<String>,
    pub enabled: Option<bool>,
    pub provider: Option<String>,
    /// Case-insensitive substring of name or description.
    pub text: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub invocation_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub tool_id: Option<Uuid>,
    pub task_id: Option<String>,
    pub action: Option<AuditAction>,
    pub success: Option<bool>,
    /// `occurred_at >= since`.
    pub since: Option<DateTime<Utc>>,
    /// `occurred_at < until`.
    pub until: Option<DateTime<Utc>>,
    /// Only records after this global sequence number (a resumable cursor).
    pub after_seq: Option<u64>,
    /// Only records before this global sequence number (the cursor of newest-first pages).
    pub before_seq: Option<u64>,
    /// Newest records (highest sequence) first.
    pub newest_first: bool,
    /// Most records returned; 0 means no limit.
    pub limit: usize,
}

impl AuditFilter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let e = &r.event;
        self.invocation_id.is_none_or(|i| e.invocation_id == Some(i))
            && self.agent_id.is_none_or(|a| e.agent_id == Some(a))
            && self.tool_id.is_none_or(|t| e.tool_id == Some(t))
            && self.task_id.as_ref().is_none_or(|t| e.task_id == *t)
            && self.action.is_none_or(|a| e.action == a)
            && self.success.is_none_or(|s| e.success == s)
            && self.since.is_none_or(|t| e.occurred_at >= t)
            && self.until.is_none_or(|t| e.occurred_at < t)
            && self.after_seq.is_none_or(|s| r.seq > s)
            && self.before_seq.is_none_or(|s| r.seq < s)
    }
}

/// One selection decision, as logged (`tool_selection_log`).
/// Task memory changed since a version: remembered tasks with their stored totals,
/// forgotten ones by (tool, task hash), and the highest version read.
#[derive(Debug, Default)]
pub struct TaskMemoryChanges {
    pub remembered: Vec<TaskEntry>,
    pub forgotten: Vec<(Uuid, String)>,
    pub top: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SelectionLogEntry {
    pub selection_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub task_category: String,
    /// Redacted.
    pub task_description: String,
    pub primary_tool_id: Uuid,
    pub alternatives: Vec<Uuid>,
    pub combined_score: f64,
    pub confidence: f64,
    pub reasoning: String,
    pub selected_at: DateTime<Utc>,
}

/// An event a sidecar sent that could not enter the audit trail, kept whole.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Assigned by the store, in arrival order (a paging cursor).
    pub id: u64,
    pub received_at: DateTime<Utc>,
    /// The authenticated sender (`sidecar:<token id>`).
    pub source: String,
    /// As sent; it may not be a valid id.
    pub event_id: String,
    /// `audit`, `invocation` or `unknown`.
    pub kind: String,
    pub error: String,
    /// The protobuf `SyncEvent` as received.
    pub raw: Vec<u8>,
}

/// A connection pool's use at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// The configured maximum number of connections.
    pub max: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections idle now.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// A `LIMITED_INVOCATIONS` grant's current day, whose calls count against its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetWindow {
    pub permission_id: Uuid,
    /// The start of the grant's current day (in its time zone).
    pub since: DateTime<Utc>,
}

/// What deleting an agent took away with it, for its audit event and the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRemoval {
    /// The agent as it was.
    pub agent: Agent,
    pub tokens_revoked: Vec<Uuid>,
    /// The grants revoked: (grant, its tool).
    pub grants_revoked: Vec<(Uuid, Uuid)>,
    pub access_requests_denied: Vec<Uuid>,
}

/// Which tokens `ListTokens` lists.
#[derive(Debug, Clone, Default)]
pub struct TokenFilter {
    pub agent_id: Option<Uuid>,
    pub role: Option<toolplane_core::model::Role>,
    /// Revoked and expired tokens too.
    pub include_inactive: bool,
}
/// What the fleet's calls looked like over a window (the admin console's overview).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    /// Calls per minute and status: (minute start, status, calls), oldest first.
    pub minutes: Vec<(DateTime<Utc>, String, u64)>,
    pub calls: u64,
    pub cache_hits: u64,
    /// Duration percentiles of the window's calls, in milliseconds.
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// The most called tools and the most calling agents, with their calls.
    pub top_tools: Vec<(Uuid, u64)>,
    pub top_agents: Vec<(Uuid, u64)>,
}

/// How many tools [`Activity`] lists as the most called (and agents as the most calling).
pub const ACTIVITY_TOP: usize = 8;

/// One row of usage statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub key: UsageKey,
    pub counts: UsageCounts,
}

#[async_trait::async_trait]
///
/// Every administrative change takes its audit event and stores both atomically (one
/// transaction on PostgreSQL, one critical section in memory), appending the event
/// only when the change took effect: no change goes unrecorded, and no record claims a
/// change that was not made.
pub trait Store: Send + Sync + 'static {
    /// `Conflict` when a live tool already has the name.
    async fn create_tool(&self, tool: &Tool, audit: &AuditEvent) -> StoreResult<()>;
    /// Stores `tool` as the next version: `tool.version` must be the live version + 1
    /// (`Conflict` otherwise, so concurrent updates cannot both win); `NotFound` when
    /// the tool does not exist or was deleted.
    async fn update_tool(&self, tool: &Tool, audit: &AuditEvent) -> StoreResult<()>;
    /// Live (not deleted) tools only.
    async fn get_tool(&self, id: Uuid) -> StoreResult<Option<Tool>>;
    /// Any recorded version, deleted tools included (history keeps working); its
    /// `enabled` is the tool's current state.
    async fn get_tool_version(&self, id: Uuid, version: u32) -> StoreResult<Option<Tool>>;
    /// `None` when the tool does not exist or was deleted. Does not create a version.
    async fn set_tool_enabled(
        &self,
        id: Uuid,
        enabled: bool,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<Option<Tool>>;
    /// Soft delete; `false` when there was no live tool.
    async fn delete_tool(&self, id: Uuid, at: DateTime<Utc>, audit: &AuditEvent) -> StoreResult<bool>;
    async fn get_tool_by_name(&self, name: &str) -> StoreResult<Option<Tool>>;
    /// Live tools matching `filter`, ordered by name, names strictly after `after`.
    async fn list_tools(&self, filter: &ToolFilter, after: Option<&str>, limit: usize) -> StoreResult<Vec<Tool>>;

    /// Creates or replaces the tool's credential.
    async fn set_credential(&self, credential: &StoredCredential, audit: &AuditEvent) -> StoreResult<()>;
    /// Credentials of live tools.
    async fn list_credentials(&self) -> StoreResult<Vec<StoredCredential>>;
    /// Removes the tool's credential; `false` when it had none.
    async fn delete_credential(&self, tool_id: Uuid, audit: &AuditEvent) -> StoreResult<bool>;

    /// Creates or replaces the tool's fallback strategy.
    async fn set_fallback(&self, strategy: &FallbackStrategy, audit: &AuditEvent) -> StoreResult<()>;
    async fn get_fallback(&self, tool_id: Uuid) -> StoreResult<Option<FallbackStrategy>>;
    /// Strategies of live tools.
    async fn list_fallbacks(&self) -> StoreResult<Vec<FallbackStrategy>>;
    /// `false` when the tool has no strategy.
    async fn delete_fallback(&self, tool_id: Uuid, audit: &AuditEvent) -> StoreResult<bool>;

    /// `Conflict` when the name is taken.
    async fn create_agent(&self, agent: &Agent, audit: &AuditEvent) -> StoreResult<()>;
    /// Live (not deleted) agents only.
    async fn get_agent(&self, id: Uuid) -> StoreResult<Option<Agent>>;
    /// Every live agent, ordered by name.
    async fn list_agents(&self) -> StoreResult<Vec<Agent>>;
    /// Live agents (of `team`, when set) ordered by name, names strictly after `after`,
    /// at most `limit`.
    async fn agents_page(&self, team: Option<&str>, after: Option<&str>, limit: usize) -> StoreResult<Vec<Agent>>;
    /// Replaces the live agent's changeable fields (everything but id, name and
    /// creation time) with `agent`'s; `false` when there is no such live agent.
    async fn update_agent(&self, agent: &Agent, audit: &AuditEvent) -> StoreResult<bool>;
    /// Deletes the live agent: revokes its unrevoked tokens and grants and denies its
    /// pending access requests, all with the audit events `audit` makes of what was
    /// removed, in one step. Its history stays; its name is free again. `None` when
    /// there is no such live agent.
    async fn delete_agent(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditOf<'_, AgentRemoval>,
    ) -> StoreResult<Option<AgentRemoval>>;

    async fn create_token(&self, token: &TokenRecord, audit: &AuditEvent) -> StoreResult<()>;
    async fn token_by_digest(&self, sha256: &str) -> StoreResult<Option<TokenRecord>>;
    /// Unrevoked, unexpired tokens.
    async fn active_tokens(&self, now: DateTime<Utc>) -> StoreResult<Vec<TokenRecord>>;
    /// Tokens matching `filter`, ordered by id (issue order), ids strictly after
    /// `after`, at most `limit`.
    async fn list_tokens(
        &self,
        filter: &TokenFilter,
        now: DateTime<Utc>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<TokenRecord>>;
    /// `false` when there is no such unrevoked token.
    async fn revoke_token(&self, id: Uuid, at: DateTime<Utc>, audit: &AuditEvent) -> StoreResult<bool>;

    async fn create_permission(&self, permission: &Permission, audit: &AuditEvent) -> StoreResult<()>;
    /// The revoked grant, or `None` when there is no such unrevoked grant.
    async fn revoke_permission(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditOf<'_, Permission>,
    ) -> StoreResult<Option<Permission>>;
    /// Unrevoked grants, optionally narrowed to one agent and/or tool.
    async fn list_permissions(&self, agent_id: Option<Uuid>, tool_id: Option<Uuid>) -> StoreResult<Vec<Permission>>;
    /// [`Store::list_permissions`] a page at a time: ordered by id (grant order), ids
    /// strictly after `after`, at most `limit`.
    async fn permissions_page(
        &self,
        agent_id: Option<Uuid>,
        tool_id: Option<Uuid>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Permission>>;

    async fn create_access_request(&self, request: &AccessRequest, audit: &AuditEvent) -> StoreResult<()>;
    async fn get_access_request(&self, id: Uuid) -> StoreResult<Option<AccessRequest>>;
    /// Records the review of a pending request, and the grant an approval creates, in
    /// one step: `None` when the request is not pending any more (or does not exist), so
    /// two admins cannot both review it.
    async fn review_access_request(
        &self,
        reviewed: &AccessRequest,
        grant: Option<&Permission>,
        audit: &AuditOf<'_, AccessRequest>,
    ) -> StoreResult<Option<AccessRequest>>;
    /// Oldest first.
    async fn list_access_requests(
        &self,
        status: Option<AccessRequestStatus>,
        agent_id: Option<Uuid>,
    ) -> StoreResult<Vec<AccessRequest>>;
    /// [`Store::list_access_requests`] a page at a time: ordered by id (request order),
    /// ids strictly after `after`, at most `limit`.
    async fn access_requests_page(
        &self,
        status: Option<AccessRequestStatus>,
        agent_id: Option<Uuid>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<AccessRequest>>;

    /// Stores events atomically and idempotently: an event whose id is already stored
    /// is skipped, so sidecars can resend after a lost ack. Each newly stored audit
    /// event is appended to its writer's hash chain; each newly stored invocation
    /// updates its tool's reliability and average latency and the usage statistics.
    async fn append_events(&self, events: &[SyncEvent]) -> StoreResult<()>;
    /// [`Store::append_events`] for a batch its caller gives up: a store that keeps
    /// events in memory moves them in instead of copying each one. On success gives
    /// back at least the invocations (what learning reads next); on failure every
    /// event, as it was, to be stored one by one.
    async fn append_owned_events(
        &self,
        events: Vec<SyncEvent>,
    ) -> Result<Vec<SyncEvent>, (StoreError, Vec<SyncEvent>)> {
        match self.append_events(&events).await {
            Ok(()) => Ok(events),
            Err(e) => Err((e, events)),
        }
    }
    /// Keeps events that cannot enter the trail. A letter whose (source, event id) is
    /// already kept is skipped, so a resent batch adds nothing; `id` is assigned here.
    async fn dead_letter(&self, letters: &[DeadLetter]) -> StoreResult<()>;
    /// Letters with an id above `after_id`, oldest first, at most `limit`; and how many
    /// are kept in all.
    async fn dead_letters(&self, after_id: u64, limit: usize) -> StoreResult<(Vec<DeadLetter>, u64)>;
    /// Ordered by the sequence in which they were recorded.
    async fn audit_events(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>>;
    /// Records that occurred in [since, until), in (chain, chain_seq) order, strictly
    /// after `after` (a chain and position), at most `limit`.
    async fn audit_chain_page(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        after: Option<(String, u64)>,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>>;
    /// The hash at position `chain_seq` of `chain`: the stored record's, or the anchor
    /// the retention job left when it dropped the record's partition.
    async fn audit_link(&self, chain: &str, chain_seq: u64) -> StoreResult<Option<String>>;
    /// Each chain's last position.
    async fn audit_chain_heads(&self) -> StoreResult<Vec<(String, u64)>>;
    /// Usage per tool, agent and day, days in [since, until], ordered by day, tool, agent.
    async fn usage(
        &self,
        agent_id: Option<Uuid>,
        tool_id: Option<Uuid>,
        since: Option<NaiveDate>,
        until: Option<NaiveDate>,
    ) -> StoreResult<Vec<UsageRow>>;
    async fn get_invocation(&self, invocation_id: Uuid) -> StoreResult<Option<InvocationRecord>>;
    /// The most recent `limit` invocations, oldest first, with any reported quality:
    /// what selection relearns from at start-up.
    async fn recent_invocations(&self, limit: usize) -> StoreResult<Vec<(InvocationRecord, Option<f64>)>>;
    /// Records an agent's verdict on an invocation; `None` when there is no such
    /// invocation.
    async fn record_quality(
        &self,
        invocation_id: Uuid,
        quality: f64,
        task_succeeded: bool,
    ) -> StoreResult<Option<InvocationRecord>>;
    async fn log_selection(&self, entry: &SelectionLogEntry) -> StoreResult<()>;
    async fn selection_log(&self, agent_id: Option<Uuid>, limit: usize) -> StoreResult<Vec<SelectionLogEntry>>;
    /// One logged selection decision (task memory links a call to its task by it).
    async fn get_selection(&self, selection_id: Uuid) -> StoreResult<Option<SelectionLogEntry>>;
    /// The status of the latest call that followed each of these selections.
    async fn selection_outcomes(&self, selection_ids: &[Uuid]) -> StoreResult<HashMap<Uuid, String>>;
    /// Calls completed since `since`: per minute and status, percentiles, top tools and agents.
    async fn activity(&self, since: DateTime<Utc>) -> StoreResult<Activity>;

    /// Upserts remembered tasks (a known one counts again and is refreshed), then keeps
    /// only the `per_tool` most recently seen tasks of each tool touched.
    async fn remember_tasks(&self, entries: &[TaskEntry], per_tool: usize) -> StoreResult<()>;
    async fn forget_task(&self, tool_id: Uuid, hash: &str) -> StoreResult<bool>;
    async fn forget_tool_tasks(&self, tool_id: Uuid) -> StoreResult<u64>;
    /// Every remembered task last seen after `since`.
    async fn task_memory(&self, since: DateTime<Utc>) -> StoreResult<Vec<TaskEntry>>;
    /// Forgets tasks last seen before `before`; returns how many.
    async fn prune_task_memory(&self, before: DateTime<Utc>) -> StoreResult<u64>;
    /// Remembered tasks changed after version `after`, for replicas to apply; nothing
    /// from a backend that does not share learning (see [`Store::shares_learning`]).
    async fn task_memory_changes(&self, after: u64) -> StoreResult<TaskMemoryChanges> {
        Ok(TaskMemoryChanges {
            top: after,
            ..TaskMemoryChanges::default()
        })
    }
    /// How agents followed selection's recommendations for `category`, counted alike
    /// by every replica; `None` from a backend that does not share learning (the
    /// process counts them).
    async fn follow_stats(&self, _category: &str) -> StoreResult<Option<FollowStats>> {
        Ok(None)
    }

    /// Whether this backend keeps selection's learning cells itself, folding every newly
    /// stored invocation and first verdict into them in the same transaction (so a
    /// resent batch changes nothing), for every replica to read with
    /// [`Store::learning_cells`]. `false`: learning stays in this process.
    fn shares_learning(&self) -> bool {
        false
    }

    /// Learning cells changed after version `after`, and the highest version among
    /// them (`after` when none changed); nothing from a backend that does not share
    /// learning.
    async fn learning_cells(&self, after: u64) -> StoreResult<(Vec<(LearningKey, Cell)>, u64)> {
        Ok((Vec::new(), after))
    }

    /// A number that moves with every administrative change (in the change's own
    /// transaction); `None` for a backend without other replicas. Replicas poll it, so
    /// a change whose notification was lost still reaches them.
    async fn change_revision(&self) -> StoreResult<Option<u64>> {
        Ok(None)
    }

    /// Tells other control plane replicas that state changed (`origin` names the
    /// sender). The in-memory backend has no other replicas.
    async fn publish_change(&self, _origin: Uuid) -> StoreResult<()> {
        Ok(())
    }

    /// How many calls went to the tool under each of `agent_id`'s grants since the
    /// window's start (the start of the grant's current day): its `TOOL_INVOKED` events
    /// naming the grant, less those that never reached the tool (an open circuit or a
    /// rate limit, whose budget the sidecar gave back). Grants without such a call are
    /// left out. The default reads the audit trail through [`Store::audit_events`].
    async fn budget_use(&self, agent_id: Uuid, windows: &[BudgetWindow]) -> StoreResult<HashMap<Uuid, u64>> {
        let Some(since) = windows.iter().map(|w| w.since).min() else {
            return Ok(HashMap::new());
        };
        let events = self
            .audit_events(&AuditFilter {
                agent_id: Some(agent_id),
                action: Some(AuditAction::ToolInvoked),
                since: Some(since),
                ..Default::default()
            })
            .await?;
        let mut used = HashMap::new();
        for r in events {
            let e = &r.event;
            let spent = e
                .result
                .as_ref()
                .is_none_or(|s| toolplane_core::stats::counts(s.status));
            if let Some(w) = windows
                .iter()
                .find(|w| Some(w.permission_id) == e.permission_id && e.occurred_at >= w.since)
                && spent
            {
                *used.entry(w.permission_id).or_default() += 1;
            }
        }
        Ok(used)
    }

    /// How the connection pool is used right now (read at every metrics scrape, so it
    /// must not wait); `None` for a backend without one.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    // Pinned tool definitions (`ToolReview`).

    /// Records a pending change of a tool, superseding any other pending change of the
    /// same tool (only the server's newest definition waits for review).
    async fn record_tool_change(&self, change: &ToolChange, audit: &AuditEvent) -> StoreResult<()>;
    /// Supersedes the tool's pending changes (its server went back to the approved
    /// definition), with `audit` only when there was one; how many.
    async fn withdraw_tool_changes(&self, tool_id: Uuid, at: DateTime<Utc>, audit: &AuditEvent) -> StoreResult<u64>;
    async fn get_tool_change(&self, id: Uuid) -> StoreResult<Option<ToolChange>>;
    /// Newest first.
    async fn list_tool_changes(
        &self,
        status: Option<ToolChangeStatus>,
        tool_id: Option<Uuid>,
    ) -> StoreResult<Vec<ToolChange>>;
    /// Records the review of a pending change and, for an approval, the tool's next
    /// version (as [`Store::update_tool`] would), in one step: `None` when the change is
    /// not pending any more, so two admins cannot both review it.
    async fn review_tool_change(
        &self,
        reviewed: &ToolChange,
        new_version: Option<&Tool>,
        audit: &[AuditEvent],
    ) -> StoreResult<Option<ToolChange>>;
    /// Creates or replaces a provider's policy.
    async fn set_tool_review_policy(&self, policy: &ToolReviewPolicy, audit: &AuditEvent) -> StoreResult<()>;
    /// Ordered by provider.
    async fn list_tool_review_policies(&self) -> StoreResult<Vec<ToolReviewPolicy>>;

    // Signed checkpoints of the audit chains (append-only).

    /// Stores a signed checkpoint. One already stored for the same chain, position and
    /// key is kept as it is (replicas sharing a key may sign the same head).
    async fn add_audit_checkpoint(&self, checkpoint: &AuditCheckpoint) -> StoreResult<()>;
    /// The checkpoint at the highest position of each chain by each key, ordered by
    /// chain, then key id.
    async fn latest_audit_checkpoints(&self) -> StoreResult<Vec<AuditCheckpoint>>;
    /// Checkpoints of `chain` (or of every chain) in (chain, chain_seq, key_id) byte
    /// order, strictly after `after`, at most `limit`.
    async fn audit_checkpoints(
        &self,
        chain: Option<&str>,
        after: Option<(String, u64, String)>,
        limit: usize,
    ) -> StoreResult<Vec<AuditCheckpoint>>;
}

/// Applies pending migrations (under the advisory lock) and returns: the Kubernetes
/// migration Job runs this before the new replicas start.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    migrate::run(database_url).await
}

/// Opens the backend `database_url` names (PostgreSQL, migrated) or, without one, the
/// in-memory backend.
pub async fn open(database_url: Option<&str>, pool_size: usize) -> anyhow::Result<Arc<dyn Store>> {
    match database_url {
        Some(url) => Ok(Arc::new(PostgresStore::connect(url, pool_size).await?)),
        None => Ok(Arc::new(MemoryStore::default())),
    }
}
