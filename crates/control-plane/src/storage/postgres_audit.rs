//! The audit trail, invocations and usage statistics in PostgreSQL: one batch of sync
//! events becomes a handful of set-based statements (UNNEST), so ingest keeps up with
//! a fleet of sidecars; audit events are hash-chained per writer under an advisory lock.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Transaction;
use rust_decimal::Decimal;
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use toolplane_core::audit::{AuditRecord, ChainHead, chain_of, stored_time};
use toolplane_core::model::*;
use toolplane_core::stats::{self, ToolStats};
use toolplane_core::usage::{self, UsageCounts, UsageKey};
use uuid::Uuid;

use super::postgres::{db_err, parse_text, u32_of};
use super::{AuditFilter, DeadLetter, StoreResult, UsageRow};

/// Separates compliance frameworks inside one UNNEST text element.
const LIST_SEPARATOR: char = '\u{1f}';

const INSERT_AUDIT: &str = "INSERT INTO audit_events (event_id, action, invocation_id, actor_id, agent_id, tool_id, \
    tool_version, task_id, occurred_at, sanitized_parameters, result_size_bytes, result_status, result_digest, \
    success, detail, compliance_frameworks, data_classification, sidecar_id, permission_id, chain, chain_seq, \
    prev_hash, hash) \
    SELECT e, a, i, ac, ag, t, tv, tk, o, p, rs, rst, rd, s, d, string_to_array(cf, chr(31)), dc, sc, pm, ch, cs, ph, h \
    FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::uuid[], $6::uuid[], $7::int8[], $8::text[], \
    $9::timestamptz[], $10::jsonb[], $11::int8[], $12::text[], $13::text[], $14::bool[], $15::text[], $16::text[], \
    $17::text[], $18::text[], $19::uuid[], $20::text[], $21::int8[], $22::text[], $23::text[]) \
    AS x(e, a, i, ac, ag, t, tv, tk, o, p, rs, rst, rd, s, d, cf, dc, sc, pm, ch, cs, ph, h)";

/// Column arrays of one multi-row audit insert.
#[derive(Default)]
struct AuditColumns {
    event_id: Vec<Uuid>,
    action: Vec<&'static str>,
    invocation_id: Vec<Option<Uuid>>,
    actor_id: Vec<String>,
    agent_id: Vec<Option<Uuid>>,
    tool_id: Vec<Option<Uuid>>,
    tool_version: Vec<i64>,
    task_id: Vec<String>,
    occurred_at: Vec<DateTime<Utc>>,
    parameters: Vec<Value>,
    result_size: Vec<Option<i64>>,
    result_status: Vec<Option<&'static str>>,
    result_digest: Vec<Option<String>>,
    success: Vec<bool>,
    detail: Vec<String>,
    frameworks: Vec<String>,
    classification: Vec<Option<&'static str>>,
    sidecar_id: Vec<String>,
    permission_id: Vec<Option<Uuid>>,
    chain: Vec<String>,
    chain_seq: Vec<i64>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

impl AuditColumns {
    fn push(&mut self, e: &AuditEvent, chain: &str, chain_seq: u64, prev_hash: String, hash: String) {
        self.event_id.push(e.event_id);
        self.action.push(e.action.as_str());
        self.invocation_id.push(e.invocation_id);
        self.actor_id.push(e.actor_id.clone());
        self.agent_id.push(e.agent_id);
        self.tool_id.push(e.tool_id);
        self.tool_version.push(i64::from(e.tool_version));
        self.task_id.push(e.task_id.clone());
        self.occurred_at.push(e.occurred_at);
        self.parameters.push(e.sanitized_parameters.clone());
        self.result_size.push(
            e.result
                .as_ref()
                .map(|r| i64::try_from(r.size_bytes).unwrap_or(i64::MAX)),
        );
        self.result_status.push(e.result.as_ref().map(|r| r.status.as_str()));
        self.result_digest.push(e.result.as_ref().map(|r| r.digest.clone()));
        self.success.push(e.success);
        self.detail.push(e.detail.clone());
        self.frameworks
            .push(e.compliance_frameworks.join(&LIST_SEPARATOR.to_string()));
        self.classification
            .push(e.data_classification.map(DataSensitivity::as_str));
        self.sidecar_id.push(e.sidecar_id.clone());
        self.permission_id.push(e.permission_id);
        self.chain.push(chain.to_owned());
        self.chain_seq.push(i64::try_from(chain_seq).unwrap_or(i64::MAX));
        self.prev_hash.push(prev_hash);
        self.hash.push(hash);
    }
}

/// Whether [`append_audit`] looks up which events are stored already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resends {
    /// Assume none is (the common case): the insert's unique index on
    /// (event_id, occurred_at) catches a resend, and the caller retries with `Skip`.
    Refuse,
    /// Look them up and skip them (a batch resent after a lost ack).
    Skip,
}

/// What [`append_audit`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Appended {
    Done,
    /// Under [`Resends::Refuse`], an event of the batch was stored before: the
    /// transaction is aborted; append again in a new one with [`Resends::Skip`].
    HadResends,
}

/// Appends new audit events to their chains; events already stored are skipped (see
/// [`Resends`]).
pub(super) async fn append_audit(
    tx: &Transaction<'_>,
    events: &[&AuditEvent],
    resends: Resends,
) -> StoreResult<Appended> {
    let mut by_chain: BTreeMap<String, Vec<AuditEvent>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for e in events {
        if seen.insert(e.event_id) {
            let mut e = (*e).clone();
            e.occurred_at = stored_time(e.occurred_at);
            by_chain.entry(chain_of(&e)).or_default().push(e);
        }
    }
    // In a fixed order, so two batches touching the same chains cannot deadlock.
    for chain in by_chain.keys() {
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7411))", &[chain])
            .await
            .map_err(db_err)?;
    }
    // Resends after a lost ack come from the same writer, so the chain lock above
    // also orders them against their first delivery.
    let stored: HashSet<Uuid> = if resends == Resends::Skip {
        let ids: Vec<Uuid> = seen.into_iter().collect();
        tx.query("SELECT event_id FROM audit_events WHERE event_id = ANY($1)", &[&ids])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        HashSet::new()
    };
    let mut cols = AuditColumns::default();
    let (mut head_chain, mut head_seq, mut head_hash) = (Vec::new(), Vec::new(), Vec::new());
    for (chain, events) in &by_chain {
        let fresh: Vec<&AuditEvent> = events.iter().filter(|e| !stored.contains(&e.event_id)).collect();
        if fresh.is_empty() {
            continue;
        }
        let mut head = match tx
            .query_opt(
                "SELECT chain_seq, hash FROM audit_chain_heads WHERE chain = $1",
                &[chain],
            )
            .await
            .map_err(db_err)?
        {
            Some(r) => ChainHead {
                seq: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                hash: r.get(1),
            },
            None => ChainHead::default(),
        };
        for e in fresh {
            let (chain_seq, prev, hash) = head.append(chain, e);
            cols.push(e, chain, chain_seq, prev, hash);
        }
        head_chain.push(chain.clone());
        head_seq.push(i64::try_from(head.seq).unwrap_or(i64::MAX));
        head_hash.push(head.hash);
    }
    if cols.event_id.is_empty() {
        return Ok(Appended::Done);
    }
    let c = &cols;
    let inserted = tx
        .execute(
            INSERT_AUDIT,
            &[
                &c.event_id,
                &c.action,
                &c.invocation_id,
                &c.actor_id,
                &c.agent_id,
                &c.tool_id,
                &c.tool_version,
                &c.task_id,
                &c.occurred_at,
                &c.parameters,
                &c.result_size,
                &c.result_status,
                &c.result_digest,
                &c.success,
                &c.detail,
                &c.frameworks,
                &c.classification,
                &c.sidecar_id,
                &c.permission_id,
                &c.chain,
                &c.chain_seq,
                &c.prev_hash,
                &c.hash,
            ],
        )
        .await;
    match inserted {
        Err(e) if resends == Resends::Refuse && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            return Ok(Appended::HadResends);
        }
        other => other.map_err(db_err)?,
    };
    tx.execute(
        "INSERT INTO audit_chain_heads (chain, chain_seq, hash) SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[]) \
         ON CONFLICT (chain) DO UPDATE SET chain_seq = EXCLUDED.chain_seq, hash = EXCLUDED.hash",
        &[&head_chain, &head_seq, &head_hash],
    )
    .await
    .map_err(db_err)?;
    Ok(Appended::Done)
}

const INSERT_INVOCATIONS: &str = "INSERT INTO invocations (invocation_id, agent_id, task_id, requested_tool_id, \
    tool_id, tool_version, parameters, invoked_at, status, output, error, duration_ms, tokens_used, cost, \
    completed_at, cache_hit, attempts, sidecar_id, task_category, selection_id, caller_cancelled) \
    SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[], $6::int8[], $7::jsonb[], \
    $8::timestamptz[], $9::text[], $10::jsonb[], $11::text[], $12::int8[], $13::int8[], $14::numeric[], \
    $15::timestamptz[], $16::bool[], $17::int8[], $18::text[], $19::text[], $20::uuid[], $21::bool[]) \
    ON CONFLICT (invocation_id) DO NOTHING RETURNING invocation_id";

/// Stores new invocations, then folds the newly stored ones into tool statistics,
/// selection's learning cells and usage; resent invocations change nothing.
pub(super) async fn append_invocations(tx: &Transaction<'_>, records: &[&InvocationRecord]) -> StoreResult<()> {
    let mut unique: Vec<&InvocationRecord> = Vec::with_capacity(records.len());
    let mut seen = HashSet::new();
    for r in records {
        if seen.insert(r.invocation_id) {
            unique.push(r);
        }
    }
    let col = |f: fn(&InvocationRecord) -> i64| unique.iter().map(|r| f(r)).collect::<Vec<i64>>();
    let ids: Vec<Uuid> = unique.iter().map(|r| r.invocation_id).collect();
    let agents: Vec<Uuid> = unique.iter().map(|r| r.agent_id).collect();
    let tasks: Vec<&str> = unique.iter().map(|r| r.task_id.as_str()).collect();
    let requested: Vec<Uuid> = unique.iter().map(|r| r.requested_tool_id).collect();
    let tools: Vec<Uuid> = unique.iter().map(|r| r.result.tool_id).collect();
    let versions = col(|r| i64::from(r.result.tool_version));
    let params: Vec<&Value> = unique.iter().map(|r| &r.parameters).collect();
    let invoked: Vec<DateTime<Utc>> = unique.iter().map(|r| r.invoked_at).collect();
    let statuses: Vec<&str> = unique.iter().map(|r| r.result.status.as_str()).collect();
    let outputs: Vec<&Value> = unique.iter().map(|r| &r.result.output).collect();
    let errors: Vec<&str> = unique.iter().map(|r| r.result.error.as_str()).collect();
    let durations = col(|r| i64::from(r.result.duration_ms));
    let tokens = col(|r| i64::from(r.result.tokens_used));
    let costs: Vec<Decimal> = unique.iter().map(|r| r.result.cost).collect();
    let completed: Vec<DateTime<Utc>> = unique.iter().map(|r| r.result.completed_at).collect();
    let hits: Vec<bool> = unique.iter().map(|r| r.result.cache_hit).collect();
    let attempts = col(|r| i64::from(r.result.attempts));
    let sidecars: Vec<&str> = unique.iter().map(|r| r.sidecar_id.as_str()).collect();
    let categories: Vec<&str> = unique.iter().map(|r| r.task_category.as_str()).collect();
    let selections: Vec<Option<Uuid>> = unique.iter().map(|r| r.selection_id).collect();
    let cancelled: Vec<bool> = unique.iter().map(|r| r.caller_cancelled).collect();
    let inserted: HashSet<Uuid> = tx
        .query(
            INSERT_INVOCATIONS,
            &[
                &ids,
                &agents,
                &tasks,
                &requested,
                &tools,
                &versions,
                &params,
                &invoked,
                &statuses,
                &outputs,
                &errors,
                &durations,
                &tokens,
                &costs,
                &completed,
                &hits,
                &attempts,
                &sidecars,
                &categories,
                &selections,
                &cancelled,
            ],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let fresh: Vec<&InvocationRecord> = unique
        .into_iter()
        .filter(|r| inserted.contains(&r.invocation_id))
        .collect();
    record_outcomes(tx, &fresh).await?;
    super::postgres_learning::fold_invocations(tx, &fresh).await?;
    record_usage(tx, &fresh).await
}

/// Tool reliability and latency (EWMA), one locked read and one update per tool.
async fn record_outcomes(tx: &Transaction<'_>, fresh: &[&InvocationRecord]) -> StoreResult<()> {
    let mut by_tool: BTreeMap<Uuid, Vec<&ToolResult>> = BTreeMap::new();
    for r in fresh {
        if !r.result.cache_hit && stats::counts(r.result.status) {
            by_tool.entry(r.result.tool_id).or_default().push(&r.result);
        }
    }
    if by_tool.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = by_tool.keys().copied().collect();
    let rows = tx
        .query(
            "SELECT id, reliability_score, average_latency_ms, outcomes FROM tools WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await
        .map_err(db_err)?;
    let (mut uid, mut rel, mut lat, mut n) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        let id: Uuid = row.get(0);
        let mut s = ToolStats {
            reliability_score: row.get(1),
            average_latency_ms: u32_of(row.get(2)),
            outcomes: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
        };
        for r in by_tool.get(&id).into_iter().flatten() {
            s = stats::observe(s, r.status, r.duration_ms);
        }
        uid.push(id);
        rel.push(s.reliability_score);
        lat.push(i64::from(s.average_latency_ms));
        n.push(i64::try_from(s.outcomes).unwrap_or(i64::MAX));
    }
    tx.execute(
        "UPDATE tools SET reliability_score = x.r, average_latency_ms = x.l, outcomes = x.n \
         FROM UNNEST($1::uuid[], $2::float8[], $3::int8[], $4::int8[]) AS x(id, r, l, n) WHERE tools.id = x.id",
        &[&uid, &rel, &lat, &n],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn record_usage(tx: &Transaction<'_>, fresh: &[&InvocationRecord]) -> StoreResult<()> {
    let mut rows: BTreeMap<UsageKey, UsageCounts> = BTreeMap::new();
    for r in fresh {
        let (k, c) = usage::contribution(r);
        rows.entry(k).or_default().add(&c);
    }
    if rows.is_empty() {
        return Ok(());
    }
    let i64_of = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let tools: Vec<Uuid> = rows.keys().map(|k| k.tool_id).collect();
    let agents: Vec<Uuid> = rows.keys().map(|k| k.agent_id).collect();
    let days: Vec<NaiveDate> = rows.keys().map(|k| k.day).collect();
    let inv: Vec<i64> = rows.values().map(|c| i64_of(c.invocations)).collect();
    let ok: Vec<i64> = rows.values().map(|c| i64_of(c.successes)).collect();
    let bad: Vec<i64> = rows.values().map(|c| i64_of(c.failures)).collect();
    let hits: Vec<i64> = rows.values().map(|c| i64_of(c.cache_hits)).collect();
    let dur: Vec<i64> = rows.values().map(|c| i64_of(c.total_duration_ms)).collect();
    let cost: Vec<Decimal> = rows.values().map(|c| c.total_cost).collect();
    tx.execute(
        "INSERT INTO usage_daily (tool_id, agent_id, day, invocations, successes, failures, cache_hits, \
         total_duration_ms, total_cost) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::date[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], \
         $8::int8[], $9::numeric[]) \
         ON CONFLICT (tool_id, agent_id, day) DO UPDATE SET \
         invocations = usage_daily.invocations + EXCLUDED.invocations, \
         successes = usage_daily.successes + EXCLUDED.successes, \
         failures = usage_daily.failures + EXCLUDED.failures, \
         cache_hits = usage_daily.cache_hits + EXCLUDED.cache_hits, \
         total_duration_ms = usage_daily.total_duration_ms + EXCLUDED.total_duration_ms, \
         total_cost = usage_daily.total_cost + EXCLUDED.total_cost",
        &[&tools, &agents, &days, &inv, &ok, &bad, &hits, &dur, &cost],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(super) fn record_from_row(r: &Row) -> StoreResult<AuditRecord> {
    let status: Option<String> = r.get("result_status");
    let result = match status {
        Some(s) => Some(ResultSummary {
            size_bytes: u64::try_from(r.get::<_, Option<i64>>("result_size_bytes").unwrap_or(0)).unwrap_or(0),
            status: parse_text("result_status", &s, ExecutionStatus::parse)?,
            digest: r.get::<_, Option<String>>("result_digest").unwrap_or_default(),
        }),
        None => None,
    };
    let class: Option<String> = r.get("data_classification");
    let event = AuditEvent {
        event_id: r.get("event_id"),
        action: parse_text("action", r.get("action"), AuditAction::parse)?,
        invocation_id: r.get("invocation_id"),
        actor_id: r.get("actor_id"),
        agent_id: r.get("agent_id"),
        tool_id: r.get("tool_id"),
        tool_version: u32_of(r.get("tool_version")),
        task_id: r.get("task_id"),
        occurred_at: r.get("occurred_at"),
        sanitized_parameters: r.get("sanitized_parameters"),
        result,
        success: r.get("success"),
        detail: r.get("detail"),
        compliance_frameworks: r.get("compliance_frameworks"),
        data_classification: class.as_deref().and_then(DataSensitivity::parse),
        sidecar_id: r.get("sidecar_id"),
        permission_id: r.get("permission_id"),
    };
    Ok(AuditRecord {
        event,
        seq: u64::try_from(r.get::<_, i64>("seq")).unwrap_or(0),
        recorded_at: r.get("recorded_at"),
        chain: r.get("chain"),
        chain_seq: u64::try_from(r.get::<_, i64>("chain_seq")).unwrap_or(0),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    })
}

/// The filtered query: every condition a bind parameter, so one plan serves all.
pub(super) const QUERY_AUDIT: &str = "SELECT * FROM audit_events WHERE \
    ($1::uuid IS NULL OR invocation_id = $1) AND ($2::uuid IS NULL OR agent_id = $2) \
    AND ($3::uuid IS NULL OR tool_id = $3) AND ($4::text IS NULL OR task_id = $4) \
    AND ($5::text IS NULL OR action = $5) AND ($6::bool IS NULL OR success = $6) \
    AND ($7::timestamptz IS NULL OR occurred_at >= $7) AND ($8::timestamptz IS NULL OR occurred_at < $8) \
    AND seq > $9 AND seq < $11 ORDER BY seq LIMIT $10";

/// [`QUERY_AUDIT`], newest first.
pub(super) const QUERY_AUDIT_NEWEST_FIRST: &str = "SELECT * FROM audit_events WHERE \
    ($1::uuid IS NULL OR invocation_id = $1) AND ($2::uuid IS NULL OR agent_id = $2) \
    AND ($3::uuid IS NULL OR tool_id = $3) AND ($4::text IS NULL OR task_id = $4) \
    AND ($5::text IS NULL OR action = $5) AND ($6::bool IS NULL OR success = $6) \
    AND ($7::timestamptz IS NULL OR occurred_at >= $7) AND ($8::timestamptz IS NULL OR occurred_at < $8) \
    AND seq > $9 AND seq < $11 ORDER BY seq DESC LIMIT $10";

pub(super) fn query_params(f: &AuditFilter) -> (Option<&'static str>, i64, i64, i64) {
    let after = f.after_seq.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
    let before = f.before_seq.map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
    let limit = if f.limit == 0 {
        i64::MAX
    } else {
        i64::try_from(f.limit).unwrap_or(i64::MAX)
    };
    (f.action.map(AuditAction::as_str), after, limit, before)
}

pub(super) fn usage_from_row(r: &Row) -> UsageRow {
    let u = |name: &str| u64::try_from(r.get::<_, i64>(name)).unwrap_or(0);
    UsageRow {
        key: UsageKey {
            tool_id: r.get("tool_id"),
            agent_id: r.get("agent_id"),
            day: r.get("day"),
        },
        counts: UsageCounts {
            invocations: u("invocations"),
            successes: u("successes"),
            failures: u("failures"),
            cache_hits: u("cache_hits"),
            total_duration_ms: u("total_duration_ms"),
            total_cost: r.get("total_cost"),
        },
    }
}

pub(super) async fn dead_letter(
    client: &impl tokio_postgres::GenericClient,
    letters: &[DeadLetter],
) -> StoreResult<()> {
    let col = |f: fn(&DeadLetter) -> &str| letters.iter().map(f).collect::<Vec<&str>>();
    let at: Vec<DateTime<Utc>> = letters.iter().map(|l| l.received_at).collect();
    let raw: Vec<&[u8]> = letters.iter().map(|l| l.raw.as_slice()).collect();
    client
        .execute(
            "INSERT INTO audit_dead_letters (received_at, source, event_id, kind, error, raw) \
             SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[]) \
             ON CONFLICT (source, event_id) DO NOTHING",
            &[
                &at,
                &col(|l| &l.source),
                &col(|l| &l.event_id),
                &col(|l| &l.kind),
                &col(|l| &l.error),
                &raw,
            ],
        )
        .await
        .map_err(db_err)?;
    Ok(())
}

pub(super) async fn dead_letters(
    client: &impl tokio_postgres::GenericClient,
    after_id: u64,
    limit: usize,
) -> StoreResult<(Vec<DeadLetter>, u64)> {
    let after = i64::try_from(after_id).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT id, received_at, source, event_id, kind, error, raw FROM audit_dead_letters \
             WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &limit],
        )
        .await
        .map_err(db_err)?;
    let total: i64 = client
        .query_one("SELECT count(*) FROM audit_dead_letters", &[])
        .await
        .map_err(db_err)?
        .get(0);
    let letters = rows
        .iter()
        .map(|r| DeadLetter {
            id: u64::try_from(r.get::<_, i64>("id")).unwrap_or(0),
            received_at: r.get("received_at"),
            source: r.get("source"),
            event_id: r.get("event_id"),
            kind: r.get("kind"),
            error: r.get("error"),
            raw: r.get("raw"),
        })
        .collect();
    Ok((letters, u64::try_from(total).unwrap_or(0)))
}
