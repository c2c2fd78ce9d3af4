//! Configuration helpers both binaries use.

use std::path::Path;
use std::time::Duration;

use toolplane_core::redact::{RedactError, Redactor};

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

/// What operators add to redaction (both binaries redact: the sidecar audit
/// parameters, errors and fallback details; the control plane task descriptions).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedactArgs {
    /// Extra secret key names, comma-separated (e.g. `ssn,pin code`); each is matched
    /// by its words, like the built-in ones (`pin code` matches `pinCode`, `user_pin_code`).
    #[arg(long, env = "TOOLPLANE_REDACT_KEYS", value_delimiter = ',')]
    pub redact_keys: Vec<String>,

    /// Extra regular expressions redacted in free text, separated by newlines or `;;`;
    /// a pattern with a capture group redacts only its first group.
    #[arg(long, env = "TOOLPLANE_REDACT_PATTERNS")]
    pub redact_patterns: Option<String>,
}

impl RedactArgs {
    /// The built-in redaction plus these additions; an invalid pattern is an error.
    pub fn redactor(&self) -> Result<Redactor, RedactError> {
        let keys = self.redact_keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty());
        Redactor::with_extra(
            keys,
            split_patterns(self.redact_patterns.as_deref().unwrap_or_default()),
        )
    }
}

/// Patterns separated by newlines or `;;` (a regex may well contain one `;`, rarely
/// two in a row); blank ones dropped.
fn split_patterns(s: &str) -> impl Iterator<Item = &str> {
    s.split('\n')
        .flat_map(|line| line.split(";;"))
        .map(str::trim)
        .filter(|p| !p.is_empty())
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

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        redact: RedactArgs,
    }

    #[test]
    fn redaction_additions_parse_and_bad_patterns_are_refused() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "x",
            "--redact-keys",
            "ssn, pin code,",
            "--redact-patterns",
            "acct-\\d{6};;  \nemp (\\d+)\n",
        ])
        .unwrap();
        assert_eq!(cli.redact.redact_keys, ["ssn", " pin code", ""]);
        let r = cli.redact.redactor().unwrap();
        assert!(r.is_secret_key("user_ssn") && r.is_secret_key("pinCode"));
        assert_eq!(r.redact_text("acct-123456 emp 7"), "[REDACTED] emp [REDACTED]");
        let bad = Cli::try_parse_from(["x", "--redact-patterns", "ok;;(unclosed"]).unwrap();
        let err = bad.redact.redactor().unwrap_err();
        assert!(err.to_string().contains("(unclosed"), "{err}");
        assert!(RedactArgs::default().redactor().is_ok());
    }

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
