//! OAuth 2.1 resource server: JWT access tokens from the organisation's identity
//! providers, validated the way the MCP authorization spec asks of a resource server.
//!
//! - Only configured issuers are trusted; each one's keys come from its JWKS, found by
//!   OIDC / RFC 8414 discovery (`TOOLPLANE_OAUTH_ISSUERS`) or read from a file
//!   (`TOOLPLANE_OAUTH_JWKS_FILE` for `TOOLPLANE_OAUTH_JWKS_ISSUER`).
//! - The audience must be this resource (`TOOLPLANE_MCP_RESOURCE`), so a token minted
//!   for another service is refused (no token passthrough).
//! - Algorithms are restricted to the asymmetric ones configured: `none` never parses,
//!   and HS* is never accepted (a public key is not a shared secret), whatever a token's
//!   header says. A key is used only with the algorithm family it belongs to.
//! - `exp` is required and checked, `nbf` when present, with a bounded clock skew.
//! - Keys are cached; a token naming an unknown `kid` refreshes its issuer's JWKS (key
//!   rotation), at most once per `TOOLPLANE_OAUTH_JWKS_MIN_REFRESH_SECS`, so random
//!   `kid`s cannot turn the sidecar into a flood against the identity provider.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

/// Largest discovery document or JWKS accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// How long a discovery or JWKS request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys older than this are refetched on the next token (rotation without a new `kid`
/// is rare, but a removed key must stop working eventually).
const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// How long a verified token is remembered (a key withdrawn from the JWKS stops
/// working at most this much later).
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Most verified tokens remembered.
const VERIFIED_CAPACITY: u64 = 10_000;
/// The most clock skew an operator may allow.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Algorithms accepted when none are configured.
pub const DEFAULT_ALGORITHMS: &str = "RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384,EdDSA";

/// Why a bearer token was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Not a valid token for this resource: HTTP 401 / UNAUTHENTICATED.
    #[error("{0}")]
    Invalid(String),
    /// The issuer's keys cannot be had now: HTTP 503 / UNAVAILABLE.
    #[error("{0}")]
    Unavailable(String),
}

/// What an operator configures.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// Issuer URLs whose keys are found by discovery.
    pub issuers: Vec<String>,
    /// A JWKS file and the issuer it holds keys of.
    pub jwks_file: Option<(String, PathBuf)>,
    /// This resource's URL: the audience every token must name.
    pub resource: String,
    /// Claim naming the toolplane agent (by id or name).
    pub agent_claim: String,
    pub leeway: Duration,
    pub algorithms: Vec<Algorithm>,
    pub min_refresh: Duration,
    /// PEM CA bundle trusted for https issuers besides the public roots.
    pub ca_file: Option<PathBuf>,
}

/// Parses `TOOLPLANE_OAUTH_ALGORITHMS`: asymmetric algorithms only.
pub fn parse_algorithms(list: &str) -> Result<Vec<Algorithm>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.eq_ignore_ascii_case("none") {
            return Err("algorithm \"none\" is never accepted".to_owned());
        }
        let alg: Algorithm = name
            .parse()
            .map_err(|_| format!("{name:?} is not a JWS algorithm (e.g. RS256, ES256, EdDSA)"))?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(format!(
                "{name} is a shared-secret algorithm; only public-key algorithms are accepted from identity providers"
            ));
        }
        out.push(alg);
    }
    if out.is_empty() {
        return Err("no algorithm configured".to_owned());
    }
    Ok(out)
}

/// Where an issuer's keys come from.
enum KeySource {
    /// Discovered from the issuer's metadata, then its `jwks_uri`.
    Discovery,
    File(PathBuf),
}

struct Keys {
    by_kid: HashMap<String, (Jwk, DecodingKey)>,
    /// Keys without a `kid`, tried by algorithm family.
    anonymous: Vec<(Jwk, DecodingKey)>,
    fetched: Option<Instant>,
}

struct Issuer {
    issuer: String,
    source: KeySource,
    jwks_uri: RwLock<Option<String>>,
    keys: RwLock<Keys>,
    /// Last refresh attempt; held while refreshing so concurrent misses fetch once.
    last_attempt: Mutex<Option<Instant>>,
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Validates JWT access tokens for one resource.
pub struct JwtValidator {
    settings: OAuthSettings,
    issuers: Vec<Arc<Issuer>>,
    http: Client<Connector, Empty<Bytes>>,
    /// Tokens verified lately, by digest, with their claims: a client sends the same
    /// token on every request, and its signature need not be checked each time. Kept
    /// at most [`VERIFIED_FOR`], and never past the token's own `exp`.
    verified: moka::future::Cache<String, Claims>,
}

/// A validated token's claims.
pub type Claims = Arc<Map<String, Value>>;

/// Whether `bearer` has the shape of a JWS compact serialization (three base64url
/// parts), as opposed to a toolplane token.
pub fn looks_like_jwt(bearer: &str) -> bool {
    bearer.starts_with("eyJ") && bearer.split('.').count() == 3
}

fn b64_json(part: &str) -> Option<Map<String, Value>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".to_owned(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        K::InvalidAudience => "the token's audience (aud) is not this resource".to_owned(),
        K::InvalidIssuer => "the token's issuer (iss) is not trusted".to_owned(),
        K::InvalidSignature => "the token's signature does not verify".to_owned(),
        K::InvalidAlgorithm => "the token's algorithm does not match its key".to_owned(),
        K::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        _ => format!("the token is malformed: {e}"),
    }
}

impl JwtValidator {
    pub fn new(settings: OAuthSettings) -> anyhow::Result<Self> {
        if settings.leeway > MAX_LEEWAY {
            anyhow::bail!("TOOLPLANE_OAUTH_LEEWAY_SECS may be at most {} s", MAX_LEEWAY.as_secs());
        }
        if settings.resource.is_empty() {
            anyhow::bail!("TOOLPLANE_MCP_RESOURCE (the audience tokens must name) is empty");
        }
        let mut issuers = Vec::new();
        for url in &settings.issuers {
            issuers.push(Arc::new(Issuer::new(url.clone(), KeySource::Discovery)));
        }
        if let Some((issuer, path)) = &settings.jwks_file {
            issuers.push(Arc::new(Issuer::new(issuer.clone(), KeySource::File(path.clone()))));
        }
        if issuers.is_empty() {
            anyhow::bail!("no OAuth issuer configured");
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(toolplane_runtime::tool_tls::client_config(settings.ca_file.as_deref())?)
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            settings,
            issuers,
            http,
            verified: moka::future::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_FOR)
                .build(),
        })
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// The issuers, as the protected-resource metadata names them.
    pub fn authorization_servers(&self) -> Vec<String> {
        self.issuers.iter().map(|i| i.issuer.clone()).collect()
    }

    /// Fetches every issuer's keys once, so the first token does not wait (failures are
    /// logged and retried on demand).
    pub fn spawn_warm_up(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            for issuer in &me.issuers {
                if let Err(e) = me.refresh(issuer, true).await {
                    tracing::warn!(issuer = %issuer.issuer, error = %e, "cannot load the identity provider's keys yet");
                }
            }
        });
    }

    /// Validates `token` and returns its claims.
    pub async fn validate(&self, token: &str) -> Result<Claims, TokenError> {
        let digest = toolplane_core::token::digest(token);
        if let Some(claims) = self.verified.get(&digest).await {
            let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
            if exp.saturating_add(self.settings.leeway.as_secs()) > jsonwebtoken::get_current_timestamp() {
                return Ok(claims);
            }
            self.verified.invalidate(&digest).await;
            return Err(TokenError::Invalid("the token has expired".to_owned()));
        }
        let claims = Arc::new(self.verify(token).await?);
        self.verified.insert(digest, claims.clone()).await;
        Ok(claims)
    }

    /// Checks `token`'s signature, issuer, audience and lifetime.
    async fn verify(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let invalid = |m: &str| TokenError::Invalid(m.to_owned());
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("the token is not a JWT"));
        };
        let raw_header = b64_json(head).ok_or_else(|| invalid("the token's header is not base64url JSON"))?;
        let alg_name = raw_header.get("alg").and_then(Value::as_str).unwrap_or_default();
        if alg_name.eq_ignore_ascii_case("none") || alg_name.is_empty() {
            return Err(invalid("unsigned tokens (alg none) are refused"));
        }
        let alg: Algorithm = alg_name
            .parse()
            .map_err(|_| TokenError::Invalid(format!("algorithm {alg_name:?} is not accepted")))?;
        if !self.settings.algorithms.contains(&alg) {
            return Err(TokenError::Invalid(format!("algorithm {alg_name} is not accepted")));
        }
        let kid = raw_header.get("kid").and_then(Value::as_str);
        // The issuer picks the keys; the signature is checked against them below.
        let claims = b64_json(body).ok_or_else(|| invalid("the token's payload is not base64url JSON"))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the token has no iss claim"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| TokenError::Invalid(format!("issuer {iss:?} is not trusted here")))?;

        let key = match self.key(issuer, kid, alg).await {
            Some(k) => k,
            None => {
                // An unknown key: the issuer may have rotated. Refresh (rate-limited) and
                // look again.
                self.refresh(issuer, false).await?;
                self.key(issuer, kid, alg).await.ok_or_else(|| {
                    TokenError::Invalid(match kid {
                        Some(k) => format!("no key {k:?} of issuer {iss:?} fits the token"),
                        None => format!("no key of issuer {iss:?} fits the token"),
                    })
                })?
            }
        };
        let mut validation = Validation::new(alg);
        validation.set_audience(&[&self.settings.resource]);
        validation.set_issuer(&[iss]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map(|d| d.claims)
            .map_err(|e| TokenError::Invalid(describe(&e)))
    }

    /// A key of `issuer` for `kid` usable with `alg`; refreshes keys grown too old.
    async fn key(&self, issuer: &Issuer, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let stale = {
            let keys = issuer.keys.read().await;
            keys.fetched.is_none_or(|t| t.elapsed() > MAX_KEY_AGE)
        };
        if stale {
            let _ = self.refresh(issuer, false).await;
        }
        let keys = issuer.keys.read().await;
        let fits = |jwk: &Jwk| {
            jwk.common
                .key_algorithm
                .is_none_or(|a| a.to_string() == format!("{alg:?}"))
                && jwk.common.public_key_use != Some(PublicKeyUse::Encryption)
                && family_matches(&jwk.algorithm, alg)
        };
        match kid {
            Some(kid) => keys
                .by_kid
                .get(kid)
                .filter(|(jwk, _)| fits(jwk))
                .map(|(_, k)| k.clone()),
            None => keys
                .by_kid
                .values()
                .chain(keys.anonymous.iter())
                .find(|(jwk, _)| fits(jwk))
                .map(|(_, k)| k.clone()),
        }
    }

    /// Refetches `issuer`'s keys unless that was tried within the minimum interval
    /// (`force` skips the interval: start-up).
    async fn refresh(&self, issuer: &Issuer, force: bool) -> Result<(), TokenError> {
        let mut last = issuer.last_attempt.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < self.settings.min_refresh) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let loaded = self.load(issuer).await;
        metrics::counter!(
            toolplane_runtime::metrics::JWKS_REFRESHES,
            "result" => if loaded.is_ok() { "ok" } else { "error" }
        )
        .increment(1);
        let jwks = loaded?;
        let (by_kid, anonymous) = parse_jwks(&jwks);
        tracing::info!(issuer = %issuer.issuer, keys = by_kid.len() + anonymous.len(), "loaded the identity provider's keys");
        *issuer.keys.write().await = Keys {
            by_kid,
            anonymous,
            fetched: Some(Instant::now()),
        };
        Ok(())
    }

    /// `issuer`'s JWKS document, from its file or its `jwks_uri`.
    async fn load(&self, issuer: &Issuer) -> Result<Value, TokenError> {
        Ok(match &issuer.source {
            KeySource::File(path) => {
                let text = tokio::fs::read(path).await.map_err(|e| {
                    TokenError::Unavailable(format!("cannot read the JWKS file {}: {e}", path.display()))
                })?;
                serde_json::from_slice::<Value>(&text).map_err(|e| {
                    TokenError::Unavailable(format!("the JWKS file {} is not JSON: {e}", path.display()))
                })?
            }
            KeySource::Discovery => {
                let uri = self.jwks_uri(issuer).await?;
                self.get_json(&uri).await?
            }
        })
    }

    /// The issuer's `jwks_uri`, from its OpenID Connect or OAuth metadata.
    async fn jwks_uri(&self, issuer: &Issuer) -> Result<String, TokenError> {
        if let Some(uri) = issuer.jwks_uri.read().await.clone() {
            return Ok(uri);
        }
        let base = issuer.issuer.trim_end_matches('/');
        let mut last_error = String::new();
        for doc in [
            format!("{base}/.well-known/openid-configuration"),
            oauth_metadata_url(&issuer.issuer),
        ] {
            match self.get_json(&doc).await {
                Ok(meta) => {
                    if meta.get("issuer").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
                        last_error = format!("{doc} names another issuer than {:?}", issuer.issuer);
                        continue;
                    }
                    let Some(uri) = meta.get("jwks_uri").and_then(Value::as_str) else {
                        last_error = format!("{doc} has no jwks_uri");
                        continue;
                    };
                    *issuer.jwks_uri.write().await = Some(uri.to_owned());
                    return Ok(uri.to_owned());
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(TokenError::Unavailable(format!(
            "cannot discover the keys of issuer {:?}: {last_error}",
            issuer.issuer
        )))
    }

    async fn get_json(&self, url: &str) -> Result<Value, TokenError> {
        let fail = |m: String| TokenError::Unavailable(format!("{url}: {m}"));
        let uri: http::Uri = url.parse().map_err(|_| fail("not a URL".to_owned()))?;
        let req = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("toolplane-sidecar/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let fetch = async {
            let resp = self.http.request(req).await.map_err(|e| fail(e.to_string()))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(fail(format!("HTTP {status}")));
            }
            serde_json::from_slice::<Value>(&bytes).map_err(|e| fail(format!("not JSON: {e}")))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| fail(format!("no answer within {FETCH_TIMEOUT:?}")))?
    }
}

impl Issuer {
    fn new(issuer: String, source: KeySource) -> Self {
        Self {
            issuer,
            source,
            jwks_uri: RwLock::new(None),
            keys: RwLock::new(Keys {
                by_kid: HashMap::new(),
                anonymous: Vec::new(),
                fetched: None,
            }),
            last_attempt: Mutex::new(None),
        }
    }
}

/// RFC 8414 metadata URL: the well-known segment goes before the issuer's path.
fn oauth_metadata_url(issuer: &str) -> String {
    match issuer.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let path = path.trim_end_matches('/');
            if path.is_empty() {
                format!("{scheme}://{host}/.well-known/oauth-authorization-server")
            } else {
                format!("{scheme}://{host}/.well-known/oauth-authorization-server/{path}")
            }
        }
        None => issuer.to_owned(),
    }
}

fn family_matches(params: &AlgorithmParameters, alg: Algorithm) -> bool {
    use Algorithm as A;
    match params {
        AlgorithmParameters::RSA(_) => matches!(alg, A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512),
        AlgorithmParameters::EllipticCurve(_) => matches!(alg, A::ES256 | A::ES384),
        AlgorithmParameters::OctetKeyPair(_) => alg == A::EdDSA,
        // A symmetric key in a JWKS is never used: a public key set is public.
        AlgorithmParameters::OctetKey(_) => false,
    }
}

type KeyEntry = (Jwk, DecodingKey);

/// The usable public keys of a JWKS; keys this validator cannot use (symmetric,
/// encryption-only, unknown types) are skipped one by one, not the whole set.
fn parse_jwks(jwks: &Value) -> (HashMap<String, KeyEntry>, Vec<KeyEntry>) {
    let mut by_kid = HashMap::new();
    let mut anonymous = Vec::new();
    for raw in jwks.get("keys").and_then(Value::as_array).into_iter().flatten() {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            continue;
        };
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        match jwk.common.key_id.clone() {
            Some(kid) => {
                by_kid.insert(kid, (jwk, key));
            }
            None => anonymous.push((jwk, key)),
        }
    }
    (by_kid, anonymous)
}

#[cfg(test)]
#[path = "oauth_tests.rs"]
mod tests;
