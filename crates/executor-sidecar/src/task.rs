//! `Executor.ExecuteTask`: the agent describes a task; the control plane selects (with
//! the agent's own token, so only tools it may use are proposed); the sidecar calls the
//! primary through the same pipeline as `Invoke`, and moves on to the next candidate
//! when the primary refuses the parameters or does not succeed. The request's
//! constraints bind every tool that answers, a strategy's fallbacks included.

use std::time::{Duration, Instant};

use serde_json::Value;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Status};
use toolplane_core::call_limits::CallLimits;
use toolplane_core::convert::result_to_pb;
use toolplane_core::json::struct_to_json;
use toolplane_core::model::{ExecutionStatus, ToolResult};
use toolplane_proto::v1 as pb;
use uuid::Uuid;

use crate::detach::CallerGone;
use crate::error::ExecError;
use crate::executor::{Call, ExecutorService};

/// Candidates tried after the primary.
const ALTERNATIVES: u32 = 2;

pub async fn execute(
    svc: &ExecutorService,
    agent_id: Uuid,
    authorization: Option<MetadataValue<Ascii>>,
    traceparent: Option<String>,
    req: pb::ExecuteTaskRequest,
    deadline: Option<Duration>,
    caller: CallerGone,
) -> Result<pb::ExecuteTaskResponse, Status> {
    let started = Instant::now();
    let Some(selector) = &svc.selector else {
        return Err(ExecError::Unimplemented("Executor.ExecuteTask without a control plane").into());
    };
    // Whichever tool answers keeps these, a fallback of a candidate included.
    let limits = CallLimits::from_pb(req.constraints.as_ref()).map_err(ExecError::from)?;
    let select = pb::SelectToolRequest {
        task_description: req.task_description.clone(),
        required_capabilities: req.required_capabilities.clone(),
        constraints: req.constraints.clone(),
        task_category: req.task_category.clone(),
        max_alternatives: ALTERNATIVES,
    };
    let bearer = authorization
        .as_ref()
        .and_then(|a| a.to_str().ok())
        .and_then(toolplane_core::token::parse_bearer)
        .unwrap_or_default();
    // The control plane's part of the call is a child span of the caller's trace too.
    let trace = Some(toolplane_core::trace::child(traceparent.as_deref()));
    let selection = selector
        .select(agent_id, bearer, select, deadline, trace)
        .await
        .map_err(|s| match s.code() {
            Code::Unavailable | Code::Unknown | Code::Internal => Status::unavailable(format!(
                "selection needs the control plane, which did not answer: {}",
                s.message()
            )),
            _ => s,
        })?;
    let candidates: Vec<String> = selection
        .primary
        .iter()
        .chain(&selection.alternatives)
        .filter_map(|s| s.tool.as_ref().map(|t| t.id.clone()))
        .collect();
    let selection_id = Uuid::parse_str(&selection.selection_id).ok();
    let parameters = match struct_to_json(req.parameters) {
        Value::Null => Value::Object(Default::default()),
        v => v,
    };
    let mut outcome: Option<ToolResult> = None;
    let mut refused: Option<ExecError> = None;
    for id in candidates {
        // A call already made runs to its end; none is started for a caller gone.
        if caller.is_gone() {
            break;
        }
        let remaining = match deadline {
            Some(d) => match d.checked_sub(started.elapsed()) {
                Some(r) if !r.is_zero() => Some(r),
                _ => break,
            },
            None => None,
        };
        let call = Call {
            agent_id,
            tool: Some(pb::invoke_request::Tool::ToolId(id)),
            parameters: parameters.clone(),
            task_id: req.task_id.clone(),
            task_category: req.task_category.clone(),
            selection_id,
            deadline: remaining,
            traceparent: traceparent.clone(),
            caller: caller.clone(),
            limits: limits.clone(),
        };
        match svc.run_call(call).await {
            Ok(r) => {
                let done = matches!(r.status, ExecutionStatus::Success | ExecutionStatus::PartialSuccess);
                outcome = Some(r);
                if done {
                    break;
                }
            }
            // This candidate does not take these parameters, or may not be used after
            // all (a grant revoked since selection): the next one might.
            Err(e @ (ExecError::InvalidArgument(_) | ExecError::PermissionDenied(_))) => {
                refused.get_or_insert(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    match (outcome, refused) {
        (Some(r), _) => Ok(pb::ExecuteTaskResponse {
            result: Some(result_to_pb(&r)),
            selection: Some(selection),
        }),
        (None, Some(e)) => Err(e.into()),
        (None, None) => Err(Status::deadline_exceeded(
            "the deadline passed before a tool could be called",
        )),
    }
}
