//! The sidecar's MCP front door (Streamable HTTP, rmcp): any MCP-capable agent gets the
//! tools it may use, governed exactly like `Executor.Invoke` — every request is
//! authenticated by the agent's bearer token, `tools/list` is a per-agent virtual
//! catalog (paged), `tools/call` runs the same pipeline (permissions, schema, quotas,
//! rate limits, cache, retries, fallbacks, audit, learning), and the built-in
//! `toolplane_select` ranks tools for a task description.
//!
//! Requests are authenticated one by one (not per session), so a revoked token stops
//! working at once: a toolplane agent token, or with identity providers configured an
//! OAuth access token ([`crate::oauth`]); a request without one gets 401 pointing at the
//! protected-resource metadata ([`crate::resource_metadata`]), one naming no agent 403. Sessions are cheap: with MCP 2026-07-28 the transport is stateless
//! and survives a sidecar restart; older clients re-initialize after a restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ServerCapabilities, ServerConfig, Tool as McpTool, ToolAnnotations,
};
use rmcp::service::{NotificationContext, Peer, RequestContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use toolplane_core::model::{ExecutionStatus, SideEffects};
use toolplane_core::permission::evaluate;
use toolplane_proto::v1 as pb;
use uuid::Uuid;

use crate::auth::{Refusal, SnapshotAuthenticator};
use crate::error::ExecError;
use crate::executor::{Call, ExecutorService};
use crate::mcp_search::{self, SearchMode};

const BEARER_PREFIX: &str = "Bearer ";
/// The built-in selection tool.
pub const SELECT_TOOL: &str = "toolplane_select";
/// `_meta` key of `tools/call` naming the `toolplane_select` answer the call follows.
pub const SELECTION_META: &str = "toolplane.dev/selection_id";
/// How long a client may keep a `tools/list` answer (milliseconds).
pub const LIST_TTL_MS: u64 = 10_000;
/// Tools per `tools/list` page.
pub const PAGE_SIZE: usize = 100;
/// Most sessions told of catalog changes; the oldest is forgotten first (it can still
/// list tools, it just hears of changes on its next list).
const MAX_ANNOUNCED_PEERS: usize = 4096;
/// How often the catalog is checked for changes to announce (`list_changed`).
const CHANGE_POLL: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct McpFrontDoor {
    executor: Arc<ExecutorService>,
    auth: Arc<SnapshotAuthenticator>,
    /// Peers of initialized sessions, told when the catalog changes.
    peers: Arc<Mutex<Vec<Peer<RoleServer>>>>,
    /// When `tools/list` holds the meta-tools only (large catalogs).
    search: Arc<SearchMode>,
}

fn schema(v: &Value) -> Arc<serde_json::Map<String, Value>> {
    Arc::new(v.as_object().cloned().unwrap_or_default())
}

fn failure(message: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(message.into())]).into()
}

impl McpFrontDoor {
    pub fn new(executor: Arc<ExecutorService>, auth: Arc<SnapshotAuthenticator>) -> Self {
        Self {
            executor,
            auth,
            peers: Arc::default(),
            search: Arc::default(),
        }
    }

    /// Search mode for large catalogs ([`crate::mcp_search`]).
    pub fn with_search_mode(mut self, search: SearchMode) -> Self {
        self.search = Arc::new(search);
        self
    }

    /// The calling agent: resolved from this HTTP request's bearer token by [`serve`]
    /// before rmcp sees the request (every request, so a revoked token stops at once).
    async fn agent(&self, extensions: &rmcp::model::Extensions) -> Result<(Uuid, String), ErrorData> {
        let parts = extensions.get::<http::request::Parts>();
        if let Some(c) = parts.and_then(|p| p.extensions.get::<Caller>()) {
            return Ok((c.agent_id, c.bearer.clone()));
        }
        let bearer = parts
            .and_then(|p| bearer(&p.headers))
            .ok_or_else(|| ErrorData::invalid_request("authorization: Bearer <agent token> is required", None))?;
        match self.auth.agent(bearer).await {
            Ok(agent_id) => Ok((agent_id, bearer.to_owned())),
            Err(Refusal::Unavailable(m)) => Err(ErrorData::internal_error(m, None)),
            Err(r) => Err(ErrorData::invalid_request(r.to_string(), None)),
        }
    }

    /// The tools `agent` may use now, by name, as MCP tools; `toolplane_select` first.
    fn catalog(&self, agent: Uuid) -> Vec<McpTool> {
        let mut tools = vec![
            McpTool::new(
                SELECT_TOOL,
                "Find the right tool for a task: describe the task, get the best tools you may use, ranked, with reasons.",
                schema(&json!({"type": "object", "required": ["task"], "properties": {
                    "task": {"type": "string", "description": "What you want to get done"},
                    "category": {"type": "string", "description": "Kind of task, for learning (optional)"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 10}
                }})),
            )
            .annotate(ToolAnnotations::new().read_only(true).idempotent(true)),
        ];
        let Some(snap) = self.executor.snapshot.current() else {
            return tools;
        };
        let Some(a) = snap.agent(agent) else {
            return tools;
        };
        let now = Utc::now();
        let mut mine: Vec<McpTool> = snap
            .tools()
            .filter(|t| evaluate(a, &t.tool, snap.grants(agent, t.tool.id), now).allowed)
            .map(|t| {
                let s = &t.tool.spec;
                McpTool::new(s.name.clone(), s.description.clone(), schema(&s.input_schema)).annotate(
                    ToolAnnotations::new()
                        .read_only(s.side_effects != SideEffects::Write)
                        .destructive(s.side_effects == SideEffects::Write)
                        .idempotent(s.idempotent),
                )
            })
            .collect();
        if self.search.applies(a, mine.len()) {
            tools.push(mcp_search::call_tool());
            return tools;
        }
        mine.sort_by(|a, b| a.name.cmp(&b.name));
        tools.extend(mine);
        tools
    }

    async fn select(&self, agent: Uuid, token: &str, args: &Value) -> CallToolResponse {
        let Some(selector) = &self.executor.selector else {
            return failure("selection needs the control plane, which this sidecar does not know");
        };
        let task = args["task"].as_str().unwrap_or_default();
        let req = pb::SelectToolRequest {
            task_description: task.to_owned(),
            task_category: args["category"].as_str().unwrap_or_default().to_owned(),
            max_alternatives: args["limit"].as_u64().map_or(4, |l| l.clamp(1, 10) as u32 - 1),
            ..Default::default()
        };
        match selector.select(agent, token, req, None, None).await {
            Ok(r) => {
                // The selected tools are the agent's, held once its tools are.
                let snap = self.executor.snapshot.serving_agent(agent).await.ok();
                // Each candidate's input schema, so the agent can call it at once (in
                // search mode it has no other way to read it).
                let input_schema = |name: &str| {
                    snap.as_ref()
                        .and_then(|s| s.tool_by_name(name).map(|t| t.tool.spec.input_schema.clone()))
                        .unwrap_or(Value::Null)
                };
                let ranked: Vec<Value> = r
                    .primary
                    .iter()
                    .chain(&r.alternatives)
                    .filter_map(|s| {
                        s.tool.as_ref().map(|t| {
                            json!({"tool": t.name, "description": t.description, "score": s.combined_score,
                                   "match": s.match_score, "suitability": s.suitability_score,
                                   "input_schema": input_schema(&t.name)})
                        })
                    })
                    .collect();
                CallToolResult::structured(json!({
                    "tools": ranked, "confidence": r.confidence, "reasoning": r.reasoning,
                    "selection_id": r.selection_id,
                }))
                .into()
            }
            Err(s) => failure(format!("selection failed: {}", s.message())),
        }
    }

    /// Announces catalog changes to every initialized session.
    pub fn spawn_change_announcer(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut seen = me.executor.snapshot.current().map(|s| s.revision);
            loop {
                tokio::time::sleep(CHANGE_POLL).await;
                let now = me.executor.snapshot.current().map(|s| s.revision);
                if now == seen {
                    continue;
                }
                seen = now;
                let peers: Vec<Peer<RoleServer>> = me.peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let mut alive = Vec::new();
                for p in peers {
                    if p.notify_tool_list_changed().await.is_ok() {
                        alive.push(p);
                    }
                }
                *me.peers.lock().unwrap_or_else(|e| e.into_inner()) = alive;
            }
        });
    }
}

impl ServerHandler for McpFrontDoor {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
    }

    /// Only an authenticated agent opens a session: an unauthenticated `initialize`
    /// would otherwise hold state in the sidecar for nothing.
    async fn initialize(
        &self,
        request: rmcp::model::InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::InitializeResult, ErrorData> {
        self.agent(&context.extensions).await?;
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|p| !p.is_transport_closed());
        if peers.len() >= MAX_ANNOUNCED_PEERS {
            peers.remove(0);
        }
        peers.push(context.peer);
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let (agent, _) = self.agent(&context.extensions).await?;
        // A scoped sidecar fetches the agent's tools first; failing that, it lists what
        // it holds (the meta-tools at least) rather than nothing.
        if let Err(e) = self.executor.snapshot.serving_agent(agent).await {
            tracing::warn!(%agent, error = %e, "listing tools without the agent's tools");
        }
        let all = self.catalog(agent);
        let start: usize = match request.and_then(|r| r.cursor) {
            Some(c) => c
                .parse()
                .map_err(|_| ErrorData::invalid_params(format!("cursor {c:?} was not issued here"), None))?,
            None => 0,
        };
        let page: Vec<McpTool> = all.iter().skip(start).take(PAGE_SIZE).cloned().collect();
        let mut result = ListToolsResult::with_all_items(page);
        if start + PAGE_SIZE < all.len() {
            result.next_cursor = Some((start + PAGE_SIZE).to_string());
        }
        // Cache hints (2026-07-28): the catalog is this agent's own, so private; fresh
        // for a short while, as a grant or revocation changes it (stateless clients get
        // no `list_changed`).
        result.ttl_ms = Some(LIST_TTL_MS);
        result.cache_scope = Some(CacheScope::Private);
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // Cut off from the control plane for too long: a tool failure saying why (the
        // agent can read it), not a protocol error.
        if let Err(e @ ExecError::Stale { .. }) = self.executor.snapshot.serving() {
            return Ok(failure(format!("UNAVAILABLE: {e}")));
        }
        let (agent_id, token) = self.agent(&context.extensions).await?;
        let traceparent = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.headers.get("traceparent"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // `toolplane_select` answers with a selection id; a call passing it back in
        // `_meta` links the call to the task it was selected for (task memory).
        let selection_id = request
            .meta
            .as_ref()
            .and_then(|m| m.get(SELECTION_META))
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok());
        let args = Value::Object(request.arguments.unwrap_or_default());
        if request.name == SELECT_TOOL {
            return Ok(self.select(agent_id, &token, &args).await);
        }
        // `toolplane_call` only names the tool another way: the call below is the same.
        let (name, args) = if request.name == mcp_search::CALL_TOOL {
            match mcp_search::target(&args) {
                Ok(t) => t,
                Err(why) => return Ok(failure(why)),
            }
        } else {
            (request.name.to_string(), args)
        };
        let call = Call {
            agent_id,
            tool: Some(pb::invoke_request::Tool::ToolName(name)),
            parameters: args,
            task_id: String::new(),
            task_category: String::new(),
            selection_id,
            deadline: None,
            traceparent,
            caller: Default::default(),
            limits: Default::default(),
        };
        let executor = self.executor.clone();
        let outcome = crate::detach::detached(|caller| async move { executor.run_call(Call { caller, ..call }).await });
        Ok(match outcome.await {
            Ok(r) => match r.status {
                ExecutionStatus::Success | ExecutionStatus::PartialSuccess => {
                    let mut result = CallToolResult::structured(r.output.clone());
                    if r.status == ExecutionStatus::PartialSuccess || r.stale {
                        result.content.push(ContentBlock::text(format!(
                            "note: {}",
                            if r.stale {
                                "a stale earlier result"
                            } else {
                                "a partial result"
                            }
                        )));
                    }
                    result.into()
                }
                status => {
                    let retry = if r.retry_after_ms > 0 {
                        format!(" (retry in {} ms)", r.retry_after_ms)
                    } else {
                        String::new()
                    };
                    failure(format!("{}: {}{retry}", status.as_str().to_uppercase(), r.error))
                }
            },
            Err(e) => failure(match &e {
                ExecError::InvalidArgument(v) => format!("VALIDATION_ERROR: {v}"),
                ExecError::PermissionDenied(m) => format!("PERMISSION_DENIED: {m}"),
                ExecError::NotFound(m) => format!("NOT_FOUND: {m}"),
                e @ ExecError::Stale { .. } => format!("UNAVAILABLE: {e}"),
                other => other.to_string(),
            }),
        })
    }
}

/// The agent a request was authenticated as, put in its extensions by [`serve`].
#[derive(Clone)]
struct Caller {
    agent_id: Uuid,
    bearer: String,
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..BEARER_PREFIX.len())
                .filter(|p| p.eq_ignore_ascii_case(BEARER_PREFIX))
                .map(|_| &v[BEARER_PREFIX.len()..])
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// What bounds the front door's state: whom it answers (by `Host`), how many sessions
/// it keeps, and for how long an idle one lives.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub allowed_hosts: Vec<String>,
    pub max_sessions: usize,
    pub idle: Duration,
}

/// Serves MCP at `http://<addr>/mcp` until the process stops, and the protected-resource
/// metadata (RFC 9728) when identity providers are configured.
pub async fn serve(listener: tokio::net::TcpListener, door: McpFrontDoor, limits: SessionLimits) {
    door.spawn_change_announcer();
    let auth = door.auth.clone();
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(limits.idle);
    let sessions = Arc::new(sessions);
    let service: StreamableHttpService<McpFrontDoor, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(door.clone()),
        sessions.clone(),
        StreamableHttpServerConfig::default()
            .with_sse_keep_alive(Some(Duration::from_secs(15)))
            .with_allowed_hosts(limits.allowed_hosts.clone()),
    );
    let metadata = auth.oauth().map(|o| crate::resource_metadata::Metadata::new(o));
    let metadata = Arc::new(metadata);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (service, sessions, max_sessions) = (service.clone(), sessions.clone(), limits.max_sessions);
        let (auth, metadata) = (auth.clone(), metadata.clone());
        tokio::spawn(async move {
            let svc = TowerToHyperService::new(tower::ServiceBuilder::new().service(tower::util::service_fn(
                move |mut req: http::Request<hyper::body::Incoming>| {
                    let (service, sessions, auth, metadata) =
                        (service.clone(), sessions.clone(), auth.clone(), metadata.clone());
                    async move {
                        use crate::resource_metadata::{plain, refused};
                        if let Some(m) = metadata.as_ref().as_ref()
                            && let Some(doc) = m.answer(&req)
                        {
                            return Ok::<_, std::convert::Infallible>(doc);
                        }
                        if req.uri().path() != "/mcp" {
                            return Ok(plain(http::StatusCode::NOT_FOUND, "MCP is served at /mcp"));
                        }
                        // Every request is authenticated here, before rmcp keeps any state
                        // for it: a session is state kept for its opener, and only an
                        // agent opens one.
                        let caller = match bearer(req.headers()) {
                            None => Err(Refusal::Unauthenticated(
                                "authorization: Bearer <agent token or access token> is required".to_owned(),
                            )),
                            Some(token) => auth.agent(token).await.map(|agent_id| Caller {
                                agent_id,
                                bearer: token.to_owned(),
                            }),
                        };
                        // 2026-07-28 and later are stateless: such requests never open one.
                        let stateless = req
                            .headers()
                            .get("mcp-protocol-version")
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.trim() >= ProtocolVersion::NO_INITIALIZE.as_str());
                        let opens_session = req.method() == http::Method::POST
                            && !stateless
                            && !req.headers().contains_key("mcp-session-id");
                        match caller {
                            Ok(c) => {
                                req.extensions_mut().insert(c);
                            }
                            // Undecidable now (snapshot too old, identity provider away):
                            // a request that keeps no state goes on to the handlers, which
                            // authenticate again and answer a tool call with the reason the
                            // agent can read; opening a session is refused.
                            Err(Refusal::Unavailable(_)) if !opens_session => {}
                            Err(r) => {
                                let presented = bearer(req.headers()).is_some();
                                return Ok(refused(metadata.as_ref().as_ref(), &r, presented));
                            }
                        }
                        if opens_session && sessions.sessions.read().await.len() >= max_sessions {
                            return Ok(plain(
                                http::StatusCode::SERVICE_UNAVAILABLE,
                                "too many MCP sessions are open on this sidecar; retry later",
                            ));
                        }
                        Ok(service.handle(req).await)
                    }
                },
            )));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
