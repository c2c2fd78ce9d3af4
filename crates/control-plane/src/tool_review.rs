//! Pinned tool definitions: what happens when an MCP server changes the definition of a
//! tool an admin approved (found by `ImportMcpTools` or by the scheduled re-list), and
//! the review of such a change.
//!
//! The tools table only ever holds approved definitions, so sidecars (served from it)
//! keep serving the approved version while a change waits: a poisoned description
//! reaches no agent before an admin has read it. A provider may be set to approve its
//! changes automatically; then the change becomes the next version at once, audited.

use chrono::Utc;
use toolplane_core::definition::{definition_hash, diff};
use toolplane_core::model::{
    AuditAction, AuditEvent, Principal, Tool, ToolChange, ToolChangeStatus, ToolProtocol, ToolSpec,
};
use toolplane_runtime::metrics as m;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::mcp_import;
use crate::state::AppState;
use crate::storage::StoreError;

/// Who found a change: an admin's import, or the control plane's own re-list.
#[derive(Debug, Clone)]
pub enum Finder<'a> {
    Import(&'a Principal),
    Relist,
    /// An admin's `UpdateTool` of an MCP-imported tool's pinned definition.
    Update(&'a Principal),
}

impl Finder<'_> {
    fn source(&self) -> &'static str {
        match self {
            Finder::Import(_) => "import",
            Finder::Relist => "relist",
            Finder::Update(_) => "update",
        }
    }

    fn actor_id(&self) -> String {
        match self {
            Finder::Import(who) | Finder::Update(who) => who.actor_id(),
            Finder::Relist => "control-plane:mcp-relist".to_owned(),
        }
    }
}

/// What became of a server's definition of a registered tool.
#[derive(Debug)]
pub enum Drift {
    /// Identical to the approved definition.
    Unchanged,
    /// Approved automatically (the provider's policy): the tool's new version.
    Applied(Tool),
    /// Waiting for review (newly recorded, or already waiting with this definition).
    Pending(ToolChange),
    /// An admin already rejected exactly this definition of this version.
    Rejected(ToolChange),
}

fn event(state: &AppState, finder: &Finder<'_>, action: AuditAction, tool: &Tool, detail: String) -> AuditEvent {
    let mut e = match finder {
        Finder::Import(who) | Finder::Update(who) => state.admin_event(who, action, None, Some(tool.id), detail),
        Finder::Relist => state.admin_event(
            &Principal::Admin { token_id: None },
            action,
            None,
            Some(tool.id),
            detail,
        ),
    };
    e.actor_id = finder.actor_id();
    e.about(tool)
}

/// Whether `provider`'s changes are approved without review.
pub async fn auto_approves(state: &AppState, provider: &str) -> ApiResult<bool> {
    Ok(state
        .store
        .list_tool_review_policies()
        .await?
        .iter()
        .any(|p| p.provider == provider && p.auto_approve))
}

/// Handles the server's current definition `fresh` (its [`mcp_import::to_spec`]) of
/// the registered tool `current`.
pub async fn on_server_definition(
    state: &AppState,
    finder: &Finder<'_>,
    current: Tool,
    fresh: &ToolSpec,
) -> ApiResult<Drift> {
    let merged = mcp_import::merge(&current.spec, fresh);
    let changes = mcp_import::server_changes(&current.spec, &merged);
    if changes.is_empty() {
        // The server went back to the approved definition: a drift it had shown waits
        // no more (an admin's pending update is not the server's to withdraw).
        let pending = state
            .store
            .list_tool_changes(Some(ToolChangeStatus::Pending), Some(current.id))
            .await?;
        if pending.iter().all(|c| c.source == "update") {
            return Ok(Drift::Unchanged);
        }
        let audit = event(
            state,
            finder,
            AuditAction::ToolChangeReviewed,
            &current,
            format!(
                "pending change of {} withdrawn: its MCP server serves the approved definition again",
                current.spec.name
            ),
        );
        if state
            .store
            .withdraw_tool_changes(current.id, Utc::now(), &audit)
            .await?
            > 0
        {
            tracing::info!(tool = %current.spec.name, "pending tool change withdrawn");
        }
        return Ok(Drift::Unchanged);
    }
    propose(state, finder, current, merged, &changes).await
}

/// The server-owned fields an admin's `UpdateTool` may not change on an MCP-imported
/// tool without review: what agents read of it besides its annotations (which an
/// admin refines as governance, e.g. side effects NONE).
pub fn pinned_update_fields(current: &ToolSpec, update: &ToolSpec) -> Vec<&'static str> {
    if current.protocol != ToolProtocol::Mcp {
        return Vec::new();
    }
    diff(current, update)
        .into_iter()
        .map(|c| c.field)
        .filter(|f| matches!(*f, "description" | "input_schema" | "output_schema" | "remote_name"))
        .collect()
}

/// Records `proposed` (a whole spec: `current` with the changed definition) as a
/// pending change of `current`, or applies it when its provider is auto-approved.
pub async fn propose(
    state: &AppState,
    finder: &Finder<'_>,
    current: Tool,
    proposed: ToolSpec,
    changes: &[&str],
) -> ApiResult<Drift> {
    let merged = proposed;
    let proposed_hash = definition_hash(&merged);
    // The same definition found again: one record, one event.
    let latest = state.store.list_tool_changes(None, Some(current.id)).await?;
    if let Some(known) = latest.into_iter().find(|c| {
        c.proposed_hash == proposed_hash
            && c.base_version == current.version
            && matches!(c.status, ToolChangeStatus::Pending | ToolChangeStatus::Rejected)
    }) {
        return Ok(if known.status == ToolChangeStatus::Pending {
            Drift::Pending(known)
        } else {
            Drift::Rejected(known)
        });
    }
    let source = finder.source();
    let how = match finder {
        Finder::Update(who) => format!("by an update of {}", who.actor_id()),
        _ => format!("on its MCP server, found by {source}"),
    };
    if auto_approves(state, &current.spec.provider).await? {
        let detail = format!(
            "{} is now version {} (changed {how}: {} changed; approved automatically by the review policy of \
             provider {:?})",
            current.spec.name,
            current.version + 1,
            changes.join(", "),
            current.spec.provider
        );
        let tool = next_version(&current, merged);
        let audit = event(state, finder, AuditAction::ToolUpdated, &tool, detail);
        state.store.update_tool(&tool, &audit).await?;
        metrics::counter!(m::TOOL_DRIFT, "source" => source, "outcome" => "auto_approved").increment(1);
        state.changed();
        return Ok(Drift::Applied(tool));
    }
    let change = ToolChange {
        id: Uuid::now_v7(),
        tool_id: current.id,
        tool_name: current.spec.name.clone(),
        base_version: current.version,
        base_hash: definition_hash(&current.spec),
        proposed: merged,
        proposed_hash,
        source: source.to_owned(),
        status: ToolChangeStatus::Pending,
        detected_at: Utc::now(),
        reviewed_at: None,
        reviewed_by: String::new(),
        review_reason: String::new(),
    };
    let detail = format!(
        "definition of {} (version {}) changed {}: {} changed; pending review as change {} (sidecars keep \
         serving version {})",
        current.spec.name,
        current.version,
        how,
        changes.join(", "),
        change.id,
        current.version
    );
    let mut audit = event(state, finder, AuditAction::ToolChangeDetected, &current, detail);
    // A drift is news, not a completed admin action (an admin's update is a request).
    audit.success = matches!(finder, Finder::Update(_));
    match state.store.record_tool_change(&change, &audit).await {
        Ok(()) => {}
        // Another replica's re-list (or an import) recorded a change of this tool in
        // the same instant (one pending change per tool is a unique index): theirs
        // stands, and this one, with its event, is not recorded.
        Err(StoreError::Conflict(_)) => {
            let pending = state
                .store
                .list_tool_changes(Some(ToolChangeStatus::Pending), Some(current.id))
                .await?;
            return match pending.into_iter().next() {
                Some(c) => Ok(Drift::Pending(c)),
                None => Err(ApiError::Unavailable(format!(
                    "a concurrent change of {} is being recorded; retry",
                    current.spec.name
                ))),
            };
        }
        Err(e) => return Err(e.into()),
    }
    metrics::counter!(m::TOOL_DRIFT, "source" => source, "outcome" => "pending").increment(1);
    tracing::warn!(
        tool = %current.spec.name, change = %change.id, source, changed = %changes.join(", "),
        "MCP tool definition drifted; pending review"
    );
    Ok(Drift::Pending(change))
}

fn next_version(current: &Tool, mut spec: ToolSpec) -> Tool {
    spec.reliability_score = current.spec.reliability_score;
    spec.average_latency_ms = current.spec.average_latency_ms;
    Tool {
        id: current.id,
        version: current.version + 1,
        spec,
        created_at: current.created_at,
        updated_at: Utc::now(),
    }
}

/// Approves or rejects a pending change; returns it reviewed and the tool as it now is.
pub async fn review(
    state: &AppState,
    who: &Principal,
    id: Uuid,
    approve: bool,
    reason: String,
) -> ApiResult<(ToolChange, Tool)> {
    let change = state
        .store
        .get_tool_change(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("tool change {id} not found")))?;
    if change.status != ToolChangeStatus::Pending {
        return Err(ApiError::FailedPrecondition(format!(
            "tool change {id} is {}, not pending",
            change.status
        )));
    }
    let current = state
        .store
        .get_tool(change.tool_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("tool {} not found", change.tool_id)))?;
    let now = Utc::now();
    let reviewed = ToolChange {
        status: if approve {
            ToolChangeStatus::Approved
        } else {
            ToolChangeStatus::Rejected
        },
        reviewed_at: Some(now),
        reviewed_by: who.actor_id(),
        review_reason: reason,
        ..change.clone()
    };
    // The proposal whole when the tool did not move since (an update's governance
    // fields included); else only its server-owned fields, onto governance as it is now
    // (an admin may have changed it while the change waited).
    let proposed = if change.base_version == current.version {
        change.proposed.clone()
    } else {
        mcp_import::merge(&current.spec, &change.proposed)
    };
    let fields: Vec<&str> = diff(&current.spec, &proposed).iter().map(|c| c.field).collect();
    let verdict = if approve { "approved" } else { "rejected" };
    let mut detail = format!(
        "{verdict} change {id} of {} ({}){}",
        current.spec.name,
        fields.join(", "),
        if reviewed.review_reason.is_empty() {
            String::new()
        } else {
            format!(": {}", reviewed.review_reason)
        }
    );
    let new_version = approve.then(|| next_version(&current, proposed));
    if let Some(t) = &new_version {
        detail.push_str(&format!("; {} is now version {}", t.spec.name, t.version));
    }
    let mut audit = vec![state.admin_event(who, AuditAction::ToolChangeReviewed, None, Some(current.id), detail)];
    if let Some(t) = &new_version {
        audit[0] = audit[0].clone().about(t);
        audit.push(
            state
                .admin_event(
                    who,
                    AuditAction::ToolUpdated,
                    None,
                    Some(t.id),
                    format!("{} is now version {} (approved change {id})", t.spec.name, t.version),
                )
                .about(t),
        );
    } else {
        audit[0] = audit[0].clone().about(&current);
    }
    let done = state
        .store
        .review_tool_change(&reviewed, new_version.as_ref(), &audit)
        .await?
        .ok_or_else(|| ApiError::FailedPrecondition(format!("tool change {id} is not pending any more")))?;
    if new_version.is_some() {
        state.changed();
    }
    tracing::info!(change = %id, tool = %current.spec.name, verdict, "tool change reviewed");
    Ok((done, new_version.unwrap_or(current)))
}
