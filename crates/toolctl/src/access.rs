//! `toolctl permissions`: grants of every type, revocation, the explained check,
//! listings, and access requests (request as an agent, review as an admin).

use chrono::{Duration, Utc};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use toolplane_core::convert::ts;
use toolplane_proto::v1 as pb;

use crate::{Authed, Failure, Output, print};

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Full,
    ReadOnly,
    Limited,
    TimeRestricted,
    DataRestricted,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Level {
    Public,
    Internal,
    Confidential,
    Restricted,
}

#[derive(clap::Args)]
pub struct Shape {
    #[arg(long = "type", value_enum, default_value = "full")]
    kind: Kind,
    /// LIMITED_INVOCATIONS: calls per day.
    #[arg(long, default_value_t = 0)]
    per_day: u32,
    /// TIME_RESTRICTED: allowed hours, e.g. 9-17 or 22,23,0.
    #[arg(long, default_value = "")]
    hours: String,
    /// IANA time zone of the hours and of the daily count.
    #[arg(long, default_value = "")]
    time_zone: String,
    /// DATA_RESTRICTED: the most sensitive data the grant reaches.
    #[arg(long, value_enum)]
    max_sensitivity: Option<Level>,
    /// Expire after this many hours.
    #[arg(long)]
    expires_in_hours: Option<i64>,
}

fn hours(spec: &str) -> Result<Vec<u32>, Failure> {
    let bad = || Failure::Usage(anyhow::anyhow!("--hours {spec:?}: use 9-17 or 22,23,0"));
    let mut out = Vec::new();
    for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

impl Shape {
    fn permission(&self) -> Result<pb::Permission, Failure> {
        let kind = match self.kind {
            Kind::Full => pb::PermissionType::FullAccess,
            Kind::ReadOnly => pb::PermissionType::ReadOnly,
            Kind::Limited => pb::PermissionType::LimitedInvocations,
            Kind::TimeRestricted => pb::PermissionType::TimeRestricted,
            Kind::DataRestricted => pb::PermissionType::DataRestricted,
        };
        let level = self
            .max_sensitivity
            .map_or(pb::DataSensitivity::Unspecified, |l| match l {
                Level::Public => pb::DataSensitivity::Public,
                Level::Internal => pb::DataSensitivity::Internal,
                Level::Confidential => pb::DataSensitivity::Confidential,
                Level::Restricted => pb::DataSensitivity::Restricted,
            });
        Ok(pb::Permission {
            r#type: kind as i32,
            max_invocations_per_day: self.per_day,
            allowed_hours: hours(&self.hours)?,
            time_zone: self.time_zone.clone(),
            max_sensitivity: level as i32,
            expires_at: self.expires_in_hours.map(|h| ts(Utc::now() + Duration::hours(h))),
            ..Default::default()
        })
    }
}

#[derive(Subcommand)]
pub enum PermissionsCmd {
    /// Grant a tool (by name) to an agent (by id).
    Grant {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        tool: String,
        #[command(flatten)]
        shape: Shape,
    },
    Revoke {
        permission_id: String,
    },
    /// May the agent use the tool now, and why (or why not)? Exits 4 when not.
    Check {
        /// Omit with an agent token: yourself.
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long)]
        tool: String,
    },
    List {
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long, default_value = "")]
        tool: String,
    },
    /// Ask for a tool (with an agent token).
    Request {
        #[arg(long)]
        tool: String,
        #[arg(long)]
        justification: String,
    },
    /// Access requests: pending by default.
    Requests {
        #[arg(long, value_parser = ["pending", "approved", "denied", "all"], default_value = "pending")]
        status: String,
        #[arg(long, default_value = "")]
        agent: String,
    },
    /// Approve (creating a grant of the given shape) or deny with a reason.
    Review {
        request_id: String,
        #[arg(long, conflicts_with = "deny")]
        approve: bool,
        #[arg(long)]
        deny: bool,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        shape: Shape,
    },
}

fn permission_json(p: &pb::Permission) -> Value {
    let kind = pb::PermissionType::try_from(p.r#type).map_or("UNKNOWN", |k| k.as_str_name());
    json!({"id": p.id, "agent_id": p.agent_id, "tool_id": p.tool_id, "type": kind,
           "max_invocations_per_day": p.max_invocations_per_day, "allowed_hours": p.allowed_hours,
           "time_zone": p.time_zone, "expires_at": p.expires_at.map(|t| t.to_string())})
}

fn request_json(r: &pb::AccessRequest) -> Value {
    let status = pb::AccessRequestStatus::try_from(r.status).map_or("UNKNOWN", |s| s.as_str_name());
    json!({"id": r.id, "agent_id": r.agent_id, "tool_id": r.tool_id, "justification": r.justification,
           "status": status, "reviewed_by": r.reviewed_by, "review_reason": r.review_reason,
           "permission_id": r.permission_id})
}

async fn tool_id(ch: &Authed, name: &str) -> Result<String, Failure> {
    let mut registry = pb::tool_registry_client::ToolRegistryClient::new(ch.clone());
    Ok(registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name(name.to_owned())),
            version: 0,
        })
        .await?
        .into_inner()
        .tool
        .unwrap_or_default()
        .id)
}

pub async fn run(cmd: PermissionsCmd, ch: Authed, out: Output) -> Result<(), Failure> {
    let mut c = pb::permissions_client::PermissionsClient::new(ch.clone());
    match cmd {
        PermissionsCmd::Grant { agent, tool, shape } => {
            let p = pb::Permission {
                agent_id: agent,
                tool_id: tool_id(&ch, &tool).await?,
                ..shape.permission()?
            };
            let p = c
                .grant(pb::GrantRequest { permission: Some(p) })
                .await?
                .into_inner()
                .permission
                .unwrap_or_default();
            let v = permission_json(&p);
            print(out, &v, &p.id, || {
                println!("granted {} on {tool}\t{}", v["type"].as_str().unwrap_or(""), p.id)
            });
        }
        PermissionsCmd::Revoke { permission_id } => {
            c.revoke(pb::RevokeRequest {
                permission_id: permission_id.clone(),
            })
            .await?;
            print(out, &json!({"revoked": permission_id}), &permission_id, || {
                println!("revoked {permission_id}")
            });
        }
        PermissionsCmd::Check { agent, tool } => {
            let r = c
                .check(pb::CheckRequest {
                    agent_id: agent,
                    tool: Some(pb::check_request::Tool::ToolName(tool)),
                })
                .await?
                .into_inner();
            let v = json!({"allowed": r.allowed, "reason": r.reason, "permission_id": r.permission_id});
            print(out, &v, &r.allowed.to_string(), || {
                println!("{}: {}", if r.allowed { "allowed" } else { "denied" }, r.reason)
            });
            if !r.allowed {
                return Err(Failure::Found(String::new()));
            }
        }
        PermissionsCmd::List { agent, tool } => {
            let tool_id = if tool.is_empty() {
                String::new()
            } else {
                tool_id(&ch, &tool).await?
            };
            let mut ps = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_permissions(pb::ListPermissionsRequest {
                        agent_id: agent.clone(),
                        tool_id: tool_id.clone(),
                        page_size: 1000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                ps.extend(r.permissions);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            let v = Value::Array(ps.iter().map(permission_json).collect());
            let ids = ps.iter().map(|p| p.id.clone()).collect::<Vec<_>>().join("\n");
            print(out, &v, &ids, || {
                for p in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<20} agent {} tool {}",
                        p["id"].as_str().unwrap_or(""),
                        p["type"].as_str().unwrap_or(""),
                        p["agent_id"].as_str().unwrap_or(""),
                        p["tool_id"].as_str().unwrap_or("")
                    );
                }
            });
        }
        PermissionsCmd::Request { tool, justification } => {
            let r = c
                .request_access(pb::RequestAccessRequest {
                    tool_name: tool.clone(),
                    justification,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .request
                .unwrap_or_default();
            print(out, &request_json(&r), &r.id, || {
                println!("requested {tool}: {} (pending)", r.id)
            });
        }
        PermissionsCmd::Requests { status, agent } => {
            let status = match status.as_str() {
                "pending" => pb::AccessRequestStatus::Pending,
                "approved" => pb::AccessRequestStatus::Approved,
                "denied" => pb::AccessRequestStatus::Denied,
                _ => pb::AccessRequestStatus::Unspecified,
            } as i32;
            let mut rs = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_access_requests(pb::ListAccessRequestsRequest {
                        status,
                        agent_id: agent.clone(),
                        page_size: 1000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                rs.extend(r.requests);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            let v = Value::Array(rs.iter().map(request_json).collect());
            let ids = rs.iter().map(|r| r.id.clone()).collect::<Vec<_>>().join("\n");
            print(out, &v, &ids, || {
                for r in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<30} agent {} tool {}: {}",
                        r["id"].as_str().unwrap_or(""),
                        r["status"].as_str().unwrap_or(""),
                        r["agent_id"].as_str().unwrap_or(""),
                        r["tool_id"].as_str().unwrap_or(""),
                        r["justification"].as_str().unwrap_or("")
                    );
                }
            });
        }
        PermissionsCmd::Review {
            request_id,
            approve,
            deny,
            reason,
            shape,
        } => {
            if approve == deny {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "give exactly one of --approve or --deny"
                )));
            }
            let r = c
                .review_access_request(pb::ReviewAccessRequestRequest {
                    request_id,
                    approve,
                    reason,
                    grant: approve.then(|| shape.permission()).transpose()?,
                })
                .await?
                .into_inner()
                .request
                .unwrap_or_default();
            let v = request_json(&r);
            print(out, &v, &r.permission_id, || {
                println!("{} {}", v["status"].as_str().unwrap_or(""), r.id)
            });
        }
    }
    Ok(())
}
