//! `ToolReview`: pending changes of pinned tool definitions, their review, and the
//! providers' review policies. Admin only.

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};
use toolplane_core::Violations;
use toolplane_core::convert::{spec_to_pb, tool_to_pb, ts};
use toolplane_core::definition::diff;
use toolplane_core::json::value_to_pb;
use toolplane_core::model::{AuditAction, Role, ToolChange, ToolChangeStatus, ToolReviewPolicy};
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::tool_review_server::ToolReview;
use toolplane_runtime::auth::{PrincipalExt, principal};

use super::{opt_uuid, uuid_field};
use crate::error::ApiResult;
use crate::mcp_import;
use crate::state::AppState;
use crate::tool_review;

/// Longest review reason kept.
const MAX_REASON_CHARS: usize = 1000;

pub struct ToolReviewService {
    state: Arc<AppState>,
}

impl ToolReviewService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

fn status_to_pb(s: ToolChangeStatus) -> i32 {
    (match s {
        ToolChangeStatus::Pending => pb::ToolChangeStatus::Pending,
        ToolChangeStatus::Approved => pb::ToolChangeStatus::Approved,
        ToolChangeStatus::Rejected => pb::ToolChangeStatus::Rejected,
        ToolChangeStatus::Superseded => pb::ToolChangeStatus::Superseded,
    }) as i32
}

fn status_from_pb(v: i32) -> Result<Option<ToolChangeStatus>, Violations> {
    Ok(match pb::ToolChangeStatus::try_from(v) {
        Ok(pb::ToolChangeStatus::Unspecified) => None,
        Ok(pb::ToolChangeStatus::Pending) => Some(ToolChangeStatus::Pending),
        Ok(pb::ToolChangeStatus::Approved) => Some(ToolChangeStatus::Approved),
        Ok(pb::ToolChangeStatus::Rejected) => Some(ToolChangeStatus::Rejected),
        Ok(pb::ToolChangeStatus::Superseded) => Some(ToolChangeStatus::Superseded),
        Err(_) => return Err(Violations::single("status", format!("{v} is not a ToolChangeStatus"))),
    })
}

/// A change on the wire, with its diff against the approved definition it was found on
/// (the base's server-owned fields are the proposal's `merge` inverse: what differs).
pub fn change_to_pb(c: &ToolChange) -> pb::ToolChange {
    pb::ToolChange {
        id: c.id.to_string(),
        tool_id: c.tool_id.to_string(),
        tool_name: c.tool_name.clone(),
        base_version: c.base_version,
        base_hash: c.base_hash.clone(),
        proposed_hash: c.proposed_hash.clone(),
        source: c.source.clone(),
        status: status_to_pb(c.status),
        diff: Vec::new(),
        proposed: Some(spec_to_pb(c.proposed.clone())),
        detected_at: Some(ts(c.detected_at)),
        reviewed_at: c.reviewed_at.map(ts),
        reviewed_by: c.reviewed_by.clone(),
        review_reason: c.review_reason.clone(),
    }
}

fn policy_to_pb(p: &ToolReviewPolicy) -> pb::ToolReviewPolicy {
    pb::ToolReviewPolicy {
        provider: p.provider.clone(),
        auto_approve: p.auto_approve,
        updated_at: Some(ts(p.updated_at)),
    }
}

impl ToolReviewService {
    /// A change with its diff against the approved version it was found on.
    async fn with_diff(&self, c: &ToolChange) -> ApiResult<pb::ToolChange> {
        let mut out = change_to_pb(c);
        let base = self.state.store.get_tool_version(c.tool_id, c.base_version).await?;
        if let Some(base) = base {
            let proposed = mcp_import::merge(&base.spec, &c.proposed);
            out.diff = diff(&base.spec, &proposed)
                .into_iter()
                .map(|f| pb::ToolFieldChange {
                    field: f.field.to_owned(),
                    before: Some(value_to_pb(&f.before)),
                    after: Some(value_to_pb(&f.after)),
                })
                .collect();
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl ToolReview for ToolReviewService {
    async fn list_tool_changes(
        &self,
        request: Request<pb::ListToolChangesRequest>,
    ) -> Result<Response<pb::ListToolChangesResponse>, Status> {
        principal(&request)?.require(&[Role::Admin, Role::Auditor], "ListToolChanges")?;
        let req = request.into_inner();
        let status = status_from_pb(req.status).map_err(crate::error::ApiError::from)?;
        let tool_id = opt_uuid("tool_id", &req.tool_id)?;
        let changes = self
            .state
            .store
            .list_tool_changes(status, tool_id)
            .await
            .map_err(crate::error::ApiError::from)?;
        let mut out = Vec::with_capacity(changes.len());
        for c in &changes {
            out.push(self.with_diff(c).await?);
        }
        Ok(Response::new(pb::ListToolChangesResponse { changes: out }))
    }

    async fn review_tool_change(
        &self,
        request: Request<pb::ReviewToolChangeRequest>,
    ) -> Result<Response<pb::ReviewToolChangeResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "ReviewToolChange")?;
        let req = request.into_inner();
        let id = uuid_field("change_id", &req.change_id)?;
        if req.reason.chars().count() > MAX_REASON_CHARS {
            return Err(crate::error::ApiError::from(Violations::single(
                "reason",
                format!("is longer than {MAX_REASON_CHARS} characters"),
            ))
            .into());
        }
        let (change, tool) = tool_review::review(&self.state, &who, id, req.approve, req.reason).await?;
        let change = self.with_diff(&change).await?;
        Ok(Response::new(pb::ReviewToolChangeResponse {
            change: Some(change),
            tool: Some(tool_to_pb(&tool)),
        }))
    }

    async fn set_tool_review_policy(
        &self,
        request: Request<pb::SetToolReviewPolicyRequest>,
    ) -> Result<Response<pb::SetToolReviewPolicyResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "SetToolReviewPolicy")?;
        let req = request.into_inner();
        if req.provider.is_empty() || req.provider.chars().count() > 200 {
            return Err(crate::error::ApiError::from(Violations::single(
                "provider",
                "is required, at most 200 characters",
            ))
            .into());
        }
        let policy = ToolReviewPolicy {
            provider: req.provider,
            auto_approve: req.auto_approve,
            updated_at: Utc::now(),
        };
        let detail = format!(
            "changes of provider {:?}'s tools are now {}",
            policy.provider,
            if policy.auto_approve {
                "approved automatically"
            } else {
                "reviewed by an admin"
            }
        );
        let audit = self
            .state
            .admin_event(&who, AuditAction::ToolReviewPolicySet, None, None, detail);
        self.state
            .store
            .set_tool_review_policy(&policy, &audit)
            .await
            .map_err(crate::error::ApiError::from)?;
        Ok(Response::new(pb::SetToolReviewPolicyResponse {
            policy: Some(policy_to_pb(&policy)),
        }))
    }

    async fn list_tool_review_policies(
        &self,
        request: Request<pb::ListToolReviewPoliciesRequest>,
    ) -> Result<Response<pb::ListToolReviewPoliciesResponse>, Status> {
        principal(&request)?.require(&[Role::Admin, Role::Auditor], "ListToolReviewPolicies")?;
        let policies = self
            .state
            .store
            .list_tool_review_policies()
            .await
            .map_err(crate::error::ApiError::from)?;
        Ok(Response::new(pb::ListToolReviewPoliciesResponse {
            policies: policies.iter().map(policy_to_pb).collect(),
        }))
    }
}
