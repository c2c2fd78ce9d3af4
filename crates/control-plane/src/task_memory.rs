//! What task memory learns from, and what it refuses to keep. A task is remembered
//! for a tool when a call of that tool succeeded after a selection made for that task
//! by the same agent (`SelectTool` then `Invoke` with its id, or `ExecuteTask`), or
//! when the agent reports good quality for such a call. Never for an agent that opted
//! out, never for a tool of `RESTRICTED` sensitivity, and only redacted text (the
//! selection log holds the task already redacted).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use toolplane_core::model::{DataSensitivity, ExecutionStatus, InvocationRecord, Snapshot};
use uuid::Uuid;

use crate::error::ApiResult;
use crate::selection::memory::{TaskEntry, TaskSource};
use crate::state::AppState;
use crate::storage::SelectionLogEntry;

/// A reported quality at or above this remembers the task; below [`POOR_QUALITY`] (or
/// a task that did not succeed) forgets it.
pub const GOOD_QUALITY: f64 = 0.7;
pub const POOR_QUALITY: f64 = 0.3;
/// Bytes of task text kept in process for the calls that follow their selections
/// (older selections are looked up in the store).
/// Each entry's bytes are its task's plus this (id, map and queue slots), so entries
/// with empty tasks are bounded too.
const RECENT_SELECTIONS_BYTES: usize = 32 * 1024 * 1024;
const RECENT_SELECTION_OVERHEAD: usize = 96;
/// Selections kept in process, whatever their size.
const RECENT_SELECTIONS_MAX: usize = 100_000;

/// The latest selections, by id: the call that follows a selection usually arrives
/// before the selection log's (asynchronous) write has landed.
#[derive(Default)]
pub struct RecentSelections {
    inner: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    by_id: HashMap<Uuid, RecentSelection>,
    order: VecDeque<Uuid>,
    bytes: usize,
}

#[derive(Debug, Clone)]
pub struct RecentSelection {
    pub agent_id: Option<Uuid>,
    /// Redacted.
    pub task: String,
}

impl RecentSelections {
    pub fn insert(&self, id: Uuid, s: RecentSelection) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let r = &mut *g;
        r.bytes += s.task.len() + RECENT_SELECTION_OVERHEAD;
        if let Some(old) = r.by_id.insert(id, s) {
            r.bytes -= old.task.len() + RECENT_SELECTION_OVERHEAD;
        } else {
            r.order.push_back(id);
        }
        while r.bytes > RECENT_SELECTIONS_BYTES || r.by_id.len() > RECENT_SELECTIONS_MAX {
            let Some(old) = r.order.pop_front() else { break };
            if let Some(s) = r.by_id.remove(&old) {
                r.bytes -= s.task.len() + RECENT_SELECTION_OVERHEAD;
            }
        }
    }

    fn get(&self, id: Uuid) -> Option<RecentSelection> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(&id)
            .cloned()
    }
}

impl From<SelectionLogEntry> for RecentSelection {
    fn from(e: SelectionLogEntry) -> Self {
        Self {
            agent_id: e.agent_id,
            task: e.task_description,
        }
    }
}

/// Each live tool's data sensitivity.
fn sensitivities(snapshot: &Snapshot) -> HashMap<Uuid, DataSensitivity> {
    snapshot
        .tools
        .iter()
        .map(|t| (t.id, t.spec.requirements.data_sensitivity))
        .collect()
}

/// Whether `agent` may have tasks remembered for `tool` (by the current snapshot).
fn may_remember(snapshot: &Snapshot, tools: &HashMap<Uuid, DataSensitivity>, agent: Uuid, tool: Uuid) -> bool {
    let restricted = tools.get(&tool).is_none_or(|s| *s == DataSensitivity::Restricted);
    let opted_out = snapshot
        .agents
        .iter()
        .find(|a| a.id == agent)
        .is_none_or(|a| a.task_memory_opt_out);
    !restricted && !opted_out
}

impl AppState {
    /// The task a selection was made for, if `agent` made it.
    async fn selection_task(&self, selection_id: Uuid, agent: Uuid) -> ApiResult<Option<String>> {
        let found = match self.recent_selections.get(selection_id) {
            Some(s) => Some(s),
            None => self.store.get_selection(selection_id).await?.map(RecentSelection::from),
        };
        Ok(found.filter(|s| s.agent_id == Some(agent)).map(|s| s.task))
    }

    /// Remembers the tasks of stored invocations that succeeded after a selection.
    pub async fn remember_tasks(&self, invocations: &[&InvocationRecord]) -> ApiResult<usize> {
        let config = self.selector.memory.config();
        let candidates: Vec<&&InvocationRecord> = invocations
            .iter()
            .filter(|i| i.selection_id.is_some() && i.result.status == ExecutionStatus::Success)
            .collect();
        if !config.enabled() || candidates.is_empty() {
            return Ok(0);
        }
        let snapshot = self.snapshot().await?;
        let tools = sensitivities(&snapshot);
        let mut entries = Vec::new();
        for i in candidates {
            let Some(selection_id) = i.selection_id else {
                continue;
            };
            if !may_remember(&snapshot, &tools, i.agent_id, i.result.tool_id) {
                continue;
            }
            if let Some(task) = self.selection_task(selection_id, i.agent_id).await? {
                entries.push(TaskEntry::new(
                    i.result.tool_id,
                    &task,
                    TaskSource::Selection,
                    i.result.completed_at,
                ));
            }
        }
        self.keep(entries).await
    }

    /// An agent's report on a call: good quality remembers its task for the tool, poor
    /// quality (or a task that failed) forgets it.
    pub async fn task_outcome(&self, i: &InvocationRecord, quality: f64, task_succeeded: bool) -> ApiResult<()> {
        let Some(selection_id) = i.selection_id else {
            return Ok(());
        };
        let Some(task) = self.selection_task(selection_id, i.agent_id).await? else {
            return Ok(());
        };
        let tool = i.result.tool_id;
        if quality < POOR_QUALITY || !task_succeeded {
            // The key of the entry as it was remembered (trimmed, truncated).
            let hash = TaskEntry::new(tool, &task, TaskSource::Outcome, Utc::now()).hash;
            self.selector.memory.forget(tool, &hash);
            self.store.forget_task(tool, &hash).await?;
            return Ok(());
        }
        let call_succeeded = i.result.status == ExecutionStatus::Success;
        if quality < GOOD_QUALITY || !call_succeeded || !self.selector.memory.config().enabled() {
            return Ok(());
        }
        let snapshot = self.snapshot().await?;
        if may_remember(&snapshot, &sensitivities(&snapshot), i.agent_id, tool) {
            self.keep(vec![TaskEntry::new(tool, &task, TaskSource::Outcome, Utc::now())])
                .await?;
        }
        Ok(())
    }

    async fn keep(&self, entries: Vec<TaskEntry>) -> ApiResult<usize> {
        let entries: Vec<TaskEntry> = entries.into_iter().filter(|e| !e.text.is_empty()).collect();
        if entries.is_empty() {
            return Ok(0);
        }
        let per_tool = self.selector.memory.config().per_tool;
        self.store.remember_tasks(&entries, per_tool).await?;
        let n = entries.len();
        for e in entries {
            self.selector.memory.remember(e);
        }
        Ok(n)
    }

    /// Loads the remembered tasks within the retention (start-up) and forgets older
    /// ones in the store; returns how many were loaded.
    pub async fn load_task_memory(&self, now: DateTime<Utc>) -> ApiResult<usize> {
        let config = self.selector.memory.config();
        // Retention zero (memory off) forgets everything kept before.
        let cutoff = now - config.retention;
        self.store.prune_task_memory(cutoff).await?;
        if !config.enabled() {
            return Ok(0);
        }
        let entries = self.store.task_memory(cutoff).await?;
        let n = entries.len();
        for e in entries {
            self.selector.memory.remember(e);
        }
        Ok(n)
    }

    /// Forgets tasks older than the retention, in process and in the store.
    pub async fn prune_task_memory(&self, now: DateTime<Utc>) -> ApiResult<u64> {
        let config = self.selector.memory.config();
        self.selector.memory.prune(now);
        Ok(self.store.prune_task_memory(now - config.retention).await?)
    }

    /// A tool became `RESTRICTED`: nothing about its tasks may stay.
    pub async fn forget_tool_tasks(&self, tool: Uuid) -> ApiResult<()> {
        self.selector.memory.forget_tool(tool);
        self.store.forget_tool_tasks(tool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_selections_are_bounded_by_bytes_oldest_first() {
        let r = RecentSelections::default();
        let big = "x".repeat(RECENT_SELECTIONS_BYTES / 4 + 1);
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            r.insert(
                *id,
                RecentSelection {
                    agent_id: None,
                    task: big.clone(),
                },
            );
        }
        assert!(r.get(ids[0]).is_none(), "the oldest went first");
        assert!(ids[1..].iter().all(|id| r.get(*id).is_some()));
        assert!(r.inner.lock().unwrap().bytes <= RECENT_SELECTIONS_BYTES);
    }

    #[test]
    fn recent_selections_with_empty_tasks_are_bounded_by_count() {
        let r = RecentSelections::default();
        let first = Uuid::now_v7();
        let new = |task: &str| RecentSelection {
            agent_id: None,
            task: task.to_owned(),
        };
        r.insert(first, new(""));
        for _ in 0..RECENT_SELECTIONS_MAX + 10 {
            r.insert(Uuid::now_v7(), new(""));
        }
        let g = r.inner.lock().unwrap();
        assert_eq!(g.by_id.len(), RECENT_SELECTIONS_MAX);
        assert_eq!(g.order.len(), RECENT_SELECTIONS_MAX);
        assert!(!g.by_id.contains_key(&first), "the oldest went first");
        assert_eq!(g.bytes, RECENT_SELECTIONS_MAX * RECENT_SELECTION_OVERHEAD);
    }
}
