//! Task memory and recommendation follow-ups in PostgreSQL, the one truth every replica
//! reads: every change to a remembered task is versioned like the learning cells (and
//! from the same counter), forgetting leaves a tombstone without the task's text, and
//! follow-ups are counted from the selection log and the calls that name a selection.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::{Object, Transaction};
use tokio_postgres::Row;
use toolplane_core::model::ExecutionStatus;
use uuid::Uuid;

use super::postgres::{db_err, parse_text};
use super::postgres_learning::next_version;
use super::{StoreResult, TaskMemoryChanges};
use crate::selection::learning::FollowStats;
use crate::selection::memory::{TaskEntry, TaskSource};

/// How long a forgotten task's tombstone stays for replicas to read (they poll every
/// `TOOLPLANE_LEARNING_POLL_MS`; a replica down longer loads the live rows afresh).
const TOMBSTONE_GRACE: Duration = Duration::hours(1);
/// The window recommendation follow-ups are counted over, so the count stays bounded.
pub const FOLLOW_WINDOW_DAYS: i64 = 30;

fn task_from_row(r: &Row) -> StoreResult<TaskEntry> {
    Ok(TaskEntry {
        tool_id: r.get("tool_id"),
        hash: r.get("task_hash"),
        text: r.get("task_text"),
        source: parse_text("source", r.get("source"), TaskSource::parse)?,
        uses: u64::try_from(r.get::<_, i64>("uses")).unwrap_or(0),
        first_seen: r.get("first_seen"),
        last_seen: r.get("last_seen"),
    })
}

/// Upserts `entries` (a forgotten one comes back afresh), then turns every task of the
/// touched tools beyond the `per_tool` most recently seen into a tombstone.
pub(super) async fn remember(tx: &Transaction<'_>, entries: &[TaskEntry], per_tool: usize) -> StoreResult<()> {
    // One row per key: an upsert may not touch the same row twice.
    let mut merged: BTreeMap<(Uuid, &str), TaskEntry> = BTreeMap::new();
    for e in entries {
        merged
            .entry((e.tool_id, e.hash.as_str()))
            .and_modify(|x| {
                x.uses += e.uses;
                x.last_seen = x.last_seen.max(e.last_seen);
            })
            .or_insert_with(|| e.clone());
    }
    if merged.is_empty() {
        return Ok(());
    }
    let rows: Vec<&TaskEntry> = merged.values().collect();
    let tools: Vec<Uuid> = rows.iter().map(|e| e.tool_id).collect();
    let hashes: Vec<&str> = rows.iter().map(|e| e.hash.as_str()).collect();
    let texts: Vec<&str> = rows.iter().map(|e| e.text.as_str()).collect();
    let sources: Vec<&str> = rows.iter().map(|e| e.source.as_str()).collect();
    let uses: Vec<i64> = rows.iter().map(|e| i64::try_from(e.uses).unwrap_or(i64::MAX)).collect();
    let first: Vec<DateTime<Utc>> = rows.iter().map(|e| e.first_seen).collect();
    let last: Vec<DateTime<Utc>> = rows.iter().map(|e| e.last_seen).collect();
    let version = next_version(tx).await?;
    tx.execute(
        "INSERT INTO task_memory (tool_id, task_hash, task_text, source, uses, first_seen, last_seen, version) \
         SELECT *, $8 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], \
         $6::timestamptz[], $7::timestamptz[]) \
         ON CONFLICT (tool_id, task_hash) DO UPDATE SET \
         uses = CASE WHEN task_memory.forgotten_at IS NULL THEN task_memory.uses + EXCLUDED.uses ELSE EXCLUDED.uses END, \
         first_seen = CASE WHEN task_memory.forgotten_at IS NULL THEN task_memory.first_seen ELSE EXCLUDED.first_seen END, \
         last_seen = GREATEST(task_memory.last_seen, EXCLUDED.last_seen), \
         task_text = CASE WHEN task_memory.forgotten_at IS NULL THEN task_memory.task_text ELSE EXCLUDED.task_text END, \
         source = CASE WHEN task_memory.forgotten_at IS NULL \
         THEN task_memory.source ELSE EXCLUDED.source END, forgotten_at = NULL, version = $8",
        &[&tools, &hashes, &texts, &sources, &uses, &first, &last, &version],
    )
    .await
    .map_err(db_err)?;
    let mut touched = tools.clone();
    touched.dedup();
    tx.execute(
        "UPDATE task_memory t SET forgotten_at = now(), task_text = '', version = $3 \
         FROM (SELECT tool_id, task_hash, row_number() OVER \
         (PARTITION BY tool_id ORDER BY last_seen DESC, task_hash) AS rank \
         FROM task_memory WHERE tool_id = ANY($1) AND forgotten_at IS NULL) r \
         WHERE t.tool_id = r.tool_id AND t.task_hash = r.task_hash AND r.rank > $2",
        &[&touched, &i64::try_from(per_tool).unwrap_or(i64::MAX), &version],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Forgets one task (`hash` given) or every task of a tool: the text goes at once, a
/// tombstone tells the other replicas. Returns how many were forgotten.
pub(super) async fn forget(tx: &Transaction<'_>, tool_id: Uuid, hash: Option<&str>) -> StoreResult<u64> {
    let version = next_version(tx).await?;
    tx.execute(
        "UPDATE task_memory SET forgotten_at = now(), task_text = '', version = $3 \
         WHERE tool_id = $1 AND ($2::text IS NULL OR task_hash = $2) AND forgotten_at IS NULL",
        &[&tool_id, &hash, &version],
    )
    .await
    .map_err(db_err)
}

/// Every live task last seen after `since`.
pub(super) async fn live(client: &Object, since: DateTime<Utc>) -> StoreResult<Vec<TaskEntry>> {
    client
        .query(
            "SELECT * FROM task_memory WHERE last_seen > $1 AND forgotten_at IS NULL",
            &[&since],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(task_from_row)
        .collect()
}

/// Drops tasks last seen before `before` and tombstones older than their grace;
/// returns how many live tasks went.
pub(super) async fn prune(client: &Object, before: DateTime<Utc>) -> StoreResult<u64> {
    let rows = client
        .query(
            "DELETE FROM task_memory WHERE last_seen < $1 OR forgotten_at < $2 RETURNING forgotten_at IS NULL",
            &[&before, &(Utc::now() - TOMBSTONE_GRACE)],
        )
        .await
        .map_err(db_err)?;
    Ok(rows.iter().filter(|r| r.get::<_, bool>(0)).count() as u64)
}

/// Tasks changed after version `after`: remembered (with their stored totals) and
/// forgotten (by key).
pub(super) async fn changes(client: &Object, after: u64) -> StoreResult<TaskMemoryChanges> {
    let rows = client
        .query(
            "SELECT * FROM task_memory WHERE version > $1 ORDER BY version",
            &[&i64::try_from(after).unwrap_or(i64::MAX)],
        )
        .await
        .map_err(db_err)?;
    let mut out = TaskMemoryChanges {
        top: after,
        ..TaskMemoryChanges::default()
    };
    for r in &rows {
        out.top = out.top.max(u64::try_from(r.get::<_, i64>("version")).unwrap_or(0));
        if r.get::<_, Option<DateTime<Utc>>>("forgotten_at").is_some() {
            out.forgotten.push((r.get("tool_id"), r.get("task_hash")));
        } else {
            out.remembered.push(task_from_row(r)?);
        }
    }
    Ok(out)
}

/// How often selection recommended a tool for `category` in the window, how often the
/// agent then called that tool with the selection's id, and how many of those calls
/// succeeded.
pub(super) async fn follow_stats(client: &Object, category: &str) -> StoreResult<FollowStats> {
    let since = Utc::now() - Duration::days(FOLLOW_WINDOW_DAYS);
    let r = client
        .query_one(
            "SELECT count(*), count(f.status), count(f.status) FILTER (WHERE f.status = $3) \
             FROM tool_selection_log s LEFT JOIN LATERAL (SELECT i.status FROM invocations i \
             WHERE i.selection_id = s.selection_id AND i.requested_tool_id = s.primary_tool_id \
             ORDER BY i.invoked_at LIMIT 1) f ON TRUE \
             WHERE s.task_category = $1 AND s.selected_at > $2 AND s.agent_id IS NOT NULL",
            &[&category, &since, &ExecutionStatus::Success.as_str()],
        )
        .await
        .map_err(db_err)?;
    let n = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
    Ok(FollowStats {
        recommended: n(0),
        followed: n(1),
        followed_succeeded: n(2),
    })
}
