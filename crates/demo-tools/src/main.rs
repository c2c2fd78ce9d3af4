//! `toolplane-demo-tools`: serves the demo tools on `--listen` (default 127.0.0.1:50071).

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50071".to_owned())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("toolplane-demo-tools listening http={}", listener.local_addr()?);
    toolplane_demo_tools::serve(listener).await
}
