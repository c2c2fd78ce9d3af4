//! Pinned tool definitions in PostgreSQL: pending changes (`tool_changes`) and the
//! providers' review policies, each written with its audit event in one transaction.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use toolplane_core::model::{AuditEvent, Tool, ToolChange, ToolChangeStatus, ToolReviewPolicy, ToolSpec};
use uuid::Uuid;

use super::postgres::{PostgresStore, commit_audited, db_err, parse_text, u32_of, update_tool_in};
use super::{StoreError, StoreResult};

const CHANGE_COLUMNS: &str = "id, tool_id, tool_name, base_version, base_hash, proposed, proposed_hash, source, \
    status, detected_at, reviewed_at, reviewed_by, review_reason";

fn change_of(r: &Row) -> StoreResult<ToolChange> {
    let proposed: serde_json::Value = r.get("proposed");
    let proposed: ToolSpec = serde_json::from_value(proposed).map_err(|e| StoreError::Backend(e.to_string()))?;
    let status: String = r.get("status");
    Ok(ToolChange {
        id: r.get("id"),
        tool_id: r.get("tool_id"),
        tool_name: r.get("tool_name"),
        base_version: u32_of(r.get("base_version")),
        base_hash: r.get("base_hash"),
        proposed,
        proposed_hash: r.get("proposed_hash"),
        source: r.get("source"),
        status: parse_text("tool change status", &status, ToolChangeStatus::parse)?,
        detected_at: r.get("detected_at"),
        reviewed_at: r.get("reviewed_at"),
        reviewed_by: r.get("reviewed_by"),
        review_reason: r.get("review_reason"),
    })
}

impl PostgresStore {
    pub(super) async fn record_change(&self, c: &ToolChange, audit: &AuditEvent) -> StoreResult<()> {
        let proposed = serde_json::to_value(&c.proposed).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute(
            "UPDATE tool_changes SET status = 'superseded', reviewed_at = $2 WHERE tool_id = $1 AND status = 'pending'",
            &[&c.tool_id, &c.detected_at],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            &format!("INSERT INTO tool_changes ({CHANGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"),
            &[
                &c.id,
                &c.tool_id,
                &c.tool_name,
                &i64::from(c.base_version),
                &c.base_hash,
                &proposed,
                &c.proposed_hash,
                &c.source,
                &c.status.as_str(),
                &c.detected_at,
                &c.reviewed_at,
                &c.reviewed_by,
                &c.review_reason,
            ],
        )
        .await
        .map_err(db_err)?;
        commit_audited(tx, &[audit]).await
    }

    pub(super) async fn withdraw_changes(
        &self,
        tool_id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let n = tx
            .execute(
                "UPDATE tool_changes SET status = 'superseded', reviewed_at = $2 WHERE tool_id = $1 AND status = 'pending'",
                &[&tool_id, &at],
            )
            .await
            .map_err(db_err)?;
        if n == 0 {
            return Ok(0);
        }
        commit_audited(tx, &[audit]).await?;
        Ok(n)
    }

    pub(super) async fn get_change(&self, id: Uuid) -> StoreResult<Option<ToolChange>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {CHANGE_COLUMNS} FROM tool_changes WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(db_err)?;
        row.as_ref().map(change_of).transpose()
    }

    pub(super) async fn list_changes(
        &self,
        status: Option<ToolChangeStatus>,
        tool_id: Option<Uuid>,
    ) -> StoreResult<Vec<ToolChange>> {
        let status = status.map(ToolChangeStatus::as_str);
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {CHANGE_COLUMNS} FROM tool_changes WHERE ($1::text IS NULL OR status = $1) \
                     AND ($2::uuid IS NULL OR tool_id = $2) ORDER BY detected_at DESC, id DESC"
                ),
                &[&status, &tool_id],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(change_of).collect()
    }

    pub(super) async fn review_change(
        &self,
        c: &ToolChange,
        new_version: Option<&Tool>,
        audit: &[AuditEvent],
    ) -> StoreResult<Option<ToolChange>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tool_changes SET status = $2, reviewed_at = $3, reviewed_by = $4, review_reason = $5 \
                     WHERE id = $1 AND status = 'pending' RETURNING {CHANGE_COLUMNS}"
                ),
                &[
                    &c.id,
                    &c.status.as_str(),
                    &c.reviewed_at,
                    &c.reviewed_by,
                    &c.review_reason,
                ],
            )
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        if let Some(tool) = new_version {
            update_tool_in(&tx, tool).await?;
        }
        let reviewed = change_of(&row)?;
        commit_audited(tx, &audit.iter().collect::<Vec<_>>()).await?;
        Ok(Some(reviewed))
    }

    pub(super) async fn set_review_policy(&self, p: &ToolReviewPolicy, audit: &AuditEvent) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute(
            "INSERT INTO tool_review_policies (provider, auto_approve, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (provider) DO UPDATE SET auto_approve = EXCLUDED.auto_approve, updated_at = EXCLUDED.updated_at",
            &[&p.provider, &p.auto_approve, &p.updated_at],
        )
        .await
        .map_err(db_err)?;
        commit_audited(tx, &[audit]).await
    }

    pub(super) async fn review_policies(&self) -> StoreResult<Vec<ToolReviewPolicy>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT provider, auto_approve, updated_at FROM tool_review_policies ORDER BY provider",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| ToolReviewPolicy {
                provider: r.get(0),
                auto_approve: r.get(1),
                updated_at: r.get(2),
            })
            .collect())
    }
}
