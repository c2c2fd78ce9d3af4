//! Configuration helpers both binaries use.

use std::path::Path;
use std::time::Duration;

use crate::telemetry::LogFormat;

/// Flags both binaries take.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Allow tool endpoints on link-local and cloud-metadata addresses.
    #[arg(long, env = "TOOLPLANE_ALLOW_LINK_LOCAL_ENDPOINTS", default_value_t = false)]
    pub allow_link_local_endpoints: bool,

    /// How long in-flight calls may take to finish after a shutdown signal.
    #[arg(long, env = "TOOLPLANE_SHUTDOWN_GRACE", value_parser = parse_secs, default_value = "10")]
    pub shutdown_grace: Duration,

    #[arg(long, env = "TOOLPLANE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Export spans over OTLP/gRPC to this collector, e.g. http://otel-collector:4317.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Serve Prometheus metrics at http://<addr>/metrics (off when unset).
    #[arg(long, env = "TOOLPLANE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub tls: crate::tls::ServerTlsArgs,
}

/// Parses `"10"` or `"10s"` as seconds (clap value parser).
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a number of seconds"))
}

/// Parses `"25"` or `"25ms"` as milliseconds (clap value parser).
pub fn parse_millis(s: &str) -> Result<Duration, String> {
    s.trim_end_matches("ms")
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a number of milliseconds"))
}

/// A secret given inline (flag or env) or in a file (e.g. a mounted Kubernetes
/// Secret); `None` when neither is set. Surrounding whitespace is dropped.
pub fn secret(inline: Option<&str>, file: Option<&Path>, what: &str) -> anyhow::Result<Option<String>> {
    match (inline, file) {
        (Some(v), _) => Ok(Some(v.trim().to_owned())),
        (None, Some(path)) => Ok(Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the {what} file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        )),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_or_without_their_unit() {
        assert_eq!(parse_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_millis("25"), Ok(Duration::from_millis(25)));
        assert_eq!(parse_millis("25ms"), Ok(Duration::from_millis(25)));
        assert!(parse_millis("25s").unwrap_err().contains("milliseconds"));
        assert!(parse_secs("ten").is_err());
    }
}
