//! Services whose behaviour arrives with later capabilities. They are served (so
//! reflection lists them and clients can be generated) but every RPC answers
//! UNIMPLEMENTED, as the README lists.

use std::pin::Pin;

use futures::Stream;
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
pub struct AuditService;

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    type QueryAuditTrailStream = Pin<Box<dyn Stream<Item = Result<pb::QueryAuditTrailResponse, Status>> + Send>>;

    async fn query_audit_trail(
        &self,
        _: Request<pb::QueryAuditTrailRequest>,
    ) -> Result<Response<Self::QueryAuditTrailStream>, Status> {
        later("Audit.QueryAuditTrail")
    }

    async fn generate_compliance_report(
        &self,
        _: Request<pb::GenerateComplianceReportRequest>,
    ) -> Result<Response<pb::GenerateComplianceReportResponse>, Status> {
        later("Audit.GenerateComplianceReport")
    }

    async fn verify_audit_chain(
        &self,
        _: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        later("Audit.VerifyAuditChain")
    }

    async fn get_usage_statistics(
        &self,
        _: Request<pb::GetUsageStatisticsRequest>,
    ) -> Result<Response<pb::GetUsageStatisticsResponse>, Status> {
        later("Audit.GetUsageStatistics")
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
