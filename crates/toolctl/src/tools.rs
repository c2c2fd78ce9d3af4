//! `toolctl tools`: register, import, list, show, update, enable/disable, delete, and
//! set credentials.

use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};
use toolplane_proto::v1 as pb;

use crate::{Authed, Failure, Output, print, tool_file};

#[derive(Subcommand)]
pub enum ToolsCmd {
    /// Register tools from JSON or YAML files.
    Register {
        files: Vec<PathBuf>,
    },
    /// Register (or re-version) every tool an MCP server lists.
    ImportMcp {
        /// Streamable HTTP endpoint, e.g. http://mcp.internal:8080/mcp
        endpoint: String,
        #[arg(long, default_value = "")]
        category: String,
        #[arg(long, default_value = "")]
        provider: String,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Send this header to the server while listing and seal it as every created
        /// tool's credential (the secret from --credential-from-file).
        #[arg(long, default_value = "", requires = "credential_from_file")]
        credential_header: String,
        /// Read the credential's secret from this file ("-" for stdin).
        #[arg(long, requires = "credential_header")]
        credential_from_file: Option<PathBuf>,
    },
    /// Register (or re-version) one HTTP tool per operation of an OpenAPI 3.0/3.1
    /// document (a file, "-" for stdin, or an http(s):// URL).
    ImportOpenapi {
        source: String,
        /// The API's base URL; default: the document's server, or the origin of the URL
        /// it was fetched from when its server is relative or absent.
        #[arg(long, default_value = "")]
        base_url: String,
        #[arg(long, default_value = "")]
        category: String,
        #[arg(long, default_value = "")]
        provider: String,
        #[arg(long, default_value = "")]
        prefix: String,
        /// OPERATION_ID=none|read|write, overriding the method's side effects; repeatable.
        #[arg(long = "side-effects")]
        side_effects: Vec<String>,
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
    /// Record a new version of a tool from a file (the file's name picks the tool).
    Update {
        file: PathBuf,
    },
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
    /// Soft delete: the name becomes free, history stays.
    Delete {
        name: String,
    },
    /// Remove a tool's credential: sidecars stop sending it.
    DeleteCredential {
        name: String,
    },
    /// Seal a credential for a tool; the secret comes from a file or stdin, never a flag.
    SetCredential {
        name: String,
        /// Read the secret from this file ("-" for stdin).
        #[arg(long = "from-file")]
        from_file: PathBuf,
        /// Sent as this header; default `authorization: Bearer <secret>`.
        #[arg(long, default_value = "")]
        header: String,
        /// api-key (default), basic, oauth2 (the secret is the client secret) or mtls
        /// (the secret is the client key, PEM).
        #[arg(long = "type", default_value = "api-key")]
        kind: String,
        /// oauth2: the authorization server's token endpoint.
        #[arg(long, default_value = "")]
        token_url: String,
        /// oauth2: the client id.
        #[arg(long, default_value = "")]
        client_id: String,
        /// oauth2: a scope to ask for; repeatable.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// oauth2: the audience to ask for.
        #[arg(long, default_value = "")]
        audience: String,
        /// mtls: the client certificate chain (PEM file).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// api-key: send the secret as this query parameter instead of a header.
        #[arg(long, default_value = "")]
        query_param: String,
        /// basic: the user name (the secret is the password).
        #[arg(long, default_value = "")]
        username: String,
        /// RFC 3339 instant after which the credential is refused.
        #[arg(long)]
        expires_at: Option<String>,
    },
}

pub fn tool_json(t: &pb::Tool) -> Value {
    json!({
        "id": t.id, "name": t.name, "version": t.version, "category": t.category,
        "description": t.description, "capabilities": t.capabilities, "endpoint": t.endpoint,
        "enabled": t.enabled,
    })
}

async fn by_name(
    c: &mut pb::tool_registry_client::ToolRegistryClient<Authed>,
    name: &str,
) -> Result<pb::Tool, Failure> {
    Ok(c.get_tool(pb::GetToolRequest {
        key: Some(pb::get_tool_request::Key::Name(name.to_owned())),
        version: 0,
    })
    .await?
    .into_inner()
    .tool
    .unwrap_or_default())
}

pub async fn run(cmd: ToolsCmd, ch: Authed, out: Output) -> Result<(), Failure> {
    let mut c = pb::tool_registry_client::ToolRegistryClient::new(ch);
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
        ToolsCmd::ImportMcp {
            endpoint,
            category,
            provider,
            prefix,
            credential_header,
            credential_from_file,
        } => {
            let credential_secret = match &credential_from_file {
                Some(f) => read_secret(f)?,
                None => String::new(),
            };
            let r = c
                .import_mcp_tools(pb::ImportMcpToolsRequest {
                    endpoint,
                    category,
                    provider,
                    name_prefix: prefix,
                    credential_header,
                    credential_secret,
                })
                .await?
                .into_inner();
            let v = json!({
                "created": r.created.iter().map(|t| &t.name).collect::<Vec<_>>(),
                "updated": r.updated.iter().map(|t| &t.name).collect::<Vec<_>>(),
                "unchanged": r.unchanged,
                "pending": r.pending.iter().map(|c| json!({"tool": c.tool_name, "change_id": c.id})).collect::<Vec<_>>(),
                "skipped": r.skipped.iter().map(|s| json!({"name": s.remote_name, "reason": s.reason})).collect::<Vec<_>>(),
            });
            print(out, &v, &r.created.len().to_string(), || {
                for t in &r.created {
                    println!("created   {}", t.name);
                }
                for t in &r.updated {
                    println!("updated   {} (v{})", t.name, t.version);
                }
                for n in &r.unchanged {
                    println!("unchanged {n}");
                }
                for p in &r.pending {
                    println!(
                        "pending   {} (change {}; toolctl review show {})",
                        p.tool_name, p.id, p.id
                    );
                }
                for s in &r.skipped {
                    println!("skipped   {}: {}", s.remote_name, s.reason);
                }
            });
        }
        ToolsCmd::ImportOpenapi {
            source,
            base_url,
            category,
            provider,
            prefix,
            side_effects,
        } => {
            let r = import_openapi(&mut c, &source, base_url, category, provider, prefix, &side_effects).await?;
            let v = json!({
                "created": r.created.iter().map(|t| &t.name).collect::<Vec<_>>(),
                "updated": r.updated.iter().map(|t| &t.name).collect::<Vec<_>>(),
                "unchanged": r.unchanged,
                "skipped": r.skipped.iter().map(|s| json!({
                    "method": s.method, "path": s.path, "operation_id": s.operation_id, "reason": s.reason,
                })).collect::<Vec<_>>(),
                "credentials": r.credentials.iter().map(|c| json!({
                    "tool": c.tool_name, "scheme": c.scheme,
                    "auth_type": pb::AuthType::try_from(c.auth_type).map(|a| a.as_str_name()).unwrap_or("AUTH_TYPE_UNSPECIFIED"),
                    "header_name": c.header_name, "query_param": c.query_param,
                    "token_url": c.token_url, "scopes": c.scopes,
                })).collect::<Vec<_>>(),
            });
            print(out, &v, &r.created.len().to_string(), || {
                for t in &r.created {
                    println!("created   {}", t.name);
                }
                for t in &r.updated {
                    println!("updated   {} (v{})", t.name, t.version);
                }
                for n in &r.unchanged {
                    println!("unchanged {n}");
                }
                for s in &r.skipped {
                    println!("skipped   {} {} ({}): {}", s.method, s.path, s.operation_id, s.reason);
                }
                for c in &r.credentials {
                    println!(
                        "needs     {} credential for {} (scheme {})",
                        pb::AuthType::try_from(c.auth_type)
                            .map(|a| a.as_str_name())
                            .unwrap_or("?"),
                        c.tool_name,
                        c.scheme
                    );
                }
            });
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
                println!(
                    "{:<28} {:<8} {:<8} {:<18} CAPABILITIES",
                    "NAME", "VERSION", "ENABLED", "CATEGORY"
                );
                for t in &all {
                    println!(
                        "{:<28} {:<8} {:<8} {:<18} {}",
                        t.name,
                        t.version,
                        t.enabled,
                        t.category,
                        t.capabilities.join(",")
                    );
                }
            });
        }
        ToolsCmd::Get { name } => {
            let t = by_name(&mut c, &name).await?;
            let v = tool_json(&t);
            print(out, &v, &t.id, || {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
            });
        }
        ToolsCmd::Update { file } => {
            let tool = tool_file::ToolFile::read(&file)?.into_pb()?;
            let r = c
                .update_tool(pb::UpdateToolRequest { tool: Some(tool) })
                .await?
                .into_inner();
            let t = r.tool.unwrap_or_default();
            let mut v = tool_json(&t);
            if let Some(p) = &r.pending {
                v["pending_change"] = json!(p.id);
            }
            print(out, &v, &t.version.to_string(), || match &r.pending {
                Some(p) => println!(
                    "{} stays at v{}: the definition change waits for review (toolctl review show {})",
                    t.name, t.version, p.id
                ),
                None => println!("updated {} to v{}", t.name, t.version),
            });
        }
        ToolsCmd::Enable { name } => set_enabled(&mut c, &name, true, out).await?,
        ToolsCmd::Disable { name } => set_enabled(&mut c, &name, false, out).await?,
        ToolsCmd::Delete { name } => {
            let t = by_name(&mut c, &name).await?;
            c.delete_tool(pb::DeleteToolRequest { tool_id: t.id.clone() }).await?;
            print(out, &json!({"deleted": t.id}), &t.id, || println!("deleted {name}"));
        }
        ToolsCmd::DeleteCredential { name } => {
            let t = by_name(&mut c, &name).await?;
            c.delete_credential(pb::DeleteCredentialRequest { tool_id: t.id.clone() })
                .await?;
            print(out, &json!({"tool_id": t.id}), &t.id, || {
                println!("credential of {name} deleted")
            });
        }
        ToolsCmd::SetCredential {
            name,
            from_file,
            header,
            kind,
            token_url,
            client_id,
            scopes,
            audience,
            cert,
            query_param,
            username,
            expires_at,
        } => {
            let auth_type = match kind.as_str() {
                "api-key" => pb::AuthType::ApiKey,
                "basic" => pb::AuthType::HttpBasic,
                "oauth2" => pb::AuthType::Oauth2,
                "mtls" => pb::AuthType::MutualTls,
                other => {
                    return Err(Failure::Usage(anyhow::anyhow!(
                        "--type {other:?}: api-key, basic, oauth2 or mtls"
                    )));
                }
            };
            let oauth2 = (auth_type == pb::AuthType::Oauth2).then_some(pb::OAuth2ClientCredentials {
                token_url,
                client_id,
                scopes,
                audience,
            });
            let client_certificate_pem = match cert {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|e| Failure::Usage(anyhow::anyhow!("cannot read {}: {e}", path.display())))?,
                None => String::new(),
            };
            let expires_at = expires_at
                .map(|s| {
                    chrono::DateTime::parse_from_rfc3339(&s)
                        .map(|t| prost_types::Timestamp {
                            seconds: t.timestamp(),
                            nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
                        })
                        .map_err(|e| Failure::Usage(anyhow::anyhow!("--expires-at {s:?}: {e}")))
                })
                .transpose()?;
            let secret = read_secret(&from_file)?;
            let t = by_name(&mut c, &name).await?;
            c.set_credential(pb::SetCredentialRequest {
                tool_id: t.id.clone(),
                auth_type: auth_type as i32,
                header_name: header,
                secret,
                query_param,
                username,
                expires_at,
                oauth2,
                client_certificate_pem,
            })
            .await?;
            print(out, &json!({"tool_id": t.id}), &t.id, || {
                println!("credential sealed for {name} (never shown again)")
            });
        }
    }
    Ok(())
}

/// A secret from a file ("-" for stdin), trimmed; never from a flag.
fn read_secret(from_file: &std::path::Path) -> Result<String, Failure> {
    let mut secret = String::new();
    if from_file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut secret)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("cannot read the secret from stdin: {e}")))?;
    } else {
        secret = std::fs::read_to_string(from_file)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("cannot read {}: {e}", from_file.display())))?;
    }
    let secret = secret.trim().to_owned();
    if secret.is_empty() {
        return Err(Failure::Usage(anyhow::anyhow!("the secret is empty")));
    }
    Ok(secret)
}

async fn set_enabled(
    c: &mut pb::tool_registry_client::ToolRegistryClient<Authed>,
    name: &str,
    enabled: bool,
    out: Output,
) -> Result<(), Failure> {
    let t = by_name(c, name).await?;
    let t = c
        .set_tool_enabled(pb::SetToolEnabledRequest { tool_id: t.id, enabled })
        .await?
        .into_inner()
        .tool
        .unwrap_or_default();
    print(out, &tool_json(&t), &t.enabled.to_string(), || {
        println!("{} {}", if t.enabled { "enabled" } else { "disabled" }, t.name)
    });
    Ok(())
}

/// Reads the document (file, stdin or URL) and imports it. A document fetched by URL
/// whose servers are relative or absent is served from that URL's origin.
async fn import_openapi(
    c: &mut pb::tool_registry_client::ToolRegistryClient<Authed>,
    source: &str,
    mut base_url: String,
    category: String,
    provider: String,
    name_prefix: String,
    side_effects: &[String],
) -> Result<pb::ImportOpenApiResponse, Failure> {
    let is_url = source.starts_with("http://") || source.starts_with("https://");
    let document = if is_url {
        crate::fetch::get_text(source).await.map_err(Failure::Unreachable)?
    } else if source == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("cannot read the document from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(source).map_err(|e| Failure::Usage(anyhow::anyhow!("cannot read {source}: {e}")))?
    };
    if base_url.is_empty() && is_url && !has_absolute_server(&document) {
        let uri: http::Uri = source
            .parse()
            .map_err(|e| Failure::Usage(anyhow::anyhow!("{source:?}: {e}")))?;
        if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
            base_url = format!("{scheme}://{authority}");
        }
    }
    let mut effects = std::collections::HashMap::new();
    for s in side_effects {
        let (op, v) = s
            .split_once('=')
            .ok_or_else(|| Failure::Usage(anyhow::anyhow!("--side-effects {s:?}: OPERATION_ID=none|read|write")))?;
        let v = match v {
            "none" => pb::SideEffects::None,
            "read" => pb::SideEffects::Read,
            "write" => pb::SideEffects::Write,
            _ => {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "--side-effects {s:?}: none, read or write"
                )));
            }
        };
        effects.insert(op.to_owned(), v as i32);
    }
    Ok(c.import_open_api(pb::ImportOpenApiRequest {
        document,
        base_url,
        category,
        provider,
        name_prefix,
        side_effects: effects,
    })
    .await?
    .into_inner())
}

/// Whether the document's first server is an absolute URL (JSON or YAML).
fn has_absolute_server(document: &str) -> bool {
    let doc: Option<Value> = serde_json::from_str(document)
        .ok()
        .or_else(|| serde_norway::from_str(document).ok());
    doc.as_ref()
        .and_then(|d| d.pointer("/servers/0/url"))
        .and_then(Value::as_str)
        .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"))
}
