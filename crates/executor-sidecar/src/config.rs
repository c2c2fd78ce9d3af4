//! Sidecar configuration: flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use toolplane_runtime::config::{CommonArgs, RedactArgs, parse_millis, parse_secs, secret};

#[derive(Debug, Clone, Parser)]
#[command(name = "toolplane-sidecar", version, about = "toolplane executor sidecar (gRPC)")]
pub struct Config {
    /// Threads serving calls. One by default, as a sidecar shares its pod's CPU with
    /// the agent: with one thread a call's tasks (gRPC stream, tool connection, outbox)
    /// never wake each other across CPUs, which took ~65 µs off a c=1 miss in `make
    /// bench-invoke` at equal c=64 throughput. Raise it for a sidecar many agents share.
    #[arg(long, env = "TOOLPLANE_SIDECAR_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,

    /// Agent-facing gRPC address; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "TOOLPLANE_SIDECAR_LISTEN", default_value = "127.0.0.1:50061")]
    pub listen: SocketAddr,

    /// Control plane URL.
    #[arg(long, env = "TOOLPLANE_CONTROL_PLANE", default_value = "http://127.0.0.1:50051")]
    pub control_plane: String,

    /// This sidecar's token (ROLE_SIDECAR). Prefer --token-file in production.
    #[arg(long, env = "TOOLPLANE_SIDECAR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    #[arg(long, env = "TOOLPLANE_SIDECAR_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Names this sidecar in audit events; defaults to a random id.
    #[arg(long, env = "TOOLPLANE_SIDECAR_ID")]
    pub sidecar_id: Option<String>,

    /// Directory of the on-disk event spool; events not yet acked by the control plane
    /// survive a sidecar restart there. Empty: keep them in memory only.
    #[arg(long, env = "TOOLPLANE_SPOOL_DIR", default_value = "toolplane-spool")]
    pub spool_dir: String,

    /// Most events waiting for the control plane's ack.
    #[arg(long, env = "TOOLPLANE_SPOOL_CAPACITY", default_value_t = crate::outbox::DEFAULT_CAPACITY)]
    pub spool_capacity: usize,

    /// When the spool is full: `reject` new calls (UNAVAILABLE) or `drop` events (counted).
    #[arg(long, env = "TOOLPLANE_SPOOL_FULL_POLICY", default_value = "reject")]
    pub spool_full_policy: crate::outbox::FullPolicy,

    /// fsync every spooled event (survives losing the host, costs latency).
    #[arg(long, env = "TOOLPLANE_SPOOL_FSYNC", default_value_t = false)]
    pub spool_fsync: bool,

    /// How long an audit event waits, already spooled, for others to share its batch
    /// to the control plane (milliseconds; a full batch goes at once). Longer means
    /// fewer messages, acks and commits per call; events appear in the audit table up
    /// to this much later.
    #[arg(long, env = "TOOLPLANE_AUDIT_LINGER_MS", value_parser = parse_millis, default_value = "25")]
    pub audit_linger: Duration,

    /// Seconds the sidecar keeps serving from its snapshot without hearing from the
    /// control plane (a snapshot, delta, heartbeat or ack). Past it every call is
    /// refused with UNAVAILABLE until the sidecar syncs again: a sidecar cut off from
    /// the control plane would otherwise keep admitting revoked tokens and grants for
    /// ever. Keep it several of the control plane's TOOLPLANE_SYNC_HEARTBEAT_MS and
    /// above TOOLPLANE_SYNC_IDLE_TIMEOUT_MS, so one lost connection is re-established
    /// before calls are refused.
    #[arg(long, env = "TOOLPLANE_MAX_SNAPSHOT_AGE", value_parser = parse_secs, default_value = "120")]
    pub max_snapshot_age: Duration,

    /// Which tools this sidecar holds: empty (the default) for the tools of the agents
    /// it serves, learned from the tokens it sees (a call from an agent not served yet
    /// first fetches that agent's tools from the control plane); comma-separated agent
    /// ids or names to hold those agents' tools from the start (and learn more); `*` for
    /// the whole catalog (a sidecar shared by many agents).
    #[arg(long, env = "TOOLPLANE_SIDECAR_AGENTS", default_value = "")]
    pub sidecar_agents: crate::scope_fetch::ScopeMode,

    /// Milliseconds a call waits for the control plane to send tools this sidecar does
    /// not hold yet (an agent's first call, a tool outside the scope) before it is
    /// refused with UNAVAILABLE.
    #[arg(long, env = "TOOLPLANE_SCOPE_FETCH_TIMEOUT_MS", value_parser = parse_millis, default_value = "5000")]
    pub scope_fetch_timeout: Duration,

    /// Tools whose compiled input/output schemas are kept (compiled on a tool's first
    /// call; the least used are dropped beyond it and compiled again when called).
    #[arg(long, env = "TOOLPLANE_VALIDATOR_CACHE", default_value_t = crate::snapshot::DEFAULT_VALIDATOR_CACHE)]
    pub validator_cache: u64,

    /// Milliseconds the sync stream may stay silent (no heartbeat or anything else)
    /// before the sidecar abandons it and reconnects: a half-open connection (the
    /// control plane's node gone without a FIN) is noticed this soon. Keep it a few of
    /// the control plane's TOOLPLANE_SYNC_HEARTBEAT_MS.
    #[arg(long, env = "TOOLPLANE_SYNC_IDLE_TIMEOUT_MS", value_parser = parse_millis, default_value = "15000")]
    pub sync_idle_timeout: Duration,

    /// Redis shared by all sidecars for rate limits, quotas and the L2 result cache;
    /// without it each sidecar limits and caches for itself. `rediss://` for TLS; an
    /// ACL user as `rediss://sidecar@host:6380` (its password from
    /// --redis-password-file, so the URL itself is no secret).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// File holding the Redis ACL user's password: mounted into the sidecar container
    /// only, so the agent beside it cannot authenticate to Redis.
    #[arg(long, env = "TOOLPLANE_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// PEM CA bundle trusted for a `rediss://` Redis besides the public roots.
    #[arg(long, env = "TOOLPLANE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Key (at least 32 characters) sealing result-cache values in Redis with
    /// HMAC-SHA256; values that do not carry a valid seal are not served. Shared by all
    /// sidecars, never given to agents. Without it the L2 cache in Redis is off.
    #[arg(long, env = "TOOLPLANE_REDIS_HMAC_KEY", hide_env_values = true)]
    pub redis_hmac_key: Option<String>,

    #[arg(long, env = "TOOLPLANE_REDIS_HMAC_KEY_FILE")]
    pub redis_hmac_key_file: Option<PathBuf>,

    /// This sidecar's share of a tool's rate limit while Redis does not answer, e.g.
    /// 0.25 with four sidecars.
    #[arg(long, env = "TOOLPLANE_RATE_LIMIT_LOCAL_SHARE", default_value_t = 1.0)]
    pub rate_limit_local_share: f64,

    /// Milliseconds a rate-limit or daily-budget decision waits for Redis before this
    /// sidecar decides locally (at its share). Spend-budget decisions wait at least a
    /// second.
    #[arg(long, env = "TOOLPLANE_REDIS_DECISION_TIMEOUT_MS", value_parser = parse_millis, default_value = "100")]
    pub redis_decision_timeout: Duration,

    /// Consecutive failures that open a tool's circuit.
    #[arg(long, env = "TOOLPLANE_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,

    /// How long an open circuit refuses calls before letting a probe through.
    #[arg(long, env = "TOOLPLANE_BREAKER_OPEN_SECS", value_parser = parse_secs, default_value = "30")]
    pub breaker_open_for: Duration,

    /// PEM CA bundle trusted for https:// tools besides the public roots (a private CA).
    #[arg(long, env = "TOOLPLANE_TOOL_CA_FILE")]
    pub tool_ca_file: Option<PathBuf>,

    /// Serve MCP (Streamable HTTP) for agents at http://<addr>/mcp, e.g.
    /// 127.0.0.1:50062; off when unset.
    #[arg(long, env = "TOOLPLANE_MCP_LISTEN")]
    pub mcp_listen: Option<SocketAddr>,

    /// Host names the MCP front door answers to (its `Host` header), comma-separated;
    /// anything else is refused, so a web page cannot reach it by DNS rebinding.
    /// Loopback names and the listen address are always allowed.
    #[arg(long, env = "TOOLPLANE_MCP_ALLOWED_HOSTS", value_delimiter = ',')]
    pub mcp_allowed_hosts: Vec<String>,

    /// Most MCP sessions open at once; a new session beyond it is refused (503).
    #[arg(long, env = "TOOLPLANE_MCP_MAX_SESSIONS", default_value_t = 1000)]
    pub mcp_max_sessions: usize,

    /// MCP search mode for large catalogs: an agent that may use more tools than this
    /// gets `toolplane_select` and `toolplane_call` from `tools/list` instead of every
    /// definition (0: never by count).
    #[arg(long, env = "TOOLPLANE_MCP_SEARCH_ABOVE", default_value_t = 100)]
    pub mcp_search_above: usize,

    /// Agents (ids or names, comma-separated) always in MCP search mode.
    #[arg(long, env = "TOOLPLANE_MCP_SEARCH_AGENTS", value_delimiter = ',')]
    pub mcp_search_agents: Vec<String>,

    /// An MCP session idle this long is closed.
    #[arg(long, env = "TOOLPLANE_MCP_SESSION_IDLE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub mcp_session_idle_secs: u64,

    /// This MCP endpoint's canonical URL, as clients reach it (e.g.
    /// https://tools.example.com/mcp): the audience identity-provider tokens must name,
    /// and the `resource` of its protected-resource metadata. Default
    /// http://<TOOLPLANE_MCP_LISTEN>/mcp.
    #[arg(long, env = "TOOLPLANE_MCP_RESOURCE")]
    pub mcp_resource: Option<String>,

    /// Identity providers (OAuth 2.1 / OIDC issuer URLs, comma-separated) whose JWT
    /// access tokens the MCP front door and the gRPC API accept besides toolplane agent
    /// tokens; their keys are found by discovery (`/.well-known/openid-configuration`,
    /// else RFC 8414). Off when unset.
    #[arg(long, env = "TOOLPLANE_OAUTH_ISSUERS", value_delimiter = ',')]
    pub oauth_issuers: Vec<String>,

    /// A JWKS file holding the signing keys of TOOLPLANE_OAUTH_JWKS_ISSUER (instead of
    /// discovery; re-read when a token names an unknown key).
    #[arg(long, env = "TOOLPLANE_OAUTH_JWKS_FILE", requires = "oauth_jwks_issuer")]
    pub oauth_jwks_file: Option<PathBuf>,

    /// The issuer (`iss`) whose keys TOOLPLANE_OAUTH_JWKS_FILE holds.
    #[arg(long, env = "TOOLPLANE_OAUTH_JWKS_ISSUER", requires = "oauth_jwks_file")]
    pub oauth_jwks_issuer: Option<String>,

    /// The access-token claim naming the toolplane agent, by id or by name (`sub`,
    /// `client_id`, `azp`, or a custom claim).
    #[arg(long, env = "TOOLPLANE_OAUTH_AGENT_CLAIM", default_value = "sub")]
    pub oauth_agent_claim: String,

    /// JWS algorithms accepted, comma-separated; public-key ones only (`none` and HS*
    /// are refused at start-up).
    #[arg(long, env = "TOOLPLANE_OAUTH_ALGORITHMS", default_value = crate::oauth::DEFAULT_ALGORITHMS)]
    pub oauth_algorithms: String,

    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most 300).
    #[arg(long, env = "TOOLPLANE_OAUTH_LEEWAY_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub oauth_leeway_secs: u64,

    /// Least time between two JWKS refreshes of one issuer triggered by tokens naming
    /// an unknown key (seconds).
    #[arg(long, env = "TOOLPLANE_OAUTH_JWKS_MIN_REFRESH_SECS", default_value_t = 30)]
    pub oauth_jwks_min_refresh_secs: u64,

    /// PEM CA bundle trusted for https identity providers besides the public roots.
    #[arg(long, env = "TOOLPLANE_OAUTH_CA_FILE")]
    pub oauth_ca_file: Option<PathBuf>,

    #[command(flatten)]
    pub control_plane_tls: toolplane_runtime::tls::ClientTlsArgs,

    /// Key names and patterns redacted besides the built-in ones.
    #[command(flatten)]
    pub redact: RedactArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    pub fn token(&self) -> anyhow::Result<String> {
        secret(self.token.as_deref(), self.token_file.as_deref(), "sidecar token")?.ok_or_else(|| {
            anyhow::anyhow!("set TOOLPLANE_SIDECAR_TOKEN or TOOLPLANE_SIDECAR_TOKEN_FILE (a ROLE_SIDECAR token)")
        })
    }

    /// The key sealing result-cache values in Redis, if configured.
    pub fn redis_sealer(&self) -> anyhow::Result<Option<crate::cache_seal::Sealer>> {
        secret(
            self.redis_hmac_key.as_deref(),
            self.redis_hmac_key_file.as_deref(),
            "Redis HMAC key",
        )?
        .map(|k| crate::cache_seal::Sealer::new(&k).map_err(anyhow::Error::msg))
        .transpose()
    }

    /// Refuses freshness settings that would refuse calls before a lost connection
    /// could even be noticed and replaced.
    pub fn check_freshness(&self) -> anyhow::Result<()> {
        if self.sync_idle_timeout < std::time::Duration::from_millis(100) {
            anyhow::bail!("TOOLPLANE_SYNC_IDLE_TIMEOUT_MS must be at least 100");
        }
        if self.max_snapshot_age <= self.sync_idle_timeout {
            anyhow::bail!(
                "TOOLPLANE_MAX_SNAPSHOT_AGE ({} s) must be longer than TOOLPLANE_SYNC_IDLE_TIMEOUT_MS ({} ms)",
                self.max_snapshot_age.as_secs(),
                self.sync_idle_timeout.as_millis()
            );
        }
        Ok(())
    }

    /// The MCP endpoint's resource URL.
    pub fn mcp_resource(&self) -> Option<String> {
        self.mcp_resource
            .clone()
            .or_else(|| self.mcp_listen.map(|a| format!("http://{a}/mcp")))
    }

    /// The identity providers' settings, when any is configured.
    pub fn oauth(&self) -> anyhow::Result<Option<crate::oauth::OAuthSettings>> {
        let issuers: Vec<String> = self.oauth_issuers.iter().filter(|i| !i.is_empty()).cloned().collect();
        if issuers.is_empty() && self.oauth_jwks_file.is_none() {
            return Ok(None);
        }
        let resource = self.mcp_resource().ok_or_else(|| {
            anyhow::anyhow!(
                "identity providers need TOOLPLANE_MCP_RESOURCE or TOOLPLANE_MCP_LISTEN (the token audience)"
            )
        })?;
        Ok(Some(crate::oauth::OAuthSettings {
            issuers,
            jwks_file: self.oauth_jwks_issuer.clone().zip(self.oauth_jwks_file.clone()),
            resource,
            agent_claim: self.oauth_agent_claim.clone(),
            leeway: Duration::from_secs(self.oauth_leeway_secs),
            algorithms: crate::oauth::parse_algorithms(&self.oauth_algorithms)
                .map_err(|e| anyhow::anyhow!("TOOLPLANE_OAUTH_ALGORITHMS: {e}"))?,
            min_refresh: Duration::from_secs(self.oauth_jwks_min_refresh_secs),
            ca_file: self.oauth_ca_file.clone(),
        }))
    }

    pub fn sidecar_id(&self) -> String {
        self.sidecar_id
            .clone()
            .unwrap_or_else(|| format!("sidecar-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maximum_age_shorter_than_the_idle_timeout_is_refused() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["toolplane-sidecar"];
            args.extend_from_slice(extra);
            Config::try_parse_from(args).unwrap()
        };
        assert!(parse(&[]).check_freshness().is_ok());
        assert_eq!(parse(&[]).max_snapshot_age, Duration::from_secs(120));
        let tight = parse(&["--max-snapshot-age", "2", "--sync-idle-timeout", "1000"]);
        assert!(tight.check_freshness().is_ok());
        let inverted = parse(&["--max-snapshot-age", "10", "--sync-idle-timeout", "15000"]);
        let e = inverted.check_freshness().unwrap_err().to_string();
        assert!(e.contains("TOOLPLANE_MAX_SNAPSHOT_AGE"), "{e}");
        assert!(parse(&["--sync-idle-timeout", "10"]).check_freshness().is_err());
    }

    #[test]
    fn identity_providers_need_an_audience_and_public_key_algorithms() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["toolplane-sidecar"];
            args.extend_from_slice(extra);
            Config::try_parse_from(args).unwrap()
        };
        assert!(parse(&[]).oauth().unwrap().is_none());
        let e = parse(&["--oauth-issuers", "https://idp.example"])
            .oauth()
            .unwrap_err()
            .to_string();
        assert!(e.contains("TOOLPLANE_MCP_RESOURCE"), "{e}");
        let on = parse(&[
            "--oauth-issuers",
            "https://idp.example",
            "--mcp-listen",
            "127.0.0.1:50062",
        ])
        .oauth()
        .unwrap()
        .unwrap();
        assert_eq!(on.resource, "http://127.0.0.1:50062/mcp");
        assert_eq!(on.agent_claim, "sub");
        let e = parse(&[
            "--oauth-issuers",
            "https://idp.example",
            "--mcp-resource",
            "https://tools.example/mcp",
            "--oauth-algorithms",
            "RS256,HS256",
        ])
        .oauth()
        .unwrap_err()
        .to_string();
        assert!(e.contains("TOOLPLANE_OAUTH_ALGORITHMS") && e.contains("HS256"), "{e}");
        assert!(
            Config::try_parse_from(["toolplane-sidecar", "--oauth-leeway-secs", "301"]).is_err(),
            "the skew is bounded"
        );
    }
}
