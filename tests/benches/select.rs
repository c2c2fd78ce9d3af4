//! `make bench-select`: `SelectTool` latency with 1k, 10k and 100k registered tools, in
//! process (as an agent with a grant on every tool, so permission checks run) and over
//! gRPC (the real control plane, as an admin). Tools and queries come from the public
//! tool-retrieval data, the catalog repeated with varied names to reach each size.
//!
//! One line per case: `select tools=<n> mode=<inproc|grpc> p50_us=<x> p99_us=<y>`.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::Value;
use toolplane_control_plane::selection::{Query, Selector};
use toolplane_core::model::{PermissionType, Snapshot, Tool};
use toolplane_core::testutil;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, channel, http_tool};
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/tool-retrieval");
const QUERIES: usize = 2000;
const GRPC_QUERIES: usize = 1000;

fn jsonl(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `n` tools: the datasets' catalogs, repeated, names and a word varied per copy.
fn catalog(n: usize) -> Vec<(String, String, String)> {
    let base: Vec<Value> = ["toollens", "metatool"]
        .iter()
        .flat_map(|d| jsonl(&format!("{DATA}/{d}/tools.jsonl")))
        .collect();
    (0..n)
        .map(|i| {
            let t = &base[i % base.len()];
            let copy = i / base.len();
            let name = format!(
                "t{i}_{}",
                t["name"]
                    .as_str()
                    .unwrap_or("tool")
                    .to_lowercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            );
            let name: String = name.chars().take(100).collect();
            let description = format!("{} (variant {copy})", t["description"].as_str().unwrap_or_default());
            (
                name,
                description,
                t["category"].as_str().unwrap_or("general").chars().take(100).collect(),
            )
        })
        .collect()
}

fn queries() -> Vec<String> {
    ["toollens", "metatool"]
        .iter()
        .flat_map(|d| jsonl(&format!("{DATA}/{d}/queries-dev.jsonl")))
        .map(|q| q["query"].as_str().unwrap().to_owned())
        .step_by(3)
        .take(QUERIES)
        .collect()
}

fn pct(mut v: Vec<u128>, p: f64) -> u128 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn inproc(n: usize, queries: &[String]) {
    let agent = testutil::agent("bench");
    let tools: Vec<Tool> = catalog(n)
        .into_iter()
        .map(|(name, description, category)| {
            let mut t = testutil::tool(&name);
            t.spec.description = description;
            t.spec.category = category;
            t
        })
        .collect();
    let permissions = tools
        .iter()
        .map(|t| testutil::grant(&agent, t, PermissionType::FullAccess))
        .collect();
    let snapshot = Arc::new(Snapshot {
        revision: 1,
        tools: tools.into_iter().map(Arc::new).collect(),
        permissions,
        agents: vec![agent.clone()],
        ..Default::default()
    });
    let selector = Selector::default();
    let started = Instant::now();
    let built = selector.index(snapshot);
    let build_ms = started.elapsed().as_millis();
    let mut lat = Vec::with_capacity(queries.len());
    for q in queries {
        let query = Query {
            text: q.clone(),
            alternatives: 3,
            agent: Some(agent.id),
            ..Default::default()
        };
        let t = Instant::now();
        let _ = selector.select(built.clone(), &query, Utc::now());
        lat.push(t.elapsed().as_micros());
    }
    println!(
        "select tools={n} mode=inproc p50_us={} p99_us={} index_build_ms={build_ms}",
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );
}

async fn grpc(n: usize, queries: &[String]) {
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let mut registering = Vec::new();
    for chunk in catalog(n).chunks(n.div_ceil(8)) {
        let (chunk, url) = (chunk.to_vec(), cp.url());
        registering.push(tokio::spawn(async move {
            let mut a = Admin::connect(&url, ADMIN_TOKEN).await;
            for (name, description, category) in chunk {
                let mut t = http_tool(&name, "http://127.0.0.1:9/");
                t.description = description;
                t.category = category;
                a.register(t).await.unwrap();
            }
        }));
    }
    for r in registering {
        r.await.unwrap();
    }
    let _ = admin.agent("warm").await;
    let mut s = pb::tool_selector_client::ToolSelectorClient::new(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    let req = |q: &str| pb::SelectToolRequest {
        task_description: q.to_owned(),
        max_alternatives: 3,
        ..Default::default()
    };
    // The first call builds the snapshot and the index.
    s.select_tool(req("warm up")).await.unwrap();
    let mut lat = Vec::new();
    for q in queries.iter().take(GRPC_QUERIES) {
        let t = Instant::now();
        let _ = s.select_tool(req(q)).await;
        lat.push(t.elapsed().as_micros());
    }
    println!(
        "select tools={n} mode=grpc p50_us={} p99_us={}",
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );
}

#[tokio::main]
async fn main() {
    let queries = queries();
    for n in [1_000, 10_000, 100_000] {
        inproc(n, &queries);
        grpc(n, &queries).await;
    }
}
