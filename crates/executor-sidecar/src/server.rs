//! Builds the sidecar: sync client in the background, `Executor` behind the auth layer,
//! open health and reflection, staged shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use toolplane_core::circuit::BreakerConfig;
use toolplane_core::retry::RetryPolicy;
use toolplane_proto::v1 as pb;
use toolplane_runtime::auth::AuthLayer;
use toolplane_runtime::grpc;
use toolplane_runtime::lifecycle::incoming;
use toolplane_runtime::lifecycle::with_grace;
use toolplane_runtime::rpc_metrics::RpcMetricsLayer;

use crate::auth::SnapshotAuthenticator;
use crate::config::Config;
use crate::executor::{ExecutorGrpc, ExecutorService};
use crate::mcp_server::McpFrontDoor;
use crate::outbox::Outbox;
use crate::quota::Quotas;
use crate::rate_limit::RateLimiter;
use crate::redis_conn::{RedisSettings, redis_client_with_timeout};
use crate::reliability::Breakers;
use crate::result_cache::{ResultCache, SharedCache};
use crate::snapshot::SharedSnapshot;
use crate::spend::SpendBudgets;
use crate::sync::SyncClient;
use crate::upstream::Upstream;

const EXECUTOR: &str = "toolplane.v1.Executor";

/// Samples what is a level rather than an event, once a second. The spool depth is
/// also read at every scrape of `/metrics`, so it is exact when read: whoever waits for
/// "everything delivered" (an operator draining a sidecar, `make bench-invoke` before
/// reading the control plane's CPU) sees 0 as soon as the last ack arrives.
fn spawn_gauges(executor: Arc<ExecutorService>) {
    use toolplane_runtime::metrics as m;
    let outbox = executor.outbox.clone();
    toolplane_runtime::metrics::on_scrape(move |_| {
        metrics::gauge!(m::SPOOL_DEPTH).set(outbox.pending() as f64);
    });
    tokio::spawn(async move {
        loop {
            metrics::gauge!(m::SPOOL_DEPTH).set(executor.outbox.pending() as f64);
            metrics::gauge!(m::OPEN_CIRCUITS).set(executor.breakers.open_count() as f64);
            if let Some(age) = executor.snapshot.age() {
                metrics::gauge!(m::SNAPSHOT_AGE).set(age.as_secs_f64());
            }
            if let Some(held) = executor.snapshot.current() {
                metrics::gauge!(m::SNAPSHOT_TOOLS).set(held.tool_count() as f64);
            }
            let degraded = executor.limits.degraded_decisions()
                + executor.quotas.degraded_decisions()
                + executor.spend.degraded_decisions();
            metrics::counter!(m::REDIS_DEGRADED).absolute(degraded);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}

/// How often the freshness watch looks.
const FRESHNESS_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Reports `toolplane.v1.Executor` NOT_SERVING on the health service while calls are
/// refused (no snapshot yet, or one too old), SERVING again once synced, and logs each
/// change. The server as a whole (service "") stays SERVING: the process is fine, and a
/// liveness probe restarting it would not bring the control plane back. A readiness
/// probe may name the service to take a cut-off sidecar out of rotation.
/// Stops (leaving everything NOT_SERVING) once draining starts.
fn spawn_freshness_watch(
    snapshot: SharedSnapshot,
    health: tonic_health::server::HealthReporter,
    mut draining: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        // Health starts SERVING for every service; the first look corrects it.
        let mut was: Option<bool> = None;
        loop {
            let verdict = snapshot.serving();
            let fresh = verdict.is_ok();
            if was != Some(fresh) {
                match &verdict {
                    Ok(_) if was.is_some() => tracing::info!("synced with the control plane again: admitting calls"),
                    Ok(_) => {}
                    Err(e @ crate::error::ExecError::Stale { .. }) => tracing::error!(error = %e, "refusing calls"),
                    Err(_) => {}
                }
                let status = if fresh {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                health.set_service_status(EXECUTOR, status).await;
                was = Some(fresh);
            }
            let drain_started = tokio::select! {
                () = tokio::time::sleep(FRESHNESS_POLL) => false,
                r = draining.wait_for(|d| *d) => { drop(r); true }
            };
            if drain_started {
                health
                    .set_service_status(EXECUTOR, tonic_health::ServingStatus::NotServing)
                    .await;
                return;
            }
        }
    });
}

/// Binds, retrying for a moment: a fixed port inside the ephemeral range can be held
/// briefly by some short-lived outgoing connection.
async fn bind_retrying(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 25 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// A lazily connected client of the control plane's selector (for `ExecuteTask`),
/// over the same TLS as the sync stream.
fn selector_client(
    config: &Config,
) -> anyhow::Result<pb::tool_selector_client::ToolSelectorClient<tonic::transport::Channel>> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(config.control_plane.clone())?
        .connect_timeout(std::time::Duration::from_secs(2));
    if let Some(tls) = config.control_plane_tls.client_config()? {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(pb::tool_selector_client::ToolSelectorClient::new(
        endpoint.connect_lazy(),
    ))
}

pub async fn serve(
    config: &Config,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.check_freshness()?;
    let snapshot = SharedSnapshot::scoped(
        config.max_snapshot_age,
        Arc::new(crate::scope_fetch::ScopeFetcher::new(
            config.sidecar_agents.clone(),
            config.scope_fetch_timeout,
        )),
    );
    let outbox = Arc::new(if config.spool_dir.is_empty() {
        tracing::warn!("no spool directory: unacked events are lost if the sidecar restarts");
        Outbox::new(config.spool_capacity, config.spool_full_policy)
    } else {
        Outbox::open(
            std::path::Path::new(&config.spool_dir),
            config.spool_fsync,
            config.spool_capacity,
            config.spool_full_policy,
        )
        .map_err(|e| anyhow::anyhow!("cannot open the event spool in {}: {e}", config.spool_dir))?
    });
    config
        .control_plane_tls
        .check_plaintext(&config.control_plane, config.common.tls.allow_plaintext)?;
    let sidecar_id = config.sidecar_id();
    tokio::spawn(
        SyncClient {
            control_plane: config.control_plane.clone(),
            tls: config.control_plane_tls.client_config()?,
            token: config.token()?,
            sidecar_id: sidecar_id.clone(),
            snapshot: snapshot.clone(),
            outbox: outbox.clone(),
            linger: config.audit_linger,
            held: Default::default(),
            validators: crate::snapshot::ValidatorCache::new(config.validator_cache),
            idle_timeout: config.sync_idle_timeout,
        }
        .run(),
    );
    let redis = config
        .redis_url
        .as_deref()
        .map(|url| {
            redis_client_with_timeout(
                RedisSettings {
                    url,
                    password_file: config.redis_password_file.as_deref(),
                    ca_file: config.redis_ca_file.as_deref(),
                },
                config.redis_decision_timeout,
            )
        })
        .transpose()?;
    let shared_cache = match (&redis, config.redis_sealer()?) {
        (Some(client), Some(sealer)) => Some(SharedCache {
            client: client.clone(),
            sealer,
        }),
        (Some(_), None) => {
            tracing::warn!(
                "no TOOLPLANE_REDIS_HMAC_KEY: the result cache stays in process (Redis still shares rate limits and quotas)"
            );
            None
        }
        (None, _) => None,
    };
    let executor = Arc::new(ExecutorService {
        snapshot: snapshot.clone(),
        outbox: outbox.clone(),
        upstream: Upstream::new(config.common.allow_link_local_endpoints, config.tool_ca_file.as_deref())?,
        breakers: Breakers::new(BreakerConfig {
            failure_threshold: config.breaker_failures,
            open_for: config.breaker_open_for,
        }),
        retry: RetryPolicy::default(),
        limits: match &redis {
            Some(client) => RateLimiter::shared(client.clone(), config.rate_limit_local_share),
            None => RateLimiter::local(),
        },
        quotas: match &redis {
            Some(client) => Quotas::shared(client.clone(), config.rate_limit_local_share),
            None => Quotas::local(),
        },
        spend: match config.redis_url.as_deref() {
            // Its own client: spend decisions wait longer for Redis than the others.
            Some(url) => SpendBudgets::shared(
                redis_client_with_timeout(
                    RedisSettings {
                        url,
                        password_file: config.redis_password_file.as_deref(),
                        ca_file: config.redis_ca_file.as_deref(),
                    },
                    config
                        .redis_decision_timeout
                        .max(crate::spend::MIN_SPEND_DECISION_TIMEOUT),
                )?,
                config.rate_limit_local_share,
            ),
            None => SpendBudgets::local(),
        },
        cache: ResultCache::new(shared_cache),
        last_good: moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(std::time::Duration::from_secs(24 * 3600))
            .build(),
        redactor: config.redact.redactor()?,
        sidecar_id,
        selector: Some(crate::selection_client::SelectionClient::new(
            selector_client(config)?,
            config.token().ok(),
        )),
        tool_metrics: Default::default(),
    });

    // Identity providers' access tokens, accepted by the MCP front door and the gRPC API.
    let oauth = match config.oauth()? {
        Some(settings) => {
            let validator = Arc::new(crate::oauth::JwtValidator::new(settings)?);
            validator.spawn_warm_up();
            Some(validator)
        }
        None => None,
    };
    let authenticator = Arc::new(SnapshotAuthenticator::with_oauth(snapshot.clone(), oauth));

    if let Some(addr) = config.mcp_listen {
        let listener = bind_retrying(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for MCP on {addr}: {e}"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving MCP (Streamable HTTP) at /mcp");
        let door = McpFrontDoor::new(executor.clone(), authenticator.clone()).with_search_mode(
            crate::mcp_search::SearchMode {
                above: config.mcp_search_above,
                agents: config
                    .mcp_search_agents
                    .iter()
                    .filter(|a| !a.is_empty())
                    .cloned()
                    .collect(),
            },
        );
        let mut hosts = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            addr.ip().to_string(),
        ];
        hosts.extend(config.mcp_allowed_hosts.iter().filter(|h| !h.is_empty()).cloned());
        let limits = crate::mcp_server::SessionLimits {
            allowed_hosts: hosts,
            max_sessions: config.mcp_max_sessions,
            idle: std::time::Duration::from_secs(config.mcp_session_idle_secs),
        };
        tokio::spawn(crate::mcp_server::serve(listener, door, limits));
    }

    toolplane_runtime::metrics::start(config.common.metrics_listen).await?;
    spawn_gauges(executor.clone());

    let (health, health_service) = grpc::health(&[EXECUTOR]).await;
    let (reflection_v1, reflection_v1alpha) = grpc::reflection(&[EXECUTOR])?;

    let (draining_tx, draining) = watch::channel(false);
    spawn_freshness_watch(snapshot.clone(), health.clone(), draining.clone());
    let drain_outbox = outbox.clone();
    tokio::spawn(async move {
        stop.await;
        grpc::set_health(&health, &[EXECUTOR], false).await;
        let _ = draining_tx.send(true);
        tracing::info!(pending_events = drain_outbox.pending(), "draining");
    });
    let mut drained = draining.clone();
    let mut builder = Server::builder();
    if let Some(tls) = config.common.tls.server_config("sidecar", listener.local_addr()?)? {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .layer(RpcMetricsLayer)
        .layer(AuthLayer::new(authenticator))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::executor_server::ExecutorServer::new(ExecutorGrpc(executor)))
        .serve_with_incoming_shutdown(incoming(listener), async move {
            let _ = drained.wait_for(|d| *d).await;
        });
    with_grace(server, draining, config.common.shutdown_grace).await?;
    // Give the sync client a moment to deliver what the last calls produced, and calls
    // whose callers went away (they run on) a moment to finish.
    let deadline = tokio::time::Instant::now() + config.common.shutdown_grace;
    while outbox.outstanding() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if outbox.pending() > 0 {
        tracing::warn!(pending_events = outbox.pending(), "exiting with undelivered events");
    }
    Ok(())
}
