//! The scheduled re-list (`TOOLPLANE_MCP_RELIST_SECS`): every imported MCP server is
//! read again on a schedule and each registered tool's definition compared with what
//! the server now says, so a server that changes a tool after approval (a rug pull)
//! is flagged — a pending change, an audit event and a metric — even when nobody
//! re-imports. Nothing the server says reaches sidecars before an admin approves it.
//!
//! Every replica runs the schedule; a drift found twice is recorded once (the same
//! proposed definition of the same version is not recorded again).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use toolplane_core::model::{Tool, ToolProtocol};
use toolplane_runtime::metrics as m;

use crate::mcp_import::{self, ImportOptions};
use crate::state::AppState;
use crate::storage::ToolFilter;
use crate::tool_review::{self, Drift, Finder};

/// Starts the schedule: the first re-list one interval after start-up.
pub fn spawn(state: Arc<AppState>, every: Duration) {
    tracing::info!(
        every_secs = every.as_secs(),
        "scheduled re-list of imported MCP servers on"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match relist_all(&state).await {
                Ok(n) if n > 0 => tracing::warn!(changes = n, "re-list found changed MCP tool definitions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "re-list of MCP servers failed; retrying at the next tick"),
            }
        }
    });
}

/// Live MCP tools by server endpoint.
async fn mcp_tools(state: &AppState) -> Result<BTreeMap<String, Vec<Tool>>, crate::error::ApiError> {
    let mut by_server: BTreeMap<String, Vec<Tool>> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = state
            .store
            .list_tools(&ToolFilter::default(), after.as_deref(), 500)
            .await?;
        let done = page.len() < 500;
        after = page.last().map(|t| t.spec.name.clone());
        for t in page.into_iter().filter(|t| t.spec.protocol == ToolProtocol::Mcp) {
            by_server.entry(t.spec.endpoint.clone()).or_default().push(t);
        }
        if done {
            return Ok(by_server);
        }
    }
}

/// The credential header one of a server's tools holds, to list the server with.
async fn credential(state: &AppState, tools: &[Tool]) -> Vec<(String, String)> {
    let Some(keyring) = &state.keyring else {
        return Vec::new();
    };
    let Ok(all) = state.store.list_credentials().await else {
        return Vec::new();
    };
    all.iter()
        .filter(|c| tools.iter().any(|t| t.id == c.tool_id))
        .find_map(|c| {
            let secret = keyring.open(&c.sealed, c.tool_id.as_bytes()).ok()?;
            let secret = String::from_utf8(secret).ok()?;
            let header = if c.header_name.is_empty() {
                ("authorization".to_owned(), format!("Bearer {secret}"))
            } else {
                (c.header_name.to_ascii_lowercase(), secret)
            };
            Some(header)
        })
        .into_iter()
        .collect()
}

/// Whether the server's definition of `current` is a change found just now (newly
/// pending, or approved automatically).
async fn found_new(
    state: &AppState,
    current: Tool,
    fresh: &toolplane_core::model::ToolSpec,
) -> Result<bool, crate::error::ApiError> {
    let before = state
        .store
        .list_tool_changes(Some(toolplane_core::model::ToolChangeStatus::Pending), Some(current.id))
        .await?;
    Ok(
        match tool_review::on_server_definition(state, &Finder::Relist, current, fresh).await? {
            Drift::Applied(_) => true,
            Drift::Pending(c) => !before.iter().any(|b| b.id == c.id),
            Drift::Unchanged | Drift::Rejected(_) => false,
        },
    )
}

/// Re-lists every imported server once; returns how many changes are newly pending
/// or were approved automatically.
pub async fn relist_all(state: &AppState) -> Result<usize, crate::error::ApiError> {
    let http = state.mcp_http().map_err(crate::error::ApiError::Unavailable)?;
    let mut found = 0;
    for (endpoint, tools) in mcp_tools(state).await? {
        let headers = credential(state, &tools).await;
        let remote = match mcp_import::list_tools(&http, &endpoint, &headers).await {
            Ok(r) => {
                metrics::counter!(m::MCP_RELISTS, "result" => "ok").increment(1);
                r
            }
            Err(e) => {
                metrics::counter!(m::MCP_RELISTS, "result" => "error").increment(1);
                tracing::warn!(endpoint, error = %e, "could not re-list an MCP server");
                continue;
            }
        };
        let opts = ImportOptions {
            endpoint: endpoint.clone(),
            ..Default::default()
        };
        for current in tools {
            let Some(t) = remote.iter().find(|r| r.name.as_ref() == current.spec.remote_name) else {
                tracing::warn!(tool = %current.spec.name, endpoint, "an imported tool is gone from its MCP server");
                continue;
            };
            let fresh = mcp_import::to_spec(t, &opts);
            let name = current.spec.name.clone();
            match found_new(state, current, &fresh).await {
                Ok(true) => found += 1,
                Ok(false) => {}
                // One tool's trouble (storage, a concurrent change) does not stop the
                // rest of the round.
                Err(e) => tracing::warn!(tool = %name, error = %e, "could not compare a re-listed tool"),
            }
        }
    }
    Ok(found)
}
