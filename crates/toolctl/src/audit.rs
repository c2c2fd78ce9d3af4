//! `toolctl audit`: query the trail, export compliance reports, verify the hash chains
//! and signed checkpoints (online, or offline from an export), read usage statistics.

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use toolplane_core::convert::ts;
use toolplane_core::json::value_from_pb;
use toolplane_proto::v1 as pb;

use crate::{Failure, Output, audit_trail, channel, print};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Stream audit records (oldest first).
    Query {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        #[arg(long)]
        task: Option<String>,
        /// An action, e.g. tool_invoked, permission_checked.
        #[arg(long)]
        action: Option<String>,
        /// Only failed (false) or successful (true) events.
        #[arg(long)]
        success: Option<bool>,
        /// RFC 3339 time or YYYY-MM-DD (UTC).
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
        /// Resume after this cursor (printed with each record).
        #[arg(long, default_value = "")]
        cursor: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A compliance report for a framework and period.
    Report {
        /// Empty: every event.
        #[arg(long, default_value = "")]
        framework: String,
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
        /// json: the whole report; csv: one line per agent and tool.
        #[arg(long, value_enum, default_value = "json")]
        format: ReportFormat,
    },
    /// Verify the hash chains and the signed checkpoints; exits 4 when a link is
    /// broken or missing or a chain no longer matches its checkpoint. With --file,
    /// checks an exported trail offline (no server) under --public-key.
    Verify {
        #[arg(long, value_parser = parse_time, conflicts_with = "file")]
        since: Option<DateTime<Utc>>,
        #[arg(long, value_parser = parse_time, conflicts_with = "file")]
        until: Option<DateTime<Utc>>,
        /// Trusted Ed25519 public keys (hex; repeat or comma-separate). Online: the
        /// server's checkpoints are checked again here under them.
        #[arg(long = "public-key", value_delimiter = ',')]
        public_keys: Vec<String>,
        /// An export (`audit export`) to verify offline; needs --public-key.
        #[arg(long, requires = "public_keys")]
        file: Option<std::path::PathBuf>,
    },
    /// Write the whole trail (records with their canonical forms and hashes, and every
    /// signed checkpoint) as JSON lines, for `audit verify --file`.
    Export {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Sign the head of every chain that moved since its last checkpoint, now.
    Checkpoint,
    /// The public key checkpoints are signed with, and the earlier trusted ones.
    PublicKey,
    /// Events sidecars sent that could not enter the trail (oldest first); the raw
    /// event is printed as hex (protobuf `SyncEvent`).
    DeadLetters {
        /// Only letters after this id.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Make a new checkpoint signing key (offline): TOOLPLANE_AUDIT_SIGNING_KEY and its
    /// public key.
    Keygen,
    /// Usage per tool, agent and day.
    Stats {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Json,
    Csv,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("{s:?} is neither RFC 3339 nor YYYY-MM-DD"))
}

fn action(name: &str) -> Result<i32, Failure> {
    let wanted = format!("AUDIT_ACTION_{}", name.to_ascii_uppercase());
    pb::AuditAction::from_str_name(&wanted)
        .map(|a| a as i32)
        .ok_or_else(|| Failure::Usage(anyhow::anyhow!("unknown action {name:?}")))
}

fn checkpoint_json(c: &pb::AuditCheckpoint) -> Value {
    json!({
        "chain": c.chain, "chain_sequence": c.chain_sequence, "head_hash": c.head_hash,
        "signed_at": c.signed_at.map(|t| t.to_string()), "key_id": c.key_id, "signature": c.signature,
        "version": c.version,
    })
}

fn record_json(r: &pb::AuditRecord, cursor: &str) -> Value {
    let e = r.event.clone().unwrap_or_default();
    let action = pb::AuditAction::try_from(e.action).map_or("UNKNOWN", |a| a.as_str_name());
    json!({
        "cursor": cursor, "sequence": r.sequence, "chain": r.chain, "chain_sequence": r.chain_sequence,
        "hash": r.hash, "event_id": e.event_id, "action": action.trim_start_matches("AUDIT_ACTION_"),
        "occurred_at": e.occurred_at.map(|t| t.to_string()), "actor_id": e.actor_id, "agent_id": e.agent_id,
        "tool_id": e.tool_id, "invocation_id": e.invocation_id, "task_id": e.task_id, "success": e.success,
        "detail": e.detail,
        "parameters": e.sanitized_parameters.map_or(Value::Null, |s| value_from_pb(prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(s)),
        })),
    })
}

pub async fn run(cmd: AuditCmd, server: &str, token: Option<&str>, out: Output) -> Result<(), Failure> {
    // Offline: no server involved.
    match &cmd {
        AuditCmd::Keygen => {
            audit_trail::keygen(out);
            return Ok(());
        }
        AuditCmd::Verify {
            file: Some(file),
            public_keys,
            ..
        } => return audit_trail::verify_file(file, public_keys, out),
        _ => {}
    }
    let mut c = pb::audit_client::AuditClient::new(channel(server, token).await?);
    match cmd {
        AuditCmd::Keygen => {}
        AuditCmd::Export { out: path } => audit_trail::export(&mut c, &path, out).await?,
        AuditCmd::Checkpoint => {
            let r = c
                .sign_audit_checkpoints(pb::SignAuditCheckpointsRequest {})
                .await?
                .into_inner();
            let v = json!({
                "signed": r.signed.iter().map(checkpoint_json).collect::<Vec<_>>(),
                "latest": r.latest.iter().map(checkpoint_json).collect::<Vec<_>>(),
            });
            print(out, &v, &r.signed.len().to_string(), || {
                println!("signed {} checkpoints", r.signed.len());
                for cp in &r.latest {
                    println!("  {:<40} position {:>8}  {}", cp.chain, cp.chain_sequence, cp.head_hash);
                }
            });
        }
        AuditCmd::PublicKey => {
            let r = c
                .get_audit_public_key(pb::GetAuditPublicKeyRequest {})
                .await?
                .into_inner();
            let v = json!({
                "public_key": r.public_key, "key_id": r.key_id,
                "trusted_public_keys": r.trusted_public_keys, "ephemeral": r.ephemeral,
            });
            print(out, &v, &r.public_key, || {
                println!("{} (key id {})", r.public_key, r.key_id);
                if r.ephemeral {
                    println!("ephemeral: made up at start; keep it to verify its checkpoints later");
                }
                for k in &r.trusted_public_keys {
                    println!("also trusted: {k}");
                }
            });
        }
        AuditCmd::DeadLetters { after, limit } => {
            let r = c
                .list_dead_letters(pb::ListDeadLettersRequest { after_id: after, limit })
                .await?
                .into_inner();
            let rows: Vec<Value> = r
                .letters
                .iter()
                .map(|l| {
                    json!({"id": l.id, "received_at": l.received_at.map(|t| t.to_string()),
                           "source": l.source, "event_id": l.event_id, "kind": l.kind,
                           "error": l.error, "raw_hex": hex::encode(&l.raw)})
                })
                .collect();
            let ids = r
                .letters
                .iter()
                .map(|l| l.id.to_string())
                .collect::<Vec<_>>()
                .join("\n");
            print(out, &json!({"total": r.total, "letters": rows}), &ids, || {
                println!("{} dead letters in all", r.total);
                for l in &r.letters {
                    println!("{}  {}  {} {}  {}", l.id, l.source, l.kind, l.event_id, l.error);
                }
            });
        }
        AuditCmd::Query {
            agent,
            tool,
            task,
            action: act,
            success,
            since,
            until,
            cursor,
            limit,
        } => {
            let req = pb::QueryAuditTrailRequest {
                agent_id: agent.unwrap_or_default(),
                tool_id: tool.unwrap_or_default(),
                task_id: task.unwrap_or_default(),
                invocation_id: String::new(),
                action: act.as_deref().map(action).transpose()?.unwrap_or_default(),
                success,
                since: since.map(ts),
                until: until.map(ts),
                cursor,
                limit,
                include_canonical_form: false,
                newest_first: false,
            };
            let mut stream = c.query_audit_trail(req).await?.into_inner();
            let mut all = Vec::new();
            while let Some(item) = stream.message().await? {
                let r = item.record.unwrap_or_default();
                let v = record_json(&r, &item.cursor);
                if out == Output::Table {
                    println!(
                        "{:<8} {:<28} {:<20} {:<7} {}",
                        item.cursor,
                        v["occurred_at"].as_str().unwrap_or(""),
                        v["action"].as_str().unwrap_or(""),
                        if v["success"].as_bool() == Some(true) {
                            "ok"
                        } else {
                            "FAILED"
                        },
                        v["detail"].as_str().unwrap_or("")
                    );
                }
                all.push(v);
            }
            let last = all.last().and_then(|v| v["cursor"].as_str()).unwrap_or("").to_owned();
            if out != Output::Table {
                print(out, &Value::Array(all), &last, || {});
            }
        }
        AuditCmd::Report {
            framework,
            since,
            until,
            format,
        } => {
            let r = c
                .generate_compliance_report(pb::GenerateComplianceReportRequest {
                    framework,
                    since: since.map(ts),
                    until: until.map(ts),
                })
                .await?
                .into_inner();
            let report = r.report.map_or(Value::Null, |s| {
                value_from_pb(prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(s)),
                })
            });
            match format {
                ReportFormat::Csv => print!("{}", report["csv"].as_str().unwrap_or("")),
                ReportFormat::Json => {
                    let mut v = report;
                    if let Some(o) = v.as_object_mut() {
                        o.remove("csv");
                    }
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
            }
        }
        AuditCmd::Verify {
            since,
            until,
            public_keys,
            file: _,
        } => {
            let mut r = c
                .verify_audit_chain(pb::VerifyAuditChainRequest {
                    since: since.map(ts),
                    until: until.map(ts),
                })
                .await?
                .into_inner();
            if r.intact
                && !public_keys.is_empty()
                && let Some(problem) = audit_trail::recheck_online(&r, &public_keys)?
            {
                r.intact = false;
                r.problem = problem;
            }
            let v = json!({
                "intact": r.intact, "records_checked": r.records_checked, "chains_checked": r.chains_checked,
                "first_bad_sequence": r.first_bad_sequence, "first_bad_event_id": r.first_bad_event_id,
                "chain": r.chain, "problem": r.problem,
                "checkpoints_checked": r.checkpoints_checked, "checkpoints_unverifiable": r.checkpoints_unverifiable,
                "public_key": r.public_key,
                "latest_checkpoints": r.latest_checkpoints.iter().map(checkpoint_json).collect::<Vec<_>>(),
            });
            print(out, &v, &r.intact.to_string(), || {
                if r.intact {
                    println!(
                        "intact: {} records in {} chains; {} signed checkpoints hold (key {})",
                        r.records_checked, r.chains_checked, r.checkpoints_checked, r.public_key
                    );
                    for cp in &r.latest_checkpoints {
                        println!("  {:<40} signed up to position {}", cp.chain, cp.chain_sequence);
                    }
                } else {
                    println!(
                        "BROKEN at sequence {} (event {}): {}",
                        r.first_bad_sequence, r.first_bad_event_id, r.problem
                    );
                }
            });
            if !r.intact {
                return Err(Failure::Found("the audit chain is broken".to_owned()));
            }
        }
        AuditCmd::Stats {
            agent,
            tool,
            since,
            until,
        } => {
            let rows = c
                .get_usage_statistics(pb::GetUsageStatisticsRequest {
                    agent_id: agent.unwrap_or_default(),
                    tool_id: tool.unwrap_or_default(),
                    since: since.map(ts),
                    until: until.map(ts),
                })
                .await?
                .into_inner()
                .rows;
            let v = Value::Array(
                rows.iter()
                    .map(|r| {
                        json!({
                            "day": r.day, "tool_id": r.tool_id, "agent_id": r.agent_id,
                            "invocations": r.invocations, "successes": r.successes, "failures": r.failures,
                            "cache_hits": r.cache_hits, "cache_hit_rate": r.cache_hit_rate,
                            "average_duration_ms": r.average_duration_ms, "total_cost": r.total_cost,
                        })
                    })
                    .collect(),
            );
            print(out, &v, &rows.len().to_string(), || {
                println!(
                    "{:<10} {:<36} {:<36} {:>6} {:>6} {:>6} {:>6} {:>9} {:>10}",
                    "DAY", "TOOL", "AGENT", "CALLS", "OK", "FAILED", "HIT%", "AVG MS", "COST"
                );
                for r in &rows {
                    println!(
                        "{:<10} {:<36} {:<36} {:>6} {:>6} {:>6} {:>6.1} {:>9.1} {:>10}",
                        r.day,
                        r.tool_id,
                        r.agent_id,
                        r.invocations,
                        r.successes,
                        r.failures,
                        r.cache_hit_rate * 100.0,
                        r.average_duration_ms,
                        r.total_cost
                    );
                }
            });
        }
    }
    Ok(())
}
