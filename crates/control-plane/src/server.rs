//! Builds the control plane's gRPC server: every service behind the auth layer, plus
//! open health and reflection, with staged shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use toolplane_core::validate::ToolPolicy;
use toolplane_proto::v1 as pb;
use toolplane_runtime::auth::AuthLayer;
use toolplane_runtime::grpc;
use toolplane_runtime::lifecycle::incoming;
use toolplane_runtime::lifecycle::with_grace;
use toolplane_runtime::rpc_metrics::RpcMetricsLayer;

use crate::auth::StoreAuthenticator;
use crate::checkpoints::Checkpoints;
use crate::config::Config;
use crate::selection::memory::MemoryConfig;
use crate::services::audit::AuditService;
use crate::services::identity::IdentityService;
use crate::services::learning::LearningService;
use crate::services::permissions::PermissionsService;
use crate::services::registry::RegistryService;
use crate::services::selector::SelectorService;
use crate::services::sync::{SessionPolicy, SyncService};
use crate::state::AppState;
use crate::storage::{Store, spawn_change_listener};

/// Polls the database's change revision and rebuilds what sidecars are served when it
/// moved: the safety net under NOTIFY, which is fire-and-forget.
fn spawn_change_poller(state: Arc<AppState>, every: Duration) {
    tokio::spawn(async move {
        let mut seen = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match state.store.change_revision().await {
                Ok(Some(now)) => {
                    if seen.is_some_and(|s| s != now) {
                        tracing::debug!(revision = now, "the database's change revision moved");
                        state.bump();
                    }
                    seen = Some(now);
                }
                Ok(None) => return,
                Err(e) => tracing::warn!(error = %e, "could not read the change revision"),
            }
        }
    });
}

/// Reads the shared learning cells other replicas changed, so every replica answers
/// selection and learning queries alike within one period.
fn spawn_learning_poller(state: Arc<AppState>, every: Duration) {
    if !state.store.shares_learning() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = state.refresh_learning().await {
                tracing::warn!(error = %e, "could not refresh shared learning");
            }
        }
    });
}

/// Every toolplane.v1 service this server answers, as health-check names.
const SERVICES: &[&str] = &[
    "toolplane.v1.ToolRegistry",
    "toolplane.v1.ToolSelector",
    "toolplane.v1.Permissions",
    "toolplane.v1.Identity",
    "toolplane.v1.Audit",
    "toolplane.v1.Learning",
    "toolplane.v1.SidecarSync",
];

/// Outcomes selection relearns from at start-up (the most recent).
const RELEARN_INVOCATIONS: usize = 200_000;
const TASK_MEMORY_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

#[cfg(feature = "embeddings")]
fn embedding_model(config: &Config) -> anyhow::Result<Arc<dyn crate::selection::Embed>> {
    Ok(Arc::new(crate::selection::embed::MiniLm::load(&config.embeddings_dir)?))
}

#[cfg(not(feature = "embeddings"))]
fn embedding_model(_: &Config) -> anyhow::Result<Arc<dyn crate::selection::Embed>> {
    anyhow::bail!(
        "TOOLPLANE_EMBEDDINGS=minilm needs a control plane built with the `embeddings` feature \
         (cargo build --release --features toolplane-control-plane/embeddings; make model fetches the weights)"
    )
}

/// Serves on `listener` until `stop` resolves, then reports NOT_SERVING, stops
/// accepting and drains in-flight calls within the configured grace period.
pub async fn serve(
    config: &Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admin_token = config.admin_token()?;
    let redactor = config.redact.redactor()?;
    let state = AppState::new(
        store.clone(),
        ToolPolicy {
            allow_link_local_endpoints: config.common.allow_link_local_endpoints,
        },
        config.keyring()?,
    );
    state.set_mcp_http(toolplane_runtime::egress::McpHttp::new(
        config.common.allow_link_local_endpoints,
        config.tool_ca_file.as_deref(),
    )?);
    if config.mcp_relist_secs > 0 {
        crate::relist::spawn(state.clone(), std::time::Duration::from_secs(config.mcp_relist_secs));
    }
    let authn = Arc::new(StoreAuthenticator::new(store, &admin_token));
    let console_redactor = redactor.clone();
    state
        .selector
        .set_exploration(config.selection_exploration == "thompson");
    if config.embeddings == "minilm" {
        state.selector.set_embedder(embedding_model(config)?);
        tracing::info!(dir = %config.embeddings_dir.display(), "selection uses the all-MiniLM-L6-v2 embedding model");
    }
    state.selector.memory.set_config(MemoryConfig {
        per_tool: config.task_memory_per_tool,
        retention: chrono::Duration::days(i64::from(config.task_memory_days)),
    });
    match state.load_task_memory(chrono::Utc::now()).await {
        Ok(n) if n > 0 => tracing::info!(tasks = n, "task memory loaded"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not load task memory; starting empty"),
    }
    {
        let s = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TASK_MEMORY_PRUNE_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = s.prune_task_memory(chrono::Utc::now()).await {
                    tracing::warn!(error = %e, "could not prune task memory");
                }
            }
        });
    }
    match state.relearn(RELEARN_INVOCATIONS).await {
        Ok(n) if n > 0 => tracing::info!(loaded = n, "selection learning loaded"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not relearn from stored outcomes; starting fresh"),
    }
    if let Some(url) = &config.database_url {
        let s = state.clone();
        spawn_change_listener(url.clone(), state.replica_id, move || s.bump());
        spawn_change_poller(state.clone(), Duration::from_millis(config.change_poll_ms));
        spawn_learning_poller(state.clone(), Duration::from_millis(config.learning_poll_ms));
    }

    state.spawn_stats_push(Duration::from_secs(config.stats_push_secs));

    let (signer, earlier) = config.audit_keys()?;
    let checkpoints = Arc::new(Checkpoints::new(signer, earlier));
    if config.audit_checkpoint_secs > 0 {
        checkpoints.spawn(state.store.clone(), Duration::from_secs(config.audit_checkpoint_secs));
    }

    toolplane_runtime::metrics::start(config.common.metrics_listen).await?;
    let sync = SyncService::new(
        state.clone(),
        SessionPolicy {
            heartbeat: Duration::from_millis(config.sync_heartbeat_ms),
            max_lifetime: Duration::from_secs(config.sync_session_max_secs),
        },
    );
    crate::observe::export(&state, &sync.fleet());
    let (health, health_service) = grpc::health(SERVICES).await;
    let (console_stop_tx, console_stop) = watch::channel(false);
    if let Some(addr) = config.console_listen {
        let tls = match (&config.common.tls.tls_cert, &config.common.tls.tls_key) {
            (Some(cert), Some(key)) => Some(crate::console::tls_config(cert, key)?),
            _ => {
                config.common.tls.refuse_plaintext(addr)?;
                None
            }
        };
        let console = crate::console::Console::new(crate::console::ConsoleParts {
            state: state.clone(),
            checkpoints: checkpoints.clone(),
            fleet: sync.fleet(),
            authn: authn.clone(),
            redactor: console_redactor,
            session_ttl: Duration::from_secs(config.console_session_minutes * 60),
            secure_cookies: tls.is_some() || config.console_secure_cookie,
        });
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        tracing::info!(url = %crate::console::url(local, tls.is_some()), "admin console listening");
        let mut stop = console_stop.clone();
        tokio::spawn(crate::console::serve(console, listener, tls, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    let (reflection_v1, reflection_v1alpha) = grpc::reflection(SERVICES)?;

    let (draining_tx, draining) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        grpc::set_health(&health, SERVICES, false).await;
        let _ = draining_tx.send(true);
        let _ = console_stop_tx.send(true);
    });
    let mut drained = draining.clone();
    // HTTP/2 pings find a peer that vanished without closing (a sidecar's node died):
    // its stream ends within a minute instead of holding a session forever.
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = config
        .common
        .tls
        .server_config("control plane", listener.local_addr()?)?
    {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .layer(RpcMetricsLayer)
        .layer(AuthLayer::new(authn))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::tool_registry_server::ToolRegistryServer::new(RegistryService::new(
            state.clone(),
        )))
        .add_service(pb::tool_review_server::ToolReviewServer::new(
            crate::services::tool_review::ToolReviewService::new(state.clone()),
        ))
        .add_service(pb::identity_server::IdentityServer::new(IdentityService::new(
            state.clone(),
        )))
        .add_service(pb::permissions_server::PermissionsServer::new(PermissionsService::new(
            state.clone(),
        )))
        .add_service(pb::sidecar_sync_server::SidecarSyncServer::new(sync).max_decoding_message_size(64 * 1024 * 1024))
        .add_service(pb::tool_selector_server::ToolSelectorServer::new(SelectorService::new(
            state.clone(),
            redactor,
        )))
        .add_service(pb::audit_server::AuditServer::new(AuditService::new(
            state.clone(),
            checkpoints.clone(),
        )))
        .add_service(pb::learning_server::LearningServer::new(LearningService::new(
            state.clone(),
        )))
        .serve_with_incoming_shutdown(incoming(listener), async move {
            let _ = drained.wait_for(|d| *d).await;
        });
    with_grace(server, draining, config.common.shutdown_grace).await?;
    tracing::info!("control plane stopped");
    Ok(())
}
