//! `make eval-learning`: does selection learn which tool works? 50 tools in 5
//! capability groups, each with a hidden success rate and latency, served by a real
//! HTTP server; agents pick a tool for each task with `SelectTool` (Thompson sampling
//! on) and call it through a real sidecar, whose outcome stream is all the control
//! plane learns from. Mid-run the best tool of group 0 turns bad.
//!
//! `--replicas N` (`make eval-learning REPLICAS=N`): N control plane replicas on one
//! throwaway PostgreSQL database, a sidecar on each; workers select on one replica and
//! call through another's sidecar, so what each replica learned must be the fleet's.
//! `--postgres`: on PostgreSQL even with one replica.
//!
//! Prints the share of tasks that went to their group's best tool per 500 tasks, then
//! `learning best_share_final=<pct> regret=<x> recovered_after_drop=<tasks>`.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use serde_json::json;
use tokio::sync::Mutex;
use toolplane_core::json::json_to_struct;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, channel, executor, http_tool};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane_with, sidecar_with, spool_dir};

const GROUPS: [&str; 5] = ["weather", "search", "translate", "finance", "maps"];
const PER_GROUP: usize = 10;
/// Hidden success rates within a group (shuffled per group).
const RATES: [u32; PER_GROUP] = [950, 850, 650, 550, 450, 400, 350, 300, 250, 200];
const TASKS: usize = 5000;
const DROP_AT: usize = 2500;
const WORKERS: usize = 6;

/// Answers `/sim/<i>` with success at tool i's hidden rate (per mille), after its latency.
async fn sim_server(rates: Arc<Vec<AtomicU32>>, latency_ms: Arc<Vec<u64>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (rates, latency_ms) = (rates.clone(), latency_ms.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (rates, latency_ms) = (rates.clone(), latency_ms.clone());
                    async move {
                        let i: usize = req.uri().path().trim_start_matches("/sim/").parse().unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(latency_ms[i])).await;
                        let ok = rand::rng().random_range(0..1000) < rates[i].load(Ordering::Relaxed);
                        let (status, body) = if ok {
                            (200, r#"{"words": 1}"#)
                        } else {
                            (500, r#"{"error": "simulated failure"}"#)
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[derive(Default)]
struct Tally {
    /// Per task, in order: whether it went to its group's best tool, and the regret.
    outcomes: Vec<(usize, bool, f64)>,
    recovered_after: Option<usize>,
    group0_after_drop: Vec<bool>,
}

#[tokio::main]
async fn main() {
    let mut rng = rand::rng();
    let mut rates_permille = Vec::new();
    for _ in GROUPS {
        let mut r = RATES.to_vec();
        for i in (1..r.len()).rev() {
            r.swap(i, rng.random_range(0..=i));
        }
        rates_permille.extend(r);
    }
    let rates: Arc<Vec<AtomicU32>> = Arc::new(rates_permille.iter().map(|r| AtomicU32::new(*r)).collect());
    let latency: Arc<Vec<u64>> = Arc::new((0..GROUPS.len() * PER_GROUP).map(|_| rng.random_range(1..6)).collect());
    let sim = sim_server(rates.clone(), latency).await;

    let args: Vec<String> = std::env::args().collect();
    let replicas: usize = args
        .iter()
        .position(|a| a == "--replicas")
        .and_then(|i| args.get(i + 1))
        .map_or(1, |n| n.parse().unwrap());
    let db = if replicas > 1 || args.iter().any(|a| a == "--postgres") {
        Some(TestDb::create().await)
    } else {
        None
    };
    let mut cps = Vec::new();
    for _ in 0..replicas.max(1) {
        let env = [("TOOLPLANE_SELECTION_EXPLORATION", "thompson")];
        cps.push(control_plane_with(db.as_ref().map(|d| d.url.as_str()), &env).await);
    }
    println!("learning replicas={} postgres={}", cps.len(), db.is_some());
    let mut admin = Admin::connect(&cps[0].url(), ADMIN_TOKEN).await;
    let mut ids = Vec::new();
    for (g, group) in GROUPS.iter().enumerate() {
        for k in 0..PER_GROUP {
            let i = g * PER_GROUP + k;
            let mut t = http_tool(&format!("{group}_tool_{k}"), &format!("http://{sim}/sim/{i}"));
            t.description = format!("Handles {group} tasks");
            t.capabilities = vec![(*group).to_owned()];
            t.idempotent = false;
            ids.push(admin.register(t).await.unwrap().id);
        }
    }
    let mut agents = Vec::new();
    for a in 0..3 {
        let agent = admin.agent(&format!("sim-agent-{a}")).await;
        for id in &ids {
            admin.grant_full(&agent.id, id).await;
        }
        agents.push(admin.token(pb::Role::Agent, &agent.id).await);
    }
    // Failing tools must keep being called (the breaker would hide them from learning).
    let mut sidecars = Vec::new();
    for cp in &cps {
        let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
        sidecars.push(
            sidecar_with(
                cp,
                &sidecar_token,
                &spool_dir(),
                &[("TOOLPLANE_BREAKER_FAILURES", "1000000")],
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let best_of = |group: usize| -> usize {
        (0..PER_GROUP)
            .map(|k| group * PER_GROUP + k)
            .max_by_key(|i| rates[*i].load(Ordering::Relaxed))
            .unwrap()
    };
    let original_best0 = best_of(0);
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let token = agents[w % agents.len()].clone();
        // With replicas, select on one and call through the next one's sidecar.
        let (cp_url, sc_url) = (cps[w % cps.len()].url(), sidecars[(w + 1) % sidecars.len()].url());
        let (next, tally, rates, ids) = (next.clone(), tally.clone(), rates.clone(), ids.clone());
        workers.push(tokio::spawn(async move {
            let mut select = pb::tool_selector_client::ToolSelectorClient::new(channel(&cp_url, Some(&token)).await);
            let ex = executor(&sc_url, Some(&token)).await;
            loop {
                let task = next.fetch_add(1, Ordering::SeqCst);
                if task >= TASKS {
                    return;
                }
                if task == DROP_AT {
                    rates[original_best0].store(100, Ordering::SeqCst);
                }
                let group = task % GROUPS.len();
                let r = select
                    .select_tool(pb::SelectToolRequest {
                        task_description: format!("a {} task", GROUPS[group]),
                        required_capabilities: vec![GROUPS[group].to_owned()],
                        task_category: GROUPS[group].to_owned(),
                        max_alternatives: 1,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let chosen_id = r.primary.unwrap().tool.unwrap().id;
                let chosen = ids.iter().position(|i| *i == chosen_id).unwrap();
                ex.clone()
                    .invoke(pb::InvokeRequest {
                        tool: Some(pb::invoke_request::Tool::ToolId(chosen_id)),
                        parameters: json_to_struct(&json!({"text": "sim"})),
                        task_id: format!("task-{task}"),
                        task_category: GROUPS[group].to_owned(),
                        selection_id: r.selection_id.clone(),
                    })
                    .await
                    .unwrap();
                let best = (0..PER_GROUP)
                    .map(|k| group * PER_GROUP + k)
                    .max_by_key(|i| rates[*i].load(Ordering::Relaxed))
                    .unwrap();
                let regret = f64::from(rates[best].load(Ordering::Relaxed)) / 1000.0
                    - f64::from(rates[chosen].load(Ordering::Relaxed)) / 1000.0;
                let mut t = tally.lock().await;
                t.outcomes.push((task, chosen == best, regret));
                if group == 0 && task >= DROP_AT {
                    t.group0_after_drop.push(chosen == best);
                    let n = t.group0_after_drop.len();
                    if t.recovered_after.is_none()
                        && n >= 10
                        && t.group0_after_drop[n - 10..].iter().filter(|b| **b).count() >= 8
                    {
                        t.recovered_after = Some(task - DROP_AT);
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let mut t = tally.lock().await;
    t.outcomes.sort_by_key(|o| o.0);
    let mut regret = 0.0;
    let mut last_share = 0.0;
    for chunk in t.outcomes.chunks(500) {
        let share = 100.0 * chunk.iter().filter(|o| o.1).count() as f64 / chunk.len() as f64;
        regret += chunk.iter().map(|o| o.2).sum::<f64>();
        println!(
            "learning tasks={}-{} best_share={share:.1}",
            chunk[0].0,
            chunk[chunk.len() - 1].0
        );
        last_share = share;
    }
    let recovered = t.recovered_after.map_or("never".to_owned(), |n| n.to_string());
    println!("learning best_share_final={last_share:.1} regret={regret:.1} recovered_after_drop={recovered}");
}
