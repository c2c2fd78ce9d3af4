//! `make eval-selection`: registers every tool of a catalog in a real control plane,
//! grants them to one agent, asks `SelectTool` for every query (as that agent, over
//! gRPC) and prints `n=<queries> hit@1=<pct> recall@5=<pct> ndcg@5=<pct>`.
//!
//! Formats (`../shared/data/tool-retrieval/`): tools JSONL
//! `{"id","name","description","input_schema","category","extra"?}`, queries JSONL
//! `{"id","query","gold_tool_ids":[...]}`.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use toolplane_control_plane::selection::text::words;
use toolplane_core::json::json_to_struct;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, channel};
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane};

struct Args {
    tools: PathBuf,
    queries: PathBuf,
    limit: usize,
}

fn args() -> Args {
    let mut a = Args {
        tools: PathBuf::new(),
        queries: PathBuf::new(),
        limit: usize::MAX,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--tools" => a.tools = value.into(),
            "--queries" => a.queries = value.into(),
            "--limit" => a.limit = value.parse().expect("--limit N"),
            other => panic!("unknown flag {other}; usage: --tools FILE --queries FILE [--limit N]"),
        }
    }
    assert!(
        !a.tools.as_os_str().is_empty() && !a.queries.as_os_str().is_empty(),
        "--tools and --queries are required"
    );
    a
}

fn jsonl(path: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A registry name from any display name: words kept (camelCase split), `_` between.
fn slug(name: &str, taken: &mut HashSet<String>) -> String {
    let mut s: String = words(name)
        .iter()
        .map(|w| {
            w.to_lowercase()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s = format!("t_{s}");
    }
    s.truncate(100);
    let mut unique = s.clone();
    let mut n = 1;
    while !taken.insert(unique.clone()) {
        n += 1;
        unique = format!("{s}_{n}");
    }
    unique
}

/// Keys of a ToolBench-style return description, as an output schema.
fn returns_schema(extra: &Value) -> Value {
    let parsed: Value = extra["return_schema"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    let mut props = serde_json::Map::new();
    if let Value::Object(m) = parsed {
        for k in m.keys().take(50) {
            props.insert(k.clone(), json!({}));
        }
    }
    json!({"type": "object", "properties": props})
}

fn tool_pb(t: &Value, name: String, schema: Value) -> pb::Tool {
    let description = t["description"].as_str().unwrap_or_default();
    pb::Tool {
        name,
        description: if description.is_empty() {
            t["name"].as_str().unwrap_or_default().to_owned()
        } else {
            description.chars().take(8000).collect()
        },
        category: t["category"].as_str().unwrap_or("general").chars().take(120).collect(),
        schema: Some(pb::ToolSchema {
            input_schema: json_to_struct(&schema),
            output_schema: json_to_struct(&returns_schema(&t["extra"])),
            ..Default::default()
        }),
        requirements: Some(pb::ToolRequirements {
            timeout_ms: 1000,
            ..Default::default()
        }),
        provider: "eval".to_owned(),
        endpoint: "http://127.0.0.1:9/".to_owned(),
        protocol: pb::ToolProtocol::Http as i32,
        enabled: true,
        side_effects: pb::SideEffects::Read as i32,
        ..Default::default()
    }
}

/// Parameter names and descriptions of a schema the registry refused, as a plain one.
fn simplified(schema: &Value) -> Value {
    let mut props = serde_json::Map::new();
    if let Some(m) = schema["properties"].as_object() {
        for (k, v) in m {
            let d = v["description"].as_str().unwrap_or_default();
            props.insert(k.clone(), json!({"description": d}));
        }
    }
    json!({"type": "object", "properties": props})
}

#[tokio::main]
async fn main() {
    let a = args();
    let tools = jsonl(&a.tools);
    let queries: Vec<Value> = jsonl(&a.queries).into_iter().take(a.limit).collect();
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("eval-agent").await;
    let mut taken = HashSet::new();
    let mut by_registry_id: HashMap<String, String> = HashMap::new();
    for t in &tools {
        let name = slug(t["name"].as_str().unwrap_or("tool"), &mut taken);
        let schema = match &t["input_schema"] {
            Value::Object(_) => t["input_schema"].clone(),
            _ => json!({"type": "object"}),
        };
        let registered = match admin.register(tool_pb(t, name.clone(), schema.clone())).await {
            Ok(r) => r,
            Err(_) => admin.register(tool_pb(t, name, simplified(&schema))).await.unwrap(),
        };
        admin
            .permissions
            .grant(pb::GrantRequest {
                permission: Some(pb::Permission {
                    agent_id: agent.id.clone(),
                    tool_id: registered.id.clone(),
                    r#type: pb::PermissionType::FullAccess as i32,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        by_registry_id.insert(registered.id, t["id"].as_str().unwrap().to_owned());
    }
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let selector = pb::tool_selector_client::ToolSelectorClient::new(channel(&cp.url(), Some(&token)).await);
    let by_registry_id = Arc::new(by_registry_id);
    let (mut hit1, mut recall5, mut ndcg5) = (0.0, 0.0, 0.0);
    let mut tasks = Vec::new();
    for chunk in queries.chunks(queries.len().div_ceil(8).max(1)) {
        let (chunk, mut sel, ids) = (chunk.to_vec(), selector.clone(), by_registry_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for q in chunk {
                let r = sel
                    .select_tool(pb::SelectToolRequest {
                        task_description: q["query"].as_str().unwrap_or_default().to_owned(),
                        max_alternatives: 4,
                        ..Default::default()
                    })
                    .await;
                let ranked: Vec<String> = match r {
                    Ok(r) => {
                        let r = r.into_inner();
                        r.primary
                            .into_iter()
                            .chain(r.alternatives)
                            .filter_map(|s| s.tool.and_then(|t| ids.get(&t.id).cloned()))
                            .collect()
                    }
                    Err(_) => Vec::new(),
                };
                let gold: HashSet<String> = q["gold_tool_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|g| g.as_str().map(str::to_owned))
                    .collect();
                out.push((ranked, gold));
            }
            out
        }));
    }
    let mut n = 0usize;
    for t in tasks {
        for (ranked, gold) in t.await.unwrap() {
            n += 1;
            if ranked.first().is_some_and(|t| gold.contains(t)) {
                hit1 += 1.0;
            }
            let top5 = &ranked[..ranked.len().min(5)];
            recall5 += top5.iter().filter(|t| gold.contains(*t)).count() as f64 / gold.len().max(1) as f64;
            let dcg: f64 = top5
                .iter()
                .enumerate()
                .filter(|(_, t)| gold.contains(*t))
                .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
                .sum();
            let idcg: f64 = (0..gold.len().min(5)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
            ndcg5 += if idcg > 0.0 { dcg / idcg } else { 0.0 };
        }
    }
    let pct = |x: f64| 100.0 * x / n.max(1) as f64;
    println!(
        "n={n} hit@1={:.2} recall@5={:.2} ndcg@5={:.2}",
        pct(hit1),
        pct(recall5),
        pct(ndcg5)
    );
}
