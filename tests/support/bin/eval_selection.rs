//! `make eval-selection`: registers every tool of a catalog in a real control plane,
//! grants them to one agent, asks `SelectTool` for every query (as that agent, over
//! gRPC) and prints `n=<queries> hit@1=<pct> recall@5=<pct> ndcg@5=<pct>`.
//!
//! History mode (`--history FILE`, `make eval-history`): first evaluates the queries
//! without any history, then feeds every history query as a past successful task of
//! its gold tools through the real path — `SelectTool` for the task, then `Invoke` of
//! each gold tool with that selection's id through a real sidecar against a real HTTP
//! tool server — waits until the control plane has stored every call, and evaluates
//! again. `--history-tools F` keeps history for only a seeded random fraction F of the
//! tools. Besides the usual line it prints `with_history` and `without_history`
//! (queries whose gold tools all have / all lack history) and the same subsets before
//! any history was fed (`*_before`).
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
use toolplane_tests::grpc::{Admin, channel, executor};
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane, control_plane_with, sidecar};
use toolplane_tests::tool_server::ToolServer;

struct Args {
    tools: PathBuf,
    queries: PathBuf,
    limit: usize,
    history: Option<PathBuf>,
    history_tools: f64,
    seed: u64,
    /// `minilm`: the control plane runs the embedding model from this folder.
    embeddings: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        tools: PathBuf::new(),
        queries: PathBuf::new(),
        limit: usize::MAX,
        history: None,
        history_tools: 1.0,
        seed: 7,
        embeddings: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--tools" => a.tools = value.into(),
            "--queries" => a.queries = value.into(),
            "--limit" => a.limit = value.parse().expect("--limit N"),
            "--history" => a.history = Some(value.into()),
            "--history-tools" => a.history_tools = value.parse().expect("--history-tools FRACTION"),
            "--seed" => a.seed = value.parse().expect("--seed N"),
            "--embeddings-dir" => a.embeddings = Some(value),
            other => panic!(
                "unknown flag {other}; usage: --tools FILE --queries FILE [--limit N] [--history FILE \
                 [--history-tools FRACTION] [--seed N]] [--embeddings-dir DIR]"
            ),
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

fn tool_pb(t: &Value, name: String, schema: Value, endpoint: &str) -> pb::Tool {
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
        endpoint: endpoint.to_owned(),
        protocol: pb::ToolProtocol::Http as i32,
        enabled: true,
        side_effects: pb::SideEffects::Read as i32,
        ..Default::default()
    }
}

/// The schema without its top-level `required`: history calls send `{}` (the text
/// selection reads — property names and descriptions — is unchanged).
fn optional(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(m) = s.as_object_mut() {
        m.remove("required");
    }
    s
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

type Ranked = Vec<(Vec<String>, HashSet<String>)>;

/// Asks `SelectTool` for every query (8 at a time); the top five and the gold set of each.
async fn rank(
    selector: &pb::tool_selector_client::ToolSelectorClient<toolplane_tests::grpc::Authed>,
    queries: &[Value],
    ids: &Arc<HashMap<String, String>>,
) -> Ranked {
    let mut tasks = Vec::new();
    for chunk in queries.chunks(queries.len().div_ceil(8).max(1)) {
        let (chunk, mut sel, ids) = (chunk.to_vec(), selector.clone(), ids.clone());
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
                out.push((ranked, gold_of(&q)));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn gold_of(q: &Value) -> HashSet<String> {
    q["gold_tool_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect()
}

/// (n, hit@1, recall@5, ndcg@5) in percent over the queries `keep` selects.
fn metrics(ranked: &Ranked, keep: impl Fn(&HashSet<String>) -> bool) -> (usize, f64, f64, f64) {
    let (mut n, mut hit1, mut recall5, mut ndcg5) = (0usize, 0.0, 0.0, 0.0);
    for (ranked, gold) in ranked.iter().filter(|(_, g)| keep(g)) {
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
    let pct = |x: f64| 100.0 * x / n.max(1) as f64;
    (n, pct(hit1), pct(recall5), pct(ndcg5))
}

/// Feeds every history query as a past successful task of its kept gold tools:
/// `SelectTool`, then `Invoke` of each gold tool with the selection's id. Returns the
/// calls that succeeded and the tools that got history.
async fn feed_history(
    selector: &pb::tool_selector_client::ToolSelectorClient<toolplane_tests::grpc::Authed>,
    executor: &pb::executor_client::ExecutorClient<toolplane_tests::grpc::Authed>,
    history: &[Value],
    registry_ids: &Arc<HashMap<String, String>>,
    kept: &Arc<HashSet<String>>,
) -> (usize, usize, HashSet<String>) {
    let mut tasks = Vec::new();
    for chunk in history.chunks(history.len().div_ceil(8).max(1)) {
        let (chunk, mut sel, mut ex) = (chunk.to_vec(), selector.clone(), executor.clone());
        let (ids, kept) = (registry_ids.clone(), kept.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut with) = (0usize, 0usize, HashSet::new());
            for q in chunk {
                let gold: Vec<String> = gold_of(&q).into_iter().filter(|g| kept.contains(g)).collect();
                if gold.is_empty() {
                    continue;
                }
                let selection = sel
                    .select_tool(pb::SelectToolRequest {
                        task_description: q["query"].as_str().unwrap_or_default().to_owned(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                for g in gold {
                    let Some(id) = ids.get(&g) else { continue };
                    let r = ex
                        .invoke(pb::InvokeRequest {
                            tool: Some(pb::invoke_request::Tool::ToolId(id.clone())),
                            parameters: json_to_struct(&json!({})),
                            selection_id: selection.selection_id.clone(),
                            ..Default::default()
                        })
                        .await;
                    match r.map(|r| r.into_inner().result.unwrap_or_default()) {
                        Ok(r) if r.status == pb::ToolExecutionStatus::Success as i32 => {
                            ok += 1;
                            with.insert(g);
                        }
                        Ok(r) => {
                            failed += 1;
                            eprintln!("history call of {g} failed: {}", r.error);
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("history call of {g} refused: {}", e.message());
                        }
                    }
                }
            }
            (ok, failed, with)
        }));
    }
    let (mut ok, mut failed, mut with) = (0, 0, HashSet::new());
    for t in tasks {
        let (o, f, w) = t.await.unwrap();
        ok += o;
        failed += f;
        with.extend(w);
    }
    (ok, failed, with)
}

/// Waits until the control plane has stored `expected` invocations (task memory
/// learns in the same step).
async fn wait_stored(cp_url: &str, agent_id: &str, expected: usize) {
    let mut audit = pb::audit_client::AuditClient::new(channel(cp_url, Some(ADMIN_TOKEN)).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let rows = audit
            .get_usage_statistics(pb::GetUsageStatisticsRequest {
                agent_id: agent_id.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .rows;
        let stored: u64 = rows.iter().map(|r| r.invocations).sum();
        if stored as usize >= expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the control plane stored {stored} of {expected} history calls"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn line(label: &str, m: (usize, f64, f64, f64)) {
    println!(
        "{label}n={} hit@1={:.2} recall@5={:.2} ndcg@5={:.2}",
        m.0, m.1, m.2, m.3
    );
}

#[tokio::main]
async fn main() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let a = args();
    let tools = jsonl(&a.tools);
    let queries: Vec<Value> = jsonl(&a.queries).into_iter().take(a.limit).collect();
    let history: Option<Vec<Value>> = a.history.as_ref().map(jsonl);
    let tool_server = ToolServer::start().await;
    let endpoint = tool_server.url("/echo");
    let cp = match &a.embeddings {
        Some(dir) => {
            control_plane_with(
                None,
                &[("TOOLPLANE_EMBEDDINGS", "minilm"), ("TOOLPLANE_EMBEDDINGS_DIR", dir)],
            )
            .await
        }
        None => control_plane(None).await,
    };
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("eval-agent").await;
    let mut taken = HashSet::new();
    let mut by_registry_id: HashMap<String, String> = HashMap::new();
    for t in &tools {
        let name = slug(t["name"].as_str().unwrap_or("tool"), &mut taken);
        let schema = match &t["input_schema"] {
            Value::Object(_) => optional(&t["input_schema"]),
            _ => json!({"type": "object"}),
        };
        let registered = match admin
            .register(tool_pb(t, name.clone(), schema.clone(), &endpoint))
            .await
        {
            Ok(r) => r,
            Err(_) => admin
                .register(tool_pb(t, name, simplified(&schema), &endpoint))
                .await
                .unwrap(),
        };
        admin.grant_full(&agent.id, &registered.id).await;
        by_registry_id.insert(registered.id, t["id"].as_str().unwrap().to_owned());
    }
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let selector = pb::tool_selector_client::ToolSelectorClient::new(channel(&cp.url(), Some(&token)).await);
    let by_registry_id = Arc::new(by_registry_id);
    let Some(history) = history else {
        line("", metrics(&rank(&selector, &queries, &by_registry_id).await, |_| true));
        return;
    };

    let before = rank(&selector, &queries, &by_registry_id).await;
    let mut all_tools: Vec<String> = by_registry_id.values().cloned().collect();
    all_tools.sort();
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    all_tools.shuffle(&mut rng);
    let keep = ((all_tools.len() as f64) * a.history_tools.clamp(0.0, 1.0)).round() as usize;
    let kept: Arc<HashSet<String>> = Arc::new(all_tools.into_iter().take(keep).collect());
    let _ = rng.random::<u32>();

    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar(&cp, &sidecar_token).await;
    let ex = executor(&sc.url(), Some(&token)).await;
    let eval_to_registry: Arc<HashMap<String, String>> =
        Arc::new(by_registry_id.iter().map(|(r, e)| (e.clone(), r.clone())).collect());
    // The sidecar serves once its first snapshot arrived.
    let probe = by_registry_id.keys().next().unwrap().clone();
    let mut warmup = 0;
    for _ in 0..300 {
        let r = ex
            .clone()
            .invoke(pb::InvokeRequest {
                tool: Some(pb::invoke_request::Tool::ToolId(probe.clone())),
                parameters: json_to_struct(&json!({})),
                ..Default::default()
            })
            .await;
        if !matches!(&r, Err(e) if e.code() == tonic::Code::Unavailable) {
            let stored = r.is_ok_and(|r| {
                r.into_inner()
                    .result
                    .is_some_and(|r| r.status == pb::ToolExecutionStatus::Success as i32)
            });
            warmup = usize::from(stored);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let started = std::time::Instant::now();
    let (ok, failed, with) = feed_history(&selector, &ex, &history, &eval_to_registry, &kept).await;
    wait_stored(&cp.url(), &agent.id, ok + warmup).await;
    println!(
        "history queries={} calls={ok} failed={failed} tools_with_history={} of {} seconds={:.1}",
        history.len(),
        with.len(),
        by_registry_id.len(),
        started.elapsed().as_secs_f64()
    );
    let after = rank(&selector, &queries, &by_registry_id).await;
    let all_with = |g: &HashSet<String>| g.iter().all(|t| with.contains(t));
    let none_with = |g: &HashSet<String>| g.iter().all(|t| !with.contains(t));
    line("", metrics(&after, |_| true));
    line("with_history ", metrics(&after, all_with));
    line("without_history ", metrics(&after, none_with));
    line("before_history ", metrics(&before, |_| true));
    line("with_history_before ", metrics(&before, all_with));
    line("without_history_before ", metrics(&before, none_with));
    drop(sc);
}
