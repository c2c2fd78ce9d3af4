//! Prometheus metrics of both binaries: the names in one place, the recorder, and the
//! `/metrics` endpoint (plain HTTP on its own port, so scraping never competes with gRPC
//! and never needs a token).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Tool calls finished by a sidecar, by `tool` and `status`.
pub const INVOCATIONS: &str = "toolplane_invocations_total";
/// Seconds from receiving a call to answering it, by `tool`.
pub const INVOCATION_SECONDS: &str = "toolplane_invocation_duration_seconds";
/// Result cache lookups, by `tool` and `result` (`hit` or `miss`).
pub const CACHE_LOOKUPS: &str = "toolplane_cache_lookups_total";
/// Result-cache values read back from Redis and refused (not served; the tool is
/// called instead), by `reason`: `mac` (no valid seal for this key: written or moved
/// without the sidecars' key), `schema` (breaks the tool's output schema), `expired`,
/// `malformed`.
pub const CACHE_REJECTED: &str = "toolplane_cache_rejected_total";
/// Calls refused by a tool's rate limit, by `tool`.
pub const RATE_LIMITED: &str = "toolplane_rate_limit_rejections_total";
/// Calls refused because a daily LIMITED_INVOCATIONS budget was spent.
pub const QUOTA_EXHAUSTED: &str = "toolplane_quota_exhausted_total";
/// Calls refused because the agent's daily spend budget would be passed.
pub const SPEND_EXHAUSTED: &str = "toolplane_spend_budget_exhausted_total";
/// Calls refused by an open circuit, by `tool`.
pub const CIRCUIT_REJECTIONS: &str = "toolplane_circuit_open_rejections_total";
/// Tools whose circuit is open right now.
pub const OPEN_CIRCUITS: &str = "toolplane_open_circuits";
/// Audit events and results waiting for the control plane's ack.
pub const SPOOL_DEPTH: &str = "toolplane_spool_depth";
/// Events dropped because the spool was full under the `drop` policy.
pub const SPOOL_DROPPED: &str = "toolplane_spool_dropped_events_total";
/// Seconds since the sidecar last heard from the control plane (a snapshot, delta,
/// heartbeat or ack on a live sync stream); past `TOOLPLANE_MAX_SNAPSHOT_AGE` it
/// refuses calls.
pub const SNAPSHOT_AGE: &str = "toolplane_snapshot_age_seconds";
/// Tools the sidecar holds: with a scope (the default), those of the agents it serves
/// and the fallbacks they name, not the whole catalog.
pub const SNAPSHOT_TOOLS: &str = "toolplane_snapshot_tools";
/// Limit and quota decisions made locally because Redis did not answer.
pub const REDIS_DEGRADED: &str = "toolplane_redis_degraded_decisions_total";
/// Shared state in Redis found to have gone backwards (deleted or rewritten outside
/// toolplane, or lost by Redis), by `kind` (`rate_limit`).
pub const REDIS_REGRESSIONS: &str = "toolplane_redis_state_regressions_total";
/// `SelectTool` latency in seconds.
pub const SELECTION_SECONDS: &str = "toolplane_selection_duration_seconds";
/// Sync events stored by the control plane, by `kind` (`audit` or `invocation`).
pub const EVENTS_STORED: &str = "toolplane_sync_events_stored_total";
/// Sidecar sync sessions open on this control plane replica.
pub const SYNC_SESSIONS: &str = "toolplane_sync_sessions";
/// Sync events the control plane could not store in the trail and kept in the
/// dead-letter table, by `reason` (`unparseable`, `refused`, `rejected`).
pub const EVENTS_DEAD_LETTERED: &str = "toolplane_sync_events_dead_lettered_total";
/// Changed definitions of approved MCP tools found on their servers, by `source`
/// (`import`, `relist`) and `outcome` (`pending`, `auto_approved`).
pub const TOOL_DRIFT: &str = "toolplane_tool_definition_drift_total";
/// Scheduled re-lists of imported MCP servers, by `result` (`ok`, `error`).
pub const MCP_RELISTS: &str = "toolplane_mcp_relists_total";
/// RPCs received, by `grpc_service`, `grpc_method` and `grpc_type` (see
/// [`crate::rpc_metrics`] for what is labelled as itself and when a call counts).
pub const RPC_STARTED: &str = "toolplane_grpc_server_started_total";
/// RPCs finished, by the labels of [`RPC_STARTED`] and `grpc_code` (`OK`,
/// `PERMISSION_DENIED`, ...).
pub const RPC_HANDLED: &str = "toolplane_grpc_server_handled_total";
/// Seconds from an RPC's arrival to its status, by the labels of [`RPC_STARTED`].
pub const RPC_SECONDS: &str = "toolplane_grpc_server_handling_seconds";
/// The control plane's database pool: connections open now.
pub const DB_POOL_CONNECTIONS: &str = "toolplane_db_pool_connections";
/// Open connections idle in the pool (0 with waiters means the pool is exhausted).
pub const DB_POOL_AVAILABLE: &str = "toolplane_db_pool_available_connections";
/// Requests waiting for a pooled connection.
pub const DB_POOL_WAITING: &str = "toolplane_db_pool_waiting_requests";
/// The pool's configured maximum size.
pub const DB_POOL_MAX: &str = "toolplane_db_pool_max_connections";
/// By `sidecar_token`: how many revisions the snapshot a connected sidecar holds is
/// behind this replica's current one (0 when it holds the current state).
pub const SIDECAR_REVISION_LAG: &str = "toolplane_sidecar_snapshot_revision_lag";
/// By `sidecar_token`: seconds since this replica last sent a connected sidecar a
/// snapshot, delta or heartbeat.
pub const SIDECAR_PUSH_AGE: &str = "toolplane_sidecar_last_push_age_seconds";
/// Identity-provider access tokens a sidecar judged, by `outcome` (`accepted`,
/// `invalid`, `forbidden`, `unavailable`).
pub const ACCESS_TOKENS: &str = "toolplane_access_tokens_total";
/// JWKS loads of an identity provider's keys, by `result` (`ok`, `error`).
pub const JWKS_REFRESHES: &str = "toolplane_jwks_refreshes_total";

/// Set once [`install`] has put the Prometheus recorder in place.
static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process's recorder is installed. A metric handle registered before
/// that is bound to the no-op recorder for good, so code that keeps handles (rather
/// than looking a series up on every call) keeps them only once this is true.
pub fn recording() -> bool {
    RECORDING.load(std::sync::atomic::Ordering::Acquire)
}

/// Installs the process-wide recorder; `None` if one is already installed (tests that
/// start several servers in one process).
pub fn install() -> Option<PrometheusHandle> {
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &buckets)
        .ok()?
        .install_recorder()
        .ok()?;
    RECORDING.store(true, std::sync::atomic::Ordering::Release);
    metrics::describe_counter!(RPC_STARTED, "gRPC calls received");
    metrics::describe_counter!(RPC_HANDLED, "gRPC calls finished, by status code");
    metrics::describe_histogram!(
        RPC_SECONDS,
        metrics::Unit::Seconds,
        "gRPC call duration from arrival to status (streams: their lifetime)"
    );
    Some(handle)
}

/// Something that runs at every scrape of `/metrics`, before the recorder renders: it
/// may set gauges from live state (cheap, synchronous reads only) and append samples
/// of its own in the text exposition format (for series that must disappear, such as
/// one per connected sidecar, which the recorder cannot forget).
pub type ScrapeHook = Box<dyn Fn(&mut String) + Send + Sync>;

static HOOKS: std::sync::Mutex<Vec<ScrapeHook>> = std::sync::Mutex::new(Vec::new());

/// Adds a hook run at every scrape.
pub fn on_scrape(hook: impl Fn(&mut String) + Send + Sync + 'static) {
    HOOKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(hook));
}

/// The text served at `/metrics`: the hooks' samples after the recorder's.
fn render(handle: &PrometheusHandle) -> String {
    let mut extra = String::new();
    for hook in HOOKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
        hook(&mut extra);
    }
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&extra);
    text
}

/// Whether this process serves calls, as its gRPC health service says; mirrored here so
/// `GET /healthz` can answer probes that cannot speak gRPC over TLS (kubelet's gRPC
/// probe has no TLS).
static SERVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Records what the gRPC health service now reports.
pub fn set_serving(serving: bool) {
    SERVING.store(serving, std::sync::atomic::Ordering::Relaxed);
}

/// Serves `GET /metrics` and `GET /healthz` (200 SERVING or 503 NOT_SERVING) on
/// `listener`; anything else is 404.
pub fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handle = handle.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => (200, render(&handle)),
                            "/healthz" if SERVING.load(std::sync::atomic::Ordering::Relaxed) => {
                                (200, "SERVING\n".to_owned())
                            }
                            "/healthz" => (503, "NOT_SERVING\n".to_owned()),
                            _ => (404, "metrics are at /metrics, health at /healthz\n".to_owned()),
                        };
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// Binds `addr` and serves metrics there; logs the address.
pub async fn start(addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let Some(handle) = install() else {
        tracing::warn!("a metrics recorder is already installed; not serving /metrics again");
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving Prometheus metrics at /metrics and health at /healthz");
    serve(listener, handle);
    Ok(())
}
