//! `ToolRegistry`: registration with full schema checks, lookup and filtered listing.

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};
use toolplane_core::Violations;
use toolplane_core::convert::{
    auth_from_pb, fallback_from_pb, fallback_to_pb, spec_to_pb, tool_spec_from_pb, tool_to_pb,
};
use toolplane_core::endpoint::check_endpoint;
use toolplane_core::model::{
    AuditAction, AuthType, CredentialSettings, FallbackStrategy, Principal, Role, StoredCredential, Tool, ToolProtocol,
    ToolSpec,
};
use toolplane_core::validate::check_tool_spec;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::tool_registry_server::ToolRegistry;
use toolplane_runtime::auth::{PrincipalExt, principal};
use uuid::Uuid;

use super::{required, uuid_field};
use crate::error::{ApiError, ApiResult};
use crate::mcp_import::{self, ImportOptions};
use crate::state::AppState;
use crate::storage::ToolFilter;
use crate::tool_review::{self, Drift, Finder};

mod openapi;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

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
        let audit = self
            .state
            .admin_event(
                who,
                AuditAction::ToolRegistered,
                None,
                Some(tool.id),
                format!("registered {}", tool.spec.name),
            )
            .about(&tool);
        self.state.store.create_tool(&tool, &audit).await?;
        self.state.changed();
        tracing::info!(tool = %tool.spec.name, id = %tool.id, "tool registered");
        Ok(tool)
    }

    /// The live tool a request names by id or by name.
    async fn live(&self, id_field: &str, id: Option<&str>, name: Option<&str>) -> ApiResult<Tool> {
        match (id, name) {
            (Some(id), _) if !id.is_empty() => {
                let id = uuid_field(id_field, id)?;
                self.state
                    .store
                    .get_tool(id)
                    .await?
                    .ok_or_else(|| ApiError::NotFound(format!("tool {id} not found")))
            }
            (_, Some(name)) if !name.is_empty() => self
                .state
                .store
                .get_tool_by_name(name)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("tool {name:?} not found"))),
            _ => Err(Violations::single(id_field, "set the tool's id or name").into()),
        }
    }

    async fn get(&self, req: pb::GetToolRequest) -> ApiResult<Tool> {
        let (id, name) = match &req.key {
            Some(pb::get_tool_request::Key::Id(id)) => (Some(id.as_str()), None),
            Some(pb::get_tool_request::Key::Name(name)) => (None, Some(name.as_str())),
            None => (None, None),
        };
        if req.version == 0 {
            return self.live("id", id, name).await;
        }
        // Old versions stay readable, of deleted tools too when asked by id.
        let tool_id = match id {
            Some(id) => uuid_field("id", id)?,
            None => self.live("id", None, name).await?.id,
        };
        self.state
            .store
            .get_tool_version(tool_id, req.version)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("version {} of tool {tool_id} not found", req.version)))
    }

    /// The tool as it is now, and the pending change when the update waits for review.
    async fn update(
        &self,
        who: &Principal,
        req: pb::UpdateToolRequest,
    ) -> ApiResult<(Tool, Option<toolplane_core::model::ToolChange>)> {
        let wire = required("tool", req.tool)?;
        let current = self.live("tool.id", Some(&wire.id), Some(&wire.name)).await?;
        let mut spec = tool_spec_from_pb(wire)?;
        if spec.name.is_empty() {
            spec.name.clone_from(&current.spec.name);
        }
        if spec.name != current.spec.name {
            return Err(Violations::single("tool.name", "cannot change; register a new tool instead").into());
        }
        check_tool_spec(&spec, self.state.policy)?;
        // An MCP-imported tool's pinned definition changes only through review.
        let pinned = tool_review::pinned_update_fields(&current.spec, &spec);
        if !pinned.is_empty() {
            spec.reliability_score = current.spec.reliability_score;
            spec.average_latency_ms = current.spec.average_latency_ms;
            return Ok(
                match tool_review::propose(&self.state, &Finder::Update(who), current.clone(), spec, &pinned).await? {
                    Drift::Applied(tool) => (tool, None),
                    Drift::Pending(change) | Drift::Rejected(change) => (current, Some(change)),
                    Drift::Unchanged => (current, None),
                },
            );
        }
        Ok((self.save_version(who, current, spec, "").await?, None))
    }

    /// Stores `spec` as the next version of `current` (learned statistics kept), with
    /// its audit event; `why` is appended to the event's detail.
    async fn save_version(&self, who: &Principal, current: Tool, mut spec: ToolSpec, why: &str) -> ApiResult<Tool> {
        spec.reliability_score = current.spec.reliability_score;
        spec.average_latency_ms = current.spec.average_latency_ms;
        let tool = Tool {
            id: current.id,
            version: current.version + 1,
            spec,
            created_at: current.created_at,
            updated_at: Utc::now(),
        };
        let detail = format!("{} is now version {}{why}", tool.spec.name, tool.version);
        let audit = self
            .state
            .admin_event(who, AuditAction::ToolUpdated, None, Some(tool.id), detail)
            .about(&tool);
        self.state.store.update_tool(&tool, &audit).await?;
        if tool.spec.requirements.data_sensitivity == toolplane_core::model::DataSensitivity::Restricted {
            self.state.forget_tool_tasks(tool.id).await?;
        }
        self.state.changed();
        Ok(tool)
    }

    async fn set_enabled(&self, who: &Principal, req: pb::SetToolEnabledRequest) -> ApiResult<Tool> {
        let id = uuid_field("tool_id", &req.tool_id)?;
        let current = self.stored_tool(id).await?;
        let (action, verb) = if req.enabled {
            (AuditAction::ToolUpdated, "enabled")
        } else {
            (AuditAction::ToolDisabled, "disabled")
        };
        let audit = self
            .state
            .admin_event(who, action, None, Some(id), format!("{verb} {}", current.spec.name))
            .about(&current);
        let tool = self
            .state
            .store
            .set_tool_enabled(id, req.enabled, Utc::now(), &audit)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("tool {id} not found")))?;
        self.state.changed();
        Ok(tool)
    }

    /// A stored tool by id, or NOT_FOUND naming it.
    async fn stored_tool(&self, id: Uuid) -> ApiResult<Tool> {
        self.state
            .store
            .get_tool(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("tool {id} not found")))
    }

    async fn delete(&self, who: &Principal, req: pb::DeleteToolRequest) -> ApiResult<()> {
        let id = uuid_field("tool_id", &req.tool_id)?;
        let current = self.stored_tool(id).await?;
        let audit = self
            .state
            .admin_event(
                who,
                AuditAction::ToolDeleted,
                None,
                Some(id),
                format!("deleted {} ({id})", current.spec.name),
            )
            .about(&current);
        if !self.state.store.delete_tool(id, Utc::now(), &audit).await? {
            return Err(ApiError::NotFound(format!("tool {id} not found")));
        }
        self.state.changed();
        Ok(())
    }

    async fn import_mcp(
        &self,
        who: &Principal,
        req: pb::ImportMcpToolsRequest,
    ) -> ApiResult<pb::ImportMcpToolsResponse> {
        check_endpoint("endpoint", &req.endpoint, self.state.policy.allow_link_local_endpoints)?;
        let credential = import_credential(&req)?;
        let opts = ImportOptions {
            endpoint: req.endpoint,
            category: req.category,
            provider: req.provider,
            name_prefix: req.name_prefix,
        };
        let headers: Vec<(String, String)> = credential.iter().cloned().collect();
        let http = self.state.mcp_http().map_err(ApiError::Unavailable)?;
        let remote = mcp_import::list_tools(&http, &opts.endpoint, &headers)
            .await
            .map_err(|e| match e {
                mcp_import::ImportError::Refused(why) => ApiError::from(Violations::single("endpoint", why)),
                e => ApiError::Unavailable(e.to_string()),
            })?;
        let mut out = pb::ImportMcpToolsResponse::default();
        // Registry names this import has claimed, with the remote tool claiming each.
        let mut claimed: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for t in &remote {
            let spec = mcp_import::to_spec(t, &opts);
            let skip = |reason: String| pb::SkippedTool {
                remote_name: t.name.to_string(),
                reason,
            };
            if let Err(v) = check_tool_spec(&spec, self.state.policy) {
                out.skipped.push(skip(v.to_string()));
                continue;
            }
            if let Some(other) = claimed.insert(spec.name.clone(), t.name.to_string()) {
                out.skipped.push(skip(format!(
                    "name collision: remote tools {other:?} and {:?} both become {:?}; refused",
                    t.name, spec.name
                )));
                continue;
            }
            let existing = self.state.store.get_tool_by_name(&spec.name).await?;
            match existing {
                None => {
                    let tool = self
                        .register(
                            who,
                            pb::RegisterToolRequest {
                                tool: Some(spec_to_pb(spec)),
                            },
                        )
                        .await?;
                    if let Some((header, secret)) = &credential {
                        self.store_credential(
                            who,
                            pb::SetCredentialRequest {
                                tool_id: tool.id.to_string(),
                                auth_type: pb::AuthType::ApiKey as i32,
                                header_name: header.clone(),
                                secret: secret.clone(),
                                ..Default::default()
                            },
                        )
                        .await?;
                    }
                    out.created.push(tool_to_pb(&tool));
                }
                Some(current)
                    if current.spec.protocol != ToolProtocol::Mcp || current.spec.endpoint != opts.endpoint =>
                {
                    // Another server (or a non-MCP tool) owns the name: a second server
                    // must not take over a tool agents already trust.
                    let owner = if current.spec.protocol == ToolProtocol::Mcp {
                        format!("the MCP server at {}", current.spec.endpoint)
                    } else {
                        format!("a {} tool", current.spec.protocol)
                    };
                    out.skipped.push(skip(format!(
                        "name collision: {:?} is already registered from {owner}; refused (import with another name_prefix)",
                        spec.name
                    )));
                }
                Some(current) => {
                    let name = current.spec.name.clone();
                    match tool_review::on_server_definition(&self.state, &Finder::Import(who), current, &spec).await? {
                        Drift::Unchanged => out.unchanged.push(name),
                        Drift::Applied(tool) => out.updated.push(tool_to_pb(&tool)),
                        Drift::Pending(change) => out.pending.push(super::tool_review::change_to_pb(&change)),
                        Drift::Rejected(change) => out.skipped.push(skip(format!(
                            "this definition of {name} was rejected in review (change {}); the approved version stays",
                            change.id
                        ))),
                    }
                }
            }
        }
        tracing::info!(
            created = out.created.len(),
            updated = out.updated.len(),
            pending = out.pending.len(),
            unchanged = out.unchanged.len(),
            skipped = out.skipped.len(),
            "imported MCP tools"
        );
        Ok(out)
    }

    async fn set_fallback(&self, who: &Principal, req: pb::SetFallbackStrategyRequest) -> ApiResult<FallbackStrategy> {
        let strategy = fallback_from_pb(required("strategy", req.strategy)?)?;
        let mut v = Violations::default();
        if strategy.fallback_tool_ids.len() > 16 {
            v.push("strategy.fallback_tool_ids", "has more than the limit of 16 tools");
        }
        if strategy.fallback_tool_ids.contains(&strategy.tool_id) {
            v.push("strategy.fallback_tool_ids", "must not contain the tool itself");
        }
        if strategy.max_attempts > 10 {
            v.push("strategy.max_attempts", "must be at most 10");
        }
        v.into_result()?;
        let Some(tool) = self.state.store.get_tool(strategy.tool_id).await? else {
            return Err(ApiError::NotFound(format!("tool {} not found", strategy.tool_id)));
        };
        for (i, id) in strategy.fallback_tool_ids.iter().enumerate() {
            if self.state.store.get_tool(*id).await?.is_none() {
                return Err(Violations::single(
                    format!("strategy.fallback_tool_ids[{i}]"),
                    format!("tool {id} not found"),
                )
                .into());
            }
        }
        let detail = format!(
            "fallback strategy of {} set: {} ({} tools)",
            tool.spec.name,
            strategy.mode,
            strategy.fallback_tool_ids.len()
        );
        let audit = self
            .state
            .admin_event(
                who,
                AuditAction::FallbackStrategySet,
                None,
                Some(strategy.tool_id),
                detail,
            )
            .about(&tool);
        self.state.store.set_fallback(&strategy, &audit).await?;
        self.state.changed();
        Ok(strategy)
    }

    async fn store_credential(&self, who: &Principal, req: pb::SetCredentialRequest) -> ApiResult<()> {
        let tool_id = uuid_field("tool_id", &req.tool_id)?;
        let mut v = Violations::default();
        if req.secret.is_empty() {
            v.push("secret", "is required");
        } else if req.secret.len() > MAX_SECRET_BYTES {
            v.push(
                "secret",
                format!("is larger than the limit of {MAX_SECRET_BYTES} bytes"),
            );
        }
        if req.header_name.len() > 128 || !req.header_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            v.push(
                "header_name",
                "must be an HTTP header name (letters, digits and -), at most 128 characters",
            );
        }
        let auth_type = auth_from_pb(req.auth_type);
        if !req.query_param.is_empty() {
            if auth_type != AuthType::ApiKey {
                v.push("query_param", "only an API_KEY credential goes in the query");
            }
            if !req.header_name.is_empty() {
                v.push("query_param", "an API key goes in a header or the query, not both");
            }
            if req.query_param.len() > 128
                || !req
                    .query_param
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                v.push(
                    "query_param",
                    "must be letters, digits, -, _ or ., at most 128 characters",
                );
            }
        }
        if auth_type == AuthType::HttpBasic {
            if req.username.is_empty() || req.username.contains(':') || req.username.len() > 256 {
                v.push("username", "is required for HTTP_BASIC: at most 256 characters, no ':'");
            }
        } else if !req.username.is_empty() {
            v.push("username", "only an HTTP_BASIC credential has a user name");
        }
        let oauth2 = req.oauth2.map(toolplane_core::convert::oauth2_from_pb);
        match (&oauth2, auth_type) {
            (Some(o), AuthType::OAuth2) => {
                if let Err(e) = check_endpoint(
                    "oauth2.token_url",
                    &o.token_url,
                    self.state.policy.allow_link_local_endpoints,
                ) {
                    v.0.extend(e.0);
                }
                if o.client_id.is_empty() || o.client_id.len() > 256 {
                    v.push("oauth2.client_id", "is required, at most 256 characters");
                }
                if o.scopes.len() > 64
                    || o.scopes
                        .iter()
                        .any(|s| s.is_empty() || s.len() > 256 || s.contains(' '))
                {
                    v.push(
                        "oauth2.scopes",
                        "at most 64 scopes, each 1..256 characters without spaces",
                    );
                }
                if o.audience.len() > 1024 {
                    v.push("oauth2.audience", "is longer than 1024 characters");
                }
            }
            (None, AuthType::OAuth2) => v.push("oauth2", "is required for an OAUTH2 credential"),
            (Some(_), _) => v.push("oauth2", "only an OAUTH2 credential has a grant"),
            (None, _) => {}
        }
        if auth_type == AuthType::MutualTls {
            if let Err(e) = crate::mtls::check_identity(&req.client_certificate_pem, &req.secret) {
                v.push(e.0, e.1);
            }
        } else if !req.client_certificate_pem.is_empty() {
            v.push(
                "client_certificate_pem",
                "only a MUTUAL_TLS credential has a client certificate",
            );
        }
        let expires_at = req.expires_at.as_ref().and_then(toolplane_core::convert::from_ts);
        if req.expires_at.is_some() && expires_at.is_none_or(|at| at <= Utc::now()) {
            v.push("expires_at", "must be a valid instant in the future");
        }
        v.into_result()?;
        let keyring = self.state.keyring.as_ref().ok_or_else(|| {
            ApiError::FailedPrecondition(
                "no master key is configured (TOOLPLANE_MASTER_KEY); credentials cannot be stored".to_owned(),
            )
        })?;
        let tool = self.stored_tool(tool_id).await?;
        let credential = StoredCredential {
            tool_id,
            auth_type,
            header_name: req.header_name,
            sealed: keyring.seal(req.secret.as_bytes(), tool_id.as_bytes()),
            updated_at: Utc::now(),
            settings: CredentialSettings {
                query_param: req.query_param,
                username: req.username,
                oauth2,
                client_certificate_pem: req.client_certificate_pem,
            },
            expires_at,
        };
        let detail = format!(
            "credential of {} set (key {})",
            tool.spec.name, credential.sealed.key_id
        );
        let audit = self
            .state
            .admin_event(who, AuditAction::CredentialSet, None, Some(tool_id), detail)
            .about(&tool);
        self.state.store.set_credential(&credential, &audit).await?;
        self.state.changed();
        Ok(())
    }

    async fn remove_credential(&self, who: &Principal, req: pb::DeleteCredentialRequest) -> ApiResult<()> {
        let tool_id = uuid_field("tool_id", &req.tool_id)?;
        let tool = self.stored_tool(tool_id).await?;
        let audit = self
            .state
            .admin_event(
                who,
                AuditAction::CredentialDeleted,
                None,
                Some(tool_id),
                format!("credential of {} deleted", tool.spec.name),
            )
            .about(&tool);
        if !self.state.store.delete_credential(tool_id, &audit).await? {
            return Err(ApiError::NotFound(format!("tool {} has no credential", tool.spec.name)));
        }
        self.state.changed();
        Ok(())
    }

    async fn list(&self, reader: &CatalogReader, req: pb::ListToolsRequest) -> ApiResult<pb::ListToolsResponse> {
        let size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Violations::single("page_size", format!("must be at most {MAX_PAGE_SIZE}")).into());
            }
            n => n,
        } as usize;
        let after = if req.page_token.is_empty() {
            None
        } else {
            let bytes = hex::decode(&req.page_token)
                .map_err(|_| Violations::single("page_token", "is not a token this server issued"))?;
            Some(
                String::from_utf8(bytes)
                    .map_err(|_| Violations::single("page_token", "is not a token this server issued"))?,
            )
        };
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let filter = ToolFilter {
            category: non_empty(req.category),
            capability: non_empty(req.capability),
            enabled: req.enabled,
            provider: non_empty(req.provider),
            text: non_empty(req.text),
        };
        // An agent's page holds only tools it may use: read on until the page is full
        // or the catalog ends.
        let mut tools = Vec::with_capacity(size + 1);
        let mut cursor = after;
        loop {
            let page = self
                .state
                .store
                .list_tools(&filter, cursor.as_deref(), size + 1)
                .await?;
            let done = page.len() <= size;
            cursor = page.last().map(|t| t.spec.name.clone());
            tools.extend(page.into_iter().filter(|t| reader.may_see(t.id)));
            if done || tools.len() > size {
                break;
            }
        }
        let next_page_token = if tools.len() > size {
            tools.truncate(size);
            tools.last().map(|t| hex::encode(&t.spec.name)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListToolsResponse {
            tools: tools.iter().map(|t| reader.view(t)).collect(),
            next_page_token,
        })
    }
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

    async fn get_tool(&self, request: Request<pb::GetToolRequest>) -> Result<Response<pb::GetToolResponse>, Status> {
        let reader = CatalogReader::of(&self.state, &principal(&request)?).await?;
        let tool = self.get(request.into_inner()).await?;
        if !reader.may_see(tool.id) {
            // Said the same way as a tool that does not exist: an agent learns nothing
            // of tools it may not use.
            return Err(ApiError::NotFound(format!("tool {} not found", tool.spec.name)).into());
        }
        Ok(Response::new(pb::GetToolResponse {
            tool: Some(reader.view(&tool)),
        }))
    }

    async fn list_tools(
        &self,
        request: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        let reader = CatalogReader::of(&self.state, &principal(&request)?).await?;
        Ok(Response::new(self.list(&reader, request.into_inner()).await?))
    }

    async fn update_tool(
        &self,
        request: Request<pb::UpdateToolRequest>,
    ) -> Result<Response<pb::UpdateToolResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "UpdateTool")?;
        let (tool, pending) = self.update(&who, request.into_inner()).await?;
        Ok(Response::new(pb::UpdateToolResponse {
            tool: Some(tool_to_pb(&tool)),
            pending: pending.as_ref().map(super::tool_review::change_to_pb),
        }))
    }

    async fn set_tool_enabled(
        &self,
        request: Request<pb::SetToolEnabledRequest>,
    ) -> Result<Response<pb::SetToolEnabledResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "SetToolEnabled")?;
        let tool = self.set_enabled(&who, request.into_inner()).await?;
        Ok(Response::new(pb::SetToolEnabledResponse {
            tool: Some(tool_to_pb(&tool)),
        }))
    }

    async fn delete_tool(
        &self,
        request: Request<pb::DeleteToolRequest>,
    ) -> Result<Response<pb::DeleteToolResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "DeleteTool")?;
        self.delete(&who, request.into_inner()).await?;
        Ok(Response::new(pb::DeleteToolResponse {}))
    }

    async fn import_mcp_tools(
        &self,
        request: Request<pb::ImportMcpToolsRequest>,
    ) -> Result<Response<pb::ImportMcpToolsResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "ImportMcpTools")?;
        Ok(Response::new(self.import_mcp(&who, request.into_inner()).await?))
    }

    async fn import_open_api(
        &self,
        request: Request<pb::ImportOpenApiRequest>,
    ) -> Result<Response<pb::ImportOpenApiResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "ImportOpenApi")?;
        Ok(Response::new(self.import_openapi(&who, request.into_inner()).await?))
    }

    async fn set_credential(
        &self,
        request: Request<pb::SetCredentialRequest>,
    ) -> Result<Response<pb::SetCredentialResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "SetCredential")?;
        self.store_credential(&who, request.into_inner()).await?;
        Ok(Response::new(pb::SetCredentialResponse {}))
    }

    async fn delete_credential(
        &self,
        request: Request<pb::DeleteCredentialRequest>,
    ) -> Result<Response<pb::DeleteCredentialResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "DeleteCredential")?;
        self.remove_credential(&who, request.into_inner()).await?;
        Ok(Response::new(pb::DeleteCredentialResponse {}))
    }

    async fn set_fallback_strategy(
        &self,
        request: Request<pb::SetFallbackStrategyRequest>,
    ) -> Result<Response<pb::SetFallbackStrategyResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "SetFallbackStrategy")?;
        let strategy = self.set_fallback(&who, request.into_inner()).await?;
        Ok(Response::new(pb::SetFallbackStrategyResponse {
            strategy: Some(fallback_to_pb(&strategy)),
        }))
    }

    async fn delete_fallback_strategy(
        &self,
        request: Request<pb::DeleteFallbackStrategyRequest>,
    ) -> Result<Response<pb::DeleteFallbackStrategyResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Admin], "DeleteFallbackStrategy")?;
        let tool_id = uuid_field("tool_id", &request.get_ref().tool_id)?;
        let mut audit = self.state.admin_event(
            &who,
            AuditAction::FallbackStrategyDeleted,
            None,
            Some(tool_id),
            format!("fallback strategy of tool {tool_id} deleted"),
        );
        if let Some(tool) = self.state.store.get_tool(tool_id).await.map_err(ApiError::from)? {
            audit = audit.about(&tool);
            audit.detail = format!("fallback strategy of {} deleted", tool.spec.name);
        }
        if !self
            .state
            .store
            .delete_fallback(tool_id, &audit)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::NotFound(format!("tool {tool_id} has no fallback strategy")).into());
        }
        self.state.changed();
        Ok(Response::new(pb::DeleteFallbackStrategyResponse {}))
    }

    async fn get_fallback_strategy(
        &self,
        request: Request<pb::GetFallbackStrategyRequest>,
    ) -> Result<Response<pb::GetFallbackStrategyResponse>, Status> {
        principal(&request)?.require(&[Role::Admin, Role::Sidecar, Role::Auditor], "GetFallbackStrategy")?;
        let tool_id = uuid_field("tool_id", &request.get_ref().tool_id)?;
        let strategy = self
            .state
            .store
            .get_fallback(tool_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("tool {tool_id} has no fallback strategy")))?;
        Ok(Response::new(pb::GetFallbackStrategyResponse {
            strategy: Some(fallback_to_pb(&strategy)),
        }))
    }
}

/// The credential an import request names, as (header, secret); checked like
/// `SetCredential`'s.
fn import_credential(req: &pb::ImportMcpToolsRequest) -> ApiResult<Option<(String, String)>> {
    match (req.credential_header.is_empty(), req.credential_secret.is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Err(Violations::single("credential_secret", "is required with credential_header").into()),
        (true, false) => Err(Violations::single("credential_header", "is required with credential_secret").into()),
        (false, false) => {
            let mut v = Violations::default();
            if req.credential_secret.len() > MAX_SECRET_BYTES {
                v.push(
                    "credential_secret",
                    format!("is larger than the limit of {MAX_SECRET_BYTES} bytes"),
                );
            }
            if req.credential_header.len() > 128
                || !req
                    .credential_header
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                v.push(
                    "credential_header",
                    "must be an HTTP header name (letters, digits and -), at most 128 characters",
                );
            }
            if http::HeaderValue::from_str(&req.credential_secret).is_err() {
                v.push("credential_secret", "must be a valid HTTP header value");
            }
            v.into_result()?;
            Ok(Some((
                req.credential_header.to_ascii_lowercase(),
                req.credential_secret.clone(),
            )))
        }
    }
}

/// Who reads the catalog, and so what they see: admins and sidecars the whole catalog;
/// an agent only the tools it holds a live grant for, without where they live or how
/// they authenticate (it calls them through its sidecar, never directly).
enum CatalogReader {
    Everything,
    Agent(std::collections::HashSet<Uuid>),
}

impl CatalogReader {
    async fn of(state: &AppState, who: &Principal) -> ApiResult<Self> {
        match who {
            Principal::Agent { agent_id, .. } => {
                let now = Utc::now();
                let granted = state
                    .store
                    .list_permissions(Some(*agent_id), None)
                    .await?
                    .into_iter()
                    .filter(|p| p.expires_at.is_none_or(|t| t > now))
                    .map(|p| p.tool_id)
                    .collect();
                Ok(Self::Agent(granted))
            }
            Principal::Admin { .. } | Principal::Sidecar { .. } | Principal::Auditor { .. } => Ok(Self::Everything),
        }
    }

    fn may_see(&self, tool: Uuid) -> bool {
        match self {
            Self::Everything => true,
            Self::Agent(granted) => granted.contains(&tool),
        }
    }

    fn view(&self, tool: &Tool) -> pb::Tool {
        let mut t = tool_to_pb(tool);
        if let Self::Agent(_) = self {
            t.endpoint.clear();
            t.remote_name.clear();
            t.http = None;
            if let Some(r) = t.requirements.as_mut() {
                r.authentication = pb::AuthType::Unspecified as i32;
            }
        }
        t
    }
}
