//! One storage trait for the control plane's state, with an in-memory backend (the
//! embedded default) and a PostgreSQL backend. Both pass the same conformance suite
//! (`tests/storage_conformance.rs`).

mod memory;
mod migrate;
mod postgres;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use toolplane_core::model::{AccessRequest, AccessRequestStatus, FallbackStrategy, StoredCredential};
use toolplane_core::model::{Agent, AuditEvent, InvocationRecord, Permission, SyncEvent, TokenRecord, Tool};
use uuid::Uuid;

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
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// `Conflict` when a live tool already has the name.
    async fn create_tool(&self, tool: &Tool) -> StoreResult<()>;
    /// Stores `tool` as the next version: `tool.version` must be the live version + 1
    /// (`Conflict` otherwise, so concurrent updates cannot both win); `NotFound` when
    /// the tool does not exist or was deleted.
    async fn update_tool(&self, tool: &Tool) -> StoreResult<()>;
    /// Live (not deleted) tools only.
    async fn get_tool(&self, id: Uuid) -> StoreResult<Option<Tool>>;
    /// Any recorded version, deleted tools included (history keeps working); its
    /// `enabled` is the tool's current state.
    async fn get_tool_version(&self, id: Uuid, version: u32) -> StoreResult<Option<Tool>>;
    /// `None` when the tool does not exist or was deleted. Does not create a version.
    async fn set_tool_enabled(&self, id: Uuid, enabled: bool, at: DateTime<Utc>) -> StoreResult<Option<Tool>>;
    /// Soft delete; `false` when there was no live tool.
    async fn delete_tool(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<bool>;
    async fn get_tool_by_name(&self, name: &str) -> StoreResult<Option<Tool>>;
    /// Live tools matching `filter`, ordered by name, names strictly after `after`.
    async fn list_tools(&self, filter: &ToolFilter, after: Option<&str>, limit: usize) -> StoreResult<Vec<Tool>>;

    /// Creates or replaces the tool's credential.
    async fn set_credential(&self, credential: &StoredCredential) -> StoreResult<()>;
    /// Credentials of live tools.
    async fn list_credentials(&self) -> StoreResult<Vec<StoredCredential>>;

    /// Creates or replaces the tool's fallback strategy.
    async fn set_fallback(&self, strategy: &FallbackStrategy) -> StoreResult<()>;
    async fn get_fallback(&self, tool_id: Uuid) -> StoreResult<Option<FallbackStrategy>>;
    /// Strategies of live tools.
    async fn list_fallbacks(&self) -> StoreResult<Vec<FallbackStrategy>>;

    /// `Conflict` when the name is taken.
    async fn create_agent(&self, agent: &Agent) -> StoreResult<()>;
    async fn get_agent(&self, id: Uuid) -> StoreResult<Option<Agent>>;
    async fn list_agents(&self) -> StoreResult<Vec<Agent>>;

    async fn create_token(&self, token: &TokenRecord) -> StoreResult<()>;
    async fn token_by_digest(&self, sha256: &str) -> StoreResult<Option<TokenRecord>>;
    /// Unrevoked, unexpired tokens.
    async fn active_tokens(&self, now: DateTime<Utc>) -> StoreResult<Vec<TokenRecord>>;
    /// `false` when there is no such unrevoked token.
    async fn revoke_token(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<bool>;

    async fn create_permission(&self, permission: &Permission) -> StoreResult<()>;
    /// The revoked grant, or `None` when there is no such unrevoked grant.
    async fn revoke_permission(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<Option<Permission>>;
    /// Unrevoked grants, optionally narrowed to one agent and/or tool.
    async fn list_permissions(&self, agent_id: Option<Uuid>, tool_id: Option<Uuid>) -> StoreResult<Vec<Permission>>;

    async fn create_access_request(&self, request: &AccessRequest) -> StoreResult<()>;
    async fn get_access_request(&self, id: Uuid) -> StoreResult<Option<AccessRequest>>;
    /// Records the review of a pending request, and the grant an approval creates, in
    /// one step: `None` when the request is not pending any more (or does not exist), so
    /// two admins cannot both review it.
    async fn review_access_request(
        &self,
        reviewed: &AccessRequest,
        grant: Option<&Permission>,
    ) -> StoreResult<Option<AccessRequest>>;
    /// Oldest first.
    async fn list_access_requests(
        &self,
        status: Option<AccessRequestStatus>,
        agent_id: Option<Uuid>,
    ) -> StoreResult<Vec<AccessRequest>>;

    /// Stores events atomically and idempotently: an event whose id is already stored
    /// is skipped, so sidecars can resend after a lost ack. Each newly stored
    /// invocation updates its tool's reliability and average latency.
    async fn append_events(&self, events: &[SyncEvent]) -> StoreResult<()>;
    /// Ordered by the sequence in which they were recorded.
    async fn audit_events(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>>;
    async fn get_invocation(&self, invocation_id: Uuid) -> StoreResult<Option<InvocationRecord>>;

    /// Tells other control plane replicas that state changed (`origin` names the
    /// sender). The in-memory backend has no other replicas.
    async fn publish_change(&self, _origin: Uuid) -> StoreResult<()> {
        Ok(())
    }
}

/// Opens the backend `database_url` names (PostgreSQL, migrated) or, without one, the
/// in-memory backend.
pub async fn open(database_url: Option<&str>, pool_size: usize) -> anyhow::Result<Arc<dyn Store>> {
    match database_url {
        Some(url) => Ok(Arc::new(PostgresStore::connect(url, pool_size).await?)),
        None => Ok(Arc::new(MemoryStore::default())),
    }
}
