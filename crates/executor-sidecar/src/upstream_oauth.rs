//! OAuth 2.0 client credentials (RFC 6749 §4.4) for tools whose credential is a grant:
//! the sidecar fetches access tokens from the authorization server itself, keeps each
//! until shortly before it expires, and fetches a new one once however many calls
//! need it at the same moment (single flight). A token the tool refuses (HTTP 401) is
//! dropped, so the retry that follows fetches a fresh one — again once for all.
//!
//! Tokens are keyed by the tool and a digest of the grant (token URL, client, secret,
//! scopes, audience): a rotated secret or changed grant never uses the old token.
//! The token request goes through the tool client, so the endpoint policy (SSRF)
//! applies to the token URL as to any tool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;
use toolplane_core::model::{Credential, OAuth2Settings};
use uuid::Uuid;

use crate::http_client::{CallError, ToolHttpClient};

/// A token is renewed this long before it expires (or a tenth of its lifetime, if
/// less), plus a second.
const RENEW_BEFORE: Duration = Duration::from_secs(30);
/// Lifetime assumed when the server does not say (`expires_in` absent).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Longest wait for the authorization server.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the credential has no OAuth 2.0 grant")]
    NoGrant,
    #[error("the token request failed: {0}")]
    Request(#[from] CallError),
    #[error("the authorization server's answer has no access_token")]
    NoToken,
}

impl TokenError {
    /// Whether a later call may succeed (the server was down or slow).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Request(CallError::Timeout(_) | CallError::Connect(_)) => true,
            Self::Request(CallError::Status { status, .. }) => status.as_u16() >= 500 || status.as_u16() == 429,
            _ => false,
        }
    }
}

#[derive(Clone)]
struct Token {
    value: String,
    renew_at: Instant,
}

type Slot = Arc<RwLock<Option<Token>>>;

#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<(Uuid, [u8; 32]), Slot>>,
}

fn grant_digest(c: &Credential, g: &OAuth2Settings) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [&g.token_url, &g.client_id, &c.secret, &g.audience] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for s in &g.scopes {
        h.update(s.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// `application/x-www-form-urlencoded` text of one value.
fn form(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl TokenCache {
    fn slot(&self, c: &Credential, g: &OAuth2Settings) -> Slot {
        let key = (c.tool_id, grant_digest(c, g));
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Slots of a grant that changed are dropped with the change.
        slots.retain(|(tool, digest), _| *tool != c.tool_id || *digest == key.1);
        slots.entry(key).or_default().clone()
    }

    /// A valid access token for the tool: the cached one, or a new one fetched once
    /// for every caller waiting on it.
    pub async fn token(&self, http: &ToolHttpClient, c: &Credential) -> Result<String, TokenError> {
        let g = c.settings.oauth2.as_ref().ok_or(TokenError::NoGrant)?;
        let slot = self.slot(c, g);
        if let Some(t) = slot.read().await.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.clone());
        }
        let mut held = slot.write().await;
        // Another caller may have fetched it while this one waited for the lock.
        if let Some(t) = held.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.clone());
        }
        let token = fetch(http, c, g).await?;
        let value = token.value.clone();
        *held = Some(token);
        Ok(value)
    }

    /// Drops `refused` (the tool answered 401 with it), unless a newer token replaced
    /// it already; the next [`TokenCache::token`] fetches a fresh one.
    pub async fn refused(&self, c: &Credential, refused: &str) {
        let Some(g) = c.settings.oauth2.as_ref() else {
            return;
        };
        let slot = self.slot(c, g);
        let mut held = slot.write().await;
        if held.as_ref().is_some_and(|t| t.value == refused) {
            *held = None;
        }
    }
}

async fn fetch(http: &ToolHttpClient, c: &Credential, g: &OAuth2Settings) -> Result<Token, TokenError> {
    use base64::Engine as _;
    let mut body = "grant_type=client_credentials".to_owned();
    if !g.scopes.is_empty() {
        body.push_str(&format!("&scope={}", form(&g.scopes.join(" "))));
    }
    if !g.audience.is_empty() {
        body.push_str(&format!("&audience={}", form(&g.audience)));
    }
    // client_secret_basic (RFC 6749 §2.3.1): both parts form-encoded first.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", form(&g.client_id), form(&c.secret)));
    let headers = [("authorization".to_owned(), format!("Basic {basic}"))];
    let started = Instant::now();
    let answer = http
        .send_form(&g.token_url, body.into_bytes(), &headers, TOKEN_TIMEOUT)
        .await?;
    let value = answer
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::NoToken)?
        .to_owned();
    let lifetime = answer
        .get("expires_in")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    // Servers count `exp` in whole seconds from a truncated `iat`, so a token may
    // end up to a second before `expires_in` says: that second is kept in hand too.
    let margin = RENEW_BEFORE.min(lifetime / 10) + Duration::from_secs(1);
    let keep = lifetime.saturating_sub(margin).max(lifetime / 4);
    tracing::info!(tool_id = %c.tool_id, lifetime_s = lifetime.as_secs(), "fetched an OAuth 2.0 access token");
    Ok(Token {
        value,
        // Counted from when the request was sent: the server's clock started then.
        renew_at: started + keep,
    })
}
