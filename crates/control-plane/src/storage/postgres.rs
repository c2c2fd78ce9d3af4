//! PostgreSQL backend (tokio-postgres over a deadpool pool). SQL lives next to the
//! code that binds its parameters; the schema lives in `migrations/`.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::{Pool, Runtime};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, error::SqlState};
use toolplane_core::model::*;
use uuid::Uuid;

use super::{
    AuditFilter, AuditOf, DeadLetter, SelectionLogEntry, Store, StoreError, StoreResult, TaskEntry, ToolFilter,
    UsageRow, migrate, postgres_audit, postgres_checkpoints,
};
use toolplane_core::audit::AuditRecord;
use toolplane_core::audit_checkpoint::AuditCheckpoint;

/// The NOTIFY channel replicas announce changes on.
const CHANGES_CHANNEL: &str = "toolplane_changes";

/// Listens for other replicas' changes and calls `on_change` for each (and after every
/// reconnect, since notifications may have been missed meanwhile). Runs until the
/// process ends.
pub fn spawn_change_listener(url: String, origin: Uuid, on_change: impl Fn() + Send + Sync + 'static) {
    tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            match listen(&url, origin, &on_change).await {
                Ok(()) => attempt = 0,
                Err(e) => tracing::warn!(error = %e, "change listener lost its connection"),
            }
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt.min(25)))).await;
        }
    });
}

async fn listen(url: &str, origin: Uuid, on_change: &(impl Fn() + Send + Sync)) -> anyhow::Result<()> {
    use futures::StreamExt;
    let (config, tls) = super::pg_tls::target(url)?;
    let (client, mut connection) = config.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let pump = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "change listener connection failed");
                    break;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")).await?;
    tracing::info!("listening for changes from other replicas");
    on_change();
    let me = origin.to_string();
    while let Some(payload) = rx.recv().await {
        if payload != me {
            on_change();
        }
    }
    pump.abort();
    Ok(())
}

pub struct PostgresStore {
    pool: Pool,
}

impl PostgresStore {
    /// Connects, checks the database answers, and applies pending migrations.
    pub async fn connect(url: &str, pool_size: usize) -> anyhow::Result<Self> {
        migrate::run(url).await?;
        let (config, tls) = super::pg_tls::target(url)?;
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .build()?;
        pool.get().await?.execute("SELECT 1", &[]).await?;
        let store = Self { pool };
        store.spawn_partition_upkeep();
        Ok(store)
    }

    /// Keeps monthly audit partitions created ahead of time (now and daily), so
    /// events never pile up in the default partition.
    fn spawn_partition_upkeep(&self) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
            loop {
                every.tick().await;
                let done = match pool.get().await {
                    Ok(c) => c
                        .execute("SELECT toolplane_audit_ensure_partitions(2)", &[])
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = done {
                    tracing::warn!(error = %e, "could not create next months' audit partitions; retrying tomorrow");
                }
            }
        });
    }

    pub(super) async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

pub(super) fn db_err(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(
            e.as_db_error()
                .and_then(|d| d.detail())
                .unwrap_or("already exists")
                .to_owned(),
        ),
        Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => StoreError::NotFound(
            e.as_db_error()
                .and_then(|d| d.detail())
                .unwrap_or("referenced row")
                .to_owned(),
        ),
        // Connection trouble, rolled-back transactions (deadlock, serialization),
        // exhausted resources and operator intervention pass; the same statement may
        // succeed when retried.
        Some(c)
            if ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| c.code().starts_with(class)) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        Some(_) => StoreError::Backend(e.to_string()),
        None => StoreError::Unavailable(e.to_string()),
    }
}

pub(super) fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

pub(super) fn parse_text<T>(field: &str, s: &str, parse: fn(&str) -> Option<T>) -> StoreResult<T> {
    parse(s).ok_or_else(|| StoreError::Backend(format!("unknown {field} {s:?} in database")))
}

const TOOL_COLUMNS: &str = "id, name, category, description, version, input_schema, output_schema, \
    examples, capabilities, auth_type, rate_limit_rpm, timeout_ms, required_skills, data_sensitivity, \
    provider, endpoint, protocol, reliability_score, average_latency_ms, cost_per_call, enabled, \
    side_effects, idempotent, cacheable, cache_ttl_seconds, cache_normalize_keys, cache_ignored_params, remote_name, \
    created_at, updated_at, compliance_frameworks, http";

fn tool_from_row(r: &Row) -> StoreResult<Tool> {
    let examples: Value = r.get("examples");
    let http = r
        .get::<_, Option<Value>>("http")
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| StoreError::Backend(format!("bad http binding in database: {e}")))?;
    Ok(Tool {
        id: r.get("id"),
        version: u32_of(r.get("version")),
        spec: ToolSpec {
            name: r.get("name"),
            category: r.get("category"),
            description: r.get("description"),
            input_schema: r.get("input_schema"),
            output_schema: r.get("output_schema"),
            examples: serde_json::from_value(examples).map_err(|e| StoreError::Backend(e.to_string()))?,
            capabilities: r.get("capabilities"),
            requirements: ToolRequirements {
                authentication: parse_text("auth_type", r.get("auth_type"), AuthType::parse)?,
                rate_limit_rpm: u32_of(r.get("rate_limit_rpm")),
                timeout_ms: u32_of(r.get("timeout_ms")),
                required_agent_skills: r.get("required_skills"),
                data_sensitivity: parse_text("data_sensitivity", r.get("data_sensitivity"), DataSensitivity::parse)?,
            },
            provider: r.get("provider"),
            endpoint: r.get("endpoint"),
            protocol: parse_text("protocol", r.get("protocol"), ToolProtocol::parse)?,
            reliability_score: r.get("reliability_score"),
            average_latency_ms: u32_of(r.get("average_latency_ms")),
            cost_per_call: r.get::<_, Decimal>("cost_per_call"),
            enabled: r.get("enabled"),
            side_effects: parse_text("side_effects", r.get("side_effects"), SideEffects::parse)?,
            idempotent: r.get("idempotent"),
            cacheable: r.get("cacheable"),
            cache_ttl_seconds: u32_of(r.get("cache_ttl_seconds")),
            cache_normalize_keys: r.get("cache_normalize_keys"),
            cache_ignored_params: r.get("cache_ignored_params"),
            compliance_frameworks: r.get("compliance_frameworks"),
            remote_name: r.get("remote_name"),
            http,
        },
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

const TOOL_COLUMN_COUNT: usize = 32;

fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(",")
}

/// A tool's column values, converted to the types PostgreSQL stores, in
/// `TOOL_COLUMNS` order.
struct ToolRow<'a> {
    t: &'a Tool,
    version: i64,
    examples: Value,
    rate_limit_rpm: i64,
    timeout_ms: i64,
    average_latency_ms: i64,
    cache_ttl_seconds: i64,
    http: Option<Value>,
}

impl<'a> ToolRow<'a> {
    fn new(t: &'a Tool) -> StoreResult<Self> {
        let s = &t.spec;
        Ok(Self {
            t,
            version: i64::from(t.version),
            examples: serde_json::to_value(&s.examples).map_err(|e| StoreError::Backend(e.to_string()))?,
            rate_limit_rpm: i64::from(s.requirements.rate_limit_rpm),
            timeout_ms: i64::from(s.requirements.timeout_ms),
            average_latency_ms: i64::from(s.average_latency_ms),
            cache_ttl_seconds: i64::from(s.cache_ttl_seconds),
            http: s
                .http
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| StoreError::Backend(e.to_string()))?,
        })
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let (t, s) = (self.t, &self.t.spec);
        let r = &s.requirements;
        vec![
            &t.id,
            &s.name,
            &s.category,
            &s.description,
            &self.version,
            &s.input_schema,
            &s.output_schema,
            &self.examples,
            &s.capabilities,
            r.authentication.as_str_ref(),
            &self.rate_limit_rpm,
            &self.timeout_ms,
            &r.required_agent_skills,
            r.data_sensitivity.as_str_ref(),
            &s.provider,
            &s.endpoint,
            s.protocol.as_str_ref(),
            &s.reliability_score,
            &self.average_latency_ms,
            &s.cost_per_call,
            &s.enabled,
            s.side_effects.as_str_ref(),
            &s.idempotent,
            &s.cacheable,
            &self.cache_ttl_seconds,
            &s.cache_normalize_keys,
            &s.cache_ignored_params,
            &s.remote_name,
            &t.created_at,
            &t.updated_at,
            &s.compliance_frameworks,
            &self.http,
        ]
    }
}

/// Appends an administrative change's audit event in the change's own transaction and
/// commits both: a change is never applied without its record, nor recorded without
/// being applied.
///
/// The change revision moves in the same transaction, so replicas polling it cannot
/// miss a change even if this replica dies before its NOTIFY.
pub(super) async fn commit_audited(tx: deadpool_postgres::Transaction<'_>, audit: &[&AuditEvent]) -> StoreResult<()> {
    postgres_audit::append_audit(&tx, audit, postgres_audit::Resends::Skip).await?;
    tx.execute("UPDATE toolplane_changes SET revision = revision + 1", &[])
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)
}

/// Stores `t` as the next version of a live tool (`t.version` = live version + 1) in
/// `tx`: `NotFound` for a tool that is not live, `Conflict` when another update won.
pub(super) async fn update_tool_in(tx: &deadpool_postgres::Transaction<'_>, t: &Tool) -> StoreResult<()> {
    let row = ToolRow::new(t)?;
    let sql = format!(
        "UPDATE tools SET ({TOOL_COLUMNS}) = ({}) WHERE id = $1 AND version = ${} AND deleted_at IS NULL",
        placeholders(TOOL_COLUMN_COUNT),
        TOOL_COLUMN_COUNT + 1
    );
    let previous = i64::from(t.version) - 1;
    let mut params = row.params();
    params.push(&previous);
    if tx.execute(&sql, &params).await.map_err(db_err)? == 0 {
        let live: Option<i64> = tx
            .query_opt(
                "SELECT version FROM tools WHERE id = $1 AND deleted_at IS NULL",
                &[&t.id],
            )
            .await
            .map_err(db_err)?
            .map(|r| r.get(0));
        return Err(match live {
            None => StoreError::NotFound(format!("tool {}", t.id)),
            Some(v) => StoreError::Conflict(format!("tool {} is at version {v}, not {previous}; retry", t.spec.name)),
        });
    }
    insert_version(tx, t).await
}

async fn insert_version(tx: &deadpool_postgres::Transaction<'_>, t: &Tool) -> StoreResult<()> {
    let spec = serde_json::to_value(&t.spec).map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.execute(
        "INSERT INTO tool_versions (tool_id, version, spec, created_at) VALUES ($1, $2, $3, $4)",
        &[&t.id, &i64::from(t.version), &spec, &t.updated_at],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

fn selection_from_row(r: &Row) -> SelectionLogEntry {
    SelectionLogEntry {
        selection_id: r.get("selection_id"),
        agent_id: r.get("agent_id"),
        task_category: r.get("task_category"),
        task_description: r.get("task_description"),
        primary_tool_id: r.get("primary_tool_id"),
        alternatives: r.get("alternatives"),
        combined_score: r.get("combined_score"),
        confidence: r.get("confidence"),
        reasoning: r.get("reasoning"),
        selected_at: r.get("selected_at"),
    }
}

pub(super) fn agent_from_row(r: &Row) -> Agent {
    Agent {
        id: r.get("id"),
        name: r.get("name"),
        skills: r.get("skills"),
        team: r.get("team"),
        created_at: r.get("created_at"),
        task_memory_opt_out: r.get("task_memory_opt_out"),
        calls_per_minute: u32_of(r.get("calls_per_minute")),
        daily_spend_budget: r.get("daily_spend_budget"),
    }
}

pub(super) fn token_from_row(r: &Row) -> StoreResult<TokenRecord> {
    Ok(TokenRecord {
        id: r.get("id"),
        sha256: r.get("sha256"),
        role: parse_text("role", r.get("role"), Role::parse)?,
        agent_id: r.get("agent_id"),
        description: r.get("description"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        revoked_at: r.get("revoked_at"),
    })
}

pub(super) fn permission_from_row(r: &Row) -> StoreResult<Permission> {
    let hours: Vec<i32> = r.get("allowed_hours");
    let max: Option<String> = r.get("max_sensitivity");
    Ok(Permission {
        id: r.get("id"),
        agent_id: r.get("agent_id"),
        tool_id: r.get("tool_id"),
        kind: parse_text("permission kind", r.get("kind"), PermissionType::parse)?,
        max_invocations_per_day: u32_of(r.get("max_invocations_per_day")),
        allowed_hours: hours.into_iter().filter_map(|h| u32::try_from(h).ok()).collect(),
        time_zone: r.get("time_zone"),
        max_sensitivity: max
            .as_deref()
            .map(|s| parse_text("max_sensitivity", s, DataSensitivity::parse))
            .transpose()?,
        granted_at: r.get("granted_at"),
        expires_at: r.get("expires_at"),
        granted_by: r.get("granted_by"),
    })
}

async fn insert_permission(client: &impl GenericClient, p: &Permission) -> StoreResult<()> {
    if !super::postgres_admin::lock_live_agent(client, p.agent_id).await? {
        return Err(StoreError::NotFound(format!("agent {}", p.agent_id)));
    }
    let hours: Vec<i32> = p.allowed_hours.iter().filter_map(|h| i32::try_from(*h).ok()).collect();
    client
        .execute(
            "INSERT INTO permissions (id, agent_id, tool_id, kind, max_invocations_per_day, allowed_hours, \
             time_zone, max_sensitivity, granted_at, expires_at, granted_by) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
            &[
                &p.id,
                &p.agent_id,
                &p.tool_id,
                &p.kind.as_str(),
                &i64::from(p.max_invocations_per_day),
                &hours,
                &p.time_zone,
                &p.max_sensitivity.map(DataSensitivity::as_str),
                &p.granted_at,
                &p.expires_at,
                &p.granted_by,
            ],
        )
        .await
        .map_err(db_err)?;
    Ok(())
}

pub(super) fn access_request_from_row(r: &Row) -> StoreResult<AccessRequest> {
    Ok(AccessRequest {
        id: r.get("id"),
        agent_id: r.get("agent_id"),
        tool_id: r.get("tool_id"),
        justification: r.get("justification"),
        status: parse_text("access request status", r.get("status"), AccessRequestStatus::parse)?,
        requested_at: r.get("requested_at"),
        reviewed_at: r.get("reviewed_at"),
        reviewed_by: r.get("reviewed_by"),
        review_reason: r.get("review_reason"),
        permission_id: r.get("permission_id"),
    })
}

fn invocation_from_row(r: &Row) -> StoreResult<InvocationRecord> {
    Ok(InvocationRecord {
        invocation_id: r.get("invocation_id"),
        agent_id: r.get("agent_id"),
        task_id: r.get("task_id"),
        requested_tool_id: r.get("requested_tool_id"),
        parameters: r.get("parameters"),
        invoked_at: r.get("invoked_at"),
        sidecar_id: r.get("sidecar_id"),
        task_category: r.get("task_category"),
        selection_id: r.get("selection_id"),
        caller_cancelled: r.get("caller_cancelled"),
        result: ToolResult {
            invocation_id: r.get("invocation_id"),
            tool_id: r.get("tool_id"),
            tool_version: u32_of(r.get("tool_version")),
            status: parse_text("status", r.get("status"), ExecutionStatus::parse)?,
            output: r.get("output"),
            error: r.get("error"),
            duration_ms: u32_of(r.get("duration_ms")),
            tokens_used: u32_of(r.get("tokens_used")),
            cost: r.get("cost"),
            completed_at: r.get("completed_at"),
            cache_hit: r.get("cache_hit"),
            attempts: u32_of(r.get("attempts")),
            retry_after_ms: 0,
            stale: false,
            fallback_from: None,
        },
    })
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn create_tool(&self, t: &Tool, audit: &AuditEvent) -> StoreResult<()> {
        let row = ToolRow::new(t)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let sql = format!(
            "INSERT INTO tools ({TOOL_COLUMNS}) VALUES ({})",
            placeholders(TOOL_COLUMN_COUNT)
        );
        tx.execute(&sql, &row.params()).await.map_err(|e| match db_err(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("a tool named {:?} already exists", t.spec.name)),
            other => other,
        })?;
        insert_version(&tx, t).await?;
        commit_audited(tx, &[audit]).await
    }

    async fn update_tool(&self, t: &Tool, audit: &AuditEvent) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        update_tool_in(&tx, t).await?;
        commit_audited(tx, &[audit]).await
    }

    async fn get_tool_version(&self, id: Uuid, version: u32) -> StoreResult<Option<Tool>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT v.spec, v.created_at AS version_at, t.created_at, t.enabled, t.deleted_at \
                 FROM tool_versions v JOIN tools t ON t.id = v.tool_id WHERE v.tool_id = $1 AND v.version = $2",
                &[&id, &i64::from(version)],
            )
            .await
            .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let mut spec: ToolSpec = serde_json::from_value(r.get("spec"))
            .map_err(|e| StoreError::Backend(format!("stored tool version: {e}")))?;
        let deleted: Option<DateTime<Utc>> = r.get("deleted_at");
        spec.enabled = r.get::<_, bool>("enabled") && deleted.is_none();
        Ok(Some(Tool {
            id,
            version,
            spec,
            created_at: r.get("created_at"),
            updated_at: r.get("version_at"),
        }))
    }

    async fn set_tool_enabled(
        &self,
        id: Uuid,
        enabled: bool,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<Option<Tool>> {
        let sql = format!(
            "UPDATE tools SET enabled = $2, updated_at = $3 WHERE id = $1 AND deleted_at IS NULL RETURNING {TOOL_COLUMNS}"
        );
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let row = tx.query_opt(&sql, &[&id, &enabled, &at]).await.map_err(db_err)?;
        let Some(tool) = row.as_ref().map(tool_from_row).transpose()? else {
            return Ok(None);
        };
        commit_audited(tx, &[audit]).await?;
        Ok(Some(tool))
    }

    async fn delete_tool(&self, id: Uuid, at: DateTime<Utc>, audit: &AuditEvent) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let n = tx
            .execute(
                "UPDATE tools SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
                &[&id, &at],
            )
            .await
            .map_err(db_err)?;
        if n != 1 {
            return Ok(false);
        }
        commit_audited(tx, &[audit]).await?;
        Ok(true)
    }

    async fn get_tool(&self, id: Uuid) -> StoreResult<Option<Tool>> {
        let sql = format!("SELECT {TOOL_COLUMNS} FROM tools WHERE id = $1 AND deleted_at IS NULL");
        let row = self.client().await?.query_opt(&sql, &[&id]).await.map_err(db_err)?;
        row.as_ref().map(tool_from_row).transpose()
    }

    async fn get_tool_by_name(&self, name: &str) -> StoreResult<Option<Tool>> {
        let sql = format!("SELECT {TOOL_COLUMNS} FROM tools WHERE name = $1 AND deleted_at IS NULL");
        let row = self.client().await?.query_opt(&sql, &[&name]).await.map_err(db_err)?;
        row.as_ref().map(tool_from_row).transpose()
    }

    async fn list_tools(&self, f: &ToolFilter, after: Option<&str>, limit: usize) -> StoreResult<Vec<Tool>> {
        let text = f
            .text
            .as_ref()
            .map(|t| format!("%{}%", t.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
        let caps: Option<Vec<String>> = f.capability.clone().map(|c| vec![c]);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {TOOL_COLUMNS} FROM tools WHERE deleted_at IS NULL \
             AND ($1::text IS NULL OR category = $1) \
             AND ($2::text[] IS NULL OR capabilities @> $2) \
             AND ($3::bool IS NULL OR enabled = $3) \
             AND ($4::text IS NULL OR provider = $4) \
             AND ($5::text IS NULL OR name ILIKE $5 OR description ILIKE $5) \
             AND ($6::text IS NULL OR name > $6) \
             ORDER BY name LIMIT $7"
        );
        let rows = self
            .client()
            .await?
            .query(
                &sql,
                &[&f.category, &caps, &f.enabled, &f.provider, &text, &after, &limit],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(tool_from_row).collect()
    }

    async fn set_credential(&self, c: &StoredCredential, audit: &AuditEvent) -> StoreResult<()> {
        let settings = serde_json::to_value(&c.settings).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let n = tx
            .execute(
                "INSERT INTO credentials (tool_id, auth_type, header_name, key_id, nonce, ciphertext, updated_at, \
                 settings, expires_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE EXISTS (SELECT 1 FROM tools WHERE id = $1 AND deleted_at IS NULL) \
                 ON CONFLICT (tool_id) DO UPDATE SET auth_type = $2, header_name = $3, key_id = $4, nonce = $5, \
                 ciphertext = $6, updated_at = $7, settings = $8, expires_at = $9",
                &[
                    &c.tool_id,
                    &c.auth_type.as_str(),
                    &c.header_name,
                    &c.sealed.key_id,
                    &c.sealed.nonce,
                    &c.sealed.ciphertext,
                    &c.updated_at,
                    &settings,
                    &c.expires_at,
                ],
            )
            .await
            .map_err(db_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("tool {}", c.tool_id)));
        }
        commit_audited(tx, &[audit]).await
    }

    async fn delete_credential(&self, tool_id: Uuid, audit: &AuditEvent) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let n = tx
            .execute("DELETE FROM credentials WHERE tool_id = $1", &[&tool_id])
            .await
            .map_err(db_err)?;
        if n == 0 {
            return Ok(false);
        }
        commit_audited(tx, &[audit]).await?;
        Ok(true)
    }

    async fn list_credentials(&self) -> StoreResult<Vec<StoredCredential>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT c.* FROM credentials c JOIN tools t ON t.id = c.tool_id WHERE t.deleted_at IS NULL",
                &[],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(StoredCredential {
                    tool_id: r.get("tool_id"),
                    auth_type: parse_text("auth_type", r.get("auth_type"), AuthType::parse)?,
                    header_name: r.get("header_name"),
                    sealed: toolplane_core::crypto::Sealed {
                        key_id: r.get("key_id"),
                        nonce: r.get("nonce"),
                        ciphertext: r.get("ciphertext"),
                    },
                    updated_at: r.get("updated_at"),
                    settings: serde_json::from_value(r.get("settings"))
                        .map_err(|e| StoreError::Backend(format!("bad credential settings in database: {e}")))?,
                    expires_at: r.get("expires_at"),
                })
            })
            .collect()
    }

    async fn set_fallback(&self, f: &FallbackStrategy, audit: &AuditEvent) -> StoreResult<()> {
        let json = serde_json::to_value(f).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let n = tx
            .execute(
                "INSERT INTO fallback_strategies (tool_id, strategy, updated_at) SELECT $1, $2, now() \
                 WHERE EXISTS (SELECT 1 FROM tools WHERE id = $1 AND deleted_at IS NULL) \
                 ON CONFLICT (tool_id) DO UPDATE SET strategy = $2, updated_at = now()",
                &[&f.tool_id, &json],
            )
            .await
            .map_err(db_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("tool {}", f.tool_id)));
        }
        commit_audited(tx, &[audit]).await
    }

    async fn get_fallback(&self, tool_id: Uuid) -> StoreResult<Option<FallbackStrategy>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT strategy FROM fallback_strategies WHERE tool_id = $1",
                &[&tool_id],
            )
            .await
            .map_err(db_err)?;
        row.map(|r| serde_json::from_value(r.get(0)).map_err(|e| StoreError::Backend(e.to_string())))
            .transpose()
    }

    async fn list_fallbacks(&self) -> StoreResult<Vec<FallbackStrategy>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT f.strategy FROM fallback_strategies f JOIN tools t ON t.id = f.tool_id WHERE t.deleted_at IS NULL",
                &[],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| serde_json::from_value(r.get(0)).map_err(|e| StoreError::Backend(e.to_string())))
            .collect()
    }

    async fn create_agent(&self, a: &Agent, audit: &AuditEvent) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute(
            "INSERT INTO agents (id, name, skills, team, created_at, task_memory_opt_out, calls_per_minute, \
                 daily_spend_budget) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
            &[
                &a.id,
                &a.name,
                &a.skills,
                &a.team,
                &a.created_at,
                &a.task_memory_opt_out,
                &i64::from(a.calls_per_minute),
                &a.daily_spend_budget,
            ],
        )
        .await
        .map_err(|e| match db_err(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("an agent named {:?} already exists", a.name)),
            other => other,
        })?;
        commit_audited(tx, &[audit]).await
    }

    async fn get_agent(&self, id: Uuid) -> StoreResult<Option<Agent>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT * FROM agents WHERE id = $1 AND deleted_at IS NULL", &[&id])
            .await
            .map_err(db_err)?;
        Ok(row.as_ref().map(agent_from_row))
    }

    async fn list_agents(&self) -> StoreResult<Vec<Agent>> {
        let rows = self
            .client()
            .await?
            .query("SELECT * FROM agents WHERE deleted_at IS NULL ORDER BY name", &[])
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(agent_from_row).collect())
    }

    async fn agents_page(&self, team: Option<&str>, after: Option<&str>, limit: usize) -> StoreResult<Vec<Agent>> {
        super::postgres_admin::agents_page(&self.client().await?, team, after, limit).await
    }

    async fn update_agent(&self, a: &Agent, audit: &AuditEvent) -> StoreResult<bool> {
        super::postgres_admin::update_agent(&mut self.client().await?, a, audit).await
    }

    async fn delete_agent(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditOf<'_, super::AgentRemoval>,
    ) -> StoreResult<Option<super::AgentRemoval>> {
        super::postgres_admin::delete_agent(&mut self.client().await?, id, at, audit).await
    }

    async fn list_tokens(
        &self,
        filter: &super::TokenFilter,
        now: DateTime<Utc>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<TokenRecord>> {
        super::postgres_admin::list_tokens(&self.client().await?, filter, now, after, limit).await
    }

    async fn permissions_page(
        &self,
        agent_id: Option<Uuid>,
        tool_id: Option<Uuid>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Permission>> {
        super::postgres_admin::permissions_page(&self.client().await?, agent_id, tool_id, after, limit).await
    }

    async fn access_requests_page(
        &self,
        status: Option<AccessRequestStatus>,
        agent_id: Option<Uuid>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<AccessRequest>> {
        super::postgres_admin::access_requests_page(&self.client().await?, status, agent_id, after, limit).await
    }

    async fn delete_fallback(&self, tool_id: Uuid, audit: &AuditEvent) -> StoreResult<bool> {
        super::postgres_admin::delete_fallback(&mut self.client().await?, tool_id, audit).await
    }

    async fn create_token(&self, t: &TokenRecord, audit: &AuditEvent) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        if let Some(agent) = t.agent_id
            && !super::postgres_admin::lock_live_agent(&*tx, agent).await?
        {
            return Err(StoreError::NotFound(format!("agent {agent}")));
        }
        tx.execute(
            "INSERT INTO tokens (id, sha256, role, agent_id, description, created_at, expires_at, revoked_at) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
            &[
                &t.id,
                &t.sha256,
                &t.role.as_str(),
                &t.agent_id,
                &t.description,
                &t.created_at,
                &t.expires_at,
                &t.revoked_at,
            ],
        )
        .await
        .map_err(db_err)?;
        commit_audited(tx, &[audit]).await
    }

    async fn token_by_digest(&self, sha256: &str) -> StoreResult<Option<TokenRecord>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT * FROM tokens WHERE sha256 = $1", &[&sha256])
            .await
            .map_err(db_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn revoke_token(&self, id: Uuid, at: DateTime<Utc>, audit: &AuditEvent) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let n = tx
            .execute(
                "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &at],
            )
            .await
            .map_err(db_err)?;
        if n != 1 {
            return Ok(false);
        }
        commit_audited(tx, &[audit]).await?;
        Ok(true)
    }

    async fn revoke_permission(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditOf<'_, Permission>,
    ) -> StoreResult<Option<Permission>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let row = tx
            .query_opt(
                "UPDATE permissions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING *",
                &[&id, &at],
            )
            .await
            .map_err(db_err)?;
        let Some(revoked) = row.as_ref().map(permission_from_row).transpose()? else {
            return Ok(None);
        };
        commit_audited(tx, &audit(&revoked).iter().collect::<Vec<_>>()).await?;
        Ok(Some(revoked))
    }

    async fn active_tokens(&self, now: DateTime<Utc>) -> StoreResult<Vec<TokenRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT * FROM tokens WHERE revoked_at IS NULL AND expires_at > $1",
                &[&now],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn create_permission(&self, p: &Permission, audit: &AuditEvent) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        insert_permission(&*tx, p).await?;
        commit_audited(tx, &[audit]).await
    }

    async fn create_access_request(&self, r: &AccessRequest, audit: &AuditEvent) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute(
            "INSERT INTO access_requests (id, agent_id, tool_id, justification, status, requested_at) \
                 VALUES ($1,$2,$3,$4,$5,$6)",
            &[
                &r.id,
                &r.agent_id,
                &r.tool_id,
                &r.justification,
                &r.status.as_str(),
                &r.requested_at,
            ],
        )
        .await
        .map_err(db_err)?;
        commit_audited(tx, &[audit]).await
    }

    async fn get_access_request(&self, id: Uuid) -> StoreResult<Option<AccessRequest>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT * FROM access_requests WHERE id = $1", &[&id])
            .await
            .map_err(db_err)?;
        row.as_ref().map(access_request_from_row).transpose()
    }

    async fn review_access_request(
        &self,
        r: &AccessRequest,
        grant: Option<&Permission>,
        audit: &AuditOf<'_, AccessRequest>,
    ) -> StoreResult<Option<AccessRequest>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        if let Some(g) = grant {
            insert_permission(&*tx, g).await?;
        }
        let row = tx
            .query_opt(
                "UPDATE access_requests SET status = $2, reviewed_at = $3, reviewed_by = $4, review_reason = $5, \
                 permission_id = $6 WHERE id = $1 AND status = 'pending' RETURNING *",
                &[
                    &r.id,
                    &r.status.as_str(),
                    &r.reviewed_at,
                    &r.reviewed_by,
                    &r.review_reason,
                    &r.permission_id,
                ],
            )
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            // Not pending: the grant (if any) must not outlive the refused review.
            return Ok(None);
        };
        let reviewed = access_request_from_row(&row)?;
        commit_audited(tx, &audit(&reviewed).iter().collect::<Vec<_>>()).await?;
        Ok(Some(reviewed))
    }

    async fn list_access_requests(
        &self,
        status: Option<AccessRequestStatus>,
        agent_id: Option<Uuid>,
    ) -> StoreResult<Vec<AccessRequest>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT * FROM access_requests WHERE ($1::text IS NULL OR status = $1) \
                 AND ($2::uuid IS NULL OR agent_id = $2) ORDER BY requested_at, id",
                &[&status.map(AccessRequestStatus::as_str), &agent_id],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(access_request_from_row).collect()
    }

    async fn list_permissions(&self, agent_id: Option<Uuid>, tool_id: Option<Uuid>) -> StoreResult<Vec<Permission>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT * FROM permissions WHERE revoked_at IS NULL \
                 AND ($1::uuid IS NULL OR agent_id = $1) AND ($2::uuid IS NULL OR tool_id = $2) \
                 ORDER BY granted_at, id",
                &[&agent_id, &tool_id],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(permission_from_row).collect()
    }

    async fn append_events(&self, events: &[SyncEvent]) -> StoreResult<()> {
        let mut audit = Vec::new();
        let mut invocations = Vec::new();
        for e in events {
            match e {
                SyncEvent::Audit(a) => audit.push(a),
                SyncEvent::Invocation(i) => invocations.push(i),
            }
        }
        let mut client = self.client().await?;
        // Resends are rare: the first attempt lets the unique index find them, and only
        // a batch that had one is stored again, looking them up first.
        for resends in [postgres_audit::Resends::Refuse, postgres_audit::Resends::Skip] {
            let tx = client.transaction().await.map_err(db_err)?;
            if !audit.is_empty()
                && postgres_audit::append_audit(&tx, &audit, resends).await? == postgres_audit::Appended::HadResends
            {
                continue;
            }
            if !invocations.is_empty() {
                postgres_audit::append_invocations(&tx, &invocations).await?;
            }
            return tx.commit().await.map_err(db_err);
        }
        Err(StoreError::Backend("audit events were stored twice at once".to_owned()))
    }

    async fn audit_events(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let (action, after, limit, before) = postgres_audit::query_params(f);
        let sql = if f.newest_first {
            postgres_audit::QUERY_AUDIT_NEWEST_FIRST
        } else {
            postgres_audit::QUERY_AUDIT
        };
        let rows = self
            .client()
            .await?
            .query(
                sql,
                &[
                    &f.invocation_id,
                    &f.agent_id,
                    &f.tool_id,
                    &f.task_id,
                    &action,
                    &f.success,
                    &f.since,
                    &f.until,
                    &after,
                    &limit,
                    &before,
                ],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(postgres_audit::record_from_row).collect()
    }

    async fn audit_chain_page(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        after: Option<(String, u64)>,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let (chain, pos) = match &after {
            Some((c, n)) => (c.as_str(), i64::try_from(*n).unwrap_or(i64::MAX)),
            None => ("", 0),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT * FROM audit_events WHERE ($1::timestamptz IS NULL OR occurred_at >= $1) \
                 AND ($2::timestamptz IS NULL OR occurred_at < $2) AND (chain, chain_seq) > ($3, $4) \
                 ORDER BY chain, chain_seq LIMIT $5",
                &[&since, &until, &chain, &pos, &limit],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(postgres_audit::record_from_row).collect()
    }

    async fn audit_link(&self, chain: &str, chain_seq: u64) -> StoreResult<Option<String>> {
        let pos = i64::try_from(chain_seq).unwrap_or(i64::MAX);
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT hash FROM audit_events WHERE chain = $1 AND chain_seq = $2 \
                 UNION ALL SELECT hash FROM audit_chain_anchors WHERE chain = $1 AND chain_seq = $2 LIMIT 1",
                &[&chain, &pos],
            )
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn dead_letter(&self, letters: &[DeadLetter]) -> StoreResult<()> {
        if letters.is_empty() {
            return Ok(());
        }
        postgres_audit::dead_letter(&**self.client().await?, letters).await
    }

    async fn dead_letters(&self, after_id: u64, limit: usize) -> StoreResult<(Vec<DeadLetter>, u64)> {
        postgres_audit::dead_letters(&**self.client().await?, after_id, limit).await
    }

    async fn audit_chain_heads(&self) -> StoreResult<Vec<(String, u64)>> {
        let rows = self
            .client()
            .await?
            .query("SELECT chain, chain_seq FROM audit_chain_heads ORDER BY chain", &[])
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
            .collect())
    }

    async fn usage(
        &self,
        agent_id: Option<Uuid>,
        tool_id: Option<Uuid>,
        since: Option<NaiveDate>,
        until: Option<NaiveDate>,
    ) -> StoreResult<Vec<UsageRow>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT * FROM usage_daily WHERE ($1::uuid IS NULL OR agent_id = $1) \
                 AND ($2::uuid IS NULL OR tool_id = $2) AND ($3::date IS NULL OR day >= $3) \
                 AND ($4::date IS NULL OR day <= $4) ORDER BY day, tool_id, agent_id",
                &[&agent_id, &tool_id, &since, &until],
            )
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(postgres_audit::usage_from_row).collect())
    }

    async fn recent_invocations(&self, limit: usize) -> StoreResult<Vec<(InvocationRecord, Option<f64>)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT * FROM (SELECT * FROM invocations ORDER BY completed_at DESC LIMIT $1) r ORDER BY completed_at",
                &[&limit],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| Ok((invocation_from_row(r)?, r.get::<_, Option<f64>>("quality"))))
            .collect()
    }

    async fn record_quality(
        &self,
        invocation_id: Uuid,
        quality: f64,
        task_succeeded: bool,
    ) -> StoreResult<Option<InvocationRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // Only the first verdict on an invocation is learned from: a repeated report
        // (a retry after a lost reply) is stored but not counted again.
        let first = tx
            .query_opt(
                "SELECT quality IS NULL FROM invocations WHERE invocation_id = $1 FOR UPDATE",
                &[&invocation_id],
            )
            .await
            .map_err(db_err)?
            .map(|r| r.get::<_, bool>(0));
        let Some(first) = first else {
            return Ok(None);
        };
        let row = tx
            .query_one(
                "UPDATE invocations SET quality = $2, task_succeeded = $3 WHERE invocation_id = $1 RETURNING *",
                &[&invocation_id, &quality, &task_succeeded],
            )
            .await
            .map_err(db_err)?;
        let inv = invocation_from_row(&row)?;
        if first {
            super::postgres_learning::fold_verdict(&tx, &inv, quality, task_succeeded).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Some(inv))
    }

    async fn log_selection(&self, e: &SelectionLogEntry) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO tool_selection_log (selection_id, agent_id, task_category, task_description, \
                 primary_tool_id, alternatives, combined_score, confidence, reasoning, selected_at) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
                &[
                    &e.selection_id,
                    &e.agent_id,
                    &e.task_category,
                    &e.task_description,
                    &e.primary_tool_id,
                    &e.alternatives,
                    &e.combined_score,
                    &e.confidence,
                    &e.reasoning,
                    &e.selected_at,
                ],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn selection_log(&self, agent_id: Option<Uuid>, limit: usize) -> StoreResult<Vec<SelectionLogEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT * FROM (SELECT * FROM tool_selection_log WHERE ($1::uuid IS NULL OR agent_id = $1) \
                 ORDER BY selected_at DESC LIMIT $2) r ORDER BY selected_at",
                &[&agent_id, &limit],
            )
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(selection_from_row).collect())
    }

    async fn selection_outcomes(&self, selection_ids: &[Uuid]) -> StoreResult<HashMap<Uuid, String>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT DISTINCT ON (selection_id) selection_id, status FROM invocations \
                 WHERE selection_id = ANY($1) ORDER BY selection_id, completed_at DESC",
                &[&selection_ids],
            )
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn activity(&self, since: DateTime<Utc>) -> StoreResult<super::Activity> {
        let client = self.client().await?;
        let minutes = client
            .query(
                "SELECT date_trunc('minute', completed_at) AS m, status, count(*) FROM invocations \
                 WHERE completed_at >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
                &[&since],
            )
            .await
            .map_err(db_err)?;
        let totals = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE cache_hit), \
                 coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), 0), \
                 coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms), 0) \
                 FROM invocations WHERE completed_at >= $1",
                &[&since],
            )
            .await
            .map_err(db_err)?;
        let top = |column: &str| {
            format!(
                "SELECT {column}, count(*) FROM invocations WHERE completed_at >= $1 \
                 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {}",
                super::ACTIVITY_TOP
            )
        };
        let count = |r: &Row, i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
        let tools = client.query(&top("tool_id"), &[&since]).await.map_err(db_err)?;
        let agents = client.query(&top("agent_id"), &[&since]).await.map_err(db_err)?;
        Ok(super::Activity {
            minutes: minutes.iter().map(|r| (r.get(0), r.get(1), count(r, 2))).collect(),
            calls: count(&totals, 0),
            cache_hits: count(&totals, 1),
            p50_ms: totals.get(2),
            p95_ms: totals.get(3),
            top_tools: tools.iter().map(|r| (r.get(0), count(r, 1))).collect(),
            top_agents: agents.iter().map(|r| (r.get(0), count(r, 1))).collect(),
        })
    }

    fn pool_status(&self) -> Option<super::PoolStatus> {
        let s = self.pool.status();
        Some(super::PoolStatus {
            max: s.max_size,
            size: s.size,
            available: s.available,
            waiting: s.waiting,
        })
    }

    fn shares_learning(&self) -> bool {
        true
    }

    async fn learning_cells(&self, after: u64) -> StoreResult<(Vec<(super::LearningKey, super::Cell)>, u64)> {
        super::postgres_learning::cells_since(&self.client().await?, after).await
    }

    async fn change_revision(&self) -> StoreResult<Option<u64>> {
        let revision: i64 = self
            .client()
            .await?
            .query_one("SELECT revision FROM toolplane_changes", &[])
            .await
            .map_err(db_err)?
            .get(0);
        Ok(Some(u64::try_from(revision).unwrap_or(0)))
    }

    async fn budget_use(&self, agent_id: Uuid, windows: &[super::BudgetWindow]) -> StoreResult<HashMap<Uuid, u64>> {
        if windows.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<Uuid> = windows.iter().map(|w| w.permission_id).collect();
        let since: Vec<DateTime<Utc>> = windows.iter().map(|w| w.since).collect();
        // One index range (agent, occurred_at) per grant window.
        let rows = self
            .client()
            .await?
            .query(
                "SELECT g.id, count(*) FROM unnest($2::uuid[], $3::timestamptz[]) AS g(id, since) \
                 JOIN audit_events e ON e.agent_id = $1 AND e.occurred_at >= g.since \
                 AND e.permission_id = g.id AND e.action = 'tool_invoked' \
                 AND (e.result_status IS NULL OR e.result_status NOT IN ('circuit_open', 'rate_limited', 'permission_denied')) \
                 GROUP BY g.id",
                &[&agent_id, &ids, &since],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, Uuid>(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
            .collect())
    }

    async fn publish_change(&self, origin: Uuid) -> StoreResult<()> {
        self.client()
            .await?
            .execute("SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &origin.to_string()])
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_invocation(&self, invocation_id: Uuid) -> StoreResult<Option<InvocationRecord>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT * FROM invocations WHERE invocation_id = $1", &[&invocation_id])
            .await
            .map_err(db_err)?;
        row.as_ref().map(invocation_from_row).transpose()
    }

    async fn get_selection(&self, selection_id: Uuid) -> StoreResult<Option<SelectionLogEntry>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT * FROM tool_selection_log WHERE selection_id = $1",
                &[&selection_id],
            )
            .await
            .map_err(db_err)?;
        Ok(row.as_ref().map(selection_from_row))
    }

    async fn remember_tasks(&self, entries: &[TaskEntry], per_tool: usize) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        super::postgres_task_memory::remember(&tx, entries, per_tool).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn forget_task(&self, tool_id: Uuid, hash: &str) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let n = super::postgres_task_memory::forget(&tx, tool_id, Some(hash)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(n > 0)
    }

    async fn forget_tool_tasks(&self, tool_id: Uuid) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let n = super::postgres_task_memory::forget(&tx, tool_id, None).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(n)
    }

    async fn task_memory(&self, since: DateTime<Utc>) -> StoreResult<Vec<TaskEntry>> {
        super::postgres_task_memory::live(&self.client().await?, since).await
    }

    async fn prune_task_memory(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        super::postgres_task_memory::prune(&self.client().await?, before).await
    }

    async fn task_memory_changes(&self, after: u64) -> StoreResult<super::TaskMemoryChanges> {
        super::postgres_task_memory::changes(&self.client().await?, after).await
    }

    async fn follow_stats(&self, category: &str) -> StoreResult<Option<super::FollowStats>> {
        super::postgres_task_memory::follow_stats(&self.client().await?, category)
            .await
            .map(Some)
    }

    async fn record_tool_change(&self, change: &ToolChange, audit: &AuditEvent) -> StoreResult<()> {
        self.record_change(change, audit).await
    }

    async fn withdraw_tool_changes(&self, tool_id: Uuid, at: DateTime<Utc>, audit: &AuditEvent) -> StoreResult<u64> {
        self.withdraw_changes(tool_id, at, audit).await
    }

    async fn get_tool_change(&self, id: Uuid) -> StoreResult<Option<ToolChange>> {
        self.get_change(id).await
    }

    async fn list_tool_changes(
        &self,
        status: Option<ToolChangeStatus>,
        tool_id: Option<Uuid>,
    ) -> StoreResult<Vec<ToolChange>> {
        self.list_changes(status, tool_id).await
    }

    async fn review_tool_change(
        &self,
        reviewed: &ToolChange,
        new_version: Option<&Tool>,
        audit: &[AuditEvent],
    ) -> StoreResult<Option<ToolChange>> {
        self.review_change(reviewed, new_version, audit).await
    }

    async fn set_tool_review_policy(&self, policy: &ToolReviewPolicy, audit: &AuditEvent) -> StoreResult<()> {
        self.set_review_policy(policy, audit).await
    }

    async fn list_tool_review_policies(&self) -> StoreResult<Vec<ToolReviewPolicy>> {
        self.review_policies().await
    }

    async fn add_audit_checkpoint(&self, checkpoint: &AuditCheckpoint) -> StoreResult<()> {
        postgres_checkpoints::add(&**self.client().await?, checkpoint).await
    }

    async fn latest_audit_checkpoints(&self) -> StoreResult<Vec<AuditCheckpoint>> {
        postgres_checkpoints::latest(&**self.client().await?).await
    }

    async fn audit_checkpoints(
        &self,
        chain: Option<&str>,
        after: Option<(String, u64, String)>,
        limit: usize,
    ) -> StoreResult<Vec<AuditCheckpoint>> {
        postgres_checkpoints::page(&**self.client().await?, chain, after, limit).await
    }
}
