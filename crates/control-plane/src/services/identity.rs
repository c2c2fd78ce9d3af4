//! `Identity`: agents and bearer tokens. Tokens are shown once and stored as digests.

use std::sync::Arc;

use chrono::{Duration, Utc};
use tonic::{Request, Response, Status};
use toolplane_core::convert::{agent_to_pb, parse_budget, role_from_pb, token_info_to_pb, ts};
use toolplane_core::model::{Agent, AuditAction, Principal, Role, TokenRecord};
use toolplane_core::validate::is_valid_name;
use toolplane_core::{Violations, token};
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::identity_server::Identity;
use toolplane_runtime::auth::{PrincipalExt, principal};
use uuid::Uuid;

use super::uuid_field;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use identity_admin::check_agent_fields;

pub const DEFAULT_TOKEN_TTL_SECS: u32 = 30 * 24 * 3600;
pub const MAX_TOKEN_TTL_SECS: u32 = 366 * 24 * 3600;

#[path = "identity_admin.rs"]
mod identity_admin;

pub struct IdentityService {
    state: Arc<AppState>,
}

impl IdentityService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn create_agent(&self, who: &Principal, req: pb::CreateAgentRequest) -> ApiResult<Agent> {
        let mut v = Violations::default();
        if !is_valid_name(&req.name) {
            v.push("name", "must match ^[a-z][a-z0-9_.-]*$ and be at most 128 characters");
        }
        check_agent_fields(&mut v, "", &req.skills, &req.team, req.calls_per_minute);
        let daily_spend_budget = match parse_budget("daily_spend_budget", &req.daily_spend_budget) {
            Ok(b) => b,
            Err(e) => {
                v.0.extend(e.0);
                None
            }
        };
        v.into_result()?;
        let agent = Agent {
            id: Uuid::now_v7(),
            name: req.name,
            skills: req.skills,
            team: req.team,
            created_at: Utc::now(),
            task_memory_opt_out: req.task_memory_opt_out,
            calls_per_minute: req.calls_per_minute,
            daily_spend_budget,
        };
        let audit = self.state.admin_event(
            who,
            AuditAction::AgentCreated,
            Some(agent.id),
            None,
            format!("created agent {}", agent.name),
        );
        self.state.store.create_agent(&agent, &audit).await?;
        self.state.changed();
        tracing::info!(agent = %agent.name, id = %agent.id, actor = %who.actor_id(), "agent created");
        Ok(agent)
    }

    async fn issue(&self, who: &Principal, req: pb::IssueTokenRequest) -> ApiResult<pb::IssueTokenResponse> {
        let role = role_from_pb(req.role).ok_or_else(|| Violations::single("role", "is required"))?;
        let agent_id = match role {
            Role::Agent => {
                let id = uuid_field("agent_id", &req.agent_id)?;
                if self.state.store.get_agent(id).await?.is_none() {
                    return Err(ApiError::NotFound(format!("agent {id} not found")));
                }
                Some(id)
            }
            _ if !req.agent_id.is_empty() => {
                return Err(Violations::single("agent_id", "only tokens of ROLE_AGENT name an agent").into());
            }
            _ => None,
        };
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL_SECS,
            n if n > MAX_TOKEN_TTL_SECS => {
                return Err(Violations::single("ttl_seconds", format!("must be at most {MAX_TOKEN_TTL_SECS}")).into());
            }
            n => n,
        };
        let secret = token::generate();
        let now = Utc::now();
        let record = TokenRecord {
            id: Uuid::now_v7(),
            sha256: token::digest(&secret),
            role,
            agent_id,
            description: req.description,
            created_at: now,
            expires_at: now + Duration::seconds(i64::from(ttl)),
            revoked_at: None,
        };
        let audit = self.state.admin_event(
            who,
            AuditAction::TokenIssued,
            agent_id,
            None,
            format!("issued {role} token {}", record.id),
        );
        self.state.store.create_token(&record, &audit).await?;
        self.state.changed();
        Ok(pb::IssueTokenResponse {
            token_id: record.id.to_string(),
            token: secret,
            expires_at: Some(ts(record.expires_at)),
        })
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "CreateAgent")?;
        let agent = IdentityService::create_agent(self, &who, request.into_inner()).await?;
        Ok(Response::new(pb::CreateAgentResponse {
            agent: Some(agent_to_pb(&agent)),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin, Role::Sidecar, Role::Auditor], "ListAgents")?;
        let (agents, next_page_token) = self.list_agents(request.into_inner()).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.iter().map(agent_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "UpdateAgent")?;
        let agent = IdentityService::update_agent(self, &who, request.into_inner()).await?;
        Ok(Response::new(pb::UpdateAgentResponse {
            agent: Some(agent_to_pb(&agent)),
        }))
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "DeleteAgent")?;
        let r = IdentityService::delete_agent(self, &who, request.into_inner()).await?;
        let n = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
        Ok(Response::new(pb::DeleteAgentResponse {
            tokens_revoked: n(r.tokens_revoked.len()),
            grants_revoked: n(r.grants_revoked.len()),
            access_requests_denied: n(r.access_requests_denied.len()),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin, Role::Auditor], "ListTokens")?;
        let (tokens, next_page_token) = IdentityService::list_tokens(self, request.into_inner()).await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(token_info_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "IssueToken")?;
        Ok(Response::new(self.issue(&who, request.into_inner()).await?))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "RevokeToken")?;
        let id = uuid_field("token_id", &request.get_ref().token_id)?;
        let audit = self.state.admin_event(
            &who,
            AuditAction::TokenRevoked,
            None,
            None,
            format!("revoked token {id}"),
        );
        if !self
            .state
            .store
            .revoke_token(id, Utc::now(), &audit)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::NotFound(format!("no unrevoked token {id}")).into());
        }
        // Sidecars drop it with the next delta (milliseconds).
        self.state.changed();
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }
}
