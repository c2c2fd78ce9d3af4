//! Sidecar authentication: agent tokens are checked against the digests in the latest
//! snapshot, so the sidecar keeps authenticating while the control plane is away, for
//! at most `TOOLPLANE_MAX_SNAPSHOT_AGE`.

use chrono::Utc;
use toolplane_core::model::{Principal, Role};
use toolplane_core::token;
use toolplane_runtime::auth::Authenticate;

use crate::snapshot::SharedSnapshot;

pub struct SnapshotAuthenticator {
    snapshot: SharedSnapshot,
}

impl SnapshotAuthenticator {
    pub fn new(snapshot: SharedSnapshot) -> Self {
        Self { snapshot }
    }
}

#[async_trait::async_trait]
impl Authenticate for SnapshotAuthenticator {
    async fn authenticate(&self, bearer: &str) -> Result<Option<Principal>, tonic::Status> {
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
