//! Sidecar authentication: agent tokens are checked against the digests in the latest
//! snapshot, so the sidecar keeps authenticating while the control plane is away, for
//! at most `TOOLPLANE_MAX_SNAPSHOT_AGE`. With an identity provider configured
//! ([`crate::oauth`]), a JWT access token from it is accepted too: a configured claim
//! names the agent (by id or name) among the snapshot's agents.

use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;
use toolplane_core::model::{Principal, Role};
use toolplane_core::token;
use toolplane_runtime::auth::Authenticate;
use uuid::Uuid;

use crate::oauth::{JwtValidator, TokenError, looks_like_jwt};
use crate::snapshot::SharedSnapshot;

pub struct SnapshotAuthenticator {
    snapshot: SharedSnapshot,
    oauth: Option<Arc<JwtValidator>>,
}

/// Why a caller is not let in as an agent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// No valid credential: HTTP 401 / UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential for no agent here: HTTP 403 / PERMISSION_DENIED.
    #[error("{0}")]
    Forbidden(String),
    /// The sidecar cannot decide now (no fresh snapshot, identity provider away):
    /// HTTP 503 / UNAVAILABLE.
    #[error("{0}")]
    Unavailable(String),
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Refusal::Forbidden(m) => tonic::Status::permission_denied(m),
            Refusal::Unavailable(m) => tonic::Status::unavailable(m),
        }
    }
}

impl SnapshotAuthenticator {
    pub fn new(snapshot: SharedSnapshot) -> Self {
        Self { snapshot, oauth: None }
    }

    /// Also accepts JWT access tokens `oauth` validates.
    pub fn with_oauth(snapshot: SharedSnapshot, oauth: Option<Arc<JwtValidator>>) -> Self {
        Self { snapshot, oauth }
    }

    pub fn oauth(&self) -> Option<&Arc<JwtValidator>> {
        self.oauth.as_ref()
    }

    /// The agent `bearer` stands for: a toolplane agent token, or an identity
    /// provider's access token whose agent claim names an agent of the snapshot.
    pub async fn agent(&self, bearer: &str) -> Result<Uuid, Refusal> {
        if let (Some(oauth), true) = (&self.oauth, looks_like_jwt(bearer)) {
            let verdict = match oauth.validate(bearer).await {
                Ok(claims) => self.agent_of_claims(&claims, &oauth.settings().agent_claim),
                Err(TokenError::Invalid(m)) => Err(Refusal::Unauthenticated(m)),
                Err(TokenError::Unavailable(m)) => Err(Refusal::Unavailable(m)),
            };
            let outcome = match &verdict {
                Ok(_) => "accepted",
                Err(Refusal::Unauthenticated(_)) => "invalid",
                Err(Refusal::Forbidden(_)) => "forbidden",
                Err(Refusal::Unavailable(_)) => "unavailable",
            };
            metrics::counter!(toolplane_runtime::metrics::ACCESS_TOKENS, "outcome" => outcome).increment(1);
            return verdict;
        }
        match self.authenticate(bearer).await {
            Ok(Some(Principal::Agent { agent_id, .. })) => Ok(agent_id),
            Ok(Some(_)) => Err(Refusal::Unauthenticated("only agent tokens may use tools".to_owned())),
            Ok(None) => Err(Refusal::Unauthenticated("unknown, expired or revoked token".to_owned())),
            Err(s) => Err(Refusal::Unavailable(s.message().to_owned())),
        }
    }

    /// The snapshot's agent named by `claim` of a validated token: by id, else by name.
    fn agent_of_claims(&self, claims: &serde_json::Map<String, Value>, claim: &str) -> Result<Uuid, Refusal> {
        let snap = self
            .snapshot
            .serving()
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let subject = match claims.get(claim) {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            _ => {
                return Err(Refusal::Forbidden(format!(
                    "the token has no {claim:?} claim naming a toolplane agent"
                )));
            }
        };
        let by_id = Uuid::parse_str(subject).ok().filter(|id| snap.agent(*id).is_some());
        by_id.or_else(|| snap.agent_by_name(subject)).ok_or_else(|| {
            // The subject is the identity provider's, not a secret; bounded for the answer.
            let shown: String = subject.chars().take(128).collect();
            Refusal::Forbidden(format!(
                "the token's {claim:?} claim ({shown:?}) names no toolplane agent (by id or name)"
            ))
        })
    }
}

#[async_trait::async_trait]
impl Authenticate for SnapshotAuthenticator {
    async fn authenticate(&self, bearer: &str) -> Result<Option<Principal>, tonic::Status> {
        // An identity provider's token for a known agent acts as that agent (it has no
        // toolplane token id); any other is refused with the reason, which tells the
        // holder of the token nothing it does not know.
        if self.oauth.is_some() && looks_like_jwt(bearer) {
            return match self.agent(bearer).await {
                Ok(agent_id) => Ok(Some(Principal::Agent {
                    agent_id,
                    token_id: Uuid::nil(),
                })),
                Err(refusal) => Err(refusal.into()),
            };
        }
        // No snapshot yet, or one too old to trust (the token may have been revoked
        // since): UNAVAILABLE, saying why, rather than a verdict on the token.
        let snap = self.snapshot.serving().map_err(tonic::Status::from)?;
        let Some(record) = snap.token(&token::digest(bearer)) else {
            return Ok(None);
        };
        if !record.is_active(Utc::now()) {
            return Ok(None);
        }
        Ok(match (record.role, record.agent_id) {
            (Role::Agent, Some(agent_id)) => Some(Principal::Agent {
                agent_id,
                token_id: record.id,
            }),
            (Role::Admin, _) => Some(Principal::Admin {
                token_id: Some(record.id),
            }),
            (Role::Sidecar, _) => Some(Principal::Sidecar { token_id: record.id }),
            // Auditors read the control plane; they call no tools.
            (Role::Agent, None) | (Role::Auditor, _) => None,
        })
    }
}
