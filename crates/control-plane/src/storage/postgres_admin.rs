//! The admin API's PostgreSQL side: changing and deleting agents, listing tokens, and
//! the paged lists, each ordered by (and paged on) an index in `V12__admin_api.sql`.

use chrono::{DateTime, Utc};
use deadpool_postgres::Object;
use tokio_postgres::GenericClient;
use toolplane_core::model::{AccessRequest, AccessRequestStatus, Agent, AuditEvent, Permission, TokenRecord};
use uuid::Uuid;

use super::postgres::{
    access_request_from_row, agent_from_row, commit_audited, db_err, permission_from_row, token_from_row,
};
use super::{AgentRemoval, AuditOf, StoreResult, TokenFilter};

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Locks the live agent `id` for the rest of the transaction (so a grant or token
/// cannot be added while it is being deleted); `false` when there is none.
pub(super) async fn lock_live_agent(client: &impl GenericClient, id: Uuid) -> StoreResult<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM agents WHERE id = $1 AND deleted_at IS NULL FOR SHARE",
            &[&id],
        )
        .await
        .map_err(db_err)?
        .is_some())
}

pub(super) async fn agents_page(
    client: &Object,
    team: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<Agent>> {
    let rows = client
        .query(
            "SELECT * FROM agents WHERE deleted_at IS NULL AND ($1::text IS NULL OR team = $1) \
             AND ($2::text IS NULL OR name > $2) ORDER BY name LIMIT $3",
            &[&team, &after, &limit_of(limit)],
        )
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(agent_from_row).collect())
}

pub(super) async fn update_agent(client: &mut Object, a: &Agent, audit: &AuditEvent) -> StoreResult<bool> {
    let tx = client.transaction().await.map_err(db_err)?;
    let n = tx
        .execute(
            "UPDATE agents SET skills = $2, team = $3, task_memory_opt_out = $4, calls_per_minute = $5, \
             daily_spend_budget = $6 WHERE id = $1 AND deleted_at IS NULL",
            &[
                &a.id,
                &a.skills,
                &a.team,
                &a.task_memory_opt_out,
                &i64::from(a.calls_per_minute),
                &a.daily_spend_budget,
            ],
        )
        .await
        .map_err(db_err)?;
    if n != 1 {
        return Ok(false);
    }
    commit_audited(tx, &[audit]).await?;
    Ok(true)
}

pub(super) async fn delete_agent(
    client: &mut Object,
    id: Uuid,
    at: DateTime<Utc>,
    audit: &AuditOf<'_, AgentRemoval>,
) -> StoreResult<Option<AgentRemoval>> {
    let tx = client.transaction().await.map_err(db_err)?;
    let Some(row) = tx
        .query_opt(
            "UPDATE agents SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL RETURNING *",
            &[&id, &at],
        )
        .await
        .map_err(db_err)?
    else {
        return Ok(None);
    };
    let ids = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, Uuid>(0)).collect::<Vec<_>>();
    let tokens_revoked = ids(tx
        .query(
            "UPDATE tokens SET revoked_at = $2 WHERE agent_id = $1 AND revoked_at IS NULL RETURNING id",
            &[&id, &at],
        )
        .await
        .map_err(db_err)?);
    let grants_revoked = tx
        .query(
            "UPDATE permissions SET revoked_at = $2 WHERE agent_id = $1 AND revoked_at IS NULL RETURNING id, tool_id",
            &[&id, &at],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let access_requests_denied = ids(tx
        .query(
            "UPDATE access_requests SET status = 'denied', reviewed_at = $2, \
             review_reason = 'the agent was deleted' WHERE agent_id = $1 AND status = 'pending' RETURNING id",
            &[&id, &at],
        )
        .await
        .map_err(db_err)?);
    let mut removal = AgentRemoval {
        agent: agent_from_row(&row),
        tokens_revoked,
        grants_revoked,
        access_requests_denied,
    };
    removal.tokens_revoked.sort();
    removal.grants_revoked.sort();
    removal.access_requests_denied.sort();
    commit_audited(tx, &audit(&removal).iter().collect::<Vec<_>>()).await?;
    Ok(Some(removal))
}

pub(super) async fn list_tokens(
    client: &Object,
    f: &TokenFilter,
    now: DateTime<Utc>,
    after: Option<Uuid>,
    limit: usize,
) -> StoreResult<Vec<TokenRecord>> {
    let rows = client
        .query(
            "SELECT * FROM tokens WHERE ($1::uuid IS NULL OR agent_id = $1) AND ($2::text IS NULL OR role = $2) \
             AND ($3 OR (revoked_at IS NULL AND expires_at > $4)) AND ($5::uuid IS NULL OR id > $5) \
             ORDER BY id LIMIT $6",
            &[
                &f.agent_id,
                &f.role.map(|r| r.as_str()),
                &f.include_inactive,
                &now,
                &after,
                &limit_of(limit),
            ],
        )
        .await
        .map_err(db_err)?;
    rows.iter().map(token_from_row).collect()
}

pub(super) async fn permissions_page(
    client: &Object,
    agent_id: Option<Uuid>,
    tool_id: Option<Uuid>,
    after: Option<Uuid>,
    limit: usize,
) -> StoreResult<Vec<Permission>> {
    let rows = client
        .query(
            "SELECT * FROM permissions WHERE revoked_at IS NULL \
             AND ($1::uuid IS NULL OR agent_id = $1) AND ($2::uuid IS NULL OR tool_id = $2) \
             AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
            &[&agent_id, &tool_id, &after, &limit_of(limit)],
        )
        .await
        .map_err(db_err)?;
    rows.iter().map(permission_from_row).collect()
}

pub(super) async fn access_requests_page(
    client: &Object,
    status: Option<AccessRequestStatus>,
    agent_id: Option<Uuid>,
    after: Option<Uuid>,
    limit: usize,
) -> StoreResult<Vec<AccessRequest>> {
    let rows = client
        .query(
            "SELECT * FROM access_requests WHERE ($1::text IS NULL OR status = $1) \
             AND ($2::uuid IS NULL OR agent_id = $2) AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
            &[
                &status.map(AccessRequestStatus::as_str),
                &agent_id,
                &after,
                &limit_of(limit),
            ],
        )
        .await
        .map_err(db_err)?;
    rows.iter().map(access_request_from_row).collect()
}

pub(super) async fn delete_fallback(client: &mut Object, tool_id: Uuid, audit: &AuditEvent) -> StoreResult<bool> {
    let tx = client.transaction().await.map_err(db_err)?;
    let n = tx
        .execute("DELETE FROM fallback_strategies WHERE tool_id = $1", &[&tool_id])
        .await
        .map_err(db_err)?;
    if n != 1 {
        return Ok(false);
    }
    commit_audited(tx, &[audit]).await?;
    Ok(true)
}
