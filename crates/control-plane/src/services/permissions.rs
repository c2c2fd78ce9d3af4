//! `Permissions`: grants and the explained check.

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};
use toolplane_core::Violations;
use toolplane_core::convert::{
    access_request_to_pb, access_status_from_pb, from_ts, permission_to_pb, permission_type_from_pb,
    sensitivity_from_pb,
};
use toolplane_core::model::{
    AccessRequest, AccessRequestStatus, AuditAction, AuditEvent, Permission, PermissionType, Principal, Role,
};
use toolplane_core::permission::{evaluate, parse_time_zone};
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::permissions_server::Permissions;
use toolplane_runtime::auth::{PrincipalExt, principal};
use uuid::Uuid;

use super::paging::PageRequest;
use super::{opt_uuid, required, uuid_field};
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
        let permission = grant_from_pb(who, &p, agent_id, tool_id, PermissionType::FullAccess, true)?;
        if self.state.store.get_agent(agent_id).await?.is_none() {
            return Err(ApiError::NotFound(format!("agent {agent_id} not found")));
        }
        let Some(tool) = self.state.store.get_tool(tool_id).await? else {
            return Err(ApiError::NotFound(format!("tool {tool_id} not found")));
        };
        let audit = self.grant_event(who, &permission).about(&tool);
        self.state.store.create_permission(&permission, &audit).await?;
        self.state.changed();
        Ok(permission)
    }

    fn grant_event(&self, who: &Principal, p: &Permission) -> AuditEvent {
        self.state.admin_event(
            who,
            AuditAction::PermissionGranted,
            Some(p.agent_id),
            Some(p.tool_id),
            format!("granted {} as {}", p.kind, p.id),
        )
    }

    async fn request_access(&self, who: &Principal, req: pb::RequestAccessRequest) -> ApiResult<AccessRequest> {
        let Principal::Agent { agent_id, .. } = who else {
            return Err(ApiError::PermissionDenied(
                "only agents request access (admins grant directly)".to_owned(),
            ));
        };
        let tool = if req.tool_id.is_empty() && !req.tool_name.is_empty() {
            self.state.store.get_tool_by_name(&req.tool_name).await?
        } else {
            self.state.store.get_tool(uuid_field("tool_id", &req.tool_id)?).await?
        };
        let Some(tool) = tool else {
            return Err(ApiError::NotFound("tool not found".to_owned()));
        };
        let tool_id = tool.id;
        let justification = req.justification.trim();
        if justification.is_empty() {
            return Err(Violations::single("justification", "is required: say what the tool is needed for").into());
        }
        if justification.len() > MAX_JUSTIFICATION {
            return Err(
                Violations::single("justification", format!("is longer than {MAX_JUSTIFICATION} bytes")).into(),
            );
        }
        let pending = self
            .state
            .store
            .list_access_requests(Some(AccessRequestStatus::Pending), Some(*agent_id))
            .await?;
        if let Some(open) = pending.iter().find(|r| r.tool_id == tool_id) {
            return Err(ApiError::AlreadyExists(format!(
                "access request {} for this tool is already pending",
                open.id
            )));
        }
        let request = AccessRequest {
            id: Uuid::now_v7(),
            agent_id: *agent_id,
            tool_id,
            justification: justification.to_owned(),
            status: AccessRequestStatus::Pending,
            requested_at: Utc::now(),
            reviewed_at: None,
            reviewed_by: String::new(),
            review_reason: String::new(),
            permission_id: None,
        };
        let audit = self.state.admin_event(
            who,
            AuditAction::AccessRequested,
            Some(*agent_id),
            Some(tool_id),
            format!("access request {}: {}", request.id, request.justification),
        );
        self.state.store.create_access_request(&request, &audit).await?;
        Ok(request)
    }

    async fn review(&self, who: &Principal, req: pb::ReviewAccessRequestRequest) -> ApiResult<AccessRequest> {
        let id = uuid_field("request_id", &req.request_id)?;
        let request = self
            .state
            .store
            .get_access_request(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("access request {id} not found")))?;
        let reason = req.reason.trim().to_owned();
        if !req.approve && reason.is_empty() {
            return Err(Violations::single("reason", "is required when denying").into());
        }
        let now = Utc::now();
        let grant = if req.approve {
            let shape = req.grant.unwrap_or_default();
            let defaults = PermissionType::FullAccess;
            Some(grant_from_pb(
                who,
                &shape,
                request.agent_id,
                request.tool_id,
                defaults,
                false,
            )?)
        } else {
            None
        };
        let reviewed = AccessRequest {
            status: if req.approve {
                AccessRequestStatus::Approved
            } else {
                AccessRequestStatus::Denied
            },
            reviewed_at: Some(now),
            reviewed_by: who.actor_id(),
            review_reason: reason,
            permission_id: grant.as_ref().map(|g| g.id),
            ..request
        };
        let audit = |reviewed: &AccessRequest| {
            let mut events = vec![self.state.admin_event(
                who,
                AuditAction::AccessReviewed,
                Some(reviewed.agent_id),
                Some(reviewed.tool_id),
                format!("access request {id} {}: {}", reviewed.status, reviewed.review_reason),
            )];
            events.extend(grant.as_ref().map(|g| self.grant_event(who, g)));
            events
        };
        let Some(reviewed) = self
            .state
            .store
            .review_access_request(&reviewed, grant.as_ref(), &audit)
            .await?
        else {
            return Err(ApiError::FailedPrecondition(format!(
                "access request {id} is not pending any more"
            )));
        };
        if grant.is_some() {
            self.state.changed();
        }
        Ok(reviewed)
    }

    async fn list_requests(
        &self,
        who: &Principal,
        req: pb::ListAccessRequestsRequest,
    ) -> ApiResult<(Vec<AccessRequest>, String)> {
        let page = PageRequest::parse("access_requests", req.page_size, &req.page_token)?;
        let agent = own_agent_or("agent_id", who, &req.agent_id)?;
        let status = access_status_from_pb(req.status);
        let requests = self
            .state
            .store
            .access_requests_page(status, agent, page.after_id()?, page.fetch())
            .await?;
        Ok(page.finish(requests, |r| r.id.to_string()))
    }

    async fn list_grants(
        &self,
        who: &Principal,
        req: pb::ListPermissionsRequest,
    ) -> ApiResult<(Vec<Permission>, String)> {
        let page = PageRequest::parse("permissions", req.page_size, &req.page_token)?;
        let agent = own_agent_or("agent_id", who, &req.agent_id)?;
        let tool = opt_uuid("tool_id", &req.tool_id)?;
        let grants = self
            .state
            .store
            .permissions_page(agent, tool, page.after_id()?, page.fetch())
            .await?;
        Ok(page.finish(grants, |p| p.id.to_string()))
    }

    async fn check(&self, who: &Principal, req: pb::CheckRequest) -> ApiResult<pb::CheckResponse> {
        let agent_id = own_agent_or("agent_id", who, &req.agent_id)?
            .ok_or_else(|| Violations::single("agent_id", "is required"))?;
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
        let audit = |p: &Permission| {
            vec![self.state.admin_event(
                &who,
                AuditAction::PermissionRevoked,
                Some(p.agent_id),
                Some(p.tool_id),
                format!("revoked {} grant {id}", p.kind),
            )]
        };
        self.state
            .store
            .revoke_permission(id, Utc::now(), &audit)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("no unrevoked grant {id}")))?;
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
        let (grants, next_page_token) = self.list_grants(&who, request.into_inner()).await?;
        Ok(Response::new(pb::ListPermissionsResponse {
            permissions: grants.iter().map(permission_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn request_access(
        &self,
        request: Request<pb::RequestAccessRequest>,
    ) -> Result<Response<pb::RequestAccessResponse>, Status> {
        let who = principal(&request)?;
        let r = PermissionsService::request_access(self, &who, request.into_inner()).await?;
        Ok(Response::new(pb::RequestAccessResponse {
            request: Some(access_request_to_pb(&r)),
        }))
    }

    async fn review_access_request(
        &self,
        request: Request<pb::ReviewAccessRequestRequest>,
    ) -> Result<Response<pb::ReviewAccessRequestResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "ReviewAccessRequest")?;
        let r = self.review(&who, request.into_inner()).await?;
        Ok(Response::new(pb::ReviewAccessRequestResponse {
            request: Some(access_request_to_pb(&r)),
        }))
    }

    async fn list_access_requests(
        &self,
        request: Request<pb::ListAccessRequestsRequest>,
    ) -> Result<Response<pb::ListAccessRequestsResponse>, Status> {
        let who = principal(&request)?;
        let (requests, next_page_token) = self.list_requests(&who, request.into_inner()).await?;
        Ok(Response::new(pb::ListAccessRequestsResponse {
            requests: requests.iter().map(access_request_to_pb).collect(),
            next_page_token,
        }))
    }
}

/// Longest justification an access request may carry.
const MAX_JUSTIFICATION: usize = 4096;

/// The agent a request is about: an agent caller may only name itself (naming another
/// agent is refused, not silently narrowed); admins may name any agent or none.
fn own_agent_or(field: &str, who: &Principal, named: &str) -> ApiResult<Option<Uuid>> {
    match who {
        Principal::Agent { agent_id, .. } => {
            if !named.is_empty() && named != agent_id.to_string() {
                return Err(ApiError::PermissionDenied(format!(
                    "{field}: an agent may only name itself"
                )));
            }
            Ok(Some(*agent_id))
        }
        _ if named.is_empty() => Ok(None),
        _ => Ok(Some(uuid_field(field, named)?)),
    }
}

/// A grant's shape from the wire, checked field by field. `default_kind` applies when
/// the type is unset, unless `type_required`.
fn grant_from_pb(
    who: &Principal,
    p: &pb::Permission,
    agent_id: Uuid,
    tool_id: Uuid,
    default_kind: PermissionType,
    type_required: bool,
) -> ApiResult<Permission> {
    let kind = match permission_type_from_pb(p.r#type) {
        Some(k) => k,
        None if type_required => return Err(Violations::single("permission.type", "is required").into()),
        None => default_kind,
    };
    let max_sensitivity = sensitivity_from_pb(p.max_sensitivity);
    let mut bad = Violations::default();
    match kind {
        PermissionType::DataRestricted if max_sensitivity.is_none() => {
            bad.push("permission.max_sensitivity", "is required for DATA_RESTRICTED");
        }
        PermissionType::LimitedInvocations if p.max_invocations_per_day == 0 => {
            bad.push(
                "permission.max_invocations_per_day",
                "must be at least 1 for LIMITED_INVOCATIONS",
            );
        }
        PermissionType::TimeRestricted if p.allowed_hours.is_empty() => {
            bad.push(
                "permission.allowed_hours",
                "at least one hour (0..23) is required for TIME_RESTRICTED",
            );
        }
        _ => {}
    }
    if let Some(h) = p.allowed_hours.iter().find(|h| **h > 23) {
        bad.push("permission.allowed_hours", format!("hour {h} is not in 0..23"));
    }
    if let Err(e) = parse_time_zone(&p.time_zone) {
        bad.push("permission.time_zone", e);
    }
    let now = Utc::now();
    let expires_at = match p.expires_at.as_ref() {
        None => None,
        Some(t) => match from_ts(t) {
            Some(t) if t > now => Some(t),
            _ => {
                bad.push("permission.expires_at", "must be in the future");
                None
            }
        },
    };
    bad.into_result()?;
    Ok(Permission {
        id: Uuid::now_v7(),
        agent_id,
        tool_id,
        kind,
        max_invocations_per_day: p.max_invocations_per_day,
        allowed_hours: p.allowed_hours.clone(),
        time_zone: p.time_zone.clone(),
        max_sensitivity,
        granted_at: now,
        expires_at,
        granted_by: who.actor_id(),
    })
}
