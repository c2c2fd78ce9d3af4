//! One call to a tool, over HTTP or MCP, turned into an [`Outcome`]: what the caller
//! gets, and whether the failure is worth retrying.

use std::time::Duration;

use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use toolplane_core::http_binding;

use sha2::{Digest, Sha256};
use toolplane_core::model::{AuthType, Credential, ExecutionStatus, ToolProtocol, ToolSpec};
use toolplane_core::redact::scrub_credential;
use toolplane_core::schema;
use uuid::Uuid;

use crate::http_client::{CallError, ClientIdentity, ToolHttpClient};
use crate::mcp_client::{McpCallError, McpPool};
use crate::snapshot::CompiledTool;
use crate::upstream_oauth::TokenCache;

#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: ExecutionStatus,
    pub output: Value,
    pub error: String,
    /// Timeouts, connection failures, 502/503/504 and 429: another try may work.
    pub retryable: bool,
    /// What the upstream asked us to wait (429 `Retry-After`).
    pub retry_after: Option<Duration>,
    /// The tool refused our credentials (HTTP 401/403).
    pub auth_failure: bool,
}

impl Outcome {
    pub fn ok(output: Value) -> Self {
        Self {
            status: ExecutionStatus::Success,
            output,
            error: String::new(),
            retryable: false,
            retry_after: None,
            auth_failure: false,
        }
    }

    fn failed(status: ExecutionStatus, error: String, retryable: bool) -> Self {
        Self {
            status,
            output: Value::Null,
            error,
            retryable,
            retry_after: None,
            auth_failure: false,
        }
    }

    pub fn circuit_open(tool: &str, retry_after: Duration) -> Self {
        let error = format!(
            "the circuit for tool {tool} is open after repeated failures; retry in {} ms",
            retry_after.as_millis()
        );
        Self {
            retry_after: Some(retry_after),
            ..Self::failed(ExecutionStatus::CircuitOpen, error, false)
        }
    }

    /// Whether this says the tool is unhealthy (for its circuit breaker); `None` when
    /// it says nothing either way (rate limiting, refusals before the call).
    pub fn health(&self) -> Option<bool> {
        match self.status {
            ExecutionStatus::Success | ExecutionStatus::PartialSuccess => Some(true),
            ExecutionStatus::Timeout | ExecutionStatus::ExecutionError | ExecutionStatus::ValidationError => {
                Some(false)
            }
            ExecutionStatus::RateLimited | ExecutionStatus::PermissionDenied | ExecutionStatus::CircuitOpen => None,
        }
    }
}

pub struct Upstream {
    pub http: ToolHttpClient,
    pub mcp: McpPool,
    tokens: TokenCache,
    /// Mutual-TLS tools' own clients, by tool and a digest of the identity (a
    /// rotated certificate gets a new client, and no connection of the old one).
    identities: Mutex<HashMap<Uuid, ([u8; 32], ToolHttpClient)>>,
    allow_link_local: bool,
    tool_ca: Option<std::path::PathBuf>,
}

impl Upstream {
    pub fn new(allow_link_local: bool, tool_ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Ok(Self {
            http: ToolHttpClient::new(allow_link_local, tool_ca)?,
            mcp: McpPool::new(allow_link_local, tool_ca)?,
            tokens: TokenCache::default(),
            identities: Mutex::default(),
            allow_link_local,
            tool_ca: tool_ca.map(std::path::Path::to_path_buf),
        })
    }

    /// The client a tool's calls go through: its own for a mutual-TLS credential (so
    /// its certificate is shown on its connections only), else the shared one.
    fn client_for(&self, credential: Option<&Credential>) -> Result<ToolHttpClient, String> {
        let Some(c) = credential.filter(|c| c.auth_type == AuthType::MutualTls) else {
            return Ok(self.http.clone());
        };
        let digest: [u8; 32] = Sha256::new()
            .chain_update(c.settings.client_certificate_pem.as_bytes())
            .chain_update([0])
            .chain_update(c.secret.as_bytes())
            .finalize()
            .into();
        let mut clients = self
            .identities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((d, client)) = clients.get(&c.tool_id)
            && *d == digest
        {
            return Ok(client.clone());
        }
        let identity = ClientIdentity::from_pem(&c.settings.client_certificate_pem, &c.secret)?;
        let client = ToolHttpClient::with_identity(self.allow_link_local, self.tool_ca.as_deref(), Some(identity))
            .map_err(|e| format!("cannot use the tool's client certificate: {e}"))?;
        clients.insert(c.tool_id, (digest, client.clone()));
        Ok(client)
    }

    /// Calls the tool once and validates its output against the output schema. The
    /// tool's credential is scrubbed from the error here, as the answer is received:
    /// everything after (retry logs, fallback details, the caller's error, audit
    /// events) only ever sees the scrubbed text, whatever the tool echoed.
    pub async fn call(
        &self,
        compiled: &CompiledTool,
        credential: Option<&Credential>,
        params: &Value,
        timeout: Duration,
        traceparent: &str,
    ) -> Outcome {
        let mut outcome = self.attempt(compiled, credential, params, timeout, traceparent).await;
        if let Some(c) = credential
            && !outcome.error.is_empty()
        {
            outcome.error = scrub_credential(&outcome.error, &c.secret);
        }
        outcome
    }

    async fn attempt(
        &self,
        compiled: &CompiledTool,
        credential: Option<&Credential>,
        params: &Value,
        timeout: Duration,
        traceparent: &str,
    ) -> Outcome {
        let tool = &compiled.tool;
        if timeout.is_zero() {
            let why = "the caller's deadline left no time for the call".to_owned();
            return Outcome::failed(ExecutionStatus::Timeout, why, false);
        }
        if let Some(c) = credential
            && c.expired(chrono::Utc::now())
        {
            let at = c.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default();
            let why = format!(
                "the credential of tool {} expired at {at}; an admin must set a new one (SetCredential)",
                tool.spec.name
            );
            // Said like the tool refusing our credential, so ON_AUTH_FAILURE fallbacks apply.
            return Outcome {
                auth_failure: true,
                ..Outcome::failed(ExecutionStatus::ExecutionError, why, false)
            };
        }
        let headers: Vec<(String, String)> = credential.and_then(Credential::header).into_iter().collect();
        let outcome = match tool.spec.protocol {
            ToolProtocol::Http => {
                // MCP sessions are keyed by their headers, so only HTTP calls carry it.
                let mut headers = headers.clone();
                headers.push(("traceparent".to_owned(), traceparent.to_owned()));
                let secret = credential.map_or("", |c| c.secret.as_str());
                let query = credential.and_then(Credential::query);
                let client = match self.client_for(credential) {
                    Ok(c) => c,
                    Err(why) => return Outcome::failed(ExecutionStatus::ExecutionError, why, false),
                };
                match credential.filter(|c| c.auth_type == AuthType::OAuth2) {
                    None => {
                        self.call_http(&client, &tool.spec, params, headers, query, timeout, secret)
                            .await
                            .0
                    }
                    Some(c) => {
                        self.call_with_token(&client, c, &tool.spec, params, headers, timeout)
                            .await
                    }
                }
            }
            ToolProtocol::Mcp => {
                let remote = if tool.spec.remote_name.is_empty() {
                    &tool.spec.name
                } else {
                    &tool.spec.remote_name
                };
                match self
                    .mcp
                    .call(&tool.spec.endpoint, remote, params, &headers, timeout)
                    .await
                {
                    Ok(v) => Outcome::ok(v),
                    Err(e @ McpCallError::Timeout(_)) => Outcome::failed(ExecutionStatus::Timeout, e.to_string(), true),
                    Err(e @ McpCallError::Connect(_)) => {
                        Outcome::failed(ExecutionStatus::ExecutionError, e.to_string(), true)
                    }
                    Err(e) => Outcome::failed(ExecutionStatus::ExecutionError, e.to_string(), false),
                }
            }
        };
        if outcome.status != ExecutionStatus::Success {
            return outcome;
        }
        // The input was checked against the same compiled schemas before the call.
        let validators = compiled.validators();
        match validators.as_ref().ok().and_then(|v| v.output.as_ref()) {
            Some(v) => match schema::check(v, "output", &outcome.output) {
                Ok(()) => outcome,
                // The output is kept for the PARTIAL strategy; callers never see it
                // under VALIDATION_ERROR.
                Err(violations) => Outcome {
                    output: outcome.output,
                    ..Outcome::failed(
                        ExecutionStatus::ValidationError,
                        format!("the tool's output breaks its output schema: {violations}"),
                        false,
                    )
                },
            },
            None => outcome,
        }
    }

    /// An OAuth 2.0 call: with the cached token, and once more with a fresh one if the
    /// tool answers 401 (the token was revoked or expired early).
    async fn call_with_token(
        &self,
        client: &ToolHttpClient,
        c: &Credential,
        spec: &ToolSpec,
        params: &Value,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Outcome {
        let started = std::time::Instant::now();
        let mut refused: Option<String> = None;
        loop {
            let token = match self.tokens.token(&self.http, c).await {
                Ok(t) => t,
                Err(e) => {
                    let why = format!("cannot get an OAuth 2.0 access token for the tool: {e}");
                    return Outcome {
                        auth_failure: !e.retryable(),
                        ..Outcome::failed(ExecutionStatus::ExecutionError, why, e.retryable())
                    };
                }
            };
            let mut h = headers.clone();
            h.push(("authorization".to_owned(), format!("Bearer {token}")));
            let left = timeout.saturating_sub(started.elapsed());
            let (mut outcome, unauthorized) = self.call_http(client, spec, params, h, None, left, &token).await;
            if !outcome.error.is_empty() {
                outcome.error = scrub_credential(&outcome.error, &token);
            }
            if unauthorized && refused.is_none() && !left.is_zero() {
                tracing::info!(tool = %spec.name, "the tool refused its OAuth 2.0 token; fetching a new one");
                self.tokens.refused(c, &token).await;
                refused = Some(token);
                continue;
            }
            return outcome;
        }
    }

    /// One HTTP request; also whether the tool answered 401.
    #[allow(clippy::too_many_arguments)]
    async fn call_http(
        &self,
        client: &ToolHttpClient,
        spec: &ToolSpec,
        params: &Value,
        mut headers: Vec<(String, String)>,
        credential_query: Option<(&str, &str)>,
        timeout: Duration,
        secret: &str,
    ) -> (Outcome, bool) {
        // Parameters passed the input schema; placing them can still fail for values
        // no URL can carry (a `..` path segment, a newline in a header).
        let request = match http_binding::render(&spec.endpoint, spec.http.as_ref(), params) {
            Ok(mut r) => {
                if let Some((name, value)) = credential_query {
                    match url::Url::parse(&r.url) {
                        Ok(mut u) => {
                            // The tool's own parameter of that name never stands in for the key.
                            let kept: Vec<(String, String)> = u
                                .query_pairs()
                                .filter(|(k, _)| k != name)
                                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                                .collect();
                            u.query_pairs_mut().clear().extend_pairs(kept).append_pair(name, value);
                            r.url = u.to_string();
                        }
                        Err(e) => {
                            let why = format!("the tool's URL is not valid: {e}");
                            return (Outcome::failed(ExecutionStatus::ExecutionError, why, false), false);
                        }
                    }
                }
                r
            }
            Err(e) => {
                let why = format!("the parameters cannot be sent: {e}");
                return (Outcome::failed(ExecutionStatus::ValidationError, why, false), false);
            }
        };
        // The tool's own header parameters never replace the credential's header.
        for (name, value) in request.headers {
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                headers.push((name, value));
            }
        }
        let sent = client
            .send(request.method, &request.url, request.body, &headers, timeout)
            .await;
        let unauthorized = matches!(&sent, Err(CallError::Status { status, .. }) if status.as_u16() == 401);
        let outcome = match sent {
            Ok(output) => Outcome::ok(output),
            Err(e @ CallError::Timeout(_)) => Outcome::failed(ExecutionStatus::Timeout, e.to_string(), true),
            Err(e @ CallError::Connect(_)) => Outcome::failed(ExecutionStatus::ExecutionError, e.to_string(), true),
            Err(CallError::Status {
                status,
                retry_after,
                body,
            }) if status.as_u16() == 429 => {
                let body = error_body(&body, secret);
                let after = retry_after
                    .map(|d| format!("; retry after {}s", d.as_secs()))
                    .unwrap_or_default();
                let error = format!("the tool is rate limiting (HTTP 429{after}): {body}");
                Outcome {
                    retry_after,
                    ..Outcome::failed(ExecutionStatus::RateLimited, error, true)
                }
            }
            Err(CallError::Status { status, body, .. }) => {
                let body = error_body(&body, secret);
                let retryable = matches!(status.as_u16(), 502..=504);
                let error = format!("the tool answered HTTP {status}: {body}");
                Outcome {
                    auth_failure: matches!(status.as_u16(), 401 | 403),
                    ..Outcome::failed(ExecutionStatus::ExecutionError, error, retryable)
                }
            }
            Err(e) => Outcome::failed(ExecutionStatus::ExecutionError, e.to_string(), false),
        };
        (outcome, unauthorized)
    }
}

/// Most of an error answer's body shown in an error.
const ERROR_BODY_EXCERPT: usize = 512;

/// The start of an error answer's body, the credential scrubbed before it is cut (so
/// no part of an echoed secret survives at the cut).
fn error_body(body: &str, secret: &str) -> String {
    let body = scrub_credential(body, secret);
    let mut end = body.len().min(ERROR_BODY_EXCERPT);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echoed_credential_cut_by_the_excerpt_leaves_no_part_behind() {
        let secret = "sk-cred-0123456789abcdef";
        let body = format!("{}{secret} and more", "x".repeat(ERROR_BODY_EXCERPT - 8));
        let shown = error_body(&body, secret);
        assert!(shown.len() <= ERROR_BODY_EXCERPT);
        assert!(!shown.contains("sk-cred"), "{shown}");
        assert_eq!(error_body("é".repeat(300).as_str(), "").len(), ERROR_BODY_EXCERPT);
    }
}
