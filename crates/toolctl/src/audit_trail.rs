//! `toolctl audit export`, `audit verify --file` and `audit keygen`: a trail taken out
//! of the control plane and checked without it. The export holds every record with
//! the exact canonical form its hash covers, and every signed checkpoint; the offline
//! check needs only the file and the public keys the verifier trusts (never the file's
//! own say-so about keys).

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use chrono::Utc;
use serde_json::{Value, json};
use toolplane_core::audit_checkpoint::{Checked, CheckpointSigner, TrustedKeys, check};
use toolplane_core::audit_export::{self, EXPORT_FORMAT, ExportHeader, ExportLine, ExportedRecord, OfflineReport};
use toolplane_core::convert::checkpoint_from_pb;
use toolplane_proto::v1 as pb;

use crate::{Authed, Failure, Output, print};

type Client = pb::audit_client::AuditClient<Authed>;

fn usage(e: impl std::fmt::Display) -> Failure {
    Failure::Usage(anyhow::anyhow!("{e}"))
}

/// Public keys given on the command line (hex, each flag or comma-separated).
pub fn trusted(keys: &[String]) -> Result<TrustedKeys, Failure> {
    let keys = TrustedKeys::parse(keys.iter().map(String::as_str)).map_err(|e| usage(format!("--public-key: {e}")))?;
    if keys.is_empty() {
        return Err(usage("--public-key: give at least one key"));
    }
    Ok(keys)
}

/// Checkpoints first, then records: every checkpointed position then exists among the
/// records, even while events keep arriving.
pub async fn export(c: &mut Client, path: &Path, out: Output) -> Result<(), Failure> {
    let key = c
        .get_audit_public_key(pb::GetAuditPublicKeyRequest {})
        .await?
        .into_inner();
    let file = std::fs::File::create(path).map_err(|e| usage(format!("cannot create {}: {e}", path.display())))?;
    let mut w = BufWriter::new(file);
    let written = |e: std::io::Error| Failure::Usage(anyhow::anyhow!("cannot write {}: {e}", path.display()));
    let line = |w: &mut BufWriter<std::fs::File>, l: &ExportLine| -> Result<(), Failure> {
        serde_json::to_writer(&mut *w, l).map_err(|e| usage(format!("cannot encode a line: {e}")))?;
        w.write_all(b"\n").map_err(written)
    };
    line(
        &mut w,
        &ExportLine::Header(ExportHeader {
            format: EXPORT_FORMAT.to_owned(),
            exported_at: Utc::now(),
            public_key: key.public_key,
            trusted_public_keys: key.trusted_public_keys,
        }),
    )?;
    let mut checkpoints = 0u64;
    let mut stream = c
        .list_audit_checkpoints(pb::ListAuditCheckpointsRequest::default())
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        let cp = checkpoint_from_pb(item.checkpoint.unwrap_or_default())
            .map_err(|e| usage(format!("the server sent a malformed checkpoint: {e}")))?;
        line(&mut w, &ExportLine::Checkpoint(cp))?;
        checkpoints += 1;
    }
    let mut records = Vec::new();
    let mut stream = c
        .query_audit_trail(pb::QueryAuditTrailRequest {
            include_canonical_form: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        let r = item.record.unwrap_or_default();
        let event_id = r.event.as_ref().map(|e| e.event_id.as_str()).unwrap_or_default();
        let record = ExportedRecord {
            sequence: r.sequence,
            event_id: event_id.parse().map_err(|_| {
                usage(format!(
                    "the server sent a record without a valid event id ({event_id:?})"
                ))
            })?,
            chain: r.chain,
            chain_seq: r.chain_sequence,
            prev_hash: r.prev_hash,
            hash: r.hash,
            canonical: r.canonical_form,
        };
        records.push(record);
    }
    let (records, left_out) = audit_export::settled(records);
    let n = records.len();
    for r in records {
        line(&mut w, &ExportLine::Record(r))?;
    }
    w.flush().map_err(written)?;
    let v = json!({"file": path.display().to_string(), "records": n, "checkpoints": checkpoints,
                   "left_out_arrived_during_export": left_out});
    print(out, &v, &n.to_string(), || {
        println!(
            "exported {n} records and {checkpoints} checkpoints to {}",
            path.display()
        );
        if left_out > 0 {
            println!("left out {left_out} records that arrived during the export (after a gap)");
        }
    });
    Ok(())
}

/// Reads an export; a line that is not one of ours is bad input (exit 2).
fn read(
    path: &Path,
) -> Result<
    (
        Vec<ExportedRecord>,
        Vec<toolplane_core::audit_checkpoint::AuditCheckpoint>,
    ),
    Failure,
> {
    let file = std::fs::File::open(path).map_err(|e| usage(format!("cannot open {}: {e}", path.display())))?;
    let (mut records, mut checkpoints, mut header) = (Vec::new(), Vec::new(), false);
    for (n, text) in std::io::BufReader::new(file).lines().enumerate() {
        let text = text.map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ExportLine>(&text) {
            Ok(ExportLine::Record(r)) => records.push(r),
            Ok(ExportLine::Checkpoint(c)) => checkpoints.push(c),
            Ok(ExportLine::Header(h)) if h.format != EXPORT_FORMAT => {
                return Err(usage(format!(
                    "{}: unknown export format {:?}",
                    path.display(),
                    h.format
                )));
            }
            Ok(ExportLine::Header(_)) => header = true,
            Err(e) => return Err(usage(format!("{} line {}: {e}", path.display(), n + 1))),
        }
    }
    if !header {
        return Err(usage(format!(
            "{} is not an audit export (no header line)",
            path.display()
        )));
    }
    Ok((records, checkpoints))
}

pub fn verify_file(path: &Path, keys: &[String], out: Output) -> Result<(), Failure> {
    let trusted = trusted(keys)?;
    let (records, checkpoints) = read(path)?;
    let report = audit_export::verify(records, &checkpoints, &trusted);
    report_offline(&report, out);
    match &report.broken {
        None => Ok(()),
        Some(_) => Err(Failure::Found("the exported audit trail does not verify".to_owned())),
    }
}

fn report_offline(r: &OfflineReport, out: Output) {
    let b = r.broken.as_ref();
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("intact".to_owned(), r.intact().into());
        o.insert("chains_checked".to_owned(), r.chains.len().into());
        o.insert("problem".to_owned(), b.map_or("", |b| &b.problem).into());
        o.insert("chain".to_owned(), b.map_or("", |b| &b.chain).into());
        o.insert("chain_sequence".to_owned(), b.map_or(0, |b| b.chain_seq).into());
        o.insert(
            "first_bad_event_id".to_owned(),
            b.filter(|b| !b.event_id.is_nil())
                .map(|b| b.event_id.to_string())
                .unwrap_or_default()
                .into(),
        );
    }
    print(out, &v, &r.intact().to_string(), || match b {
        None => {
            println!(
                "intact: {} records in {} chains, {} checkpoints verified ({} signed by other keys)",
                r.records_checked,
                r.chains.len(),
                r.checkpoints_checked,
                r.checkpoints_unverifiable
            );
            for (chain, c) in &r.chains {
                println!(
                    "  {chain}: {} records, signed up to position {} of {}",
                    c.records, c.signed_up_to, c.last_position
                );
            }
        }
        Some(b) if b.chain.is_empty() => println!("BROKEN: {}", b.problem),
        Some(b) => println!("BROKEN in chain {} at position {}: {}", b.chain, b.chain_seq, b.problem),
    });
}

/// The online answer's checkpoints checked again here, under keys the caller trusts:
/// a control plane (or whoever answers in its name) cannot vouch for itself.
pub fn recheck_online(r: &pb::VerifyAuditChainResponse, keys: &[String]) -> Result<Option<String>, Failure> {
    let trusted = trusted(keys)?;
    if !trusted.keys().any(|k| k.to_hex() == r.public_key) {
        return Ok(Some(format!(
            "the control plane signs with key {}, which is not one of the given public keys",
            r.public_key
        )));
    }
    if r.latest_checkpoints.is_empty() && r.records_checked > 0 {
        return Ok(Some(
            "no checkpoint vouches for the trail yet (audit checkpoint signs one)".to_owned(),
        ));
    }
    for cp in &r.latest_checkpoints {
        let cp = checkpoint_from_pb(cp.clone()).map_err(|e| usage(format!("malformed checkpoint: {e}")))?;
        match check(&cp, &trusted, Some(&cp.head_hash)) {
            Ok(Checked::Holds) => {}
            Ok(Checked::Unverifiable) => {
                return Ok(Some(format!(
                    "{} is not signed by one of the given public keys",
                    cp.describe()
                )));
            }
            Err(problem) => return Ok(Some(problem)),
        }
    }
    Ok(None)
}

pub fn keygen(out: Output) {
    let k = CheckpointSigner::generate();
    let v = json!({"signing_key": k.seed_hex(), "public_key": k.public_key().to_hex(), "key_id": k.key_id()});
    print(out, &v, &k.seed_hex(), || {
        println!(
            "TOOLPLANE_AUDIT_SIGNING_KEY={}  (secret: keep it out of the database)",
            k.seed_hex()
        );
        println!("public key {} (key id {})", k.public_key().to_hex(), k.key_id());
    });
}
