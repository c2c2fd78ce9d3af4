//! `Executor`: authenticate (done by the auth layer) → resolve the tool → check the
//! permission → validate the parameters → call the tool within its timeout and the
//! caller's deadline → validate the output → record the result and audit events.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::stream::StreamExt;
use futures::{Stream, TryFutureExt};
use rust_decimal::Decimal;
use serde_json::Value;
use tonic::{Request, Response, Status};
use toolplane_core::cache_key::cache_key;
use toolplane_core::call_limits::CallLimits;
use toolplane_core::circuit::Admission;
use toolplane_core::convert::{parse_uuid, result_to_pb};
use toolplane_core::json::{struct_to_json, summary};
use toolplane_core::model::*;
use toolplane_core::permission::{Decision as PermissionDecision, evaluate};
use toolplane_core::redact::{REDACTED, Redactor};
use toolplane_core::retry::RetryPolicy;
use toolplane_core::schema;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::executor_server::Executor;
use toolplane_runtime::auth::principal;
use uuid::Uuid;

use crate::detach::{CallerGone, detached};
use crate::error::ExecError;
use crate::outbox::Outbox;
use crate::quota::{Consumed, Quotas, Reservation};
use crate::rate_limit::{Decision, RateLimiter};
use crate::reliability::Breakers;
use crate::result_cache::{ResultCache, Source};
use crate::snapshot::{CompiledTool, SharedSnapshot, SnapshotIndex, ToolRef};
use crate::spend::{Spend, SpendBudgets, SpendReservation};
use crate::upstream::{Outcome, Upstream};
use toolplane_runtime::metrics as m;

/// Most calls one BatchInvoke may carry.
pub const MAX_BATCH_CALLS: usize = 100;
/// Most calls of one BatchInvoke in flight at once.
pub const MAX_BATCH_CONCURRENCY: usize = 16;
/// Kept back from the caller's deadline so the answer can still reach it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);
/// Most fallback tools one call tries.
const MAX_FALLBACK_CANDIDATES: usize = 16;
/// Most events one call can push, reserved in the outbox when it is admitted: at most
/// one per fallback candidate tried (refused, out of bounds or rate limited), plus a
/// cache miss or the primary's own RATE_LIMITED (never both), a FALLBACK_USED and the
/// final pair (TOOL_INVOKED or CACHE_HIT, and the invocation).
pub const MAX_EVENTS_PER_CALL: usize = MAX_FALLBACK_CANDIDATES + 4;

pub struct ExecutorService {
    pub snapshot: SharedSnapshot,
    pub outbox: Arc<Outbox>,
    pub upstream: Upstream,
    pub breakers: Breakers,
    pub limits: RateLimiter,
    /// Daily budgets of LIMITED_INVOCATIONS grants.
    pub quotas: Quotas,
    /// Agents' daily spend budgets.
    pub spend: SpendBudgets,
    pub cache: ResultCache,
    /// Last good outputs of tools whose strategy degrades to CACHED.
    pub last_good: moka::future::Cache<String, Value>,
    pub retry: RetryPolicy,
    pub redactor: Redactor,
    pub sidecar_id: String,
    /// The control plane's selector, for `ExecuteTask`.
    pub selector: Option<crate::selection_client::SelectionClient>,
    /// Per-tool metric handles.
    pub tool_metrics: crate::tool_metrics::ToolMetrics,
}

/// The caller's W3C `traceparent`, if it sent one.
pub(crate) fn traceparent(meta: &tonic::metadata::MetadataMap) -> Option<String> {
    meta.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Parses the `grpc-timeout` header (e.g. `250m`, `5S`) the client's deadline arrives in.
pub fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What every record of one call shares.
#[derive(Clone)]
struct Ctx<'a> {
    invocation_id: Uuid,
    agent_id: Uuid,
    tool: &'a Tool,
    task_id: String,
    task_category: String,
    selection_id: Option<Uuid>,
    sanitized: Value,
    permission_id: Option<Uuid>,
    started: Instant,
    /// The tool's credential, scrubbed from error messages.
    secret: String,
    /// The tool the caller asked for (differs from `tool` when a fallback answers).
    requested_tool_id: Uuid,
    /// The answer is an earlier good result.
    stale: bool,
    /// `traceparent` sent to the tool: a child span of the caller's trace.
    traceparent: String,
    /// Set when the caller went away; the invocation record says so.
    caller: CallerGone,
    /// What a fallback must keep (`ExecuteTask`'s constraints; none for `Invoke`).
    limits: CallLimits,
    /// The agent's own calls-per-minute limit (0: none).
    agent_rpm: u32,
}

/// Budget a call holds from admission until it is sent to a tool (or given back).
struct Held {
    quota: Option<Reservation>,
    spend: Option<SpendReservation>,
}

pub(crate) struct Call {
    pub(crate) agent_id: Uuid,
    pub(crate) tool: Option<pb::invoke_request::Tool>,
    pub(crate) parameters: Value,
    pub(crate) task_id: String,
    pub(crate) task_category: String,
    /// The selection this call follows (task memory learns from it).
    pub(crate) selection_id: Option<Uuid>,
    pub(crate) deadline: Option<Duration>,
    /// The caller's `traceparent`, if any.
    pub(crate) traceparent: Option<String>,
    /// Set when the caller went away (see [`crate::detach`]).
    pub(crate) caller: CallerGone,
    /// The request's constraints, which a fallback must keep too.
    pub(crate) limits: CallLimits,
}

impl ExecutorService {
    fn audit(
        &self,
        action: AuditAction,
        agent: Uuid,
        tool: &Tool,
        invocation_id: Uuid,
        task_id: &str,
        params: &Value,
    ) -> AuditEvent {
        AuditEvent {
            event_id: Uuid::now_v7(),
            action,
            invocation_id: Some(invocation_id),
            actor_id: agent.to_string(),
            agent_id: Some(agent),
            tool_id: Some(tool.id),
            tool_version: tool.version,
            task_id: task_id.to_owned(),
            occurred_at: Utc::now(),
            sanitized_parameters: params.clone(),
            result: None,
            success: false,
            detail: String::new(),
            compliance_frameworks: tool.spec.compliance_frameworks.clone(),
            data_classification: Some(tool.spec.requirements.data_sensitivity),
            sidecar_id: self.sidecar_id.clone(),
            permission_id: None,
        }
    }

    /// One call in its own span, a child of the caller's trace; the tool gets a child
    /// of that span as `traceparent`. Without a span exporter, no span is built (the
    /// log layer would format its fields on every call for nothing); the tool still
    /// gets a fresh span id in the caller's trace.
    pub(crate) async fn run_call(&self, call: Call) -> Result<ToolResult, ExecError> {
        use tracing::Instrument;
        if !toolplane_runtime::telemetry::exporting() {
            let outgoing = toolplane_core::trace::child(call.traceparent.as_deref());
            let result = self.run_call_in_span(call, outgoing).await;
            // No answer before the call's events are in the spool.
            self.outbox.spooled().await;
            return result;
        }
        let span = tracing::info_span!(
            "toolplane.invoke",
            otel.kind = "server",
            agent = %call.agent_id,
            tool = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        let outgoing = toolplane_runtime::telemetry::continue_trace(&span, call.traceparent.as_deref());
        let result = self.run_call_in_span(call, outgoing).instrument(span.clone()).await;
        self.outbox.spooled().await;
        match &result {
            Ok(r) => {
                span.record("tool", r.tool_id.to_string());
                span.record("status", r.status.as_str());
            }
            Err(e) => {
                span.record("status", e.to_string());
            }
        }
        result
    }

    async fn run_call_in_span(&self, call: Call, outgoing_traceparent: String) -> Result<ToolResult, ExecError> {
        let started = Instant::now();
        // Held until the call has pushed its last event.
        let _room = self.outbox.reserve(MAX_EVENTS_PER_CALL).ok_or(ExecError::SpoolFull)?;
        // Refused when cut off from the control plane for too long (see `serving`):
        // checked per call, as a batch or task outlives the check at authentication.
        // A scoped sidecar fetches the agent's tools on its first call.
        let snap = self.snapshot.serving_agent(call.agent_id).await?;
        let reference = match &call.tool {
            Some(pb::invoke_request::Tool::ToolId(id)) => ToolRef::Id(parse_uuid("tool_id", id)?),
            Some(pb::invoke_request::Tool::ToolName(name)) => ToolRef::Name(name),
            None => {
                return Err(toolplane_core::Violations::single("tool", "set tool_id or tool_name").into());
            }
        };
        let (snap, compiled) = self.snapshot.resolve_tool(snap, &reference).await?;
        let tool = &compiled.tool;
        let agent = snap
            .agent(call.agent_id)
            .ok_or_else(|| ExecError::PermissionDenied("the calling agent is not registered".to_owned()))?;
        let invocation_id = Uuid::now_v7();
        let sanitized = self.redactor.redact(&call.parameters, &tool.spec.input_schema);

        let decision = evaluate(agent, tool, snap.grants(agent.id, tool.id), Utc::now());
        if !decision.allowed {
            let mut e = self.audit(
                AuditAction::PermissionChecked,
                agent.id,
                tool,
                invocation_id,
                &call.task_id,
                &sanitized,
            );
            e.detail = self.redactor.redact_text(&decision.reason);
            self.outbox.push(SyncEvent::Audit(e));
            tracing::info!(agent = %agent.name, tool = %tool.spec.name, reason = %decision.reason, "permission denied");
            return Err(ExecError::PermissionDenied(decision.reason));
        }
        // Parameters first: a call refused for its parameters never touches the budget.
        let validators = compiled.validators()?;
        if let Err(violations) = schema::check(&validators.input, "parameters", &call.parameters) {
            let mut e = self.audit(
                AuditAction::ErrorOccurred,
                agent.id,
                tool,
                invocation_id,
                &call.task_id,
                &sanitized,
            );
            e.detail = format!("parameters break the input schema: {violations}");
            e.permission_id = decision.permission_id;
            self.outbox.push(SyncEvent::Audit(e));
            return Err(violations.into());
        }
        let (permission_id, reservation) = match self.admit(&decision, agent, tool).await {
            Ok(admitted) => admitted,
            Err(refused) => {
                let mut e = self.audit(
                    AuditAction::PermissionChecked,
                    agent.id,
                    tool,
                    invocation_id,
                    &call.task_id,
                    &sanitized,
                );
                e.detail = refused.to_string();
                self.outbox.push(SyncEvent::Audit(e));
                return Err(refused);
            }
        };

        let ctx = Ctx {
            invocation_id,
            agent_id: agent.id,
            tool,
            task_id: call.task_id,
            task_category: call.task_category,
            selection_id: call.selection_id,
            sanitized,
            permission_id,
            started,
            secret: snap.credential(tool.id).map(|c| c.secret.clone()).unwrap_or_default(),
            requested_tool_id: tool.id,
            stale: false,
            traceparent: outgoing_traceparent,
            caller: call.caller,
            limits: call.limits,
            agent_rpm: agent.calls_per_minute,
        };
        let credential = snap.credential(tool.id);
        let retry = self.retry_for(&snap, tool.id);
        let deadline = call.deadline.map(|d| started + d);
        let ttl = Duration::from_secs(u64::from(tool.spec.cache_ttl_seconds));
        if !(tool.spec.cacheable && tool.spec.side_effects == SideEffects::None && !ttl.is_zero()) {
            if let Some(limited) = self.rate_limited(&ctx).await {
                self.refund(reservation).await;
                return Ok(self
                    .limited_or_fallback(&ctx, &snap, agent, limited, &call.parameters, deadline)
                    .await);
            }
            let (outcome, attempts) = self
                .call_with_retries(
                    &compiled,
                    credential,
                    &call.parameters,
                    deadline,
                    &ctx.traceparent,
                    retry,
                )
                .await;
            if attempts == 0 {
                // The circuit refused it: nothing was sent.
                self.refund(reservation).await;
            }
            if let Some(result) = self
                .degrade(&ctx, &snap, agent, &outcome, &call.parameters, deadline)
                .await
            {
                return Ok(result);
            }
            self.remember_good(&ctx, &snap, &outcome, &call.parameters).await;
            return Ok(self.finish(&ctx, outcome, attempts, false));
        }

        // Cached: a hit is still authenticated, permission-checked and validated (above),
        // and audited as CACHE_HIT; it does not use the tool's rate limit.
        let key = cache_key(
            tool.id,
            tool.version,
            &tool.spec,
            &agent.id.to_string(),
            &call.parameters,
        );
        if let Some(output) = self.cache.get(&key).await {
            // A hit needs budget left but does not spend it: nothing reached the tool.
            self.refund(reservation).await;
            return Ok(self.finish(&ctx, Outcome::ok(output), 0, true));
        }
        if let Some(limited) = self.rate_limited(&ctx).await {
            self.refund(reservation).await;
            return Ok(self
                .limited_or_fallback(&ctx, &snap, agent, limited, &call.parameters, deadline)
                .await);
        }
        let attempts = std::sync::atomic::AtomicU32::new(0);
        // A value another sidecar cached is served only if it still passes the
        // output schema (Redis is not trusted with answers).
        let valid = |v: &Value| {
            validators
                .output
                .as_ref()
                .is_none_or(|s| schema::check(s, "output", v).is_ok())
        };
        // Boxed for the same reason as a fallback: only cache misses of cacheable
        // tools need this state.
        let fetched = Box::pin(self.cache.get_or_fetch(&key, ttl, valid, async {
            let (outcome, n) = self
                .call_with_retries(
                    &compiled,
                    credential,
                    &call.parameters,
                    deadline,
                    &ctx.traceparent,
                    retry,
                )
                .await;
            attempts.store(n, std::sync::atomic::Ordering::Relaxed);
            if outcome.status == ExecutionStatus::Success {
                Ok(outcome.output)
            } else {
                Err(outcome)
            }
        }))
        .await;
        let attempts = attempts.load(std::sync::atomic::Ordering::Relaxed);
        if attempts == 0 {
            // Answered by a concurrent twin's fetch or the shared cache, or refused by
            // the circuit: this call sent nothing.
            self.refund(reservation).await;
        }
        if !matches!(fetched, Ok((_, Source::Local | Source::Shared))) {
            self.audit_cache_miss(&ctx);
        }
        Ok(match fetched {
            Ok((output, Source::Upstream)) => {
                let outcome = Outcome::ok(output);
                self.remember_good(&ctx, &snap, &outcome, &call.parameters).await;
                self.finish(&ctx, outcome, attempts, false)
            }
            Ok((output, Source::Local | Source::Shared)) => self.finish(&ctx, Outcome::ok(output), 0, true),
            Err(failed) => match self
                .degrade(&ctx, &snap, agent, &failed, &call.parameters, deadline)
                .await
            {
                Some(result) => result,
                None => self.finish(&ctx, (*failed).clone(), attempts, false),
            },
        })
    }

    /// Keeps the last good output of tools whose strategy degrades to CACHED.
    async fn remember_good(&self, ctx: &Ctx<'_>, snap: &SnapshotIndex, outcome: &Outcome, params: &Value) {
        let wants = snap
            .fallback(ctx.tool.id)
            .is_some_and(|f| f.mode == DegradationMode::Cached);
        if wants && outcome.status == ExecutionStatus::Success {
            let key = cache_key(ctx.tool.id, 0, &ctx.tool.spec, &ctx.agent_id.to_string(), params);
            self.last_good.insert(key, outcome.output.clone()).await;
        }
    }

    /// The retry policy of `tool`: its fallback strategy's attempts and backoff, the
    /// sidecar's defaults for what the strategy leaves unset (or when it has none).
    fn retry_for(&self, snap: &SnapshotIndex, tool: Uuid) -> RetryPolicy {
        snap.fallback(tool).map_or(self.retry, |f| f.retry_policy(self.retry))
    }

    /// The sidecar's own rate limit refused the call (`limited`, already audited as
    /// RATE_LIMITED): a strategy that falls back on rate limits answers as it would
    /// for an upstream 429; otherwise the refusal stands.
    async fn limited_or_fallback(
        &self,
        ctx: &Ctx<'_>,
        snap: &SnapshotIndex,
        agent: &Agent,
        limited: ToolResult,
        params: &Value,
        deadline: Option<Instant>,
    ) -> ToolResult {
        let refused = Outcome {
            status: ExecutionStatus::RateLimited,
            output: Value::Null,
            error: limited.error.clone(),
            retryable: false,
            retry_after: Some(Duration::from_millis(u64::from(limited.retry_after_ms))),
            auth_failure: false,
        };
        self.degrade(ctx, snap, agent, &refused, params, deadline)
            .await
            .unwrap_or(limited)
    }

    /// What a failed call falls back to under the tool's strategy: another tool
    /// (FULL), or the last good result marked stale (CACHED). `None`: the failure
    /// stands. Every fallback tool passes the same permission, schema and rate-limit
    /// checks as the primary, keeps the request's constraints and touches no more
    /// sensitive data than the primary, and is audited as FALLBACK_USED.
    async fn degrade(
        &self,
        ctx: &Ctx<'_>,
        snap: &SnapshotIndex,
        agent: &Agent,
        failed: &Outcome,
        params: &Value,
        deadline: Option<Instant>,
    ) -> Option<ToolResult> {
        let strategy = snap
            .fallback(ctx.tool.id)
            .filter(|s| s.applies(failed.status, failed.auth_failure))?;
        // Boxed: a fallback's future (another whole tool call) is large, and inline it
        // would be part of every call's state, moved and allocated on every call.
        Box::pin(self.fall_back(strategy, ctx, snap, agent, failed, params, deadline)).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn fall_back(
        &self,
        strategy: &FallbackStrategy,
        ctx: &Ctx<'_>,
        snap: &SnapshotIndex,
        agent: &Agent,
        failed: &Outcome,
        params: &Value,
        deadline: Option<Instant>,
    ) -> Option<ToolResult> {
        let primary = ctx.tool;
        match strategy.mode {
            DegradationMode::Cached => {
                let key = cache_key(primary.id, 0, &primary.spec, &ctx.agent_id.to_string(), params);
                let output = self.last_good.get(&key).await?;
                self.audit_fallback(
                    ctx,
                    primary,
                    &format!("served the last good result (stale): {}", failed.error),
                );
                let stale = Ctx {
                    stale: true,
                    ..ctx.clone()
                };
                Some(self.finish(&stale, Outcome::ok(output), 0, true))
            }
            DegradationMode::Full => {
                for candidate in fallback_candidates(snap, primary, &strategy.fallback_tool_ids, &ctx.limits) {
                    let tool = &candidate.tool;
                    // Checked before the permission: a candidate out of bounds is never
                    // a use of the agent's grant or budget.
                    if let Some(why) = ctx.limits.refuses_fallback(primary, tool) {
                        tracing::debug!(primary = %primary.spec.name, fallback = %tool.spec.name, reason = %why, "fallback candidate skipped");
                        self.audit_fallback_refused(ctx, tool, &why);
                        continue;
                    }
                    let decision = evaluate(agent, tool, snap.grants(agent.id, tool.id), Utc::now());
                    if !decision.allowed {
                        self.audit_fallback_refused(ctx, tool, &decision.reason);
                        continue;
                    }
                    if candidate
                        .validators()
                        .map_or(true, |v| schema::check(&v.input, "parameters", params).is_err())
                    {
                        continue;
                    }
                    // The fallback's own grant pays for it.
                    let (permission_id, reservation) = match self.admit(&decision, agent, tool).await {
                        Ok(admitted) => admitted,
                        Err(refused) => {
                            self.audit_fallback_refused(ctx, tool, &refused.to_string());
                            continue;
                        }
                    };
                    let fallback = Ctx {
                        tool,
                        permission_id,
                        secret: snap.credential(tool.id).map(|c| c.secret.clone()).unwrap_or_default(),
                        ..ctx.clone()
                    };
                    if self.rate_limited(&fallback).await.is_some() {
                        self.refund(reservation).await;
                        continue;
                    }
                    let credential = snap.credential(tool.id);
                    let retry = self.retry_for(snap, tool.id);
                    let (outcome, attempts) = self
                        .call_with_retries(&candidate, credential, params, deadline, &ctx.traceparent, retry)
                        .await;
                    if attempts == 0 {
                        self.refund(reservation).await;
                    }
                    if outcome.status == ExecutionStatus::Success {
                        let why = format!(
                            "fell back from {} to {}: {}",
                            primary.spec.name, tool.spec.name, failed.error
                        );
                        self.audit_fallback(&fallback, tool, &why);
                        return Some(self.finish(&fallback, outcome, attempts, false));
                    }
                }
                None
            }
            // What the tool returned, though it breaks the output schema, marked
            // PARTIAL_SUCCESS with the violations, rather than nothing.
            DegradationMode::Partial
                if failed.status == ExecutionStatus::ValidationError && !failed.output.is_null() =>
            {
                let why = format!(
                    "served output that breaks the output schema as partial: {}",
                    failed.error
                );
                self.audit_fallback(ctx, primary, &why);
                let partial = Outcome {
                    status: ExecutionStatus::PartialSuccess,
                    output: failed.output.clone(),
                    error: failed.error.clone(),
                    retryable: false,
                    retry_after: None,
                    auth_failure: false,
                };
                Some(self.finish(ctx, partial, 0, false))
            }
            DegradationMode::Partial | DegradationMode::Abort => None,
        }
    }

    /// A fallback candidate the agent may not use (or has no budget for) now.
    fn audit_fallback_refused(&self, ctx: &Ctx<'_>, tool: &Tool, why: &str) {
        let (inv, task) = (ctx.invocation_id, &ctx.task_id);
        let mut e = self.audit(
            AuditAction::PermissionChecked,
            ctx.agent_id,
            tool,
            inv,
            task,
            &ctx.sanitized,
        );
        e.detail = format!("fallback from {} refused: {why}", ctx.tool.spec.name);
        self.outbox.push(SyncEvent::Audit(e));
    }

    /// This call went upstream for a cacheable tool (it, not a concurrent twin, fetched).
    fn audit_cache_miss(&self, ctx: &Ctx<'_>) {
        self.tool_metrics.cache_lookup(&ctx.tool.spec.name, false);
        let (inv, task) = (ctx.invocation_id, &ctx.task_id);
        let mut e = self.audit(
            AuditAction::CacheMiss,
            ctx.agent_id,
            ctx.tool,
            inv,
            task,
            &ctx.sanitized,
        );
        e.success = true;
        e.permission_id = ctx.permission_id;
        self.outbox.push(SyncEvent::Audit(e));
    }

    fn audit_fallback(&self, ctx: &Ctx<'_>, tool: &Tool, detail: &str) {
        let (inv, task) = (ctx.invocation_id, &ctx.task_id);
        let mut e = self.audit(AuditAction::FallbackUsed, ctx.agent_id, tool, inv, task, &ctx.sanitized);
        e.success = true;
        e.permission_id = ctx.permission_id;
        e.detail = self.redactor.redact_text(detail);
        self.outbox.push(SyncEvent::Audit(e));
    }

    /// Reserves a call from the decision's daily budgets when only LIMITED_INVOCATIONS
    /// grants allow it, and its cost from the agent's daily spend budget: the grant the
    /// call goes under, and what to give back ([`Self::refund`]) if the call is not
    /// sent to the tool after all.
    async fn admit(
        &self,
        decision: &PermissionDecision,
        agent: &Agent,
        tool: &Tool,
    ) -> Result<(Option<Uuid>, Held), ExecError> {
        let (permission_id, quota) = if decision.quotas.is_empty() {
            (decision.permission_id, None)
        } else {
            match self.quotas.consume(&decision.quotas).await {
                Consumed::Admitted {
                    permission_id,
                    reservation,
                    ..
                } => (Some(permission_id), Some(reservation)),
                Consumed::Exhausted { resets_at, limits } => {
                    metrics::counter!(m::QUOTA_EXHAUSTED).increment(1);
                    return Err(ExecError::QuotaExhausted { resets_at, limits });
                }
            }
        };
        let spend = match self
            .spend
            .reserve(agent.id, agent.daily_spend_budget, tool.spec.cost_per_call, Utc::now())
            .await
        {
            Spend::Admitted(r) => r,
            Spend::Exhausted {
                budget,
                spent,
                cost,
                resets_at,
            } => {
                if let Some(q) = quota {
                    self.quotas.refund(q).await;
                }
                metrics::counter!(m::SPEND_EXHAUSTED).increment(1);
                return Err(ExecError::SpendExhausted {
                    budget,
                    spent,
                    cost,
                    resets_at,
                });
            }
        };
        Ok((permission_id, Held { quota, spend }))
    }

    /// Gives back a call's budgets: it was admitted but never sent to the tool.
    async fn refund(&self, held: Held) {
        if let Some(r) = held.quota {
            self.quotas.refund(r).await;
        }
        if let Some(r) = held.spend {
            self.spend.refund(r).await;
        }
    }

    /// `Some(result)` when the tool's rate limit refuses the call (audited).
    /// The agent's own limit (`calls_per_minute`, across every tool) is asked first.
    async fn rate_limited(&self, ctx: &Ctx<'_>) -> Option<ToolResult> {
        let tool = ctx.tool;
        let (rpm, whose, retry_after) = match self.limits.check_agent(ctx.agent_id, ctx.agent_rpm).await {
            Decision::Limited { retry_after } => (ctx.agent_rpm, "this agent".to_owned(), retry_after),
            Decision::Allowed => {
                let rpm = tool.spec.requirements.rate_limit_rpm;
                let Decision::Limited { retry_after } = self.limits.check(tool.id, rpm).await else {
                    return None;
                };
                (rpm, format!("tool {}", tool.spec.name), retry_after)
            }
        };
        self.tool_metrics.rate_limited(&tool.spec.name);
        let mut e = self.audit(
            AuditAction::RateLimited,
            ctx.agent_id,
            tool,
            ctx.invocation_id,
            &ctx.task_id,
            &ctx.sanitized,
        );
        e.permission_id = ctx.permission_id;
        e.detail = format!("{rpm} calls per minute ({whose})");
        self.outbox.push(SyncEvent::Audit(e));
        let error = format!(
            "the rate limit of {whose} ({rpm} calls per minute) is reached; retry in {} ms",
            retry_after.as_millis()
        );
        Some(ToolResult {
            invocation_id: ctx.invocation_id,
            tool_id: tool.id,
            tool_version: tool.version,
            status: ExecutionStatus::RateLimited,
            output: Value::Null,
            error,
            duration_ms: u32::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u32::MAX),
            tokens_used: 0,
            cost: Decimal::ZERO,
            completed_at: Utc::now(),
            cache_hit: false,
            attempts: 0,
            retry_after_ms: u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX).max(1),
            stale: false,
            fallback_from: None,
        })
    }

    /// Turns an outcome into the caller's result, and records it: the audit event
    /// (TOOL_INVOKED, or CACHE_HIT) and the invocation, both redacted.
    fn finish(&self, ctx: &Ctx<'_>, outcome: Outcome, attempts: u32, cache_hit: bool) -> ToolResult {
        let Outcome {
            status,
            output,
            error,
            retry_after,
            ..
        } = outcome;
        // A failed call's output (e.g. one that broke its schema) is not an answer.
        let output = if matches!(status, ExecutionStatus::Success | ExecutionStatus::PartialSuccess) {
            output
        } else {
            Value::Null
        };
        let tool = ctx.tool;
        // An upstream that echoes its credential must not leak it through our errors.
        let error = if ctx.secret.is_empty() {
            error
        } else {
            error.replace(&ctx.secret, REDACTED)
        };
        let mut result = ToolResult {
            invocation_id: ctx.invocation_id,
            tool_id: tool.id,
            tool_version: tool.version,
            status,
            output,
            error: self.redactor.redact_text(&error),
            duration_ms: u32::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u32::MAX),
            tokens_used: 0,
            cost: if status == ExecutionStatus::Success && !cache_hit {
                tool.spec.cost_per_call
            } else {
                Decimal::ZERO
            },
            completed_at: Utc::now(),
            cache_hit,
            attempts,
            retry_after_ms: retry_after.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
            stale: ctx.stale,
            fallback_from: (ctx.requested_tool_id != tool.id).then_some(ctx.requested_tool_id),
        };
        let name = tool.spec.name.as_str();
        self.tool_metrics
            .invoked(name, status, ctx.started.elapsed().as_secs_f64());
        if status == ExecutionStatus::CircuitOpen {
            self.tool_metrics.circuit_rejected(name);
        }
        if cache_hit {
            self.tool_metrics.cache_lookup(name, true);
        }
        let action = if cache_hit {
            AuditAction::CacheHit
        } else {
            AuditAction::ToolInvoked
        };
        let mut e = self.audit(
            action,
            ctx.agent_id,
            tool,
            ctx.invocation_id,
            &ctx.task_id,
            &ctx.sanitized,
        );
        e.success = status == ExecutionStatus::Success;
        e.permission_id = ctx.permission_id;
        e.detail = result.error.clone();
        let (size_bytes, digest) = summary(&result.output);
        e.result = Some(ResultSummary {
            size_bytes,
            status,
            digest,
        });
        // The output stays with the caller; the control plane keeps its digest. Set
        // aside while the rest is copied, so it is not cloned only to be dropped.
        let output = std::mem::take(&mut result.output);
        let recorded = result.clone();
        result.output = output;
        let invocation = SyncEvent::Invocation(InvocationRecord {
            invocation_id: ctx.invocation_id,
            agent_id: ctx.agent_id,
            task_id: ctx.task_id.clone(),
            requested_tool_id: ctx.requested_tool_id,
            parameters: ctx.sanitized.clone(),
            invoked_at: Utc::now() - chrono::Duration::milliseconds(i64::from(result.duration_ms)),
            result: recorded,
            sidecar_id: self.sidecar_id.clone(),
            task_category: ctx.task_category.clone(),
            selection_id: ctx.selection_id,
            caller_cancelled: ctx.caller.is_gone(),
        });
        self.outbox.push_all(vec![SyncEvent::Audit(e), invocation]);
        result
    }

    /// Calls the tool through its circuit breaker, retrying retryable failures of
    /// idempotent tools with backoff under `retry` (the tool's own policy), never past
    /// `deadline`. Returns the last outcome and how many calls were made.
    async fn call_with_retries(
        &self,
        compiled: &CompiledTool,
        credential: Option<&Credential>,
        params: &Value,
        deadline: Option<Instant>,
        traceparent: &str,
        retry: RetryPolicy,
    ) -> (Outcome, u32) {
        let tool = &compiled.tool;
        let mut attempts = 0;
        loop {
            if let Admission::Refused { retry_after } = self.breakers.admit(tool.id) {
                return (Outcome::circuit_open(&tool.spec.name, retry_after), attempts);
            }
            attempts += 1;
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let timeout = match remaining {
                Some(left) => tool.timeout().min(left.saturating_sub(DEADLINE_MARGIN)),
                None => tool.timeout(),
            };
            let outcome = self
                .upstream
                .call(compiled, credential, params, timeout, traceparent)
                .await;
            self.breakers.record(tool.id, &outcome);
            if outcome.status == ExecutionStatus::Success || !outcome.retryable || !tool.spec.idempotent {
                return (outcome, attempts);
            }
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match retry.next_delay(attempts, outcome.retry_after, remaining, DEADLINE_MARGIN) {
                Some(delay) => {
                    tracing::debug!(tool = %tool.spec.name, attempts, ?delay, error = %self.redactor.redact_text(&outcome.error), "retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return (outcome, attempts),
            }
        }
    }

    fn agent_of<T>(req: &Request<T>) -> Result<Uuid, Status> {
        match principal(req)? {
            Principal::Agent { agent_id, .. } => Ok(agent_id),
            _ => Err(Status::permission_denied("only agent tokens may invoke tools")),
        }
    }
}

fn call_of(
    agent_id: Uuid,
    r: pb::InvokeRequest,
    deadline: Option<Duration>,
    traceparent: Option<String>,
) -> Result<Call, ExecError> {
    let selection_id = toolplane_core::convert::parse_opt_uuid("selection_id", &r.selection_id)?;
    let parameters = match struct_to_json(r.parameters) {
        Value::Null => Value::Object(Default::default()),
        v => v,
    };
    Ok(Call {
        agent_id,
        tool: r.tool,
        parameters,
        task_id: r.task_id,
        task_category: r.task_category,
        selection_id,
        traceparent,
        deadline,
        caller: CallerGone::default(),
        limits: CallLimits::default(),
    })
}

/// Fallback tools in order: the strategy's list, or, when it names none, every other
/// tool sharing a capability with the primary that keeps `limits`, most reliable first
/// (at most 16). Listed tools out of bounds stay, to be skipped with an audited reason;
/// tools found by capability that are out of bounds are left out quietly, so they
/// neither take a place nor fill the audit trail on every fallback.
fn fallback_candidates(
    snap: &SnapshotIndex,
    primary: &Tool,
    listed: &[Uuid],
    limits: &CallLimits,
) -> Vec<Arc<CompiledTool>> {
    let mut candidates: Vec<Arc<CompiledTool>> = if listed.is_empty() {
        let mut same: Vec<Arc<CompiledTool>> = snap
            .tools()
            .filter(|c| {
                c.tool.id != primary.id
                    && c.tool
                        .spec
                        .capabilities
                        .iter()
                        .any(|cap| primary.spec.capabilities.contains(cap))
                    && limits.refuses_fallback(primary, &c.tool).is_none()
            })
            .cloned()
            .collect();
        same.sort_by(|a, b| b.tool.spec.reliability_score.total_cmp(&a.tool.spec.reliability_score));
        same
    } else {
        listed.iter().filter_map(|id| snap.tool(*id).cloned()).collect()
    };
    candidates.truncate(MAX_FALLBACK_CANDIDATES);
    candidates
}

/// A batch item's refusal, reported in its result rather than failing the batch.
fn refused(err: ExecError) -> pb::ToolResult {
    let status = match &err {
        ExecError::InvalidArgument(_) => ExecutionStatus::ValidationError,
        ExecError::PermissionDenied(_) => ExecutionStatus::PermissionDenied,
        ExecError::QuotaExhausted { .. } => ExecutionStatus::RateLimited,
        _ => ExecutionStatus::ExecutionError,
    };
    let retry_after_ms = match &err {
        ExecError::QuotaExhausted { resets_at, .. } => {
            u32::try_from((*resets_at - Utc::now()).num_milliseconds().max(1)).unwrap_or(u32::MAX)
        }
        _ => 0,
    };
    pb::ToolResult {
        status: toolplane_core::convert::status_to_pb(status),
        error: err.to_string(),
        retry_after_ms,
        ..Default::default()
    }
}

/// The gRPC face of [`ExecutorService`]; batch calls share the service across tasks.
#[derive(Clone)]
pub struct ExecutorGrpc(pub Arc<ExecutorService>);

#[tonic::async_trait]
impl Executor for ExecutorGrpc {
    async fn invoke(&self, request: Request<pb::InvokeRequest>) -> Result<Response<pb::InvokeResponse>, Status> {
        let agent_id = ExecutorService::agent_of(&request)?;
        let deadline = grpc_timeout(request.metadata());
        let trace = traceparent(request.metadata());
        let call = call_of(agent_id, request.into_inner(), deadline, trace)?;
        let svc = self.0.clone();
        let result = detached(|caller| async move { svc.run_call(Call { caller, ..call }).await }).await?;
        Ok(Response::new(pb::InvokeResponse {
            result: Some(result_to_pb(&result)),
        }))
    }

    type BatchInvokeStream = Pin<Box<dyn Stream<Item = Result<pb::BatchInvokeResponse, Status>> + Send>>;

    async fn batch_invoke(
        &self,
        request: Request<pb::BatchInvokeRequest>,
    ) -> Result<Response<Self::BatchInvokeStream>, Status> {
        let agent_id = ExecutorService::agent_of(&request)?;
        let deadline = grpc_timeout(request.metadata());
        let trace = traceparent(request.metadata());
        let calls = request.into_inner().calls;
        if calls.len() > MAX_BATCH_CALLS {
            return Err(toolplane_core::Violations::single(
                "calls",
                format!("has more than the limit of {MAX_BATCH_CALLS} calls"),
            )
            .into());
        }
        let stream = async_stream(self.0.clone(), agent_id, calls, deadline, trace);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn execute_task(
        &self,
        request: Request<pb::ExecuteTaskRequest>,
    ) -> Result<Response<pb::ExecuteTaskResponse>, Status> {
        let agent_id = ExecutorService::agent_of(&request)?;
        let deadline = grpc_timeout(request.metadata());
        let authorization = request.metadata().get("authorization").cloned();
        let trace = traceparent(request.metadata());
        let (svc, req) = (self.0.clone(), request.into_inner());
        let r = detached(|caller| async move {
            crate::task::execute(&svc, agent_id, authorization, trace, req, deadline, caller).await
        })
        .await?;
        Ok(Response::new(r))
    }
}

impl ExecutorService {
    /// Whether this call would be answered from the in-process cache (a cheap guess
    /// used only to order a batch; the call itself checks everything again).
    fn likely_cached(&self, agent_id: Uuid, c: &pb::InvokeRequest) -> bool {
        let Some(snap) = self.snapshot.current() else {
            return false;
        };
        let tool = match &c.tool {
            Some(pb::invoke_request::Tool::ToolName(n)) => snap.tool_by_name(n),
            Some(pb::invoke_request::Tool::ToolId(id)) => Uuid::parse_str(id).ok().and_then(|id| snap.tool(id)),
            None => None,
        };
        let Some(t) = tool.map(|t| &t.tool) else {
            return false;
        };
        if !(t.spec.cacheable && t.spec.side_effects == SideEffects::None) {
            return false;
        }
        let params = match struct_to_json(c.parameters.clone()) {
            Value::Null => Value::Object(Default::default()),
            v => v,
        };
        let key = cache_key(t.id, t.version, &t.spec, &agent_id.to_string(), &params);
        self.cache.holds(&key)
    }
}

/// Runs the calls, at most `MAX_BATCH_CONCURRENCY` at a time, cache hits first, and
/// yields each result as it completes (with its index in the request).
fn async_stream(
    svc: Arc<ExecutorService>,
    agent_id: Uuid,
    calls: Vec<pb::InvokeRequest>,
    deadline: Option<Duration>,
    trace: Option<String>,
) -> impl Stream<Item = Result<pb::BatchInvokeResponse, Status>> + Send {
    let mut ordered: Vec<(usize, pb::InvokeRequest)> = calls.into_iter().enumerate().collect();
    // Stable: cached calls first, the rest in request order.
    ordered.sort_by_key(|(_, c)| !svc.likely_cached(agent_id, c));
    futures::stream::iter(ordered)
        .map(move |(i, c)| {
            let (svc, trace) = (svc.clone(), trace.clone());
            async move {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let call = call_of(agent_id, c, deadline, trace.clone());
                // Each call on its own task: one the caller stops waiting for still
                // finishes and is recorded (calls not yet started never start).
                let run = futures::future::ready(call).and_then(move |call| {
                    detached(move |caller| async move { svc.run_call(Call { caller, ..call }).await })
                });
                let result = match run.await {
                    Ok(r) => result_to_pb(&r),
                    Err(e) => refused(e),
                };
                Ok(pb::BatchInvokeResponse {
                    index,
                    result: Some(result),
                })
            }
        })
        .buffer_unordered(MAX_BATCH_CONCURRENCY)
        .boxed()
}
