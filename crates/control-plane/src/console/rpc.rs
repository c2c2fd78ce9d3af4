//! The console's one way to read and change anything: the gRPC service implementations,
//! called in process with the logged-in principal in the request's extensions, exactly
//! where the API's auth layer puts it. Authorization, validation and the audit event
//! of every change are theirs.

use std::sync::Arc;

use futures::StreamExt;
use toolplane_core::model::Principal;
use toolplane_core::redact::Redactor;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::audit_server::Audit;
use toolplane_proto::v1::identity_server::Identity;
use toolplane_proto::v1::learning_server::Learning;
use toolplane_proto::v1::permissions_server::Permissions;
use toolplane_proto::v1::tool_registry_server::ToolRegistry;
use toolplane_proto::v1::tool_selector_server::ToolSelector;

use crate::checkpoints::Checkpoints;
use crate::services::audit::AuditService;
use crate::services::identity::IdentityService;
use crate::services::learning::LearningService;
use crate::services::permissions::PermissionsService;
use crate::services::registry::RegistryService;
use crate::services::selector::SelectorService;
use crate::state::AppState;

pub struct Services {
    pub registry: RegistryService,
    pub identity: IdentityService,
    pub permissions: PermissionsService,
    pub audit: AuditService,
    pub learning: LearningService,
    pub selector: SelectorService,
}

/// A request as the auth layer hands it to a service: `who` is the caller.
fn req<T>(who: &Principal, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.extensions_mut().insert(who.clone());
    r
}

type R<T> = Result<T, tonic::Status>;

impl Services {
    pub fn new(state: &Arc<AppState>, checkpoints: Arc<Checkpoints>, redactor: Redactor) -> Self {
        Self {
            registry: RegistryService::new(state.clone()),
            identity: IdentityService::new(state.clone()),
            permissions: PermissionsService::new(state.clone()),
            audit: AuditService::new(state.clone(), checkpoints),
            learning: LearningService::new(state.clone()),
            selector: SelectorService::new(state.clone(), redactor),
        }
    }

    pub async fn list_tools(&self, who: &Principal, r: pb::ListToolsRequest) -> R<pb::ListToolsResponse> {
        Ok(self.registry.list_tools(req(who, r)).await?.into_inner())
    }

    pub async fn get_tool(&self, who: &Principal, id: &str, version: u32) -> R<pb::Tool> {
        let r = pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Id(id.to_owned())),
            version,
        };
        let t = self.registry.get_tool(req(who, r)).await?.into_inner().tool;
        t.ok_or_else(|| tonic::Status::not_found("tool not found"))
    }

    pub async fn tool_by_name(&self, who: &Principal, name: &str) -> R<pb::Tool> {
        let r = pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name(name.to_owned())),
            version: 0,
        };
        let t = self.registry.get_tool(req(who, r)).await?.into_inner().tool;
        t.ok_or_else(|| tonic::Status::not_found("tool not found"))
    }

    pub async fn set_tool_enabled(&self, who: &Principal, tool_id: &str, enabled: bool) -> R<()> {
        let r = pb::SetToolEnabledRequest {
            tool_id: tool_id.to_owned(),
            enabled,
        };
        self.registry.set_tool_enabled(req(who, r)).await?;
        Ok(())
    }

    pub async fn fallback(&self, who: &Principal, tool_id: &str) -> R<Option<pb::FallbackStrategy>> {
        let r = pb::GetFallbackStrategyRequest {
            tool_id: tool_id.to_owned(),
        };
        match self.registry.get_fallback_strategy(req(who, r)).await {
            Ok(r) => Ok(r.into_inner().strategy),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    pub async fn effectiveness(&self, who: &Principal, tool_id: &str) -> R<Vec<pb::Effectiveness>> {
        let r = pb::GetEffectivenessRequest {
            tool_id: tool_id.to_owned(),
            ..Default::default()
        };
        Ok(self.learning.get_effectiveness(req(who, r)).await?.into_inner().rows)
    }

    /// One page of agents (`page_token` from the previous page's answer) and the token
    /// of the next page (empty at the end).
    pub async fn agents_page(&self, who: &Principal, page_token: &str, page_size: u32) -> R<(Vec<pb::Agent>, String)> {
        let r = pb::ListAgentsRequest {
            page_size,
            page_token: page_token.to_owned(),
            ..Default::default()
        };
        let page = self.identity.list_agents(req(who, r)).await?.into_inner();
        Ok((page.agents, page.next_page_token))
    }

    /// Token metadata (never a token): up to 1 000 active tokens matching `r`'s filter.
    pub async fn tokens(&self, who: &Principal, r: pb::ListTokensRequest) -> R<Vec<pb::TokenInfo>> {
        let r = pb::ListTokensRequest { page_size: 1000, ..r };
        Ok(pb::identity_server::Identity::list_tokens(&self.identity, req(who, r))
            .await?
            .into_inner()
            .tokens)
    }

    pub async fn issue_token(&self, who: &Principal, r: pb::IssueTokenRequest) -> R<pb::IssueTokenResponse> {
        Ok(self.identity.issue_token(req(who, r)).await?.into_inner())
    }

    pub async fn revoke_token(&self, who: &Principal, token_id: &str) -> R<()> {
        let r = pb::RevokeTokenRequest {
            token_id: token_id.to_owned(),
        };
        self.identity.revoke_token(req(who, r)).await?;
        Ok(())
    }

    pub async fn permissions(&self, who: &Principal, agent_id: &str, tool_id: &str) -> R<Vec<pb::Permission>> {
        let r = pb::ListPermissionsRequest {
            agent_id: agent_id.to_owned(),
            tool_id: tool_id.to_owned(),
            // The page shows one page of the largest size (see the README's limits).
            page_size: 1000,
            ..Default::default()
        };
        Ok(self
            .permissions
            .list_permissions(req(who, r))
            .await?
            .into_inner()
            .permissions)
    }

    pub async fn grant(&self, who: &Principal, p: pb::Permission) -> R<pb::Permission> {
        let r = pb::GrantRequest { permission: Some(p) };
        let p = self.permissions.grant(req(who, r)).await?.into_inner().permission;
        p.ok_or_else(|| tonic::Status::internal("grant answered without the permission"))
    }

    pub async fn revoke_grant(&self, who: &Principal, permission_id: &str) -> R<()> {
        let r = pb::RevokeRequest {
            permission_id: permission_id.to_owned(),
        };
        self.permissions.revoke(req(who, r)).await?;
        Ok(())
    }

    pub async fn check(&self, who: &Principal, agent_id: &str, tool_id: &str) -> R<pb::CheckResponse> {
        let r = pb::CheckRequest {
            agent_id: agent_id.to_owned(),
            tool: Some(pb::check_request::Tool::ToolId(tool_id.to_owned())),
        };
        Ok(self.permissions.check(req(who, r)).await?.into_inner())
    }

    /// One page of access requests of `status` (any: `Unspecified`), oldest first, and
    /// the token of the next page (empty at the end).
    pub async fn access_requests(
        &self,
        who: &Principal,
        status: pb::AccessRequestStatus,
        page_token: &str,
        page_size: u32,
    ) -> R<(Vec<pb::AccessRequest>, String)> {
        let r = pb::ListAccessRequestsRequest {
            status: status as i32,
            agent_id: String::new(),
            page_size,
            page_token: page_token.to_owned(),
        };
        let page = self.permissions.list_access_requests(req(who, r)).await?.into_inner();
        Ok((page.requests, page.next_page_token))
    }

    pub async fn review(&self, who: &Principal, r: pb::ReviewAccessRequestRequest) -> R<pb::AccessRequest> {
        let a = self
            .permissions
            .review_access_request(req(who, r))
            .await?
            .into_inner()
            .request;
        a.ok_or_else(|| tonic::Status::internal("review answered without the request"))
    }

    /// One page of the audit trail and the cursor after it (empty at the end).
    pub async fn audit_page(
        &self,
        who: &Principal,
        r: pb::QueryAuditTrailRequest,
    ) -> R<(Vec<pb::AuditRecord>, String)> {
        let limit = r.limit as usize;
        let mut stream = self.audit.query_audit_trail(req(who, r)).await?.into_inner();
        let (mut records, mut cursor) = (Vec::new(), String::new());
        while let Some(item) = stream.next().await {
            let item = item?;
            cursor = item.cursor;
            records.extend(item.record);
        }
        if records.len() < limit {
            cursor.clear();
        }
        Ok((records, cursor))
    }

    pub async fn verify_chain(&self, who: &Principal) -> R<pb::VerifyAuditChainResponse> {
        let r = pb::VerifyAuditChainRequest::default();
        Ok(self.audit.verify_audit_chain(req(who, r)).await?.into_inner())
    }

    pub async fn compliance_report(
        &self,
        who: &Principal,
        r: pb::GenerateComplianceReportRequest,
    ) -> R<pb::GenerateComplianceReportResponse> {
        Ok(self.audit.generate_compliance_report(req(who, r)).await?.into_inner())
    }

    pub async fn dead_letters(&self, who: &Principal) -> R<pb::ListDeadLettersResponse> {
        let r = pb::ListDeadLettersRequest { after_id: 0, limit: 5 };
        Ok(self.audit.list_dead_letters(req(who, r)).await?.into_inner())
    }

    pub async fn select(&self, who: &Principal, r: pb::SelectToolRequest) -> R<pb::SelectToolResponse> {
        Ok(self.selector.select_tool(req(who, r)).await?.into_inner())
    }
}
