//! `ToolRegistry`: registration with full schema checks, lookup and filtered listing.

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};
use toolplane_core::Violations;
use toolplane_core::convert::{tool_spec_from_pb, tool_to_pb};
use toolplane_core::model::{AuditAction, Principal, Role, Tool};
use toolplane_core::validate::check_tool_spec;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::tool_registry_server::ToolRegistry;
use toolplane_runtime::auth::{PrincipalExt, principal};
use uuid::Uuid;

use super::{required, uuid_field};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::storage::ToolFilter;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

pub struct RegistryService {
    state: Arc<AppState>,
}

impl RegistryService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn register(&self, who: &Principal, req: pb::RegisterToolRequest) -> ApiResult<Tool> {
        let mut spec = tool_spec_from_pb(required("tool", req.tool)?)?;
        check_tool_spec(&spec, self.state.policy)?;
        // Learned from outcomes only, never taken from the caller.
        spec.reliability_score = 0.0;
        spec.average_latency_ms = 0;
        let now = Utc::now();
        let tool = Tool {
            id: Uuid::now_v7(),
            version: 1,
            spec,
            created_at: now,
            updated_at: now,
        };
        self.state.store.create_tool(&tool).await?;
        self.state
            .audit_admin(
                who,
                AuditAction::ToolRegistered,
                None,
                Some(tool.id),
                format!("registered {}", tool.spec.name),
            )
            .await?;
        self.state.changed();
        tracing::info!(tool = %tool.spec.name, id = %tool.id, "tool registered");
        Ok(tool)
    }

    async fn get(&self, req: pb::GetToolRequest) -> ApiResult<Tool> {
        let tool = match req.key {
            Some(pb::get_tool_request::Key::Id(id)) => {
                let id = uuid_field("id", &id)?;
                self.state
                    .store
                    .get_tool(id)
                    .await?
                    .ok_or_else(|| ApiError::NotFound(format!("tool {id} not found")))?
            }
            Some(pb::get_tool_request::Key::Name(name)) => self
                .state
                .store
                .get_tool_by_name(&name)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("tool {name:?} not found")))?,
            None => return Err(Violations::single("key", "set id or name").into()),
        };
        if req.version != 0 && req.version != tool.version {
            return Err(ApiError::NotFound(format!(
                "version {} of tool {:?} not found (current is {})",
                req.version, tool.spec.name, tool.version
            )));
        }
        Ok(tool)
    }

    async fn list(&self, req: pb::ListToolsRequest) -> ApiResult<pb::ListToolsResponse> {
        let size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Violations::single(
                    "page_size",
                    format!("must be at most {MAX_PAGE_SIZE}"),
                )
                .into());
            }
            n => n,
        } as usize;
        let after = if req.page_token.is_empty() {
            None
        } else {
            let bytes = hex::decode(&req.page_token).map_err(|_| {
                Violations::single("page_token", "is not a token this server issued")
            })?;
            Some(String::from_utf8(bytes).map_err(|_| {
                Violations::single("page_token", "is not a token this server issued")
            })?)
        };
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let filter = ToolFilter {
            category: non_empty(req.category),
            capability: non_empty(req.capability),
            enabled: req.enabled,
            provider: non_empty(req.provider),
            text: non_empty(req.text),
        };
        let mut tools = self
            .state
            .store
            .list_tools(&filter, after.as_deref(), size + 1)
            .await?;
        let next_page_token = if tools.len() > size {
            tools.truncate(size);
            tools
                .last()
                .map(|t| hex::encode(&t.spec.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListToolsResponse {
            tools: tools.iter().map(tool_to_pb).collect(),
            next_page_token,
        })
    }
}

fn later(rpc: &'static str) -> Status {
    ApiError::Unimplemented(rpc).into()
}

#[tonic::async_trait]
impl ToolRegistry for RegistryService {
    async fn register_tool(
        &self,
        request: Request<pb::RegisterToolRequest>,
    ) -> Result<Response<pb::RegisterToolResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "RegisterTool")?;
        let tool = self.register(&who, request.into_inner()).await?;
        Ok(Response::new(pb::RegisterToolResponse {
            tool: Some(tool_to_pb(&tool)),
        }))
    }

    async fn get_tool(
        &self,
        request: Request<pb::GetToolRequest>,
    ) -> Result<Response<pb::GetToolResponse>, Status> {
        let tool = self.get(request.into_inner()).await?;
        Ok(Response::new(pb::GetToolResponse {
            tool: Some(tool_to_pb(&tool)),
        }))
    }

    async fn list_tools(
        &self,
        request: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn update_tool(
        &self,
        _: Request<pb::UpdateToolRequest>,
    ) -> Result<Response<pb::UpdateToolResponse>, Status> {
        Err(later("ToolRegistry.UpdateTool"))
    }

    async fn set_tool_enabled(
        &self,
        _: Request<pb::SetToolEnabledRequest>,
    ) -> Result<Response<pb::SetToolEnabledResponse>, Status> {
        Err(later("ToolRegistry.SetToolEnabled"))
    }

    async fn delete_tool(
        &self,
        _: Request<pb::DeleteToolRequest>,
    ) -> Result<Response<pb::DeleteToolResponse>, Status> {
        Err(later("ToolRegistry.DeleteTool"))
    }

    async fn import_mcp_tools(
        &self,
        _: Request<pb::ImportMcpToolsRequest>,
    ) -> Result<Response<pb::ImportMcpToolsResponse>, Status> {
        Err(later("ToolRegistry.ImportMcpTools"))
    }

    async fn set_credential(
        &self,
        _: Request<pb::SetCredentialRequest>,
    ) -> Result<Response<pb::SetCredentialResponse>, Status> {
        Err(later("ToolRegistry.SetCredential"))
    }

    async fn set_fallback_strategy(
        &self,
        _: Request<pb::SetFallbackStrategyRequest>,
    ) -> Result<Response<pb::SetFallbackStrategyResponse>, Status> {
        Err(later("ToolRegistry.SetFallbackStrategy"))
    }

    async fn get_fallback_strategy(
        &self,
        _: Request<pb::GetFallbackStrategyRequest>,
    ) -> Result<Response<pb::GetFallbackStrategyResponse>, Status> {
        Err(later("ToolRegistry.GetFallbackStrategy"))
    }
}
