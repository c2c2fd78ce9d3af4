//! Applies `migrations/` under a PostgreSQL advisory lock, so several replicas starting
//! at once migrate exactly once (the SQL is embedded at build time).

refinery::embed_migrations!("../../migrations");

/// Arbitrary, fixed: identifies toolplane's migration lock among other advisory locks.
const MIGRATION_LOCK_KEY: i64 = 0x746f_6f6c_706c_616e; // "toolplan"

pub async fn run(url: &str) -> anyhow::Result<()> {
    let (config, tls) = super::pg_tls::target(url)?;
    let (mut client, connection) = config.connect(tls).await?;
    let conn_task = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = migrations::runner().run_async(&mut client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    drop(client);
    conn_task.abort();
    let report = result?;
    unlock?;
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "applied migration");
    }
    Ok(())
}
