//! `toolplane-control-plane`: config → telemetry → storage → serve → drain.

use clap::Parser;
use tokio::net::TcpListener;
use toolplane_control_plane::{config::Config, server, storage};
use toolplane_runtime::{lifecycle, telemetry};

/// mimalloc rather than glibc's malloc, as in the sidecar: ingest and snapshot
/// building allocate and free many small buffers across worker threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = telemetry::init(
        config.common.log_format,
        "toolplane-control-plane",
        config.common.otlp_endpoint.as_deref(),
    );
    if config.migrate_only {
        let url = config
            .database_url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--migrate-only needs DATABASE_URL"))?;
        storage::migrate(url).await?;
        tracing::info!("migrations applied; exiting (--migrate-only)");
        telemetry.shutdown();
        return Ok(());
    }
    config.admin_token()?;
    config.keyring()?;
    config.audit_keys()?;
    config.redact.redactor()?;
    config.common.tls.refuse_plaintext(config.listen)?;
    let store = storage::open(config.database_url.as_deref(), config.db_pool_size).await?;
    tracing::info!(
        backend = if config.database_url.is_some() {
            "postgres"
        } else {
            "memory"
        },
        "storage ready"
    );
    let listener = TcpListener::bind(config.listen).await?;
    lifecycle::announce("toolplane-control-plane", listener.local_addr()?);
    let served = server::serve(&config, store, listener, lifecycle::first_signal()).await;
    telemetry.shutdown();
    served
}
