//! Selection's learning cells in PostgreSQL, the one truth every replica caches: folded
//! in the transaction that stores what they learn from, read back by version.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use toolplane_core::model::InvocationRecord;
use uuid::Uuid;

use super::StoreResult;
use super::postgres::db_err;
use crate::selection::learning::{Categories, Cell, Key, Outcome, succeeded, verdict_keys};

const COLUMNS: &str = "tool_id, category, agent_id, invocations, weight, successes, total_successes, \
    ewma_duration_ms, ewma_cost, quality_sum, quality_n, last_used, recent, version";

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn u64_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn cell_of(r: &Row) -> (Key, Cell, u64) {
    let key = (r.get(0), r.get(1), r.get(2));
    let cell = Cell {
        invocations: u64_of(r.get(3)),
        weight: r.get(4),
        successes: r.get(5),
        total_successes: u64_of(r.get(6)),
        ewma_duration_ms: r.get(7),
        ewma_cost: r.get(8),
        quality_sum: r.get(9),
        quality_n: u64_of(r.get(10)),
        last_used: r.get(11),
        recent: r.get::<_, Vec<bool>>(12).into(),
    };
    (key, cell, u64_of(r.get(13)))
}

/// The categories already learned for `agents` and fleet-wide, so new ones are keyed
/// under the same caps as in process. Two replicas registering at once may each add
/// one past a cap; the caps bound growth, they are not exact.
async fn categories(tx: &Transaction<'_>, agents: &[Uuid]) -> StoreResult<Categories> {
    let rows = tx
        .query(
            "SELECT DISTINCT agent_id, category FROM learning_cells \
             WHERE category <> '' AND (agent_id = ANY($1) OR agent_id = $2)",
            &[&agents, &Uuid::nil()],
        )
        .await
        .map_err(db_err)?;
    let mut c = Categories::default();
    for r in rows {
        c.known(r.get(0), r.get::<_, &str>(1));
    }
    Ok(c)
}

/// Creates the missing cells of `keys`, then reads and locks them all in key order
/// (every writer locks in the same order, so writers queue instead of deadlocking).
async fn lock_cells(tx: &Transaction<'_>, keys: &[Key]) -> StoreResult<HashMap<Key, Cell>> {
    let tools: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let cats: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let agents: Vec<Uuid> = keys.iter().map(|k| k.2).collect();
    tx.execute(
        "INSERT INTO learning_cells (tool_id, category, agent_id) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) ON CONFLICT DO NOTHING",
        &[&tools, &cats, &agents],
    )
    .await
    .map_err(db_err)?;
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM learning_cells WHERE (tool_id, category, agent_id) IN \
                 (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[])) \
                 ORDER BY tool_id, category, agent_id FOR UPDATE"
            ),
            &[&tools, &cats, &agents],
        )
        .await
        .map_err(db_err)?;
    Ok(rows
        .iter()
        .map(|r| {
            let (k, c, _) = cell_of(r);
            (k, c)
        })
        .collect())
}

/// The next shared learning version, taken under the counter row's lock until `tx`
/// ends: versions commit in order, so a reader of "changed since v" misses nothing.
pub(super) async fn next_version(tx: &Transaction<'_>) -> StoreResult<i64> {
    Ok(tx
        .query_one(
            "UPDATE learning_version SET version = version + 1 RETURNING version",
            &[],
        )
        .await
        .map_err(db_err)?
        .get(0))
}

/// Writes `cells` back under the next version.
async fn store_cells(tx: &Transaction<'_>, cells: BTreeMap<Key, Cell>) -> StoreResult<()> {
    let version = next_version(tx).await?;
    let cells: Vec<(Key, Cell)> = cells.into_iter().collect();
    let f64s = |f: fn(&Cell) -> f64| cells.iter().map(|(_, c)| f(c)).collect::<Vec<f64>>();
    let i64s = |f: fn(&Cell) -> u64| cells.iter().map(|(_, c)| i64_of(f(c))).collect::<Vec<i64>>();
    let tools: Vec<Uuid> = cells.iter().map(|(k, _)| k.0).collect();
    let categories: Vec<&str> = cells.iter().map(|(k, _)| k.1.as_str()).collect();
    let agents: Vec<Uuid> = cells.iter().map(|(k, _)| k.2).collect();
    let last_used: Vec<Option<DateTime<Utc>>> = cells.iter().map(|(_, c)| c.last_used).collect();
    // Arrays of arrays must be rectangular; each recent window travels as an array literal.
    let recent: Vec<String> = cells
        .iter()
        .map(|(_, c)| {
            let window: Vec<&str> = c.recent.iter().map(|s| if *s { "t" } else { "f" }).collect();
            format!("{{{}}}", window.join(","))
        })
        .collect();
    tx.execute(
        "UPDATE learning_cells SET invocations = x.n, weight = x.w, successes = x.s, total_successes = x.ts, \
         ewma_duration_ms = x.d, ewma_cost = x.c, quality_sum = x.qs, quality_n = x.qn, last_used = x.lu, \
         recent = x.r::boolean[], version = $14 \
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::int8[], $5::float8[], $6::float8[], $7::int8[], \
                     $8::float8[], $9::float8[], $10::float8[], $11::int8[], $12::timestamptz[], $13::text[]) \
              AS x(t, cat, a, n, w, s, ts, d, c, qs, qn, lu, r) \
         WHERE learning_cells.tool_id = x.t AND learning_cells.category = x.cat AND learning_cells.agent_id = x.a",
        &[
            &tools,
            &categories,
            &agents,
            &i64s(|c| c.invocations),
            &f64s(|c| c.weight),
            &f64s(|c| c.successes),
            &i64s(|c| c.total_successes),
            &f64s(|c| c.ewma_duration_ms),
            &f64s(|c| c.ewma_cost),
            &f64s(|c| c.quality_sum),
            &i64s(|c| c.quality_n),
            &last_used,
            &recent,
            &version,
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Folds newly stored invocations into the cells (call inside their insert's transaction).
pub(super) async fn fold_invocations(tx: &Transaction<'_>, fresh: &[&InvocationRecord]) -> StoreResult<()> {
    let outcomes: Vec<Outcome> = fresh.iter().filter_map(|i| Outcome::of(i)).collect();
    if outcomes.is_empty() {
        return Ok(());
    }
    let mut agents: Vec<Uuid> = outcomes.iter().map(|o| o.agent_id).collect();
    agents.sort();
    agents.dedup();
    let mut categories = categories(tx, &agents).await?;
    let keyed: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| Outcome {
            category: categories.key(Some(o.agent_id), &o.category, true),
            ..o
        })
        .collect();
    let mut keys: Vec<Key> = keyed.iter().flat_map(Outcome::keys).collect();
    keys.sort();
    keys.dedup();
    let mut cells = lock_cells(tx, &keys).await?;
    for o in &keyed {
        for k in o.keys() {
            cells
                .entry(k)
                .or_default()
                .record(o.success, o.duration_ms, o.cost, o.at);
        }
    }
    store_cells(tx, cells.into_iter().collect()).await
}

/// Folds an agent's first verdict on `inv` into the cells (call inside the transaction
/// that records the verdict).
pub(super) async fn fold_verdict(
    tx: &Transaction<'_>,
    inv: &InvocationRecord,
    quality: f64,
    task_succeeded: bool,
) -> StoreResult<()> {
    let mut categories = categories(tx, &[inv.agent_id]).await?;
    let category = categories.key(Some(inv.agent_id), &inv.task_category, true);
    let mut keys = verdict_keys(inv.result.tool_id, inv.agent_id, &category);
    keys.sort();
    let mut cells = lock_cells(tx, &keys).await?;
    let quality = quality.clamp(0.0, 1.0);
    let served = if task_succeeded { quality } else { 0.0 };
    let call_succeeded = succeeded(inv) && !inv.result.cache_hit;
    for k in keys {
        cells.entry(k).or_default().verdict(quality, served, call_succeeded);
    }
    store_cells(tx, cells.into_iter().collect()).await
}

/// Cells changed after version `after`, and the highest version among them (`after`
/// when none changed).
pub(super) async fn cells_since(
    client: &deadpool_postgres::Object,
    after: u64,
) -> StoreResult<(Vec<(Key, Cell)>, u64)> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM learning_cells WHERE version > $1 ORDER BY version"),
            &[&i64_of(after)],
        )
        .await
        .map_err(db_err)?;
    let mut top = after;
    let cells = rows
        .iter()
        .map(|r| {
            let (k, c, v) = cell_of(r);
            top = top.max(v);
            (k, c)
        })
        .collect();
    Ok((cells, top))
}
