//! Control plane authentication: the bootstrap admin token (compared by digest, in
//! constant time) or a token issued through `Identity.IssueToken`.

use std::sync::Arc;

use chrono::Utc;
use toolplane_core::model::{Principal, Role};
use toolplane_core::token;
use toolplane_runtime::auth::Authenticate;

use crate::error::ApiError;
use crate::storage::Store;

pub struct StoreAuthenticator {
    store: Arc<dyn Store>,
    admin_digest: String,
}

impl StoreAuthenticator {
    pub fn new(store: Arc<dyn Store>, admin_token: &str) -> Self {
        Self {
            store,
            admin_digest: token::digest(admin_token),
        }
    }
}

#[async_trait::async_trait]
impl Authenticate for StoreAuthenticator {
    async fn authenticate(&self, bearer: &str) -> Result<Option<Principal>, tonic::Status> {
        let digest = token::digest(bearer);
        if token::digests_equal(&digest, &self.admin_digest) {
            return Ok(Some(Principal::Admin { token_id: None }));
        }
        let Some(record) = self.store.token_by_digest(&digest).await.map_err(ApiError::from)? else {
            return Ok(None);
        };
        if !record.is_active(Utc::now()) {
            return Ok(None);
        }
        Ok(match (record.role, record.agent_id) {
            (Role::Admin, _) => Some(Principal::Admin {
                token_id: Some(record.id),
            }),
            (Role::Agent, Some(agent_id)) => Some(Principal::Agent {
                agent_id,
                token_id: record.id,
            }),
            (Role::Agent, None) => None,
            (Role::Sidecar, _) => Some(Principal::Sidecar { token_id: record.id }),
            (Role::Auditor, _) => Some(Principal::Auditor { token_id: record.id }),
        })
    }
}
