//! `Audit`: the trail streamed with resumable cursors, hash-chain verification,
//! compliance reports and usage statistics. Admin only: the trail names every agent.

use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use toolplane_core::Violations;
use toolplane_core::audit::{ChainWalk, canonical_form};
use toolplane_core::compliance::Report;
use toolplane_core::convert::{action_from_pb, audit_record_to_pb, from_ts};
use toolplane_core::json::json_to_struct;
use toolplane_core::model::Role;
use toolplane_proto::v1 as pb;
use toolplane_runtime::auth::{PrincipalExt, principal};

use super::audit_checkpoints::CheckpointStream;
use super::opt_uuid;
use crate::checkpoints::Checkpoints;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::storage::AuditFilter;

/// Records fetched from storage per round trip while streaming or walking.
const PAGE: usize = 1000;

pub struct AuditService {
    pub(super) state: Arc<AppState>,
    pub(super) checkpoints: Arc<Checkpoints>,
}

impl AuditService {
    pub fn new(state: Arc<AppState>, checkpoints: Arc<Checkpoints>) -> Self {
        Self { state, checkpoints }
    }
}

type Period = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn period(since: Option<&prost_types::Timestamp>, until: Option<&prost_types::Timestamp>) -> ApiResult<Period> {
    let parse = |field: &str, t: Option<&prost_types::Timestamp>| -> ApiResult<Option<DateTime<Utc>>> {
        t.map(|t| from_ts(t).ok_or_else(|| Violations::single(field, "is not a valid timestamp").into()))
            .transpose()
    };
    let (s, u) = (parse("since", since)?, parse("until", until)?);
    if let (Some(s), Some(u)) = (s, u)
        && s >= u
    {
        return Err(Violations::single("until", "must be after since").into());
    }
    Ok((s, u))
}

fn filter_from(req: &pb::QueryAuditTrailRequest) -> ApiResult<AuditFilter> {
    let (since, until) = period(req.since.as_ref(), req.until.as_ref())?;
    let cursor = if req.cursor.is_empty() {
        None
    } else {
        Some(
            req.cursor
                .parse::<u64>()
                .map_err(|_| Violations::single("cursor", "is not a cursor this service returned"))?,
        )
    };
    // The cursor resumes after a record, or before it when the newest come first.
    let (after_seq, before_seq) = if req.newest_first {
        (None, cursor)
    } else {
        (cursor, None)
    };
    Ok(AuditFilter {
        invocation_id: opt_uuid("invocation_id", &req.invocation_id)?,
        agent_id: opt_uuid("agent_id", &req.agent_id)?,
        tool_id: opt_uuid("tool_id", &req.tool_id)?,
        task_id: (!req.task_id.is_empty()).then(|| req.task_id.clone()),
        action: action_from_pb(req.action),
        success: req.success,
        since,
        until,
        after_seq,
        before_seq,
        newest_first: req.newest_first,
        limit: req.limit as usize,
    })
}

type QueryStream = Pin<Box<dyn Stream<Item = Result<pb::QueryAuditTrailResponse, Status>> + Send>>;

impl AuditService {
    /// Walks every chain of the period; the first bad link ends the walk.
    async fn verify(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> ApiResult<pb::VerifyAuditChainResponse> {
        let store = &self.state.store;
        // Heads first: anything appended during the walk is not expected.
        let heads = store.audit_chain_heads().await?;
        let mut walk = ChainWalk::default();
        let mut after = None;
        loop {
            let page = store.audit_chain_page(since, until, after.clone(), PAGE).await?;
            for r in &page {
                let predecessor = if walk.opens_chain(r) && r.chain_seq > 1 {
                    store.audit_link(&r.chain, r.chain_seq - 1).await?
                } else {
                    None
                };
                if let Err(b) = walk.next(r, predecessor.as_deref()) {
                    return Ok(pb::VerifyAuditChainResponse {
                        intact: false,
                        records_checked: walk.checked,
                        first_bad_sequence: b.seq,
                        problem: format!("chain {} position {}: {}", b.chain, b.chain_seq, b.problem),
                        first_bad_event_id: b.event_id.to_string(),
                        chain: b.chain,
                        chains_checked: walk.last.len() as u64,
                        ..Default::default()
                    });
                }
            }
            match page.last() {
                Some(r) if page.len() == PAGE => after = Some((r.chain.clone(), r.chain_seq)),
                _ => break,
            }
        }
        // Up to now: every chain must reach its head (records cut from a chain's end).
        if until.is_none_or(|u| u > Utc::now()) {
            for (chain, head) in heads {
                let last = walk.last.get(&chain).copied();
                let cut = match last {
                    Some(seen) => seen < head,
                    None => since.is_none() && head > 0,
                };
                if cut {
                    return Ok(pb::VerifyAuditChainResponse {
                        intact: false,
                        records_checked: walk.checked,
                        first_bad_sequence: 0,
                        problem: format!(
                            "chain {chain}: records after position {} are missing (the chain's head is at {head})",
                            last.unwrap_or(0)
                        ),
                        first_bad_event_id: String::new(),
                        chain,
                        chains_checked: walk.last.len() as u64,
                        ..Default::default()
                    });
                }
            }
        }
        Ok(pb::VerifyAuditChainResponse {
            intact: true,
            records_checked: walk.checked,
            chains_checked: walk.last.len() as u64,
            ..Default::default()
        })
    }

    async fn report(
        &self,
        req: pb::GenerateComplianceReportRequest,
    ) -> ApiResult<pb::GenerateComplianceReportResponse> {
        let (since, until) = period(req.since.as_ref(), req.until.as_ref())?;
        let mut report = Report::new(req.framework.trim());
        let mut filter = AuditFilter {
            since,
            until,
            limit: PAGE,
            ..AuditFilter::default()
        };
        loop {
            let page = self.state.store.audit_events(&filter).await?;
            for r in &page {
                report.add(&r.event);
            }
            match page.last() {
                Some(r) if page.len() == PAGE => filter.after_seq = Some(r.seq),
                _ => break,
            }
        }
        let mut json = serde_json::to_value(&report).map_err(|e| ApiError::Unavailable(e.to_string()))?;
        if let Some(o) = json.as_object_mut() {
            o.insert("since".to_owned(), since.map(|t| t.to_rfc3339()).into());
            o.insert("until".to_owned(), until.map(|t| t.to_rfc3339()).into());
            o.insert("generated_at".to_owned(), Utc::now().to_rfc3339().into());
            o.insert("csv".to_owned(), report.to_csv().into());
        }
        let t = &report.totals;
        Ok(pb::GenerateComplianceReportResponse {
            framework: report.framework.clone(),
            total_events: t.events,
            successes: t.successes,
            failures: t.failures,
            denials: t.denials,
            fallbacks: t.fallbacks,
            agents: report.agents.iter().cloned().collect(),
            tools: report.tools.iter().cloned().collect(),
            sensitive_accesses: t.sensitive_accesses,
            report: json_to_struct(&json),
        })
    }

    async fn usage(&self, req: pb::GetUsageStatisticsRequest) -> ApiResult<pb::GetUsageStatisticsResponse> {
        let (since, until) = period(req.since.as_ref(), req.until.as_ref())?;
        let rows = self
            .state
            .store
            .usage(
                opt_uuid("agent_id", &req.agent_id)?,
                opt_uuid("tool_id", &req.tool_id)?,
                since.map(|t| t.date_naive()),
                until.map(|t| t.date_naive()),
            )
            .await?;
        Ok(pb::GetUsageStatisticsResponse {
            rows: rows
                .iter()
                .map(|r| pb::UsageRow {
                    tool_id: r.key.tool_id.to_string(),
                    agent_id: r.key.agent_id.to_string(),
                    day: r.key.day.to_string(),
                    invocations: r.counts.invocations,
                    successes: r.counts.successes,
                    failures: r.counts.failures,
                    cache_hits: r.counts.cache_hits,
                    total_cost: r.counts.total_cost.normalize().to_string(),
                    average_duration_ms: r.counts.average_duration_ms(),
                    cache_hit_rate: r.counts.cache_hit_rate(),
                })
                .collect(),
        })
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    type QueryAuditTrailStream = QueryStream;

    async fn query_audit_trail(
        &self,
        request: Request<pb::QueryAuditTrailRequest>,
    ) -> Result<Response<Self::QueryAuditTrailStream>, Status> {
        principal(&request)?.require(&[Role::Admin, Role::Auditor], "Audit.QueryAuditTrail")?;
        let mut filter = filter_from(request.get_ref())?;
        let canonical = request.get_ref().include_canonical_form;
        let mut remaining = if filter.limit == 0 { usize::MAX } else { filter.limit };
        let store = self.state.store.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while remaining > 0 {
                filter.limit = PAGE.min(remaining);
                let page = match store.audit_events(&filter).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(ApiError::from(e)))).await;
                        return;
                    }
                };
                for r in &page {
                    let mut record = audit_record_to_pb(r);
                    if canonical {
                        record.canonical_form = canonical_form(&r.chain, r.chain_seq, &r.event);
                    }
                    let item = pb::QueryAuditTrailResponse {
                        record: Some(record),
                        cursor: r.seq.to_string(),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return; // the caller went away
                    }
                }
                remaining = remaining.saturating_sub(page.len());
                match page.last() {
                    Some(r) if page.len() == filter.limit && filter.newest_first => filter.before_seq = Some(r.seq),
                    Some(r) if page.len() == filter.limit => filter.after_seq = Some(r.seq),
                    _ => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn generate_compliance_report(
        &self,
        request: Request<pb::GenerateComplianceReportRequest>,
    ) -> Result<Response<pb::GenerateComplianceReportResponse>, Status> {
        principal(&request)?.require(&[Role::Admin, Role::Auditor], "Audit.GenerateComplianceReport")?;
        Ok(Response::new(self.report(request.into_inner()).await?))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        principal(&request)?.require(&[Role::Admin, Role::Auditor], "Audit.VerifyAuditChain")?;
        let req = request.into_inner();
        let (since, until) = period(req.since.as_ref(), req.until.as_ref())?;
        let mut answer = self.verify(since, until).await?;
        self.check_checkpoints(&mut answer).await?;
        Ok(Response::new(answer))
    }

    async fn get_usage_statistics(
        &self,
        request: Request<pb::GetUsageStatisticsRequest>,
    ) -> Result<Response<pb::GetUsageStatisticsResponse>, Status> {
        principal(&request)?.require(&[Role::Admin, Role::Auditor], "Audit.GetUsageStatistics")?;
        Ok(Response::new(self.usage(request.into_inner()).await?))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        principal(&request)?.require(&[Role::Admin, Role::Auditor], "Audit.ListDeadLetters")?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let (letters, total) = self
            .state
            .store
            .dead_letters(req.after_id, limit)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            letters: letters
                .into_iter()
                .map(|l| pb::DeadLetter {
                    id: l.id,
                    received_at: Some(toolplane_core::convert::ts(l.received_at)),
                    source: l.source,
                    event_id: l.event_id,
                    kind: l.kind,
                    error: l.error,
                    raw: l.raw,
                })
                .collect(),
            total,
        }))
    }

    // Signed checkpoints (services/audit_checkpoints.rs).

    type ListAuditCheckpointsStream = CheckpointStream;

    async fn sign_audit_checkpoints(
        &self,
        request: Request<pb::SignAuditCheckpointsRequest>,
    ) -> Result<Response<pb::SignAuditCheckpointsResponse>, Status> {
        principal(&request)?.require(&[Role::Admin], "Audit.SignAuditCheckpoints")?;
        Ok(Response::new(self.sign_checkpoints().await?))
    }

    async fn get_audit_public_key(
        &self,
        request: Request<pb::GetAuditPublicKeyRequest>,
    ) -> Result<Response<pb::GetAuditPublicKeyResponse>, Status> {
        principal(&request)?;
        Ok(Response::new(self.public_key()))
    }

    async fn list_audit_checkpoints(
        &self,
        request: Request<pb::ListAuditCheckpointsRequest>,
    ) -> Result<Response<Self::ListAuditCheckpointsStream>, Status> {
        principal(&request)?.require(&[Role::Admin, Role::Auditor], "Audit.ListAuditCheckpoints")?;
        Ok(Response::new(self.list_checkpoints(request.into_inner())))
    }
}
