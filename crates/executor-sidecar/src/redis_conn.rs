//! The sidecar's Redis connection: `rediss://` over rustls (public roots plus an
//! optional private CA), an ACL user from the URL and its password from a file mounted
//! into the sidecar container only. Redis holds the fleet's rate limits, quotas and
//! shared cache, and the agent shares the sidecar's network: only the password keeps
//! the agent out, so it never travels in the (non-secret) URL of a shared ConfigMap.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::TlsConnector;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::shared_redis::REDIS_DECISION_TIMEOUT;

/// Where and how to reach Redis.
#[derive(Debug, Clone, Copy)]
pub struct RedisSettings<'a> {
    pub url: &'a str,
    pub password_file: Option<&'a Path>,
    pub ca_file: Option<&'a Path>,
}

/// The client configuration `settings` describe (no I/O besides reading the files).
pub fn redis_config(settings: RedisSettings<'_>) -> anyhow::Result<Config> {
    // fred's own rediss:// handling loads the system's roots; ours are the Mozilla set
    // and the configured CA, as for tools.
    let (tls, url) = match settings.url.strip_prefix("rediss://") {
        Some(rest) => (true, format!("redis://{rest}")),
        None => (false, settings.url.to_owned()),
    };
    let mut config = Config::from_url(&url).map_err(|e| anyhow::anyhow!("REDIS_URL is not a Redis URL: {e}"))?;
    if let Some(path) = settings.password_file {
        if config.password.is_some() {
            anyhow::bail!("REDIS_URL carries a password and TOOLPLANE_REDIS_PASSWORD_FILE is set: keep only the file");
        }
        let password = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the Redis password file {}: {e}", path.display()))?;
        config.password = Some(password.trim().to_owned());
    }
    if tls {
        config.tls = Some(TlsConnector::from(tls_config(settings.ca_file)?).into());
    } else if settings.ca_file.is_some() {
        anyhow::bail!("TOOLPLANE_REDIS_CA_FILE is set but REDIS_URL is not rediss://");
    } else if config.password.is_some() && !is_loopback(&url) {
        tracing::warn!("the Redis password goes over plaintext redis://; use rediss:// off this host");
    }
    Ok(config)
}

fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

/// Roots a `rediss://` server's certificate is checked against.
fn tls_config(extra_ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("cannot read the Redis CA bundle {}: {e}", path.display()))?
        {
            roots.add(cert.map_err(|e| anyhow::anyhow!("bad certificate in {}: {e}", path.display()))?)?;
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A Redis client for the rate limits, quotas and the shared cache. Connecting happens
/// in the background and reconnects forever; until Redis answers, all three work
/// locally.
pub fn redis_client(settings: RedisSettings<'_>) -> anyhow::Result<Client> {
    redis_client_with_timeout(settings, REDIS_DECISION_TIMEOUT)
}

/// [`redis_client`] whose commands wait up to `timeout` (e.g. for spend budgets).
pub fn redis_client_with_timeout(settings: RedisSettings<'_>, timeout: Duration) -> anyhow::Result<Client> {
    let client = Builder::from_config(redis_config(settings)?)
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2000, 2))
        .build()?;
    let connecting = client.clone();
    tokio::spawn(async move {
        if let Err(e) = connecting.init().await {
            tracing::warn!(error = %e, "cannot connect to Redis yet; limits and cache are local until it answers");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> RedisSettings<'_> {
        RedisSettings {
            url,
            password_file: None,
            ca_file: None,
        }
    }

    #[test]
    fn acl_users_tls_and_password_files_are_understood() {
        let c = redis_config(settings("redis://sidecar:pw@127.0.0.1:6379")).unwrap();
        assert_eq!(c.username.as_deref(), Some("sidecar"));
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert!(c.tls.is_none());

        let dir = std::env::temp_dir().join(format!("toolplane-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = redis_config(RedisSettings {
            password_file: Some(&file),
            ..settings("rediss://sidecar@redis.example:6380")
        })
        .unwrap();
        assert_eq!(c.username.as_deref(), Some("sidecar"));
        assert_eq!(c.password.as_deref(), Some("from-file"));
        assert!(c.tls.is_some(), "rediss:// is TLS");

        let twice = redis_config(RedisSettings {
            password_file: Some(&file),
            ..settings("redis://sidecar:pw@127.0.0.1")
        });
        assert!(twice.is_err(), "one source of the password");
        let ca_without_tls = redis_config(RedisSettings {
            ca_file: Some(&file),
            ..settings("redis://127.0.0.1")
        });
        assert!(ca_without_tls.is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
