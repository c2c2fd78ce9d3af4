//! Overview: the last 24 hours of calls by status, latency, cache hit rate, refusals,
//! the busiest tools and agents, the connected sidecars, the audit chains and dead
//! letters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::State;
use chrono::Utc;
use toolplane_proto::v1 as pb;

use super::page::{self, ConsoleError, Layout, PageResult};
use super::session::Viewer;
use super::{Console, charts};
use crate::storage::Activity;

/// How long the overview's aggregates are served before they are recomputed. They are
/// recomputed in the background while the previous ones are still served, so no page
/// render waits on aggregating a day of calls (only the very first one does).
const FRESH: Duration = Duration::from_secs(5);

/// Aggregates, when they were computed (monotonic and wall clock).
type Taken = (Instant, chrono::DateTime<Utc>, Arc<Activity>);

/// The last aggregates over the calls of the past 24 hours, and when they were taken.
#[derive(Default)]
pub struct ActivityCache {
    last: Mutex<Option<Taken>>,
    refreshing: AtomicBool,
}

async fn compute(console: &Console) -> Result<(chrono::DateTime<Utc>, Arc<Activity>), ConsoleError> {
    let now = Utc::now();
    let activity = console
        .state
        .store
        .activity(now - chrono::Duration::hours(24))
        .await
        .map_err(|e| ConsoleError::from(tonic::Status::from(crate::error::ApiError::from(e))))?;
    let activity = Arc::new(activity);
    *console.activity.last.lock().unwrap_or_else(PoisonError::into_inner) =
        Some((Instant::now(), now, activity.clone()));
    Ok((now, activity))
}

/// Fresh aggregates, or the last ones while new ones are computed in the background.
async fn activity(console: &Arc<Console>) -> Result<(chrono::DateTime<Utc>, Arc<Activity>), ConsoleError> {
    let last = console
        .activity
        .last
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match last {
        Some((taken, at, a)) => {
            if taken.elapsed() >= FRESH && !console.activity.refreshing.swap(true, Ordering::AcqRel) {
                let console = console.clone();
                tokio::spawn(async move {
                    if let Err(e) = compute(&console).await {
                        tracing::warn!(error = %e, "console: could not aggregate the last day's calls");
                    }
                    console.activity.refreshing.store(false, Ordering::Release);
                });
            }
            Ok((at, a))
        }
        None => compute(console).await,
    }
}

pub struct Top {
    pub id: String,
    pub name: String,
    pub calls: u64,
}

pub struct SidecarRow {
    pub name: String,
    pub token: String,
    pub lag: u64,
    pub age: String,
    pub synced: bool,
    pub spool: String,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    layout: Layout,
    as_of: String,
    chart: String,
    calls: u64,
    p50: String,
    p95: String,
    cache_hit_rate: String,
    denials: u64,
    rate_limited: u64,
    failures: u64,
    top_tools: Vec<Top>,
    top_agents: Vec<Top>,
    sidecars: Vec<SidecarRow>,
    chains: usize,
    chain_records: u64,
    dead_letters: u64,
    pending_requests: String,
}

pub async fn page(State(console): State<Arc<Console>>, viewer: Viewer) -> PageResult {
    let who = &viewer.principal;
    // Reads the service layer has no RPC for (aggregates over the calls) come from the
    // store directly; the caller was authorized as admin or auditor at login and again
    // for this request.
    let store = &console.state.store;
    let (now, activity) = activity(&console).await?;
    let heads = store
        .audit_chain_heads()
        .await
        .map_err(|e| ConsoleError::from(tonic::Status::from(crate::error::ApiError::from(e))))?;
    let dead = console.rpc.dead_letters(who).await?;
    // The count shown is of the first page of pending requests ("1000+" beyond).
    let (pending, more_pending) = console
        .rpc
        .access_requests(who, pb::AccessRequestStatus::Pending, "", 1000)
        .await?;
    let by_status = |s: &str| -> u64 {
        activity
            .minutes
            .iter()
            .filter(|(_, st, _)| st == s)
            .map(|(_, _, n)| n)
            .sum()
    };
    let tool_names = names_of_tools(&console, who, activity.top_tools.iter().map(|(id, _)| id.to_string())).await;
    let agent_names = super::agents::agent_names(
        &console,
        activity.top_agents.iter().map(|(id, _)| id.to_string()).collect(),
    )
    .await?;
    let top = |rows: &[(uuid::Uuid, u64)], names: &HashMap<String, String>| -> Vec<Top> {
        rows.iter()
            .map(|(id, calls)| {
                let id = id.to_string();
                Top {
                    name: names.get(&id).cloned().unwrap_or_else(|| page::short(&id)),
                    id,
                    calls: *calls,
                }
            })
            .collect()
    };
    let current = *console.state.subscribe().borrow();
    let sidecars = console
        .fleet
        .view(current, Instant::now())
        .into_iter()
        .map(|s| SidecarRow {
            name: s.name,
            token: s.token.map_or_else(|| "bootstrap admin".to_owned(), |t| t.to_string()),
            lag: s.lag,
            age: format!("{:.1} s", s.snapshot_age_secs),
            synced: s.synced,
            spool: s.spool_depth.map_or_else(|| "—".to_owned(), |d| d.to_string()),
        })
        .collect();
    let rate = if activity.calls == 0 {
        "—".to_owned()
    } else {
        format!("{:.1} %", 100.0 * activity.cache_hits as f64 / activity.calls as f64)
    };
    let p = OverviewPage {
        layout: Layout::of(&viewer, "overview"),
        as_of: now.format("%H:%M:%S").to_string(),
        chart: charts::calls_by_status(&activity.minutes, now, 24),
        calls: activity.calls,
        p50: format!("{:.0} ms", activity.p50_ms),
        p95: format!("{:.0} ms", activity.p95_ms),
        cache_hit_rate: rate,
        denials: by_status("permission_denied"),
        rate_limited: by_status("rate_limited"),
        failures: by_status("execution_error") + by_status("timeout") + by_status("circuit_open"),
        top_tools: top(&activity.top_tools, &tool_names),
        top_agents: top(&activity.top_agents, &agent_names),
        sidecars,
        chains: heads.len(),
        chain_records: heads.iter().map(|(_, n)| n).sum(),
        dead_letters: dead.total,
        pending_requests: if more_pending.is_empty() {
            pending.len().to_string()
        } else {
            format!("{}+", pending.len())
        },
    };
    Ok(page::html(&p))
}

/// Tool names by id, through GetTool (a tool deleted since shows its short id).
pub async fn names_of_tools(
    console: &Console,
    who: &toolplane_core::model::Principal,
    ids: impl Iterator<Item = String>,
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for id in ids {
        if out.contains_key(&id) {
            continue;
        }
        if let Ok(t) = console.rpc.get_tool(who, &id, 0).await {
            out.insert(id, t.name);
        }
    }
    out
}
