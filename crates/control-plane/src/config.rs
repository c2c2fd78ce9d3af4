//! Control plane configuration: flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use toolplane_core::audit_checkpoint::{CheckpointSigner, TrustedKeys};
use toolplane_core::crypto::Keyring;
use toolplane_runtime::config::{CommonArgs, RedactArgs, secret};

#[derive(Debug, Clone, Parser)]
#[command(name = "toolplane-control-plane", version, about = "toolplane control plane (gRPC)")]
pub struct Config {
    /// gRPC listen address; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "TOOLPLANE_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// PostgreSQL URL; without it all state is kept in memory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    #[arg(long, env = "TOOLPLANE_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// Milliseconds between heartbeats on each sidecar's sync stream (keep it well
    /// under the sidecars' TOOLPLANE_MAX_SNAPSHOT_AGE).
    #[arg(long, env = "TOOLPLANE_SYNC_HEARTBEAT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(50..))]
    pub sync_heartbeat_ms: u64,

    /// Milliseconds between polls of the database's change revision, which heals a
    /// lost NOTIFY between replicas.
    #[arg(long, env = "TOOLPLANE_CHANGE_POLL_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(50..))]
    pub change_poll_ms: u64,
    /// With PostgreSQL: how often a replica reads the learning cells other replicas changed.
    #[arg(long, env = "TOOLPLANE_LEARNING_POLL_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(50..))]
    pub learning_poll_ms: u64,

    /// Seconds between pushes of learned tool statistics (reliability, latency) to
    /// sidecars and other replicas: outcomes move them with every call, so they are
    /// sent as one snapshot delta per period at most, not one per call.
    #[arg(long, env = "TOOLPLANE_STATS_PUSH_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub stats_push_secs: u64,

    /// Seconds a sidecar's sync session lasts before it must reconnect and
    /// authenticate again.
    #[arg(long, env = "TOOLPLANE_SYNC_SESSION_MAX_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub sync_session_max_secs: u64,

    /// Bootstrap admin token. Prefer --admin-token-file in production.
    #[arg(long, env = "TOOLPLANE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the bootstrap admin token (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "TOOLPLANE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Master key (64 hex characters) that seals tool credentials with AES-256-GCM.
    #[arg(long, env = "TOOLPLANE_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,

    /// File holding the master key (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "TOOLPLANE_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,

    /// Earlier master keys, comma-separated, kept to open credentials sealed before a
    /// rotation.
    #[arg(
        long,
        env = "TOOLPLANE_RETIRED_MASTER_KEYS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub retired_master_keys: Vec<String>,

    /// Ed25519 key (its 32-byte seed, 64 hex characters) that signs the audit chains'
    /// checkpoints; keep it out of the database. Without one (nor its file) a key is
    /// made up at start, and its checkpoints verify only while its public key is kept.
    #[arg(long, env = "TOOLPLANE_AUDIT_SIGNING_KEY", hide_env_values = true)]
    pub audit_signing_key: Option<String>,

    /// File holding the audit signing key (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "TOOLPLANE_AUDIT_SIGNING_KEY_FILE")]
    pub audit_signing_key_file: Option<PathBuf>,

    /// Public keys (hex, comma-separated) of earlier signing keys whose checkpoints are
    /// still trusted after a rotation.
    #[arg(long, env = "TOOLPLANE_AUDIT_TRUSTED_KEYS", value_delimiter = ',')]
    pub audit_trusted_keys: Vec<String>,

    /// Seconds between checkpoints of the chains whose head moved; 0: only on demand
    /// (`Audit.SignAuditCheckpoints`).
    #[arg(long, env = "TOOLPLANE_AUDIT_CHECKPOINT_SECS", default_value_t = 60)]
    pub audit_checkpoint_secs: u64,

    /// Selection exploration: `off` (deterministic: always the best estimate) or
    /// `thompson` (sample each tool's suitability from its posterior, so tools with
    /// little evidence keep getting tried).
    #[arg(long, env = "TOOLPLANE_SELECTION_EXPLORATION", default_value = "off", value_parser = ["off", "thompson"])]
    pub selection_exploration: String,

    /// Days a remembered task (task memory: descriptions of past successful calls,
    /// the similar-tasks signal of selection) is kept after it was last seen; 0 turns
    /// task memory off and forgets what was kept.
    #[arg(long, env = "TOOLPLANE_TASK_MEMORY_DAYS", default_value_t = 90)]
    pub task_memory_days: u32,

    /// Tasks remembered per tool (the most recently seen are kept).
    #[arg(long, env = "TOOLPLANE_TASK_MEMORY_PER_TOOL", default_value_t = 200)]
    pub task_memory_per_tool: usize,

    /// Embedding model for selection: `off`, or `minilm` (all-MiniLM-L6-v2 in process;
    /// needs a build with the `embeddings` feature and the weights from `make model`).
    #[arg(long, env = "TOOLPLANE_EMBEDDINGS", default_value = "off", value_parser = ["off", "minilm"])]
    pub embeddings: String,

    /// Folder holding the embedding model (`config.json`, `tokenizer.json`,
    /// `model.safetensors`).
    #[arg(long, env = "TOOLPLANE_EMBEDDINGS_DIR", default_value = "models/all-minilm-l6-v2")]
    pub embeddings_dir: PathBuf,

    /// PEM CA bundle trusted for https:// MCP servers (imports and re-lists) besides the
    /// public roots (a private CA).
    #[arg(long, env = "TOOLPLANE_TOOL_CA_FILE")]
    pub tool_ca_file: Option<PathBuf>,

    /// Re-list every imported MCP server this often and flag changed tool definitions
    /// as pending changes (0, the default, turns the schedule off).
    #[arg(long, env = "TOOLPLANE_MCP_RELIST_SECS", default_value_t = 0)]
    pub mcp_relist_secs: u64,
    /// The admin console's HTTP address (e.g. 127.0.0.1:50052); off when unset. Served
    /// over TLS with TOOLPLANE_TLS_CERT/KEY like the gRPC port.
    #[arg(long, env = "TOOLPLANE_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,

    /// Minutes a console session lasts after login.
    #[arg(long, env = "TOOLPLANE_CONSOLE_SESSION_MINUTES", default_value_t = 480, value_parser = clap::value_parser!(u64).range(1..=10080))]
    pub console_session_minutes: u64,

    /// Mark the console's session cookie `Secure` although the console itself speaks
    /// plaintext: for a console behind a TLS-terminating proxy. Always on under TLS.
    #[arg(long, env = "TOOLPLANE_CONSOLE_SECURE_COOKIE", default_value_t = false)]
    pub console_secure_cookie: bool,

    /// Apply database migrations and exit (the Kubernetes migration Job).
    #[arg(long, env = "TOOLPLANE_MIGRATE_ONLY", default_value_t = false)]
    pub migrate_only: bool,

    /// Key names and patterns redacted besides the built-in ones.
    #[command(flatten)]
    pub redact: RedactArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// The bootstrap admin token, from the flag/env or the file.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        let token = secret(
            self.admin_token.as_deref(),
            self.admin_token_file.as_deref(),
            "admin token",
        )?
        .ok_or_else(|| {
            anyhow::anyhow!("set TOOLPLANE_ADMIN_TOKEN or TOOLPLANE_ADMIN_TOKEN_FILE (the bootstrap admin token)")
        })?;
        if token.len() < 32 {
            anyhow::bail!("the admin token must be at least 32 characters");
        }
        Ok(token)
    }
}

impl Config {
    /// The credential keyring, or `None` when no master key is configured (then
    /// SetCredential answers FAILED_PRECONDITION).
    pub fn keyring(&self) -> anyhow::Result<Option<Keyring>> {
        let Some(current) = secret(
            self.master_key.as_deref(),
            self.master_key_file.as_deref(),
            "master key",
        )?
        else {
            return Ok(None);
        };
        let retired = self
            .retired_master_keys
            .iter()
            .map(String::as_str)
            .filter(|k| !k.is_empty());
        Ok(Some(
            Keyring::new(&current, retired).map_err(|e| anyhow::anyhow!("TOOLPLANE_MASTER_KEY: {e}"))?,
        ))
    }
}

impl Config {
    /// The checkpoint signing key, or `None` when none is configured (the caller makes
    /// up an ephemeral one), and the trusted earlier public keys.
    pub fn audit_keys(&self) -> anyhow::Result<(Option<CheckpointSigner>, TrustedKeys)> {
        let signer = secret(
            self.audit_signing_key.as_deref(),
            self.audit_signing_key_file.as_deref(),
            "audit signing key",
        )?
        .map(|k| CheckpointSigner::from_seed_hex(&k))
        .transpose()
        .map_err(|e| anyhow::anyhow!("TOOLPLANE_AUDIT_SIGNING_KEY: {e}"))?;
        let trusted = TrustedKeys::parse(self.audit_trusted_keys.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("TOOLPLANE_AUDIT_TRUSTED_KEYS: {e}"))?;
        Ok((signer, trusted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags() {
        let c = Config::try_parse_from(["cp"]).unwrap();
        assert_eq!(c.listen.port(), 50051);
        assert!(c.database_url.is_none() || std::env::var_os("DATABASE_URL").is_some());
        let c = Config::try_parse_from(["cp", "--listen", "127.0.0.1:0", "--admin-token", "short"]).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert!(c.admin_token().is_err());
        assert!(Config::try_parse_from(["cp", "--shutdown-grace", "x"]).is_err());
    }

    #[test]
    fn audit_keys_parse_from_hex_and_refuse_anything_else() {
        let seed = "11".repeat(32);
        let public = CheckpointSigner::from_seed_hex(&seed).unwrap().public_key().to_hex();
        let c = Config::try_parse_from([
            "cp",
            "--audit-signing-key",
            &seed,
            "--audit-trusted-keys",
            &format!("{public},{public}"),
        ])
        .unwrap();
        let (signer, trusted) = c.audit_keys().unwrap();
        assert_eq!(signer.unwrap().public_key().to_hex(), public);
        assert_eq!(trusted.keys().count(), 1);
        let file = std::env::temp_dir().join(format!("audit-key-{}", uuid::Uuid::new_v4()));
        std::fs::write(&file, format!("{seed}\n")).unwrap();
        let c = Config::try_parse_from(["cp", "--audit-signing-key-file", file.to_str().unwrap()]).unwrap();
        assert!(
            c.audit_keys().unwrap().0.is_some(),
            "read from the file, newline trimmed"
        );
        std::fs::remove_file(&file).unwrap();
        for bad in [
            vec!["cp", "--audit-signing-key", "abcd"],
            vec!["cp", "--audit-trusted-keys", "not-a-key"],
        ] {
            let err = Config::try_parse_from(bad).unwrap().audit_keys().unwrap_err();
            assert!(err.to_string().contains("TOOLPLANE_AUDIT_"), "{err}");
        }
        let c = Config::try_parse_from(["cp"]).unwrap();
        if std::env::var_os("TOOLPLANE_AUDIT_SIGNING_KEY").is_none() {
            assert!(c.audit_keys().unwrap().0.is_none());
        }
        if std::env::var_os("TOOLPLANE_AUDIT_CHECKPOINT_SECS").is_none() {
            assert_eq!(c.audit_checkpoint_secs, 60);
        }
    }
}
