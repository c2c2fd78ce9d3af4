//! `toolctl fallbacks`: set, show and delete a tool's fallback strategy (tools by name).

use clap::Subcommand;
use serde_json::{Value, json};
use toolplane_proto::v1 as pb;

use crate::{Authed, Failure, Output, print};

type Client = pb::tool_registry_client::ToolRegistryClient<Authed>;

#[derive(Subcommand)]
pub enum FallbacksCmd {
    /// Fall back from a tool to others, in order.
    Set {
        tool: String,
        /// Fallback tools, in order (repeat the flag).
        #[arg(long = "fallback")]
        fallbacks: Vec<String>,
        /// Attempts on each tool, the first included (0: the default, 3).
        #[arg(long, default_value_t = 0)]
        max_attempts: u32,
    },
    Get {
        tool: String,
    },
    /// The tool goes back to no fallbacks and the default retries.
    Delete {
        tool: String,
    },
}

async fn id_of(c: &mut Client, name: &str) -> Result<String, Failure> {
    Ok(c.get_tool(pb::GetToolRequest {
        key: Some(pb::get_tool_request::Key::Name(name.to_owned())),
        version: 0,
    })
    .await?
    .into_inner()
    .tool
    .unwrap_or_default()
    .id)
}

fn strategy_json(s: &pb::FallbackStrategy) -> Value {
    let mode = pb::DegradationMode::try_from(s.mode).map_or("UNKNOWN", |m| m.as_str_name());
    json!({"tool_id": s.tool_id, "fallback_tool_ids": s.fallback_tool_ids, "max_attempts": s.max_attempts,
           "initial_backoff_ms": s.initial_backoff_ms, "max_backoff_ms": s.max_backoff_ms, "mode": mode})
}

pub async fn run(cmd: FallbacksCmd, ch: Authed, out: Output) -> Result<(), Failure> {
    let mut c = Client::new(ch);
    match cmd {
        FallbacksCmd::Set {
            tool,
            fallbacks,
            max_attempts,
        } => {
            let tool_id = id_of(&mut c, &tool).await?;
            let mut fallback_tool_ids = Vec::new();
            for f in &fallbacks {
                fallback_tool_ids.push(id_of(&mut c, f).await?);
            }
            let s = c
                .set_fallback_strategy(pb::SetFallbackStrategyRequest {
                    strategy: Some(pb::FallbackStrategy {
                        tool_id,
                        fallback_tool_ids,
                        max_attempts,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .strategy
                .unwrap_or_default();
            print(out, &strategy_json(&s), &s.tool_id, || {
                println!("{tool} falls back to {}", fallbacks.join(", "))
            });
        }
        FallbacksCmd::Get { tool } => {
            let tool_id = id_of(&mut c, &tool).await?;
            let s = c
                .get_fallback_strategy(pb::GetFallbackStrategyRequest { tool_id })
                .await?
                .into_inner()
                .strategy
                .unwrap_or_default();
            let v = strategy_json(&s);
            print(out, &v, &s.tool_id, || {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
            });
        }
        FallbacksCmd::Delete { tool } => {
            let tool_id = id_of(&mut c, &tool).await?;
            c.delete_fallback_strategy(pb::DeleteFallbackStrategyRequest {
                tool_id: tool_id.clone(),
            })
            .await?;
            print(out, &json!({"deleted": tool_id}), &tool_id, || {
                println!("deleted the fallback strategy of {tool}")
            });
        }
    }
    Ok(())
}
