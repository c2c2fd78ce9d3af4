//! Services whose behaviour arrives with later capabilities. They are served (so
//! reflection lists them and clients can be generated) but every RPC answers
//! UNIMPLEMENTED, as the README lists.

use tonic::{Request, Response, Status};
use toolplane_proto::v1 as pb;

use crate::error::ApiError;

fn later<T>(rpc: &'static str) -> Result<Response<T>, Status> {
    Err(ApiError::Unimplemented(rpc).into())
}

#[derive(Default)]
pub struct SelectorService;

#[tonic::async_trait]
impl pb::tool_selector_server::ToolSelector for SelectorService {
    async fn select_tool(&self, _: Request<pb::SelectToolRequest>) -> Result<Response<pb::SelectToolResponse>, Status> {
        later("ToolSelector.SelectTool")
    }
}

#[derive(Default)]
pub struct LearningService;

#[tonic::async_trait]
impl pb::learning_server::Learning for LearningService {
    async fn report_outcome(
        &self,
        _: Request<pb::ReportOutcomeRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        later("Learning.ReportOutcome")
    }

    async fn get_effectiveness(
        &self,
        _: Request<pb::GetEffectivenessRequest>,
    ) -> Result<Response<pb::GetEffectivenessResponse>, Status> {
        later("Learning.GetEffectiveness")
    }

    async fn get_recommendations(
        &self,
        _: Request<pb::GetRecommendationsRequest>,
    ) -> Result<Response<pb::GetRecommendationsResponse>, Status> {
        later("Learning.GetRecommendations")
    }
}
