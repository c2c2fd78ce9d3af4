//! Sidecar authentication: agent tokens are checked against the digests in the latest
//! snapshot, so the sidecar keeps authenticating while the control plane is away.

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
        let Some(snap) = self.snapshot.current() else {
            return Err(tonic::Status::unavailable(
                "no snapshot from the control plane yet; retry shortly",
            ));
        };
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
            (Role::Agent, None) => None,
        })
    }
}
