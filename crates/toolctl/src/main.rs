//! `toolctl`: operate toolplane over its public gRPC API.
//!
//! Exit codes: 0 success, 1 the server refused (the gRPC status is printed), 2 bad
//! usage or input, 3 the server could not be reached, 4 a check ran and found a
//! problem (e.g. `audit verify` on a broken chain).

mod audit;
mod tool_file;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use toolplane_core::client::Bearer;
use toolplane_core::json::{json_to_struct, value_from_pb};
use toolplane_proto::v1 as pb;

#[derive(Parser)]
#[command(name = "toolctl", version, about = "Operate toolplane over its gRPC API")]
struct Cli {
    /// Control plane URL.
    #[arg(
        long,
        global = true,
        env = "TOOLPLANE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Bearer token (admin for most commands; an agent token for `invoke`).
    #[arg(long, global = true, env = "TOOLPLANE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// table for people, json for scripts, value for the one id or token a command creates.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Value,
}

#[derive(Subcommand)]
enum Command {
    /// Register, list and show tools.
    #[command(subcommand)]
    Tools(ToolsCmd),
    /// Create agents.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Issue tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Grant and check permissions.
    #[command(subcommand)]
    Permissions(PermissionsCmd),
    /// Query the audit trail, export compliance reports, verify the chain, usage.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Invoke a tool through a sidecar (with an agent token).
    Invoke {
        /// Tool name.
        tool: String,
        /// Parameters as a JSON object.
        #[arg(long, default_value = "{}")]
        params: String,
        #[arg(long, env = "TOOLPLANE_SIDECAR", default_value = "http://127.0.0.1:50061")]
        sidecar: String,
    },
}

#[derive(Subcommand)]
enum ToolsCmd {
    /// Register tools from JSON files.
    Register {
        files: Vec<PathBuf>,
    },
    List {
        #[arg(long)]
        category: Option<String>,
        #[arg(long)]
        capability: Option<String>,
    },
    Get {
        name: String,
    },
}

#[derive(Subcommand)]
enum AgentsCmd {
    Create {
        name: String,
        #[arg(long = "skill")]
        skills: Vec<String>,
        #[arg(long, default_value = "")]
        team: String,
    },
    List,
}

#[derive(Subcommand)]
enum TokensCmd {
    Issue {
        #[arg(long, value_parser = ["admin", "agent", "sidecar"])]
        role: String,
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long, default_value_t = 0)]
        ttl_seconds: u32,
    },
}

#[derive(Subcommand)]
enum PermissionsCmd {
    /// Grant FULL_ACCESS on a tool (by name) to an agent (by id).
    Grant {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        tool: String,
    },
    Check {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        tool: String,
    },
}

enum Failure {
    Usage(anyhow::Error),
    Refused(tonic::Status),
    Unreachable(anyhow::Error),
    /// The command worked and found a problem.
    Found(String),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Refused(s)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Usage(e)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

async fn channel(url: &str, token: Option<&str>) -> Result<Authed, Failure> {
    let bearer = Bearer::new(token)
        .ok_or_else(|| Failure::Usage(anyhow::anyhow!("the token has characters a header cannot carry")))?;
    let ch = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Failure::Usage(anyhow::anyhow!("bad URL {url:?}: {e}")))?
        .connect()
        .await
        .map_err(|e| Failure::Unreachable(anyhow::anyhow!("cannot reach {url}: {e}")))?;
    Ok(InterceptedService::new(ch, bearer))
}

fn tool_json(t: &pb::Tool) -> Value {
    json!({
        "id": t.id, "name": t.name, "version": t.version, "category": t.category,
        "description": t.description, "capabilities": t.capabilities, "endpoint": t.endpoint,
        "enabled": t.enabled,
    })
}

fn print(out: Output, value: &Value, single: &str, table: impl FnOnce()) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Output::Value => println!("{single}"),
        Output::Table => table(),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let out = cli.output;
    let token = cli.token.as_deref();
    match cli.command {
        Command::Tools(cmd) => {
            let mut c = pb::tool_registry_client::ToolRegistryClient::new(channel(&cli.server, token).await?);
            match cmd {
                ToolsCmd::Register { files } => {
                    for f in files {
                        let tool = tool_file::ToolFile::read(&f)?.into_pb()?;
                        let t = c
                            .register_tool(pb::RegisterToolRequest { tool: Some(tool) })
                            .await?
                            .into_inner()
                            .tool
                            .unwrap_or_default();
                        print(out, &tool_json(&t), &t.id, || {
                            println!("registered {}\t{}\tv{}", t.name, t.id, t.version)
                        });
                    }
                }
                ToolsCmd::List { category, capability } => {
                    let mut page_token = String::new();
                    let mut all = Vec::new();
                    loop {
                        let r = c
                            .list_tools(pb::ListToolsRequest {
                                category: category.clone().unwrap_or_default(),
                                capability: capability.clone().unwrap_or_default(),
                                page_token,
                                ..Default::default()
                            })
                            .await?
                            .into_inner();
                        all.extend(r.tools);
                        if r.next_page_token.is_empty() {
                            break;
                        }
                        page_token = r.next_page_token;
                    }
                    let v = Value::Array(all.iter().map(tool_json).collect());
                    let ids = all.iter().map(|t| t.id.clone()).collect::<Vec<_>>().join("\n");
                    print(out, &v, &ids, || {
                        println!("{:<28} {:<8} {:<18} CAPABILITIES", "NAME", "VERSION", "CATEGORY");
                        for t in &all {
                            println!(
                                "{:<28} {:<8} {:<18} {}",
                                t.name,
                                t.version,
                                t.category,
                                t.capabilities.join(",")
                            );
                        }
                    });
                }
                ToolsCmd::Get { name } => {
                    let t = c
                        .get_tool(pb::GetToolRequest {
                            key: Some(pb::get_tool_request::Key::Name(name)),
                            version: 0,
                        })
                        .await?
                        .into_inner()
                        .tool
                        .unwrap_or_default();
                    let v = tool_json(&t);
                    print(out, &v, &t.id, || {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
                    });
                }
            }
        }
        Command::Agents(cmd) => {
            let mut c = pb::identity_client::IdentityClient::new(channel(&cli.server, token).await?);
            match cmd {
                AgentsCmd::Create { name, skills, team } => {
                    let a = c
                        .create_agent(pb::CreateAgentRequest { name, skills, team })
                        .await?
                        .into_inner()
                        .agent
                        .unwrap_or_default();
                    let v = json!({"id": a.id, "name": a.name, "skills": a.skills, "team": a.team});
                    print(out, &v, &a.id, || println!("created agent {}\t{}", a.name, a.id));
                }
                AgentsCmd::List => {
                    let agents = c
                        .list_agents(pb::ListAgentsRequest::default())
                        .await?
                        .into_inner()
                        .agents;
                    let v = Value::Array(
                        agents
                            .iter()
                            .map(|a| json!({"id": a.id, "name": a.name, "skills": a.skills}))
                            .collect(),
                    );
                    let ids = agents.iter().map(|a| a.id.clone()).collect::<Vec<_>>().join("\n");
                    print(out, &v, &ids, || {
                        for a in &agents {
                            println!("{:<28} {}", a.name, a.id);
                        }
                    });
                }
            }
        }
        Command::Tokens(TokensCmd::Issue {
            role,
            agent,
            ttl_seconds,
        }) => {
            let mut c = pb::identity_client::IdentityClient::new(channel(&cli.server, token).await?);
            let role = match role.as_str() {
                "admin" => pb::Role::Admin,
                "agent" => pb::Role::Agent,
                _ => pb::Role::Sidecar,
            } as i32;
            let r = c
                .issue_token(pb::IssueTokenRequest {
                    role,
                    agent_id: agent,
                    ttl_seconds,
                    description: "toolctl".to_owned(),
                })
                .await?
                .into_inner();
            let v = json!({"token_id": r.token_id, "token": r.token});
            print(out, &v, &r.token, || {
                println!("token {} (shown once):\n{}", r.token_id, r.token)
            });
        }
        Command::Permissions(cmd) => {
            let ch = channel(&cli.server, token).await?;
            let mut registry = pb::tool_registry_client::ToolRegistryClient::new(ch.clone());
            let mut c = pb::permissions_client::PermissionsClient::new(ch);
            match cmd {
                PermissionsCmd::Grant { agent, tool } => {
                    let t = registry
                        .get_tool(pb::GetToolRequest {
                            key: Some(pb::get_tool_request::Key::Name(tool)),
                            version: 0,
                        })
                        .await?
                        .into_inner()
                        .tool
                        .unwrap_or_default();
                    let p = c
                        .grant(pb::GrantRequest {
                            permission: Some(pb::Permission {
                                agent_id: agent,
                                tool_id: t.id,
                                r#type: pb::PermissionType::FullAccess as i32,
                                ..Default::default()
                            }),
                        })
                        .await?
                        .into_inner()
                        .permission
                        .unwrap_or_default();
                    let v = json!({"id": p.id, "agent_id": p.agent_id, "tool_id": p.tool_id});
                    print(out, &v, &p.id, || {
                        println!("granted FULL_ACCESS on {} to {}\t{}", t.name, p.agent_id, p.id)
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
                }
            }
        }
        Command::Audit(cmd) => audit::run(cmd, &cli.server, token, out).await?,
        Command::Invoke { tool, params, sidecar } => {
            let params: Value = serde_json::from_str(&params)
                .map_err(|e| Failure::Usage(anyhow::anyhow!("--params is not JSON: {e}")))?;
            let mut c = pb::executor_client::ExecutorClient::new(channel(&sidecar, token).await?);
            let r = c
                .invoke(pb::InvokeRequest {
                    tool: Some(pb::invoke_request::Tool::ToolName(tool)),
                    parameters: json_to_struct(&params),
                    task_id: String::new(),
                    task_category: String::new(),
                })
                .await?
                .into_inner()
                .result
                .unwrap_or_default();
            let output = r.output.clone().map_or(Value::Null, value_from_pb);
            let status = pb::ToolExecutionStatus::try_from(r.status)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN");
            let v = json!({"invocation_id": r.invocation_id, "status": status, "output": output, "error": r.error, "duration_ms": r.duration_ms});
            print(out, &v, &output.to_string(), || {
                println!("{status} in {} ms (invocation {})", r.duration_ms, r.invocation_id);
                if r.error.is_empty() {
                    println!("{}", serde_json::to_string_pretty(&output).unwrap_or_default());
                } else {
                    println!("error: {}", r.error);
                }
            });
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(s)) => {
            eprintln!("error: {:?}: {}", s.code(), s.message());
            ExitCode::from(1)
        }
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Unreachable(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
        Err(Failure::Found(what)) => {
            eprintln!("{what}");
            ExitCode::from(4)
        }
    }
}
