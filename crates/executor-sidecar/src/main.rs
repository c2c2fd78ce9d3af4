//! `toolplane-sidecar`: config → telemetry → serve (sync in the background) → drain.

use clap::Parser;
use tokio::net::TcpListener;
use toolplane_runtime::{lifecycle, telemetry};
use toolplane_sidecar::{config::Config, server};

/// mimalloc rather than glibc's malloc: a call allocates and frees many small buffers
/// across worker threads, where glibc spent ~14 % of the sidecar's CPU in `make
/// bench-invoke` (c=64 miss: 72 → 56 µs of CPU per call).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(config.worker_threads))
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let telemetry = telemetry::init(
        config.common.log_format,
        "toolplane-sidecar",
        config.common.otlp_endpoint.as_deref(),
    );
    config.token()?;
    config.redact.redactor()?;
    config.common.tls.refuse_plaintext(config.listen)?;
    config
        .control_plane_tls
        .check_plaintext(&config.control_plane, config.common.tls.allow_plaintext)?;
    let listener = TcpListener::bind(config.listen).await?;
    lifecycle::announce("toolplane-sidecar", listener.local_addr()?);
    let served = server::serve(&config, listener, lifecycle::first_signal()).await;
    telemetry.shutdown();
    served
}
