//! `toolctl`: operate toolplane over its public gRPC API.
//!
//! Exit codes: 0 success, 1 the server refused (the gRPC status is printed), 2 bad
//! usage or input, 3 the server could not be reached, 4 a check ran and found a
//! problem (e.g. `audit verify` on a broken chain).

mod access;
mod audit;
mod audit_trail;
mod tool_file;
mod tools;

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
    /// PEM CA that signed the servers' certificates (for https:// URLs).
    #[arg(long, global = true, env = "TOOLPLANE_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(long, global = true, env = "TOOLPLANE_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<std::path::PathBuf>,
    #[arg(long, global = true, env = "TOOLPLANE_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<std::path::PathBuf>,
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
    /// Register, import, list, show, update, enable/disable, delete tools; credentials.
    #[command(subcommand)]
    Tools(tools::ToolsCmd),
    /// Create agents.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Issue tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Grants, checks, listings and access requests.
    #[command(subcommand)]
    Permissions(access::PermissionsCmd),
    /// Which tool fits a task (as an agent: among the tools you may use).
    Select {
        task: String,
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        #[arg(long, default_value = "")]
        category: String,
        #[arg(long, default_value_t = 3)]
        alternatives: u32,
    },
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
enum AgentsCmd {
    Create {
        name: String,
        #[arg(long = "skill")]
        skills: Vec<String>,
        #[arg(long, default_value = "")]
        team: String,
        /// Never keep this agent's task descriptions in task memory.
        #[arg(long)]
        no_task_memory: bool,
    },
    List,
}

#[derive(Subcommand)]
enum TokensCmd {
    Issue {
        #[arg(long, value_parser = ["admin", "agent", "sidecar", "auditor"])]
        role: String,
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long, default_value_t = 0)]
        ttl_seconds: u32,
    },
    /// Revoke a token by id; every sidecar refuses it within a second.
    Revoke { token_id: String },
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

/// TLS towards the servers, from the global flags (set once in `main`).
static TLS: std::sync::OnceLock<Option<tonic::transport::ClientTlsConfig>> = std::sync::OnceLock::new();

fn tls_from(cli: &Cli) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()));
    let mut config = match &cli.ca_cert {
        Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)),
        None if cli.client_cert.is_some() => {
            anyhow::bail!("--client-cert needs --ca-cert (the CA that signed the server)")
        }
        None => return Ok(None),
    };
    if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(config))
}

async fn channel(url: &str, token: Option<&str>) -> Result<Authed, Failure> {
    let bearer = Bearer::new(token)
        .ok_or_else(|| Failure::Usage(anyhow::anyhow!("the token has characters a header cannot carry")))?;
    let mut endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|e| Failure::Usage(anyhow::anyhow!("bad URL {url:?}: {e}")))?;
    if let Some(tls) = TLS.get().cloned().flatten() {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("TLS settings: {e}")))?;
    }
    let ch = endpoint
        .connect()
        .await
        .map_err(|e| Failure::Unreachable(anyhow::anyhow!("cannot reach {url}: {e}")))?;
    Ok(InterceptedService::new(ch, bearer))
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
        Command::Tools(cmd) => tools::run(cmd, channel(&cli.server, token).await?, out).await?,
        Command::Agents(cmd) => {
            let mut c = pb::identity_client::IdentityClient::new(channel(&cli.server, token).await?);
            match cmd {
                AgentsCmd::Create {
                    name,
                    skills,
                    team,
                    no_task_memory,
                } => {
                    let a = c
                        .create_agent(pb::CreateAgentRequest {
                            name,
                            skills,
                            team,
                            task_memory_opt_out: no_task_memory,
                        })
                        .await?
                        .into_inner()
                        .agent
                        .unwrap_or_default();
                    let v = json!({"id": a.id, "name": a.name, "skills": a.skills, "team": a.team, "task_memory_opt_out": a.task_memory_opt_out});
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
        Command::Tokens(TokensCmd::Revoke { token_id }) => {
            let mut c = pb::identity_client::IdentityClient::new(channel(&cli.server, token).await?);
            c.revoke_token(pb::RevokeTokenRequest {
                token_id: token_id.clone(),
            })
            .await?;
            print(out, &json!({"revoked": token_id}), &token_id, || {
                println!("revoked token {token_id}")
            });
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
                "auditor" => pb::Role::Auditor,
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
        Command::Permissions(cmd) => access::run(cmd, channel(&cli.server, token).await?, out).await?,
        Command::Select {
            task,
            capabilities,
            category,
            alternatives,
        } => {
            let mut c = pb::tool_selector_client::ToolSelectorClient::new(channel(&cli.server, token).await?);
            let r = c
                .select_tool(pb::SelectToolRequest {
                    task_description: task,
                    required_capabilities: capabilities,
                    task_category: category,
                    max_alternatives: alternatives,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let ranked: Vec<Value> = r
                .primary
                .iter()
                .chain(&r.alternatives)
                .map(|s| {
                    json!({"tool": s.tool.as_ref().map(|t| t.name.clone()), "combined": s.combined_score,
                           "match": s.match_score, "suitability": s.suitability_score})
                })
                .collect();
            let v = json!({"tools": ranked, "confidence": r.confidence, "reasoning": r.reasoning, "selection_id": r.selection_id});
            let best = ranked.first().and_then(|t| t["tool"].as_str()).unwrap_or("").to_owned();
            print(out, &v, &best, || {
                for t in &ranked {
                    println!(
                        "{:<28} {:.3}",
                        t["tool"].as_str().unwrap_or(""),
                        t["combined"].as_f64().unwrap_or(0.0)
                    );
                }
                println!("confidence {:.2}: {}", r.confidence, r.reasoning);
            });
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
                    selection_id: String::new(),
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
    match tls_from(&cli) {
        Ok(tls) => {
            let _ = TLS.set(tls);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    }
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
