//! Tunes the BM25F parameters in process on both datasets at once (the defaults in
//! `selection::index` came from here): `cargo run --release -p toolplane-tests
//! --example tune_selection`.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;
use toolplane_control_plane::selection::index::{Bm25Params, FieldParams};
use toolplane_control_plane::selection::{Query, Selector};
use toolplane_core::model::{Snapshot, Tool};

fn jsonl(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

struct Data {
    snapshot: Arc<Snapshot>,
    ids: Vec<String>,
    queries: Vec<(String, HashSet<String>)>,
}

fn load(dir: &str) -> Data {
    let tools = jsonl(&format!("{dir}/tools.jsonl"));
    let mut ids = Vec::new();
    let catalog: Vec<Tool> = tools
        .iter()
        .map(|t| {
            let mut tool = toolplane_core::testutil::tool(t["name"].as_str().unwrap());
            tool.spec.description = t["description"].as_str().unwrap_or_default().to_owned();
            tool.spec.category = t["category"].as_str().unwrap_or_default().to_owned();
            tool.spec.capabilities.clear();
            tool.spec.examples.clear();
            tool.spec.input_schema = if t["input_schema"].is_object() {
                t["input_schema"].clone()
            } else {
                Value::Null
            };
            let ret: Value = t["extra"]["return_schema"]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(Value::Null);
            let props: serde_json::Map<String, Value> = ret
                .as_object()
                .map(|m| {
                    m.keys()
                        .map(|k| (k.clone(), Value::Object(Default::default())))
                        .collect()
                })
                .unwrap_or_default();
            tool.spec.output_schema = serde_json::json!({"type": "object", "properties": props});
            ids.push(t["id"].as_str().unwrap().to_owned());
            tool
        })
        .collect();
    let queries = jsonl(&format!("{dir}/queries-dev.jsonl"))
        .into_iter()
        .map(|q| {
            let gold = q["gold_tool_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().to_owned())
                .collect();
            (q["query"].as_str().unwrap().to_owned(), gold)
        })
        .collect();
    Data {
        snapshot: Arc::new(Snapshot {
            revision: 1,
            tools: catalog.into_iter().map(Arc::new).collect(),
            ..Default::default()
        }),
        ids,
        queries,
    }
}

fn eval(d: &Data, params: Bm25Params) -> (f64, f64, f64) {
    let sel = Selector::with_params(params);
    let built = sel.index(d.snapshot.clone());
    let (mut h, mut r, mut n) = (0.0, 0.0, 0.0);
    for (q, gold) in &d.queries {
        let query = Query {
            text: q.clone(),
            alternatives: 4,
            ..Default::default()
        };
        let ranked: Vec<&String> = match sel.select(built.clone(), &query, chrono::Utc::now()) {
            Ok(s) => std::iter::once(&s.primary)
                .chain(&s.alternatives)
                .map(|x| &d.ids[x.tool])
                .cloned()
                .collect::<Vec<_>>()
                .iter()
                .map(|id| d.ids.iter().find(|x| *x == id).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        if ranked.first().is_some_and(|t| gold.contains(*t)) {
            h += 1.0;
        }
        r += ranked.iter().filter(|t| gold.contains(**t)).count() as f64 / gold.len() as f64;
        let dcg: f64 = ranked
            .iter()
            .enumerate()
            .filter(|(_, t)| gold.contains(**t))
            .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
            .sum();
        let idcg: f64 = (0..gold.len().min(5)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
        n += dcg / idcg;
    }
    let k = d.queries.len() as f64 / 100.0;
    (h / k, r / k, n / k)
}

fn main() {
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/tool-retrieval");
    let tl = load(&format!("{base}/toollens"));
    let mt = load(&format!("{base}/metatool"));
    let spec = std::env::args().nth(1);
    let mut grid: Vec<Bm25Params> = Vec::new();
    if let Some(s) = spec {
        // k1,w0,b0,...,w6,b6
        let v: Vec<f32> = s.split(',').map(|x| x.parse().unwrap()).collect();
        grid.push(Bm25Params {
            k1: v[0],
            fields: std::array::from_fn(|i| FieldParams {
                weight: v[1 + 2 * i],
                b: v[2 + 2 * i],
            }),
        });
    } else {
        grid.push(Bm25Params::default());
    }
    for p in grid {
        let a = eval(&tl, p);
        let b = eval(&mt, p);
        println!(
            "{p:?}\n  toollens {:.2}/{:.2}/{:.2}  metatool {:.2}/{:.2}/{:.2}  mean ndcg {:.2}",
            a.0,
            a.1,
            a.2,
            b.0,
            b.1,
            b.2,
            (a.2 + b.2) / 2.0
        );
    }
}
