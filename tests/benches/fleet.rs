//! `make bench-fleet`: one control plane serving a fleet of sidecars (issue #22).
//!
//! The control plane (release binary, on a fresh PostgreSQL database) holds a catalog of
//! `FLEET_TOOLS` tools (default 10 000, registered by 8 concurrent admin clients), four
//! agents with grants of their own, and a "fleet" agent granted 50 tools, one of them
//! with a fallback strategy naming a tool outside the grants. For each N in
//! `FLEET_SIDECARS` (default `100,1000`), on a control plane process started afresh on
//! that database, N simulated sidecars run as tokio tasks in this process: each opens a
//! real `SidecarSync.Connect` stream (one HTTP/2 connection per sidecar when the open
//! files limit allows, else a few streams per connection; the bench says which), says
//! hello scoped to the fleet agent, decodes what it receives (`snapshot_from_pb`,
//! `delta_from_pb`), applies deltas (`delta::apply`) to the snapshot it holds, checks
//! heartbeats against it, and streams audit events (`FLEET_EVENTS_PER_S` per sidecar,
//! default 1, in batches of `FLEET_BATCH`, default 5), counting the acks. A sidecar
//! whose first snapshot lacks a grant or the fallback, a delta that does not apply, an
//! undecodable message or a stale heartbeat is an apply error (counted, printed).
//!
//! Once all hold their first snapshot (`connect_all_ms`) the control plane's RSS is
//! read; then its CPU over `FLEET_STEADY_S` seconds (default 15) of audit events only;
//! then `FLEET_ROUNDS` rounds (default 5) of three admin changes through the admin gRPC
//! API: Grant of a new tool to the fleet agent, Revoke of that grant, UpdateTool of a
//! granted tool's description. For each change and each sidecar, the time from just
//! before the RPC until that sidecar holds the change; every sidecar must (a miss is
//! counted and printed). Per N:
//!
//! `fleet sidecars=<n> tools=<t> propagate_p50_ms= propagate_p99_ms= cp_rss_mib= cp_cpu_pct=`
//! `fleet detail sidecars=<n> connect_all_ms= snapshot_bytes_per_sidecar=
//!  delta_bytes_per_sidecar_per_change= cp_cpu_ms_per_change= events_acked= apply_errors= ...`
//!
//! (`cp_cpu_ms_per_change`: the control plane's CPU from just before a change's RPC until
//! every sidecar held it; `_net` subtracts the steady audit load over that time.)
//!
//! Then, unless `FLEET_SIDECAR_MEMORY=0`, a real release `toolplane-sidecar` (default
//! settings) in front of a control plane holding `FLEET_MEMORY_TOOLS` tools (default
//! 100 000) serves one call of each of the fleet agent's 50 tools (a real HTTP tool
//! server in this process), and its RSS is read: `sidecar_memory catalog=<t> granted=50
//! rss_mib=`. That control plane keeps its catalog in its embedded in-memory store, the
//! tools registered anew through RegisterTool (8 clients): on PostgreSQL registration
//! runs at ~130 tools/s here, so 100 000 would take ~13 minutes.
//! `FLEET_MEMORY_STORE=postgres` tops the fleet's database up instead.

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

#[path = "fleet/catalog.rs"]
mod catalog;
#[path = "fleet/memory.rs"]
mod memory;
#[path = "fleet/sim.rs"]
mod sim;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::Admin;
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane};
use toolplane_tests::tool_server::ToolServer;
use uuid::Uuid;

pub use catalog::Catalog;
use catalog::GRANTED;
use sim::{Change, Counters, Expect, Shared};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} does not parse")))
        .unwrap_or(default)
}

struct Settings {
    tools: usize,
    rounds: usize,
    steady: Duration,
    events_per_s: f64,
    batch: usize,
    change_timeout: Duration,
    tool_url: String,
}

pub use toolplane_tests::procfs::rss_mib;

/// CPU time (user + system) the process has used so far, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    toolplane_tests::procfs::cpu_us(pid) / 1000.0
}

/// This process's soft limit on open files.
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// One connection per sidecar when the limit leaves room (the control plane inherits
/// the same limit), else as few streams per connection as fit.
fn streams_per_connection(n: usize, limit: usize) -> usize {
    let room = limit.saturating_sub(512).max(1);
    n.div_ceil(room).max(1)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One change under way: published to the sidecars just before its RPC.
struct Pending {
    seq: usize,
    started: Instant,
    cpu_before: f64,
}

/// What the changes of one run cost, gathered as they complete.
struct Tally<'a> {
    n: usize,
    cp_pid: u32,
    steady_cpu_per_ms: f64,
    timeout: Duration,
    change: &'a watch::Sender<Option<Arc<Change>>>,
    observed: &'a mut mpsc::UnboundedReceiver<(usize, usize, Duration)>,
    seq: usize,
    samples_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
    net_cpu_ms: Vec<f64>,
    missed: usize,
}

impl Tally<'_> {
    fn begin(&mut self, expect: Expect) -> Pending {
        self.seq += 1;
        let cpu_before = cpu_ms(self.cp_pid);
        let started = Instant::now();
        self.change.send_replace(Some(Arc::new(Change {
            seq: self.seq,
            started,
            expect,
        })));
        Pending {
            seq: self.seq,
            started,
            cpu_before,
        }
    }

    /// Waits until every sidecar holds the change (or the timeout).
    async fn finish(&mut self, p: Pending, what: &str) {
        let mut seen = vec![false; self.n];
        let mut count = 0;
        while count < self.n {
            let left = self.timeout.saturating_sub(p.started.elapsed());
            match tokio::time::timeout(left, self.observed.recv()).await {
                Ok(Some((seq, idx, took))) if seq == p.seq && !seen[idx] => {
                    seen[idx] = true;
                    count += 1;
                    self.samples_ms.push(took.as_secs_f64() * 1000.0);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let cpu = cpu_ms(self.cp_pid) - p.cpu_before;
        let wall_ms = p.started.elapsed().as_secs_f64() * 1000.0;
        self.cpu_ms.push(cpu);
        self.net_cpu_ms.push(cpu - self.steady_cpu_per_ms * wall_ms);
        if count < self.n {
            eprintln!(
                "fleet change {} ({what}): only {count} of {} sidecars held it within {:?}",
                p.seq, self.n, self.timeout
            );
            self.missed += self.n - count;
        }
    }
}

/// N simulated sidecars against `cp`: connect, steady state, changes; prints the lines.
async fn run_fleet(n: usize, cp: &Proc, cat: &Catalog, tokens: &[String], s: &Settings) {
    let counters = Arc::new(Counters::default());
    let (change_tx, change_rx) = watch::channel(None);
    let (observed_tx, mut observed_rx) = mpsc::unbounded_channel();
    let shared = Shared {
        counters: counters.clone(),
        change: change_rx,
        observed: observed_tx,
        agent: cat.fleet,
        tool: cat.tools[0],
        must_hold: Arc::new(cat.must_hold.clone()),
        batch: s.batch,
        batch_every: Duration::from_secs_f64(s.batch as f64 / s.events_per_s),
    };
    let limit = open_files_limit();
    let per_conn = streams_per_connection(n, limit);
    println!(
        "fleet connections sidecars={n} streams_per_connection={per_conn} open_files_limit={limit} \
         connections={}",
        n.div_ceil(per_conn)
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let mut channel = None;
    for (i, token) in tokens.iter().enumerate().take(n) {
        if i % per_conn == 0 {
            channel = Some(Endpoint::from_shared(cp.url()).unwrap().connect().await.unwrap());
        }
        let ch = channel.clone().unwrap();
        tasks.push(tokio::spawn(sim::run(i, ch, token.clone(), shared.clone())));
    }
    let connect_timeout = Duration::from_secs(env_or("FLEET_CONNECT_TIMEOUT_S", 900));
    while counters.synced.load(Ordering::Relaxed) < n as u64 {
        assert!(
            started.elapsed() < connect_timeout,
            "only {} of {n} sidecars got a snapshot within {connect_timeout:?} ({} apply errors)",
            counters.synced.load(Ordering::Relaxed),
            counters.apply_errors.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_all = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_mib(cp.pid());

    let cpu_before = cpu_ms(cp.pid());
    let steady_started = Instant::now();
    tokio::time::sleep(s.steady).await;
    let steady_cpu_per_ms = (cpu_ms(cp.pid()) - cpu_before) / (steady_started.elapsed().as_secs_f64() * 1000.0);

    let delta_bytes_before = counters.delta_bytes.load(Ordering::Relaxed);
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let mut tally = Tally {
        n,
        cp_pid: cp.pid(),
        steady_cpu_per_ms,
        timeout: s.change_timeout,
        change: &change_tx,
        observed: &mut observed_rx,
        seq: 0,
        samples_ms: Vec::new(),
        cpu_ms: Vec::new(),
        net_cpu_ms: Vec::new(),
        missed: 0,
    };
    let agent = cat.fleet;
    for r in 0..s.rounds {
        // A tool outside the fleet agent's grants, granted and revoked again.
        let tool = cat.tools[GRANTED + r];
        let p = tally.begin(Expect::Granted { agent, tool });
        let grant = admin
            .permissions
            .grant(pb::GrantRequest {
                permission: Some(pb::Permission {
                    agent_id: agent.to_string(),
                    tool_id: tool.to_string(),
                    r#type: pb::PermissionType::FullAccess as i32,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .permission
            .unwrap();
        tally.finish(p, "grant").await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        let p = tally.begin(Expect::Revoked { agent, tool });
        admin
            .permissions
            .revoke(pb::RevokeRequest {
                permission_id: grant.id,
            })
            .await
            .unwrap();
        tally.finish(p, "revoke").await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        // A granted tool's description.
        let i = 1 + r % (GRANTED - 1);
        let mut def = catalog::tool(i, &s.tool_url);
        def.description = format!("Fleet tool {i}, round {r}: {}", Uuid::new_v4());
        let p = tally.begin(Expect::Described {
            tool: cat.tools[i],
            description: def.description.clone(),
        });
        admin
            .registry
            .update_tool(pb::UpdateToolRequest { tool: Some(def) })
            .await
            .unwrap();
        tally.finish(p, "update").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in &tasks {
        t.abort();
    }
    let changes = tally.cpu_ms.len();
    let mut samples = std::mem::take(&mut tally.samples_ms);
    samples.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "fleet sidecars={n} tools={} propagate_p50_ms={:.1} propagate_p99_ms={:.1} cp_rss_mib={rss:.1} cp_cpu_pct={:.1}",
        s.tools,
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        steady_cpu_per_ms * 100.0
    );
    println!(
        "fleet detail sidecars={n} connect_all_ms={} snapshot_bytes_per_sidecar={} \
         delta_bytes_per_sidecar_per_change={} cp_cpu_ms_per_change={:.1} events_acked={} apply_errors={} \
         cp_cpu_ms_per_change_net={:.1} propagate_max_ms={:.1} changes={changes} missed={} events_sent={} \
         batches_skipped={}",
        connect_all.as_millis(),
        c(&counters.snapshot_bytes) / n as u64,
        (c(&counters.delta_bytes) - delta_bytes_before) / (n * changes.max(1)) as u64,
        mean(&tally.cpu_ms),
        c(&counters.events_acked),
        c(&counters.apply_errors),
        mean(&tally.net_cpu_ms),
        samples.last().copied().unwrap_or(f64::NAN),
        tally.missed,
        c(&counters.events_sent),
        c(&counters.batches_skipped),
    );
}

/// `count` sidecar tokens (one per sidecar, as deployed: each writes its own audit
/// chain), issued by 8 clients in parallel.
async fn sidecar_tokens(url: &str, count: usize) -> Vec<String> {
    let mut clients = Vec::new();
    for c in 0..8 {
        let mut admin = Admin::connect(url, ADMIN_TOKEN).await;
        let mine = (c..count).step_by(8).count();
        clients.push(tokio::spawn(async move {
            let mut tokens = Vec::with_capacity(mine);
            for _ in 0..mine {
                tokens.push(admin.token(pb::Role::Sidecar, "").await);
            }
            tokens
        }));
    }
    let mut all = Vec::with_capacity(count);
    for c in clients {
        all.extend(c.await.unwrap());
    }
    all
}

#[tokio::main]
async fn main() {
    let counts: Vec<usize> = std::env::var("FLEET_SIDECARS")
        .unwrap_or_else(|_| "100,1000".to_owned())
        .split(',')
        .map(|v| v.trim().parse().expect("FLEET_SIDECARS: comma-separated counts"))
        .collect();
    let tools_server = ToolServer::start().await;
    let settings = Settings {
        tools: env_or("FLEET_TOOLS", 10_000),
        rounds: env_or("FLEET_ROUNDS", 5),
        steady: Duration::from_secs(env_or("FLEET_STEADY_S", 15)),
        events_per_s: env_or("FLEET_EVENTS_PER_S", 1.0),
        batch: env_or("FLEET_BATCH", 5),
        change_timeout: Duration::from_secs(env_or("FLEET_CHANGE_TIMEOUT_S", 120)),
        tool_url: tools_server.url("/word_count"),
    };
    assert!(settings.rounds < GRANTED, "FLEET_ROUNDS must be below {GRANTED}");
    let db = TestDb::create().await;
    let cp = control_plane(Some(&db.url)).await;
    let cat = catalog::build(
        &cp.url(),
        ADMIN_TOKEN,
        settings.tools,
        &settings.tool_url,
        "fleet catalog",
    )
    .await;
    let tokens = sidecar_tokens(&cp.url(), counts.iter().copied().max().unwrap_or(0)).await;
    cp.stop().await;
    for &n in &counts {
        // A control plane of its own per N (same database): its RSS and CPU are this N's.
        let cp = control_plane(Some(&db.url)).await;
        run_fleet(n, &cp, &cat, &tokens, &settings).await;
        cp.stop().await;
    }
    if env_or("FLEET_SIDECAR_MEMORY", 1) != 0 {
        let total = env_or("FLEET_MEMORY_TOOLS", 100_000);
        let store = match std::env::var("FLEET_MEMORY_STORE").as_deref() {
            Ok("postgres") => memory::Store::Postgres,
            Ok("memory") | Err(_) => memory::Store::Memory,
            Ok(other) => panic!("FLEET_MEMORY_STORE={other}: memory or postgres"),
        };
        if store == memory::Store::Postgres {
            let cp = control_plane(Some(&db.url)).await;
            memory::measure(&cp, &cat, total, &settings.tool_url, store).await;
            cp.stop().await;
        } else {
            let cp = control_plane(None).await;
            let cat = catalog::build(
                &cp.url(),
                ADMIN_TOKEN,
                total,
                &settings.tool_url,
                "sidecar_memory catalog",
            )
            .await;
            memory::measure(&cp, &cat, total, &settings.tool_url, store).await;
            cp.stop().await;
        }
    }
}
