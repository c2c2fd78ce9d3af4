//! Which part of the catalog this sidecar asks the control plane for, and fetching more
//! on demand.
//!
//! By default a sidecar holds the tools of the agents it has served (learned from the
//! tokens it sees) or of the agents it is configured for (`TOOLPLANE_SIDECAR_AGENTS`),
//! not the whole catalog: an agent pod's sidecar then costs what its agent uses. A call
//! from an agent whose tools are not held yet, or naming a tool outside the scope (not
//! granted to the agent, or absent), asks the control plane on the sync stream and
//! waits for the answer (at most `TOOLPLANE_SCOPE_FETCH_TIMEOUT_MS`), then is served or
//! refused exactly as with the whole catalog. The scope only grows while the sidecar
//! runs; a restart starts again from the configured agents.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use toolplane_proto::v1 as pb;
use uuid::Uuid;

/// Most tool references waiting for an answer at once; more calls naming tools outside
/// the scope are refused (UNAVAILABLE) until answers arrive.
const MAX_PENDING_TOOLS: usize = 1024;

/// What this sidecar holds of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeMode {
    /// Every tool (the behaviour before scoping; a sidecar serving many agents).
    All,
    /// The tools of these agents (ids or names) and of every agent it serves.
    Agents(Vec<String>),
}

impl std::str::FromStr for ScopeMode {
    type Err = String;

    /// `*`: the whole catalog; otherwise comma-separated agent ids or names (empty:
    /// learned from the tokens the sidecar sees).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Self::All);
        }
        let agents: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(long) = agents.iter().find(|a| a.len() > toolplane_core::scope::MAX_REF_CHARS) {
            return Err(format!("agent reference of {} characters is too long", long.len()));
        }
        Ok(Self::Agents(agents))
    }
}

pub struct ScopeFetcher {
    mode: ScopeMode,
    wanted: Mutex<Wanted>,
    requests: mpsc::UnboundedSender<pb::ScopeRequest>,
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<pb::ScopeRequest>>,
    last_request: AtomicU64,
    pub timeout: Duration,
}

#[derive(Default)]
struct Wanted {
    /// Agents learned from tokens (ids); the configured ones are in `mode`.
    agents: BTreeSet<Uuid>,
    /// Tool references asked for and not answered yet, with their request id.
    pending_tools: HashMap<String, u64>,
}

impl ScopeFetcher {
    pub fn new(mode: ScopeMode, timeout: Duration) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        Self {
            mode,
            wanted: Mutex::default(),
            requests,
            receiver: tokio::sync::Mutex::new(receiver),
            last_request: AtomicU64::new(0),
            timeout,
        }
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, Wanted> {
        self.wanted.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The scope to ask for when (re)connecting: configured and learned agents, the
    /// tools held on demand and those still asked for. `held_tools` are the on-demand
    /// tools of the snapshot held now.
    pub fn hello(&self, held_tools: &BTreeSet<Uuid>) -> pb::SnapshotScope {
        let ScopeMode::Agents(configured) = &self.mode else {
            return pb::SnapshotScope {
                all_agents: true,
                ..Default::default()
            };
        };
        let wanted = self.wanted();
        pb::SnapshotScope {
            all_agents: false,
            agents: configured
                .iter()
                .cloned()
                .chain(wanted.agents.iter().map(Uuid::to_string))
                .collect(),
            tools: held_tools
                .iter()
                .map(Uuid::to_string)
                .chain(wanted.pending_tools.keys().cloned())
                .collect(),
            request_id: self.last_request.load(Ordering::Acquire),
        }
    }

    /// The requests to send on the sync stream, held by one session at a time.
    pub async fn requests(&self) -> tokio::sync::MutexGuard<'_, mpsc::UnboundedReceiver<pb::ScopeRequest>> {
        self.receiver.lock().await
    }

    /// Asks for `agent`'s tools, unless already asked for. Returns whether it asked.
    pub fn ask_agent(&self, agent: Uuid) -> bool {
        if self.mode == ScopeMode::All {
            return false;
        }
        if !self.wanted().agents.insert(agent) {
            return false;
        }
        let request_id = self.last_request.fetch_add(1, Ordering::AcqRel) + 1;
        let _ = self.requests.send(pb::ScopeRequest {
            request_id,
            agents: vec![agent.to_string()],
            tools: vec![],
        });
        true
    }

    /// Asks for the tool `reference` (an id or a name); the request id whose answer
    /// settles it. `None` when too many are waiting already.
    pub fn ask_tool(&self, reference: &str) -> Option<u64> {
        let mut wanted = self.wanted();
        if let Some(&id) = wanted.pending_tools.get(reference) {
            return Some(id);
        }
        if wanted.pending_tools.len() >= MAX_PENDING_TOOLS {
            return None;
        }
        let request_id = self.last_request.fetch_add(1, Ordering::AcqRel) + 1;
        wanted.pending_tools.insert(reference.to_owned(), request_id);
        drop(wanted);
        let _ = self.requests.send(pb::ScopeRequest {
            request_id,
            agents: vec![],
            tools: vec![reference.to_owned()],
        });
        Some(request_id)
    }

    /// A snapshot answering every request up to `request_id` was installed.
    pub fn answered(&self, request_id: u64) {
        self.wanted().pending_tools.retain(|_, id| *id > request_id);
    }

    pub fn is_scoped(&self) -> bool {
        self.mode != ScopeMode::All
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_setting_reads_all_a_list_or_nothing() {
        assert_eq!("*".parse::<ScopeMode>(), Ok(ScopeMode::All));
        assert_eq!("".parse::<ScopeMode>(), Ok(ScopeMode::Agents(vec![])));
        assert_eq!(
            " a, b ,,".parse::<ScopeMode>(),
            Ok(ScopeMode::Agents(vec!["a".into(), "b".into()]))
        );
        assert!("x".repeat(300).parse::<ScopeMode>().is_err());
    }

    #[tokio::test]
    async fn an_agent_is_asked_for_once_and_tools_until_answered() {
        let f = ScopeFetcher::new(ScopeMode::Agents(vec!["ops".into()]), Duration::from_secs(1));
        let a = Uuid::new_v4();
        assert!(f.ask_agent(a));
        assert!(!f.ask_agent(a), "asked once");
        let first = f.ask_tool("search").unwrap();
        assert_eq!(f.ask_tool("search"), Some(first), "the same request while it waits");
        let hello = f.hello(&BTreeSet::new());
        assert_eq!(hello.agents, vec!["ops".to_owned(), a.to_string()]);
        assert_eq!(hello.tools, vec!["search".to_owned()]);
        assert_eq!(hello.request_id, first);
        f.answered(first);
        assert!(f.hello(&BTreeSet::new()).tools.is_empty());
        let mut rx = f.requests().await;
        assert_eq!(rx.recv().await.unwrap().agents, vec![a.to_string()]);
        assert_eq!(rx.recv().await.unwrap().tools, vec!["search".to_owned()]);
        let all = ScopeFetcher::new(ScopeMode::All, Duration::from_secs(1));
        assert!(!all.ask_agent(a));
        assert!(all.hello(&BTreeSet::new()).all_agents);
    }
}
