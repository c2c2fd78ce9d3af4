//! `Learning`: agents report how good a result was; operators read what the fleet
//! learned (effectiveness per tool × category × agent, with a trend) and the best
//! tools per task category, with how often agents followed that advice.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use toolplane_core::Violations;
use toolplane_core::convert::{opt_ts, parse_uuid};
use toolplane_core::model::{ExecutionStatus, Principal, Role};
use toolplane_proto::v1 as pb;
use toolplane_runtime::auth::{PrincipalExt, principal};
use uuid::Uuid;

use super::opt_uuid;
use crate::error::{ApiError, ApiResult};
use crate::selection::learning::{Trend, normalize_category};
use crate::state::AppState;

/// Outcomes a recommendation must rest on.
const MIN_EVIDENCE: u64 = 3;

pub struct LearningService {
    state: Arc<AppState>,
}

impl LearningService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn report(&self, who: &Principal, req: pb::ReportOutcomeRequest) -> ApiResult<()> {
        let id = parse_uuid("invocation_id", &req.invocation_id)?;
        if !(0.0..=1.0).contains(&req.quality) || req.quality.is_nan() {
            return Err(Violations::single("quality", "must be between 0 and 1").into());
        }
        let Some(inv) = self.state.store.get_invocation(id).await? else {
            return Err(ApiError::NotFound(format!("invocation {id} not found")));
        };
        if let Principal::Agent { agent_id, .. } = who
            && *agent_id != inv.agent_id
        {
            return Err(ApiError::PermissionDenied(
                "an agent may only report on its own invocations".to_owned(),
            ));
        }
        self.state
            .store
            .record_quality(id, req.quality, req.task_succeeded)
            .await?;
        if self.state.store.shares_learning() {
            // The store folded the verdict into the shared cells with the report.
            if let Err(e) = self.state.refresh_learning().await {
                tracing::warn!(error = %e, "could not refresh learning after a report");
            }
        } else {
            let call_succeeded = matches!(
                inv.result.status,
                ExecutionStatus::Success | ExecutionStatus::PartialSuccess
            ) && !inv.result.cache_hit;
            self.state.selector.learning.record_quality(
                inv.result.tool_id,
                inv.agent_id,
                &inv.task_category,
                req.quality,
                req.task_succeeded,
                call_succeeded,
            );
        }
        self.state.task_outcome(&inv, req.quality, req.task_succeeded).await
    }
}

fn trend_pb(t: Trend) -> i32 {
    let t = match t {
        Trend::Improving => pb::Trend::Improving,
        Trend::Stable => pb::Trend::Stable,
        Trend::Declining => pb::Trend::Declining,
    };
    t as i32
}

#[tonic::async_trait]
impl pb::learning_server::Learning for LearningService {
    async fn report_outcome(
        &self,
        request: Request<pb::ReportOutcomeRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Agent, Role::Admin], "Learning.ReportOutcome")?;
        self.report(&who, request.into_inner()).await?;
        Ok(Response::new(pb::ReportOutcomeResponse {}))
    }

    async fn get_effectiveness(
        &self,
        request: Request<pb::GetEffectivenessRequest>,
    ) -> Result<Response<pb::GetEffectivenessResponse>, Status> {
        principal(&request)?.require(&[Role::Admin, Role::Auditor], "Learning.GetEffectiveness")?;
        let req = request.into_inner();
        let tool = opt_uuid("tool_id", &req.tool_id)?;
        let agent = opt_uuid("agent_id", &req.agent_id)?;
        let category = (!req.task_category.is_empty()).then_some(req.task_category.as_str());
        let rows = self
            .state
            .selector
            .learning
            .effectiveness(tool, category, agent)
            .into_iter()
            .map(|((tool, category, agent), c)| pb::Effectiveness {
                tool_id: tool.to_string(),
                task_category: category,
                agent_id: if agent.is_nil() {
                    String::new()
                } else {
                    agent.to_string()
                },
                invocations: c.invocations,
                success_rate: c.success_rate(),
                ewma_duration_ms: c.ewma_duration_ms,
                ewma_cost: format!("{:.6}", c.ewma_cost),
                quality: c.quality().unwrap_or(0.0),
                trend: trend_pb(c.trend()),
                last_used: opt_ts(c.last_used),
            })
            .collect();
        Ok(Response::new(pb::GetEffectivenessResponse { rows }))
    }

    async fn get_recommendations(
        &self,
        request: Request<pb::GetRecommendationsRequest>,
    ) -> Result<Response<pb::GetRecommendationsResponse>, Status> {
        principal(&request)?.require(
            &[Role::Agent, Role::Admin, Role::Auditor],
            "Learning.GetRecommendations",
        )?;
        let req = request.into_inner();
        let learning = &self.state.selector.learning;
        let category = req.task_category.trim().to_owned();
        let limit = if req.limit == 0 { 5 } else { req.limit.min(50) as usize };
        let mut best: Vec<(Uuid, f64, u64, f64)> = learning
            .effectiveness(None, Some(&category), Some(Uuid::nil()))
            .into_iter()
            .filter(|(_, c)| c.invocations >= MIN_EVIDENCE)
            .map(|((tool, _, _), c)| {
                let (p, _) = learning.suitability(tool, None, &category);
                (tool, p, c.invocations, c.success_rate())
            })
            .collect();
        best.sort_by(|a, b| b.1.total_cmp(&a.1));
        best.truncate(limit);
        let follow = match self.state.store.follow_stats(&normalize_category(&category)).await {
            Ok(Some(shared)) => shared,
            Ok(None) => learning.follow_stats(&category),
            Err(e) => return Err(ApiError::from(e).into()),
        };
        let recommendations = best
            .into_iter()
            .map(|(tool, p, n, rate)| pb::Recommendation {
                tool_id: tool.to_string(),
                reason: format!(
                    "estimated success {p:.2} from {n} outcomes ({:.0}% succeeded); selection recommended a tool \
                     for this category {} times, agents followed {} times and {} of those succeeded",
                    rate * 100.0,
                    follow.recommended,
                    follow.followed,
                    follow.followed_succeeded
                ),
                score: p,
            })
            .collect();
        Ok(Response::new(pb::GetRecommendationsResponse { recommendations }))
    }
}
