//! `ToolSelector.SelectTool`: the best tool this agent may use for a task, with
//! alternatives, a confidence and the reasons; every decision is logged.

use std::sync::Arc;

use std::collections::HashSet;

use chrono::{DateTime, TimeZone, Utc};
use tonic::{Request, Response, Status};
use toolplane_core::Violations;
use toolplane_core::convert::{parse_decimal, sensitivity_from_pb, tool_to_pb};
use toolplane_core::model::{Permission, PermissionType, Principal, Role, Snapshot};
use toolplane_core::permission::{local_day, parse_time_zone};
use toolplane_core::redact::Redactor;
use toolplane_proto::v1 as pb;
use toolplane_runtime::auth::{PrincipalExt, principal};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::selection::{Query, Scored, Selection};
use crate::state::AppState;
use crate::storage::{BudgetWindow, SelectionLogEntry};

/// Longest task description accepted.
pub const MAX_TASK_DESCRIPTION: usize = 8192;
pub const MAX_ALTERNATIVES: u32 = 10;

pub struct SelectorService {
    state: Arc<AppState>,
    /// Redacts task descriptions before they are logged.
    redactor: Redactor,
}

impl SelectorService {
    pub fn new(state: Arc<AppState>, redactor: Redactor) -> Self {
        Self { state, redactor }
    }
}

fn query_from(who: &Principal, req: &pb::SelectToolRequest) -> ApiResult<Query> {
    let mut bad = Violations::default();
    let text = req.task_description.trim();
    if text.is_empty() && req.required_capabilities.is_empty() {
        bad.push("task_description", "is required (or give required_capabilities)");
    }
    if text.len() > MAX_TASK_DESCRIPTION {
        bad.push(
            "task_description",
            format!("is longer than {MAX_TASK_DESCRIPTION} bytes"),
        );
    }
    if req.max_alternatives > MAX_ALTERNATIVES {
        bad.push("max_alternatives", format!("is above the limit of {MAX_ALTERNATIVES}"));
    }
    let c = req.constraints.clone().unwrap_or_default();
    let max_cost = if c.max_cost.is_empty() {
        None
    } else {
        match parse_decimal("constraints.max_cost", &c.max_cost) {
            Ok(d) => Some(d),
            Err(v) => {
                bad.0.extend(v.0);
                None
            }
        }
    };
    bad.into_result()?;
    Ok(Query {
        text: text.to_owned(),
        capabilities: req.required_capabilities.clone(),
        // Cut to learning's bound, so the selection log keeps what learning keys on.
        category: crate::selection::learning::normalize_category(&req.task_category),
        max_latency_ms: c.max_latency_ms,
        max_cost,
        max_sensitivity: sensitivity_from_pb(c.max_data_sensitivity),
        alternatives: if req.max_alternatives == 0 {
            3
        } else {
            req.max_alternatives as usize
        },
        agent: match who {
            Principal::Agent { agent_id, .. } => Some(*agent_id),
            _ => None,
        },
        embedding: None,
        spent_grants: HashSet::new(),
    })
}

fn scored_pb(sel: &Selection, s: &Scored) -> pb::ScoredTool {
    pb::ScoredTool {
        tool: Some(tool_to_pb(sel.tool(s))),
        match_score: s.matching,
        suitability_score: s.suitability,
        combined_score: s.combined,
    }
}

/// The start of the day `now` falls on in `tz`; where local midnight is skipped by a
/// DST change, the first instant of the day that exists.
fn day_start(now: DateTime<Utc>, tz: chrono_tz::Tz) -> DateTime<Utc> {
    let (day, _) = local_day(now, tz);
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    (0..=3)
        .find_map(|h| {
            tz.from_local_datetime(&(midnight + chrono::Duration::hours(h)))
                .earliest()
        })
        .map_or(now - chrono::Duration::days(1), |t| t.with_timezone(&Utc))
}

impl SelectorService {
    /// The agent's `LIMITED_INVOCATIONS` grants whose budget for the grant's current
    /// day is spent, counted from the calls the sidecars reported under each (one
    /// query, only for an agent holding such grants). Selection then does not propose
    /// a tool that only a spent budget would allow until the grant's day ends. If the
    /// count cannot be read, nothing is taken out: the sidecar still enforces the
    /// budget.
    async fn spent_grants(&self, agent: Uuid, snapshot: &Snapshot, now: DateTime<Utc>) -> HashSet<Uuid> {
        let limited: Vec<(&Permission, BudgetWindow)> = snapshot
            .permissions
            .iter()
            .filter(|p| {
                p.agent_id == agent
                    && p.kind == PermissionType::LimitedInvocations
                    && p.max_invocations_per_day > 0
                    && p.expires_at.is_none_or(|e| e > now)
            })
            .filter_map(|p| {
                let tz = parse_time_zone(&p.time_zone).ok()?;
                Some((
                    p,
                    BudgetWindow {
                        permission_id: p.id,
                        since: day_start(now, tz),
                    },
                ))
            })
            .collect();
        if limited.is_empty() {
            return HashSet::new();
        }
        let windows: Vec<BudgetWindow> = limited.iter().map(|(_, w)| *w).collect();
        match self.state.store.budget_use(agent, &windows).await {
            Ok(used) => limited
                .iter()
                .filter(|(p, _)| used.get(&p.id).copied().unwrap_or(0) >= u64::from(p.max_invocations_per_day))
                .map(|(p, _)| p.id)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, %agent, "could not count daily budgets; selecting as if none were spent");
                HashSet::new()
            }
        }
    }

    /// Selects for `who`; shared with `Executor.ExecuteTask` through the RPC.
    pub async fn select(&self, who: &Principal, req: pb::SelectToolRequest) -> ApiResult<pb::SelectToolResponse> {
        let started = std::time::Instant::now();
        let mut q = query_from(who, &req)?;
        if let Some(model) = self.state.selector.embedder()
            && !q.text.is_empty()
        {
            // Tens of milliseconds of CPU: off the async workers.
            let text = q.text.clone();
            let embedded = tokio::task::spawn_blocking(move || model.embed(&[text.as_str()]))
                .await
                .map_err(|e| ApiError::Unavailable(format!("embedding: {e}")))?;
            match embedded {
                Ok(mut v) => q.embedding = v.pop(),
                Err(e) => tracing::warn!(error = %e, "could not embed a task; selecting by text alone"),
            }
        }
        let snapshot = self.state.snapshot().await?;
        if let Some(agent) = q.agent {
            q.spent_grants = self.spent_grants(agent, &snapshot, Utc::now()).await;
        }
        let state = self.state.clone();
        // Building the index of a large catalog takes a moment: off the async workers.
        let built = tokio::task::spawn_blocking(move || state.selector.index(snapshot))
            .await
            .map_err(|e| ApiError::Unavailable(format!("selection index: {e}")))?;
        let sel = self
            .state
            .selector
            .select(built, &q, Utc::now())
            .map_err(ApiError::NotFound)?;
        let selection_id = Uuid::now_v7();
        let primary = sel.tool(&sel.primary).id;
        if let Some(agent) = q.agent {
            self.state.selector.learning.recommended(agent, &q.category, primary);
        }
        let task = self.redactor.redact_text(&q.text);
        self.state.recent_selections.insert(
            selection_id,
            crate::task_memory::RecentSelection {
                agent_id: q.agent,
                task: task.clone(),
            },
        );
        let entry = SelectionLogEntry {
            selection_id,
            agent_id: q.agent,
            task_category: q.category.clone(),
            task_description: task,
            primary_tool_id: primary,
            alternatives: sel.alternatives.iter().map(|a| sel.tool(a).id).collect(),
            combined_score: sel.primary.combined,
            confidence: sel.confidence,
            reasoning: sel.reasoning.clone(),
            selected_at: Utc::now(),
        };
        let store = self.state.store.clone();
        // The log is for analysis; a slow database must not slow selection.
        tokio::spawn(async move {
            if let Err(e) = store.log_selection(&entry).await {
                tracing::warn!(error = %e, "could not log a selection decision");
            }
        });
        metrics::histogram!(toolplane_runtime::metrics::SELECTION_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(pb::SelectToolResponse {
            primary: Some(scored_pb(&sel, &sel.primary)),
            alternatives: sel.alternatives.iter().map(|a| scored_pb(&sel, a)).collect(),
            confidence: sel.confidence,
            reasoning: sel.reasoning.clone(),
            selection_id: selection_id.to_string(),
        })
    }
}

/// The agent a sidecar token selects for: named by `x-toolplane-agent`, which only a
/// sidecar token may send (the sidecar verified the agent's own credential).
fn on_behalf_of<T>(request: &Request<T>) -> Result<Uuid, Status> {
    let header = request
        .metadata()
        .get("x-toolplane-agent")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Status::permission_denied(
                "ToolSelector.SelectTool is not allowed for the sidecar role unless it names the agent it \
                 selects for (x-toolplane-agent)",
            )
        })?;
    Uuid::parse_str(header.trim())
        .map_err(|_| Status::invalid_argument(format!("x-toolplane-agent: {header:?} is not an agent id")))
}

#[tonic::async_trait]
impl pb::tool_selector_server::ToolSelector for SelectorService {
    async fn select_tool(
        &self,
        request: Request<pb::SelectToolRequest>,
    ) -> Result<Response<pb::SelectToolResponse>, Status> {
        use tracing::Instrument;
        let who = match principal(&request)? {
            // A sidecar selecting for an agent it authenticated with an identity
            // provider's token: selected for exactly as that agent.
            Principal::Sidecar { token_id } => Principal::Agent {
                agent_id: on_behalf_of(&request)?,
                token_id,
            },
            who => {
                who.require(&[Role::Agent, Role::Admin, Role::Auditor], "ToolSelector.SelectTool")?;
                who
            }
        };
        // A child of the caller's trace (the agent's, or the sidecar's for ExecuteTask).
        let span = tracing::info_span!("toolplane.select", otel.kind = "server");
        let incoming = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        toolplane_runtime::telemetry::continue_trace(&span, incoming.as_deref());
        let r = self.select(&who, request.into_inner()).instrument(span).await?;
        Ok(Response::new(r))
    }
}
