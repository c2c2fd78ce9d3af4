//! `toolctl review`: changes MCP servers made to approved tool definitions (pending until
//! approved), their review with a diff, and providers' auto-approval policies.

use clap::Subcommand;
use serde_json::{Value, json};
use toolplane_core::json::value_from_pb;
use toolplane_proto::v1 as pb;

use crate::{Authed, Failure, Output, print};

#[derive(Subcommand)]
pub enum ReviewCmd {
    /// List tool changes (pending by default).
    Changes {
        /// pending, approved, rejected, superseded or all.
        #[arg(long, default_value = "pending")]
        status: String,
    },
    /// One change with its diff.
    Show { change_id: String },
    /// Approve a pending change: the tool gets a new version with the server's definition.
    Approve {
        change_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reject a pending change: the approved version stays.
    Reject {
        change_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Approve a provider's changes automatically (`--auto-approve false` to review again).
    Policy {
        provider: String,
        #[arg(long, action = clap::ArgAction::Set)]
        auto_approve: bool,
    },
}

fn status_of(s: &str) -> Result<i32, Failure> {
    Ok(match s {
        "all" => pb::ToolChangeStatus::Unspecified,
        "pending" => pb::ToolChangeStatus::Pending,
        "approved" => pb::ToolChangeStatus::Approved,
        "rejected" => pb::ToolChangeStatus::Rejected,
        "superseded" => pb::ToolChangeStatus::Superseded,
        other => return Err(Failure::Usage(anyhow::anyhow!("unknown status {other:?}"))),
    } as i32)
}

fn status_name(v: i32) -> &'static str {
    match pb::ToolChangeStatus::try_from(v) {
        Ok(pb::ToolChangeStatus::Pending) => "pending",
        Ok(pb::ToolChangeStatus::Approved) => "approved",
        Ok(pb::ToolChangeStatus::Rejected) => "rejected",
        Ok(pb::ToolChangeStatus::Superseded) => "superseded",
        _ => "unknown",
    }
}

fn change_json(c: &pb::ToolChange) -> Value {
    let diff: Vec<Value> = c
        .diff
        .iter()
        .map(|d| {
            json!({"field": d.field,
                   "before": d.before.clone().map(value_from_pb).unwrap_or(Value::Null),
                   "after": d.after.clone().map(value_from_pb).unwrap_or(Value::Null)})
        })
        .collect();
    json!({"id": c.id, "tool": c.tool_name, "tool_id": c.tool_id, "base_version": c.base_version,
           "status": status_name(c.status), "source": c.source, "base_hash": c.base_hash,
           "proposed_hash": c.proposed_hash, "reviewed_by": c.reviewed_by, "review_reason": c.review_reason,
           "diff": diff})
}

fn print_diff(c: &pb::ToolChange) {
    println!(
        "change {} of {} (v{}, {}, found by {})",
        c.id,
        c.tool_name,
        c.base_version,
        status_name(c.status),
        c.source
    );
    for d in &c.diff {
        let show = |v: &Option<prost_types::Value>| {
            let v = v.clone().map(value_from_pb).unwrap_or(Value::Null);
            match v {
                Value::String(s) => s,
                other => other.to_string(),
            }
        };
        println!("  {}:\n    - {}\n    + {}", d.field, show(&d.before), show(&d.after));
    }
}

pub async fn run(cmd: ReviewCmd, ch: Authed, out: Output) -> Result<(), Failure> {
    let mut c = pb::tool_review_client::ToolReviewClient::new(ch);
    match cmd {
        ReviewCmd::Changes { status } => {
            let r = c
                .list_tool_changes(pb::ListToolChangesRequest {
                    status: status_of(&status)?,
                    tool_id: String::new(),
                })
                .await?
                .into_inner();
            let v = Value::Array(r.changes.iter().map(change_json).collect());
            print(out, &v, &r.changes.len().to_string(), || {
                for ch in &r.changes {
                    let fields: Vec<&str> = ch.diff.iter().map(|d| d.field.as_str()).collect();
                    println!(
                        "{}\t{}\tv{}\t{}\t{}",
                        ch.id,
                        ch.tool_name,
                        ch.base_version,
                        status_name(ch.status),
                        fields.join(",")
                    );
                }
            });
        }
        ReviewCmd::Show { change_id } => {
            let r = c
                .list_tool_changes(pb::ListToolChangesRequest::default())
                .await?
                .into_inner();
            let ch = r
                .changes
                .into_iter()
                .find(|ch| ch.id == change_id)
                .ok_or_else(|| Failure::Usage(anyhow::anyhow!("no tool change {change_id}")))?;
            print(out, &change_json(&ch), &ch.id, || print_diff(&ch));
        }
        ReviewCmd::Approve { change_id, reason } => review(&mut c, out, change_id, true, reason).await?,
        ReviewCmd::Reject { change_id, reason } => review(&mut c, out, change_id, false, reason).await?,
        ReviewCmd::Policy { provider, auto_approve } => {
            let p = c
                .set_tool_review_policy(pb::SetToolReviewPolicyRequest { provider, auto_approve })
                .await?
                .into_inner()
                .policy
                .unwrap_or_default();
            print(
                out,
                &json!({"provider": p.provider, "auto_approve": p.auto_approve}),
                &p.provider,
                || {
                    println!(
                        "{}: changes {}",
                        p.provider,
                        if p.auto_approve {
                            "approved automatically"
                        } else {
                            "reviewed"
                        }
                    )
                },
            );
        }
    }
    Ok(())
}

async fn review(
    c: &mut pb::tool_review_client::ToolReviewClient<Authed>,
    out: Output,
    change_id: String,
    approve: bool,
    reason: String,
) -> Result<(), Failure> {
    let r = c
        .review_tool_change(pb::ReviewToolChangeRequest {
            change_id,
            approve,
            reason,
        })
        .await?
        .into_inner();
    let ch = r.change.unwrap_or_default();
    let t = r.tool.unwrap_or_default();
    print(out, &change_json(&ch), &ch.id, || {
        print_diff(&ch);
        println!("{} is at version {}", t.name, t.version);
    });
    Ok(())
}
