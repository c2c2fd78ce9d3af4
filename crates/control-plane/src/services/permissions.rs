//! `Permissions`: grants and the explained check.

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};
use toolplane_core::Violations;
use toolplane_core::convert::{from_ts, permission_to_pb, permission_type_from_pb, sensitivity_from_pb};
use toolplane_core::model::{AuditAction, Permission, PermissionType, Principal, Role};
use toolplane_core::permission::{evaluate, is_enforced};
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::permissions_server::Permissions;
use toolplane_runtime::auth::{PrincipalExt, principal};
use uuid::Uuid;

use super::{required, uuid_field};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub struct PermissionsService {
    state: Arc<AppState>,
}

impl PermissionsService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn grant(&self, who: &Principal, req: pb::GrantRequest) -> ApiResult<Permission> {
        let p = required("permission", req.permission)?;
        let agent_id = uuid_field("permission.agent_id", &p.agent_id)?;
        let tool_id = uuid_field("permission.tool_id", &p.tool_id)?;
        let kind =
            permission_type_from_pb(p.r#type).ok_or_else(|| Violations::single("permission.type", "is required"))?;
        if !is_enforced(kind) {
            return Err(ApiError::Unimplemented(
                "this permission type (only FULL_ACCESS, READ_ONLY and DATA_RESTRICTED are enforced)",
            ));
        }
        let max_sensitivity = sensitivity_from_pb(p.max_sensitivity);
        if kind == PermissionType::DataRestricted && max_sensitivity.is_none() {
            return Err(Violations::single("permission.max_sensitivity", "is required for DATA_RESTRICTED").into());
        }
        let now = Utc::now();
        let expires_at = match p.expires_at.as_ref() {
            None => None,
            Some(t) => match from_ts(t) {
                Some(t) if t > now => Some(t),
                _ => {
                    return Err(Violations::single("permission.expires_at", "must be in the future").into());
                }
            },
        };
        let agent = self.state.store.get_agent(agent_id).await?;
        let tool = self.state.store.get_tool(tool_id).await?;
        if agent.is_none() {
            return Err(ApiError::NotFound(format!("agent {agent_id} not found")));
        }
        if tool.is_none() {
            return Err(ApiError::NotFound(format!("tool {tool_id} not found")));
        }
        let permission = Permission {
            id: Uuid::now_v7(),
            agent_id,
            tool_id,
            kind,
            max_invocations_per_day: p.max_invocations_per_day,
            allowed_hours: p.allowed_hours,
            time_zone: p.time_zone,
            max_sensitivity,
            granted_at: now,
            expires_at,
            granted_by: who.actor_id(),
        };
        self.state.store.create_permission(&permission).await?;
        self.state
            .audit_admin(
                who,
                AuditAction::PermissionGranted,
                Some(agent_id),
                Some(tool_id),
                format!("granted {} as {}", kind, permission.id),
            )
            .await?;
        self.state.changed();
        Ok(permission)
    }

    async fn check(&self, who: &Principal, req: pb::CheckRequest) -> ApiResult<pb::CheckResponse> {
        let agent_id = match who {
            Principal::Agent { agent_id, .. } => {
                if !req.agent_id.is_empty() && req.agent_id != agent_id.to_string() {
                    return Err(ApiError::PermissionDenied(
                        "an agent may only check its own permissions".to_owned(),
                    ));
                }
                *agent_id
            }
            _ => uuid_field("agent_id", &req.agent_id)?,
        };
        let agent = self
            .state
            .store
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("agent {agent_id} not found")))?;
        let tool = match req.tool {
            Some(pb::check_request::Tool::ToolId(id)) => {
                let id = uuid_field("tool_id", &id)?;
                self.state.store.get_tool(id).await?
            }
            Some(pb::check_request::Tool::ToolName(name)) => self.state.store.get_tool_by_name(&name).await?,
            None => return Err(Violations::single("tool", "set tool_id or tool_name").into()),
        }
        .ok_or_else(|| ApiError::NotFound("tool not found".to_owned()))?;
        let grants = self.state.store.list_permissions(Some(agent.id), Some(tool.id)).await?;
        let d = evaluate(&agent, &tool, &grants, Utc::now());
        Ok(pb::CheckResponse {
            allowed: d.allowed,
            reason: d.reason,
            permission_id: d.permission_id.map(|p| p.to_string()).unwrap_or_default(),
        })
    }
}

fn later(rpc: &'static str) -> Status {
    ApiError::Unimplemented(rpc).into()
}

#[tonic::async_trait]
impl Permissions for PermissionsService {
    async fn grant(&self, request: Request<pb::GrantRequest>) -> Result<Response<pb::GrantResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "Grant")?;
        let p = PermissionsService::grant(self, &who, request.into_inner()).await?;
        Ok(Response::new(pb::GrantResponse {
            permission: Some(permission_to_pb(&p)),
        }))
    }

    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "Revoke")?;
        let id = uuid_field("permission_id", &request.get_ref().permission_id)?;
        let p = self
            .state
            .store
            .revoke_permission(id, Utc::now())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("no unrevoked grant {id}")))?;
        let detail = format!("revoked {} grant {id}", p.kind);
        self.state
            .audit_admin(
                &who,
                AuditAction::PermissionRevoked,
                Some(p.agent_id),
                Some(p.tool_id),
                detail,
            )
            .await?;
        self.state.changed();
        Ok(Response::new(pb::RevokeResponse {}))
    }

    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let who = principal(&request)?;
        Ok(Response::new(
            PermissionsService::check(self, &who, request.into_inner()).await?,
        ))
    }

    async fn list_permissions(
        &self,
        request: Request<pb::ListPermissionsRequest>,
    ) -> Result<Response<pb::ListPermissionsResponse>, Status> {
        let who = principal(&request)?;
        let req = request.into_inner();
        let agent = match &who {
            Principal::Agent { agent_id, .. } => Some(*agent_id),
            _ if req.agent_id.is_empty() => None,
            _ => Some(uuid_field("agent_id", &req.agent_id)?),
        };
        let tool = if req.tool_id.is_empty() {
            None
        } else {
            Some(uuid_field("tool_id", &req.tool_id)?)
        };
        let grants = self
            .state
            .store
            .list_permissions(agent, tool)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListPermissionsResponse {
            permissions: grants.iter().map(permission_to_pb).collect(),
        }))
    }

    async fn request_access(
        &self,
        _: Request<pb::RequestAccessRequest>,
    ) -> Result<Response<pb::RequestAccessResponse>, Status> {
        Err(later("Permissions.RequestAccess"))
    }

    async fn review_access_request(
        &self,
        _: Request<pb::ReviewAccessRequestRequest>,
    ) -> Result<Response<pb::ReviewAccessRequestResponse>, Status> {
        Err(later("Permissions.ReviewAccessRequest"))
    }

    async fn list_access_requests(
        &self,
        _: Request<pb::ListAccessRequestsRequest>,
    ) -> Result<Response<pb::ListAccessRequestsResponse>, Status> {
        Err(later("Permissions.ListAccessRequests"))
    }
}
