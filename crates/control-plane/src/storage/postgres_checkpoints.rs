//! Signed checkpoints of the audit chains in PostgreSQL (`audit_checkpoints`,
//! append-only).

use tokio_postgres::{GenericClient, Row};
use toolplane_core::audit_checkpoint::AuditCheckpoint;

use super::StoreResult;
use super::postgres::db_err;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_row(r: &Row) -> AuditCheckpoint {
    AuditCheckpoint {
        chain: r.get("chain"),
        chain_seq: u64::try_from(r.get::<_, i64>("chain_seq")).unwrap_or(0),
        head_hash: r.get("head_hash"),
        signed_at: r.get("signed_at"),
        key_id: r.get("key_id"),
        signature: r.get("signature"),
        version: u32::try_from(r.get::<_, i32>("version")).unwrap_or(0),
    }
}

pub(super) async fn add(c: &impl GenericClient, cp: &AuditCheckpoint) -> StoreResult<()> {
    let version = i32::try_from(cp.version).unwrap_or(i32::MAX);
    c.execute(
        "INSERT INTO audit_checkpoints (chain, chain_seq, head_hash, signed_at, key_id, signature, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (chain, chain_seq, key_id) DO NOTHING",
        &[
            &cp.chain,
            &i64_of(cp.chain_seq),
            &cp.head_hash,
            &cp.signed_at,
            &cp.key_id,
            &cp.signature,
            &version,
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(super) async fn latest(c: &impl GenericClient) -> StoreResult<Vec<AuditCheckpoint>> {
    let rows = c
        .query(
            "SELECT DISTINCT ON (chain, key_id) * FROM audit_checkpoints ORDER BY chain, key_id, chain_seq DESC",
            &[],
        )
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(from_row).collect())
}

pub(super) async fn page(
    c: &impl GenericClient,
    chain: Option<&str>,
    after: Option<(String, u64, String)>,
    limit: usize,
) -> StoreResult<Vec<AuditCheckpoint>> {
    let (after_chain, after_seq, after_key) = match &after {
        Some((c, n, k)) => (c.as_str(), i64_of(*n), k.as_str()),
        None => ("", -1, ""),
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "SELECT * FROM audit_checkpoints WHERE ($1::text IS NULL OR chain = $1) \
             AND (chain, chain_seq, key_id) > ($2, $3, $4) ORDER BY chain, chain_seq, key_id LIMIT $5",
            &[&chain, &after_chain, &after_seq, &after_key, &limit],
        )
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(from_row).collect())
}
