//! `toolctl agents` and `toolctl tokens`: create, change, list and delete agents;
//! issue, list (metadata only) and revoke tokens.

use clap::Subcommand;
use serde_json::{Value, json};
use toolplane_proto::v1 as pb;

use crate::{Authed, Failure, Output, print};

type Client = pb::identity_client::IdentityClient<Authed>;

#[derive(Subcommand)]
pub enum AgentsCmd {
    Create {
        name: String,
        #[arg(long = "skill")]
        skills: Vec<String>,
        #[arg(long, default_value = "")]
        team: String,
        /// Never keep this agent's task descriptions in task memory.
        #[arg(long)]
        no_task_memory: bool,
        /// Calls per minute across all sidecars (0: no limit of its own).
        #[arg(long, default_value_t = 0)]
        calls_per_minute: u32,
        /// Most it may spend per UTC day, in the tools' cost_per_call units.
        #[arg(long, default_value = "")]
        daily_spend_budget: String,
    },
    /// Every live agent (all pages), by name.
    List {
        #[arg(long, default_value = "")]
        team: String,
    },
    /// Change only the fields given (by agent id).
    Update {
        agent_id: String,
        /// Replaces the skills (repeat the flag; --clear-skills for none).
        #[arg(long = "skill")]
        skills: Vec<String>,
        #[arg(long, conflicts_with = "skills")]
        clear_skills: bool,
        #[arg(long)]
        team: Option<String>,
        /// true: never keep its task descriptions in task memory.
        #[arg(long)]
        task_memory_opt_out: Option<bool>,
        #[arg(long)]
        calls_per_minute: Option<u32>,
        /// A decimal ("12.50"), or "none" to remove the budget.
        #[arg(long)]
        daily_spend_budget: Option<String>,
    },
    /// Delete an agent: its tokens and grants are revoked, its history kept.
    Delete { agent_id: String },
}

#[derive(Subcommand)]
pub enum TokensCmd {
    Issue {
        #[arg(long, value_parser = ["admin", "agent", "sidecar", "auditor"])]
        role: String,
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long, default_value_t = 0)]
        ttl_seconds: u32,
        #[arg(long, default_value = "toolctl")]
        description: String,
    },
    /// Revoke a token by id; every sidecar refuses it within a second.
    Revoke { token_id: String },
    /// Token metadata (never the token): active ones unless --all.
    List {
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long, value_parser = ["admin", "agent", "sidecar", "auditor"])]
        role: Option<String>,
        /// Revoked and expired tokens too.
        #[arg(long)]
        all: bool,
    },
}

fn role_of(name: &str) -> pb::Role {
    match name {
        "admin" => pb::Role::Admin,
        "agent" => pb::Role::Agent,
        "auditor" => pb::Role::Auditor,
        _ => pb::Role::Sidecar,
    }
}

pub fn agent_json(a: &pb::Agent) -> Value {
    json!({"id": a.id, "name": a.name, "skills": a.skills, "team": a.team,
           "task_memory_opt_out": a.task_memory_opt_out, "calls_per_minute": a.calls_per_minute,
           "daily_spend_budget": a.daily_spend_budget,
           "created_at": a.created_at.map(|t| t.to_string())})
}

fn token_json(t: &pb::TokenInfo) -> Value {
    let role = pb::Role::try_from(t.role).map_or("UNKNOWN", |r| r.as_str_name());
    json!({"token_id": t.token_id, "role": role, "agent_id": t.agent_id, "description": t.description,
           "created_at": t.created_at.map(|t| t.to_string()),
           "expires_at": t.expires_at.map(|t| t.to_string()),
           "revoked_at": t.revoked_at.map(|t| t.to_string())})
}

pub async fn agents(cmd: AgentsCmd, ch: Authed, out: Output) -> Result<(), Failure> {
    let mut c = Client::new(ch);
    match cmd {
        AgentsCmd::Create {
            name,
            skills,
            team,
            no_task_memory,
            calls_per_minute,
            daily_spend_budget,
        } => {
            let a = c
                .create_agent(pb::CreateAgentRequest {
                    name,
                    skills,
                    team,
                    task_memory_opt_out: no_task_memory,
                    calls_per_minute,
                    daily_spend_budget,
                })
                .await?
                .into_inner()
                .agent
                .unwrap_or_default();
            print(out, &agent_json(&a), &a.id, || {
                println!("created agent {}\t{}", a.name, a.id)
            });
        }
        AgentsCmd::List { team } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_agents(pb::ListAgentsRequest {
                        team: team.clone(),
                        page_size: 1000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                all.extend(r.agents);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            let v = Value::Array(all.iter().map(agent_json).collect());
            let ids = all.iter().map(|a| a.id.clone()).collect::<Vec<_>>().join("\n");
            print(out, &v, &ids, || {
                for a in &all {
                    println!("{:<28} {} {}", a.name, a.id, a.team);
                }
            });
        }
        AgentsCmd::Update {
            agent_id,
            skills,
            clear_skills,
            team,
            task_memory_opt_out,
            calls_per_minute,
            daily_spend_budget,
        } => {
            let mut paths = Vec::new();
            let mut agent = pb::Agent {
                id: agent_id,
                ..Default::default()
            };
            if !skills.is_empty() || clear_skills {
                paths.push("skills");
                agent.skills = skills;
            }
            if let Some(t) = team {
                paths.push("team");
                agent.team = t;
            }
            if let Some(o) = task_memory_opt_out {
                paths.push("task_memory_opt_out");
                agent.task_memory_opt_out = o;
            }
            if let Some(n) = calls_per_minute {
                paths.push("calls_per_minute");
                agent.calls_per_minute = n;
            }
            if let Some(b) = daily_spend_budget {
                paths.push("daily_spend_budget");
                agent.daily_spend_budget = if b == "none" { String::new() } else { b };
            }
            if paths.is_empty() {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "nothing to change: give --skill/--clear-skills, --team, --task-memory-opt-out, \
                     --calls-per-minute or --daily-spend-budget"
                )));
            }
            let a = c
                .update_agent(pb::UpdateAgentRequest {
                    agent: Some(agent),
                    update_mask: Some(prost_types::FieldMask {
                        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                    }),
                })
                .await?
                .into_inner()
                .agent
                .unwrap_or_default();
            print(out, &agent_json(&a), &a.id, || {
                println!("updated agent {} ({})", a.name, paths.join(", "))
            });
        }
        AgentsCmd::Delete { agent_id } => {
            let r = c
                .delete_agent(pb::DeleteAgentRequest {
                    agent_id: agent_id.clone(),
                })
                .await?
                .into_inner();
            let v = json!({"deleted": agent_id, "tokens_revoked": r.tokens_revoked,
                           "grants_revoked": r.grants_revoked,
                           "access_requests_denied": r.access_requests_denied});
            print(out, &v, &agent_id, || {
                println!(
                    "deleted agent {agent_id}: {} tokens and {} grants revoked, {} pending requests denied",
                    r.tokens_revoked, r.grants_revoked, r.access_requests_denied
                )
            });
        }
    }
    Ok(())
}

pub async fn tokens(cmd: TokensCmd, ch: Authed, out: Output) -> Result<(), Failure> {
    let mut c = Client::new(ch);
    match cmd {
        TokensCmd::Revoke { token_id } => {
            c.revoke_token(pb::RevokeTokenRequest {
                token_id: token_id.clone(),
            })
            .await?;
            print(out, &json!({"revoked": token_id}), &token_id, || {
                println!("revoked token {token_id}")
            });
        }
        TokensCmd::Issue {
            role,
            agent,
            ttl_seconds,
            description,
        } => {
            let r = c
                .issue_token(pb::IssueTokenRequest {
                    role: role_of(&role) as i32,
                    agent_id: agent,
                    ttl_seconds,
                    description,
                })
                .await?
                .into_inner();
            let v = json!({"token_id": r.token_id, "token": r.token});
            print(out, &v, &r.token, || {
                println!("token {} (shown once):\n{}", r.token_id, r.token)
            });
        }
        TokensCmd::List { agent, role, all } => {
            let mut tokens = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_tokens(pb::ListTokensRequest {
                        agent_id: agent.clone(),
                        role: role.as_deref().map_or(0, |r| role_of(r) as i32),
                        include_inactive: all,
                        page_size: 1000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                tokens.extend(r.tokens);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            let v = Value::Array(tokens.iter().map(token_json).collect());
            let ids = tokens.iter().map(|t| t.token_id.clone()).collect::<Vec<_>>().join("\n");
            print(out, &v, &ids, || {
                for t in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<13} agent {:<36} expires {} {}",
                        t["token_id"].as_str().unwrap_or(""),
                        t["role"].as_str().unwrap_or(""),
                        t["agent_id"].as_str().unwrap_or("-"),
                        t["expires_at"].as_str().unwrap_or(""),
                        t["revoked_at"]
                            .as_str()
                            .map(|r| format!("(revoked {r})"))
                            .unwrap_or_default()
                    );
                }
            });
        }
    }
    Ok(())
}
