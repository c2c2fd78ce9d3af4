//! `make test-soak`: agent-controlled input must not grow the control plane without
//! bound. A real control plane on a throwaway PostgreSQL database receives 100 000
//! `SelectTool` calls from 20 agents (random task categories, many long and unique;
//! random task texts, some empty) and 100 000 invocation outcomes through the sidecar
//! sync stream (random categories again, half following a selection), which is what
//! feeds the learning maps, the recent selections and task memory. Its resident memory
//! is sampled from /proc and must stay under [`RSS_BOUND_MIB`].
//!
//! Ignored by default (about a minute or two); loopback only; bounded in count and
//! time ([`DEADLINE`]).

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::tool_selector_client::ToolSelectorClient;
use toolplane_tests::fake_sidecar::FakeSidecar;
use toolplane_tests::grpc::{Admin, channel, http_tool};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane};

const SELECTIONS: usize = 100_000;
const OUTCOMES: usize = 100_000;
const AGENTS: usize = 20;
const TOOLS: usize = 10;
const CONCURRENCY: usize = 16;
const OUTCOME_BATCH: usize = 500;
/// The control plane's resident memory must stay below this throughout. Unbounded,
/// 200 000 unique categories cost hundreds of MiB in learning maps alone; bounded,
/// what grows is capped (recent selections at 100 000 entries / 32 MiB, categories at
/// 32 per agent and 1 024 in all, task memory per tool).
const RSS_BOUND_MIB: u64 = 192;
/// Once the bounded structures are full (after the first [`STEADY_AFTER`] outcomes),
/// the rest of the outcomes may grow it at most this much.
const STEADY_GROWTH_MIB: u64 = 16;
const STEADY_AFTER: usize = 20_000;
const DEADLINE: Duration = Duration::from_secs(15 * 60);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn random_text(rng: &mut impl Rng, max: usize) -> String {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| char::from(rng.sample(Alphanumeric))).collect()
}

/// A fifth of the time one of a few real categories; else a random one, often longer
/// than the 64-character cap.
fn random_category(rng: &mut impl Rng) -> String {
    if rng.random_bool(0.2) {
        ["search", "analysis", "translation", "billing", ""][rng.random_range(0..5)].to_owned()
    } else {
        random_text(rng, 200)
    }
}

/// Samples the process's RSS; the highest seen.
#[derive(Default)]
struct Peak(std::sync::atomic::AtomicU64);

impl Peak {
    fn sample(&self, pid: u32) -> u64 {
        let now = rss_kib(pid);
        self.0.fetch_max(now, Ordering::Relaxed);
        now
    }
}

#[tokio::test]
#[ignore = "soak: `make test-soak`"]
async fn control_plane_memory_stays_bounded_under_random_categories_and_tasks() {
    tokio::time::timeout(DEADLINE, soak())
        .await
        .expect("the soak finished in time");
}

async fn soak() {
    let db = TestDb::create().await;
    let cp = control_plane(Some(&db.url)).await;
    let pid = cp.pid();
    let url = cp.url();
    let mut admin = Admin::connect(&url, ADMIN_TOKEN).await;
    let mut tools = Vec::new();
    for i in 0..TOOLS {
        let t = admin
            .register(http_tool(&format!("soak_tool_{i}"), "http://127.0.0.1:9/x"))
            .await
            .unwrap();
        tools.push(t.id);
    }
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let a = admin.agent(&format!("soak-agent-{i}")).await;
        for t in &tools {
            admin.grant_full(&a.id, t).await;
        }
        let token = admin.token(pb::Role::Agent, &a.id).await;
        agents.push((a.id, token));
    }
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let peak = Arc::new(Peak::default());
    let start_kib = peak.sample(pid);
    let started = Instant::now();

    // Selections, CONCURRENCY at a time; the ids, for the outcomes that follow them.
    let next = Arc::new(AtomicUsize::new(0));
    let selected = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let (next, selected, peak) = (next.clone(), selected.clone(), peak.clone());
        let clients: Vec<(String, ToolSelectorClient<_>)> = {
            let mut v = Vec::new();
            for (id, token) in agents.iter().skip(w % AGENTS).step_by(CONCURRENCY).take(2) {
                v.push((id.clone(), ToolSelectorClient::new(channel(&url, Some(token)).await)));
            }
            if v.is_empty() {
                let (id, token) = &agents[w % AGENTS];
                v.push((id.clone(), ToolSelectorClient::new(channel(&url, Some(token)).await)));
            }
            v
        };
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64);
            let mut clients = clients;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= SELECTIONS {
                    return;
                }
                let k = i % clients.len();
                let (agent, client) = &mut clients[k];
                let text = random_text(&mut rng, 300);
                let req = pb::SelectToolRequest {
                    task_description: text.clone(),
                    // An empty task still selects by capability.
                    required_capabilities: if text.trim().is_empty() {
                        vec!["analyze".to_owned()]
                    } else {
                        Vec::new()
                    },
                    task_category: random_category(&mut rng),
                    ..Default::default()
                };
                let r = client.select_tool(req).await.unwrap().into_inner();
                if i % 4 == 0 {
                    selected.lock().unwrap().push((agent.clone(), r.selection_id));
                }
                if i % 5000 == 0 {
                    let now = peak.sample(pid);
                    println!("selections {i:>6}: rss {} MiB", now / 1024);
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let after_selections = peak.sample(pid);
    let select_secs = started.elapsed().as_secs_f64();

    // Outcomes through the sync stream, as a sidecar reports them.
    let mut fake = FakeSidecar::connect(&url, &sidecar_token, "soak-sidecar").await;
    let selected = std::mem::take(&mut *selected.lock().unwrap());
    let mut rng = StdRng::seed_from_u64(1_000);
    let mut sent = 0;
    let mut steady_from = 0;
    while sent < OUTCOMES {
        let mut batch = Vec::with_capacity(OUTCOME_BATCH);
        for j in 0..OUTCOME_BATCH {
            let n = sent + j;
            let (agent, selection_id) = if n % 2 == 0 && !selected.is_empty() {
                selected[n % selected.len()].clone()
            } else {
                (agents[n % AGENTS].0.clone(), String::new())
            };
            let tool = tools[rng.random_range(0..TOOLS)].clone();
            let id = uuid::Uuid::now_v7().to_string();
            let now = prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp(),
                nanos: 0,
            };
            let status = if rng.random_bool(0.8) {
                pb::ToolExecutionStatus::Success
            } else {
                pb::ToolExecutionStatus::ExecutionError
            };
            batch.push(pb::SyncEvent {
                event_id: uuid::Uuid::now_v7().to_string(),
                payload: Some(pb::sync_event::Payload::Invocation(pb::InvocationRecord {
                    invocation_id: id.clone(),
                    agent_id: agent,
                    task_id: random_text(&mut rng, 40),
                    requested_tool_id: tool.clone(),
                    invoked_at: Some(now),
                    result: Some(pb::ToolResult {
                        invocation_id: id,
                        tool_id: tool,
                        tool_version: 1,
                        status: status as i32,
                        duration_ms: rng.random_range(1..500),
                        cost: "0.001".to_owned(),
                        completed_at: Some(now),
                        attempts: 1,
                        ..Default::default()
                    }),
                    sidecar_id: "soak-sidecar".to_owned(),
                    task_category: random_category(&mut rng),
                    selection_id,
                    caller_cancelled: false,
                    parameters: None,
                })),
            });
        }
        let acked = fake.send(batch).await;
        assert_eq!(acked.len(), OUTCOME_BATCH);
        sent += OUTCOME_BATCH;
        if sent % 10_000 == 0 {
            let now = peak.sample(pid);
            println!("outcomes {sent:>6}: rss {} MiB", now / 1024);
        }
        if sent == STEADY_AFTER {
            steady_from = peak.sample(pid);
        }
    }
    let end = peak.sample(pid);
    let peak_kib = peak.0.load(Ordering::Relaxed);
    println!(
        "soak: {SELECTIONS} selections in {select_secs:.1} s, {OUTCOMES} outcomes, {:.1} s in all; \
         control plane rss: start {} MiB, after selections {} MiB, at {STEADY_AFTER} outcomes {} MiB, end {} MiB, \
         peak {} MiB (bound {RSS_BOUND_MIB} MiB)",
        started.elapsed().as_secs_f64(),
        start_kib / 1024,
        after_selections / 1024,
        steady_from / 1024,
        end / 1024,
        peak_kib / 1024,
    );
    assert!(
        peak_kib / 1024 < RSS_BOUND_MIB,
        "the control plane's memory grew to {} MiB (bound {RSS_BOUND_MIB} MiB)",
        peak_kib / 1024
    );
    let growth = end.saturating_sub(steady_from) / 1024;
    assert!(
        growth <= STEADY_GROWTH_MIB,
        "{} outcomes with fresh categories grew it by {growth} MiB (bound {STEADY_GROWTH_MIB} MiB)",
        OUTCOMES - STEADY_AFTER
    );
    drop(db);
}
