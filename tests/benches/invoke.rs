//! `make bench-invoke`: what the sidecar adds to a tool call, on loopback, in one run.
//!
//! Cases at c=1 and c=64: `direct` (HTTP to the tool server, which runs in a process of
//! its own), `grpc_floor` (a bare gRPC
//! unary round trip to the sidecar: health Check, same client stack), `sidecar_miss`
//! (Invoke with authn, permission, rate limit and audit on, cache missing) and
//! `sidecar_hit` (a cache hit). Then a replay with realistic repetition against a tool
//! with 20 ms latency, and the sidecar's RSS with a 10k-tool snapshot.
//!
//! Besides the issue's cases, two reference fronts at both concurrencies (see
//! `ceilings`): `bare_proxy` (HTTP/1.1 in, HTTP/1.1 to the tool) and `grpc_forward`
//! (`Invoke` forwarded to the tool, nothing checked or recorded), and what they reach
//! against `direct`: the most any proxy, and any gRPC front, could do on this machine.
//!
//! `invoke vs_forward` puts the sidecar against the bare forward of the same run
//! (throughput and front CPU of a miss at c=64, the p50 a miss adds at c=1, a hit over
//! the gRPC floor), and `invoke control_plane` says what the control plane spends
//! storing a miss's events at c=64. The sidecar serves `/metrics` as deployed ones do;
//! each case waits there for its spool depth to reach 0 (every event stored) before it
//! reads the control plane's CPU. `invoke syscalls` counts the write system calls
//! per call of the front and the bench client (`/proc/<pid>/io`): on loopback each
//! write runs the receiver's network stack too, so it tells whether a front's extra
//! CPU is in its I/O or in its own work.

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde_json::{Value, json};
use toolplane_core::json::json_to_struct;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, Authed, channel, http_tool, invoke_request};
use toolplane_tests::procfs::{cpu_us, rss_mib, syscalls};
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, sidecar_with, spool_dir};

#[path = "invoke/ceilings.rs"]
mod ceilings;

const C1_REQUESTS: usize = 2000;
const C64_REQUESTS: usize = 20_000;
const FILLER_TOOLS: usize = 10_000;

/// The tool server: `/fast` answers at once, `/slow` after 20 ms; `GET /calls` says how
/// many tool calls it has answered.
async fn serve_tools() -> SocketAddr {
    let calls = Arc::new(AtomicU64::new(0));
    ceilings::serve_http(move |req: hyper::Request<hyper::body::Incoming>| {
        let calls = calls.clone();
        async move {
            if req.uri().path() == "/calls" {
                let n = calls.load(Ordering::Relaxed).to_string();
                return Ok(hyper::Response::new(Full::new(Bytes::from(n))));
            }
            let slow = req.uri().path() == "/slow";
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            calls.fetch_add(1, Ordering::Relaxed);
            if slow {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let params: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let out = json!({"words": params["text"].as_str().map_or(0, |t| t.split_whitespace().count())});
            Ok(hyper::Response::new(Full::new(Bytes::from(out.to_string()))))
        }
    })
    .await
}

struct Stats {
    p50_us: u128,
    p99_us: u128,
    rps: f64,
    mean_us: f64,
}

/// Runs `requests` calls of `one` with `concurrency` workers.
async fn measure<F, Fut>(concurrency: usize, requests: usize, one: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, one) = (next.clone(), one.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return samples;
                }
                let t = Instant::now();
                one(i).await;
                samples.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize].as_micros();
    Stats {
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        rps: requests as f64 / elapsed.as_secs_f64(),
        mean_us: all.iter().map(|d| d.as_micros() as f64).sum::<f64>() / all.len() as f64,
    }
}

fn print(case: &str, c: usize, s: &Stats) {
    println!(
        "invoke case={case} c={c} p50_us={} p99_us={} rps={:.0}",
        s.p50_us, s.p99_us, s.rps
    );
}

/// The processes whose CPU each case accounts for.
#[derive(Clone, Copy)]
struct Pids {
    /// The process the bench client calls: the sidecar, or a reference front.
    front: u32,
    control_plane: u32,
    tool_server: u32,
}

/// CPU each process spent per call of one case, in microseconds.
#[derive(Clone, Copy, Debug)]
struct Cpu {
    front: f64,
    control_plane: f64,
    tool_server: f64,
    bench_client: f64,
}

/// One case's latency, throughput and CPU.
struct Measured {
    stats: Stats,
    cpu: Cpu,
}

/// Waits until the sidecar has every event it spooled acked by the control plane, i.e.
/// stored (the control plane acks a batch after its commit): its `toolplane_spool_depth`
/// gauge, read at each scrape of its `/metrics`, is 0. A case's control-plane CPU is
/// read after this, so it includes the ingest of that case's audit events and
/// invocations (delivered up to the audit linger after the last call) and nothing of
/// the next case's.
struct Drained {
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    metrics: hyper::Uri,
}

impl Drained {
    async fn depth(&self) -> Option<f64> {
        let resp = self.http.get(self.metrics.clone()).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let text = std::str::from_utf8(&body).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("toolplane_spool_depth "))
            .and_then(|v| v.trim().parse().ok())
    }

    async fn wait(&self) {
        let started = Instant::now();
        loop {
            if self.depth().await == Some(0.0) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the sidecar's events were not all stored within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Runs one case and prints its line, then the CPU each process spent per call on it
/// (what bounds throughput when cores are shared). The front's, tool server's and
/// client's CPU are read when the last call is answered; the control plane's once the
/// case's events are stored (see [`Drained`]).
async fn case<F, Fut>(name: &str, c: usize, n: usize, pids: Pids, drained: &Drained, one: F) -> Measured
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let all = [pids.front, pids.control_plane, pids.tool_server, std::process::id()];
    let before = all.map(cpu_us);
    let calls_before = [pids.front, std::process::id()].map(syscalls);
    let s = measure(c, n, one).await;
    let after = all.map(cpu_us);
    let calls_after = [pids.front, std::process::id()].map(syscalls);
    print(name, c, &s);
    drained.wait().await;
    let per_call = |i: usize, at: f64| (at - before[i]) / n as f64;
    let cpu = Cpu {
        front: per_call(0, after[0]),
        control_plane: per_call(1, cpu_us(pids.control_plane)),
        tool_server: per_call(2, after[2]),
        bench_client: per_call(3, after[3]),
    };
    println!(
        "invoke cpu case={name} c={c} front_us_per_call={:.1} control_plane_us_per_call={:.1} \
         tool_server_us_per_call={:.1} bench_client_us_per_call={:.1}",
        cpu.front, cpu.control_plane, cpu.tool_server, cpu.bench_client
    );
    let per = |i: usize| {
        let ((r0, w0), (r1, w1)) = (calls_before[i], calls_after[i]);
        ((r1 - r0) / n as f64, (w1 - w0) / n as f64)
    };
    let ((front_r, front_w), (client_r, client_w)) = (per(0), per(1));
    println!(
        "invoke syscalls case={name} c={c} front_reads_per_call={front_r:.2} front_writes_per_call={front_w:.2} \
         bench_client_reads_per_call={client_r:.2} bench_client_writes_per_call={client_w:.2}"
    );
    Measured { stats: s, cpu }
}

/// ~300 distinct task strings, drawn Zipf-like (s = 1.1); a fifth of the draws differ
/// from their value only in case or spacing.
fn zipf_params(n: usize) -> Vec<Value> {
    let values: Vec<String> = (0..300)
        .map(|i| format!("weather forecast for city number {i}"))
        .collect();
    let weights: Vec<f64> = (1..=values.len()).map(|r| 1.0 / (r as f64).powf(1.1)).collect();
    let total: f64 = weights.iter().sum();
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let mut x = rng.random_range(0.0..total);
            let mut idx = 0;
            for (i, w) in weights.iter().enumerate() {
                if x < *w {
                    idx = i;
                    break;
                }
                x -= w;
            }
            let mut text = values[idx].clone();
            match rng.random_range(0..10) {
                0 => text = text.to_uppercase(),
                1 => text = text.replace(' ', "  "),
                _ => {}
            }
            json!({"text": text})
        })
        .collect()
}

/// Set in the tool server's process.
const TOOL_SERVER_ROLE: &str = "INVOKE_BENCH_TOOL_SERVER";

/// A server in a process of its own: this binary again, told by the environment
/// (`role=value`) to only serve, which prints its address.
struct Helper {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Helper {
    fn start(role: &str, value: &str) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(role, value)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().parse().unwrap();
        Self { child, addr }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tool server runs in a process of its own, as tools do: in the bench's process,
/// a `direct` call would never leave the client's runtime, which no real tool call
/// does.
struct ToolServer {
    helper: Helper,
    addr: SocketAddr,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl ToolServer {
    fn start() -> Self {
        let helper = Helper::start(TOOL_SERVER_ROLE, "1");
        let addr = helper.addr;
        let http = Client::builder(TokioExecutor::new()).build_http();
        Self { helper, addr, http }
    }

    async fn calls(&self) -> u64 {
        let resp = self
            .http
            .get(format!("http://{}/calls", self.addr).parse().unwrap())
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        std::str::from_utf8(&body).unwrap().parse().unwrap()
    }
}

/// Serves what `serve` binds until killed, after printing its address, on one worker
/// thread as the sidecar does by default.
fn serve_forever<F: std::future::Future<Output = SocketAddr>>(serve: impl FnOnce() -> F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        println!("{}", serve().await);
        std::future::pending::<()>().await;
    });
}

fn main() {
    let upstream = |role: &str| std::env::var(role).ok().map(|a| a.parse::<SocketAddr>().unwrap());
    if let Some(up) = upstream(ceilings::PROXY_ROLE) {
        serve_forever(|| ceilings::serve_bare_proxy(up));
    } else if let Some(up) = upstream(ceilings::GRPC_FORWARD_ROLE) {
        serve_forever(|| ceilings::serve_grpc_forward(up));
    } else {
        bench();
    }
}

#[tokio::main]
async fn bench() {
    if std::env::var_os(TOOL_SERVER_ROLE).is_some() {
        println!("{}", serve_tools().await);
        std::future::pending::<()>().await;
    }
    let tools = ToolServer::start();
    let tools_addr = tools.addr;
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("bench").await;
    let mut register = async |name: &str, path: &str, cacheable: bool| {
        let mut t = http_tool(name, &format!("http://{tools_addr}{path}"));
        t.cacheable = cacheable;
        t.cache_ttl_seconds = if cacheable { 600 } else { 0 };
        t.cache_normalize_keys = cacheable;
        t.requirements.as_mut().unwrap().rate_limit_rpm = 1_000_000_000;
        t.schema.as_mut().unwrap().input_schema = json_to_struct(
            &json!({"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}),
        );
        let t = admin.register(t).await.unwrap();
        admin.grant_full(&agent.id, &t.id).await;
        t
    };
    register("fast", "/fast", false).await;
    register("fast_cached", "/fast", true).await;
    register("slow_cached", "/slow", true).await;
    register("slow_plain", "/slow", false).await;
    let started = Instant::now();
    for i in 0..FILLER_TOOLS {
        let mut t = http_tool(&format!("filler_{i:05}"), "http://127.0.0.1:9/filler");
        t.description = format!("Filler tool {i} that makes the snapshot realistic in size");
        admin.register(t).await.unwrap();
    }
    eprintln!("registered {FILLER_TOOLS} filler tools in {:?}", started.elapsed());
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    // `INVOKE_SIDECAR_ENV="K=V K2=V2"`: settings for the sidecar under test.
    let extra = std::env::var("INVOKE_SIDECAR_ENV").unwrap_or_default();
    let mut extra: Vec<(&str, &str)> = extra.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
    // Its /metrics, as deployed sidecars serve them: the bench reads the spool depth
    // there (see `Drained`), and the recorder's per-call cost is part of every call.
    let metrics_addr = format!("127.0.0.1:{}", toolplane_tests::free_port());
    extra.push(("TOOLPLANE_METRICS_LISTEN", &metrics_addr));
    let sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), &extra).await;
    let sidecar_pid = sc_pid(&sc);
    let ex_channel = channel(&sc.url(), Some(&token)).await;
    let ex = pb::executor_client::ExecutorClient::new(ex_channel.clone());
    let waiting = Instant::now();
    loop {
        let r = ex
            .clone()
            .invoke(invoke_request("fast", &json!({"text": "warm up"})))
            .await;
        if r.is_ok() {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "the sidecar never served: {r:?}\n{}",
            sc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let drained = Drained {
        http: http.clone(),
        metrics: format!("http://{metrics_addr}/metrics").parse().unwrap(),
    };
    drained.wait().await;
    let rss_idle = rss_mib(sidecar_pid);
    let pids = Pids {
        front: sidecar_pid,
        control_plane: cp.pid(),
        tool_server: tools.helper.child.id(),
    };
    // For profiling: `INVOKE_PROFILE=miss|hit` (c=64) or `miss1|hit1` (c=1) runs one
    // case long enough to attach a profiler (after printing the sidecar's and control
    // plane's pids) and exits.
    if let Ok(which) = std::env::var("INVOKE_PROFILE") {
        let tool = if which.starts_with("hit") {
            "fast_cached"
        } else {
            "fast"
        };
        let (c, n) = if which.ends_with('1') {
            (1, 40_000)
        } else {
            (64, 300_000)
        };
        eprintln!("profile sidecar_pid={sidecar_pid} control_plane_pid={}", cp.pid());
        let e = ex.clone();
        let s = case(&which, c, n, pids, &drained, move |_| {
            let mut e = e.clone();
            async move {
                e.invoke(invoke_request(tool, &json!({"text": "a b"}))).await.unwrap();
            }
        })
        .await;
        eprintln!("{}", s.stats.rps);
        return;
    }

    let health = tonic_health::pb::health_client::HealthClient::new(ex_channel.clone());
    let mut results = std::collections::HashMap::new();
    let mut reference = std::collections::HashMap::new();
    for (c, n) in [(1usize, C1_REQUESTS), (64, C64_REQUESTS)] {
        let direct = case("direct", c, n, pids, &drained, post_fast(&http, tools_addr)).await;
        let hc = health.clone();
        let floor = case("grpc_floor", c, n, pids, &drained, move |_| {
            let mut hc = hc.clone();
            async move {
                hc.check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                    .await
                    .unwrap();
            }
        })
        .await;
        let miss = case("sidecar_miss", c, n, pids, &drained, invoke_fast(&ex)).await;
        let e = ex.clone();
        let hit = case("sidecar_hit", c, n, pids, &drained, move |_| {
            let mut e = e.clone();
            async move {
                let r = e
                    .invoke(invoke_request("fast_cached", &json!({"text": "a b"})))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.result.unwrap().cache_hit || c == 1);
            }
        })
        .await;
        results.insert(c, (direct, floor, miss, hit));
        let at = |front: &Helper| Pids {
            front: front.child.id(),
            ..pids
        };
        // Each reference front runs only while it is measured: idle, they still cost
        // the cases above (direct's c=1 p50 ~30 -> ~60 µs with both waiting here).
        let proxy = Helper::start(ceilings::PROXY_ROLE, &tools_addr.to_string());
        let bare = case("bare_proxy", c, n, at(&proxy), &drained, post_fast(&http, proxy.addr)).await;
        drop(proxy);
        let grpc_forward = Helper::start(ceilings::GRPC_FORWARD_ROLE, &tools_addr.to_string());
        let forward =
            pb::executor_client::ExecutorClient::new(channel(&format!("http://{}", grpc_forward.addr), None).await);
        let fwd = case("grpc_forward", c, n, at(&grpc_forward), &drained, invoke_fast(&forward)).await;
        reference.insert(c, (bare, fwd));
    }
    let (d1, f1, m1, h1) = &results[&1];
    let (d64, _, m64, _) = &results[&64];
    println!(
        "invoke ratios added_p50_us={} floor_p50_us={} hit_over_floor={:.2} rps_vs_direct={:.2}",
        m1.stats.p50_us.saturating_sub(d1.stats.p50_us),
        f1.stats.p50_us,
        h1.stats.p50_us as f64 / f1.stats.p50_us.max(1) as f64,
        m64.stats.rps / d64.stats.rps
    );
    let (_, fwd1) = &reference[&1];
    let (bare64, fwd64) = &reference[&64];
    println!(
        "invoke ceilings bare_proxy_rps_vs_direct={:.2} grpc_forward_rps_vs_direct={:.2} \
         grpc_forward_added_p50_us={}",
        bare64.stats.rps / d64.stats.rps,
        fwd64.stats.rps / d64.stats.rps,
        fwd1.stats.p50_us.saturating_sub(d1.stats.p50_us)
    );
    // The sidecar against the bare forward of the same run: what governing a call
    // (authn, permission, schema, rate limit, audit) costs over just forwarding it.
    println!(
        "invoke vs_forward miss_rps_ratio={:.2} miss_cpu_ratio={:.2} c1_miss_extra_p50_us={} hit_over_floor={:.2}",
        m64.stats.rps / fwd64.stats.rps,
        m64.cpu.front / fwd64.cpu.front,
        i128::try_from(m1.stats.p50_us).unwrap() - i128::try_from(fwd1.stats.p50_us).unwrap(),
        h1.stats.p50_us as f64 / f1.stats.p50_us.max(1) as f64,
    );
    println!(
        "invoke control_plane audit_cpu_us_per_call={:.1}",
        m64.cpu.control_plane
    );

    // Replay with repetition against a 20 ms tool: cached vs the same workload uncached.
    let workload = Arc::new(zipf_params(3000));
    let baseline_load = Arc::new(workload[..400].to_vec());
    let e = ex.clone();
    let plain = measure(16, baseline_load.len(), move |i| {
        let (mut e, w) = (e.clone(), baseline_load.clone());
        async move {
            e.invoke(invoke_request("slow_plain", &w[i])).await.unwrap();
        }
    })
    .await;
    let before = tools.calls().await;
    let e = ex.clone();
    let w = workload.clone();
    let cached = measure(16, workload.len(), move |i| {
        let (mut e, w) = (e.clone(), w.clone());
        async move {
            e.invoke(invoke_request("slow_cached", &w[i])).await.unwrap();
        }
    })
    .await;
    let made = tools.calls().await - before;
    println!(
        "invoke replay upstream_calls_saved_pct={:.1} mean_latency_reduction_pct={:.1}",
        100.0 * (1.0 - made as f64 / workload.len() as f64),
        100.0 * (1.0 - cached.mean_us / plain.mean_us)
    );
    println!(
        "invoke rss_idle_mib={:.1} rss_loaded_mib={:.1}",
        rss_idle,
        rss_mib(sidecar_pid)
    );
}

/// One `direct`-style call: the same small JSON body POSTed to `<addr>/fast`.
fn post_fast(
    http: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync + Clone + 'static {
    let url: hyper::Uri = format!("http://{addr}/fast").parse().unwrap();
    let http = http.clone();
    move |_| {
        let (h, url) = (http.clone(), url.clone());
        Box::pin(async move {
            let req = hyper::Request::post(url)
                .body(Full::new(Bytes::from_static(br#"{"text":"a b"}"#)))
                .unwrap();
            let resp = h.request(req).await.unwrap();
            resp.into_body().collect().await.unwrap();
        })
    }
}

/// One `sidecar_miss`-style call: `Invoke` of the `fast` tool, which must succeed.
fn invoke_fast(
    client: &pb::executor_client::ExecutorClient<Authed>,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync + Clone + 'static {
    let client = client.clone();
    move |_| {
        let mut client = client.clone();
        Box::pin(async move {
            let r = client
                .invoke(invoke_request("fast", &json!({"text": "a b"})))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.result.unwrap().status, pb::ToolExecutionStatus::Success as i32);
        })
    }
}

fn sc_pid(p: &Proc) -> u32 {
    p.pid()
}
