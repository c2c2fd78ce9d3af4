//! The sidecars connected to this replica and how far behind each one is, for
//! `/metrics`. Sessions report what they sent; lag is computed at scrape time against
//! the replica's current revision, so a stuck session shows a growing lag even though
//! it no longer does anything itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use toolplane_runtime::metrics::{SIDECAR_PUSH_AGE, SIDECAR_REVISION_LAG};
use uuid::Uuid;

/// At most this many `sidecar_token` series are exported (the furthest behind first),
/// so a fleet with many sidecar tokens cannot blow up the label set.
pub const MAX_SIDECAR_SERIES: usize = 200;

#[derive(Debug, Default)]
pub struct Fleet {
    sessions: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The name the sidecar gave itself and where it connected from (display only).
    name: String,
    /// `None` for the bootstrap admin token (configuration, no id).
    token: Option<Uuid>,
    /// The revision whose state the sidecar holds; `None` before its first snapshot.
    revision: Option<u64>,
    /// When this replica last sent it a snapshot, delta or heartbeat (or it connected).
    pushed: Instant,
    /// The backlog the sidecar reported with its last batch of events.
    spool_depth: Option<u64>,
}

/// One sync session's place in the fleet; leaves it when dropped.
#[derive(Debug)]
pub struct Member {
    fleet: Arc<Fleet>,
    id: u64,
}

impl Fleet {
    fn update(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = sessions.get_mut(&id) {
            f(e);
        }
    }

    pub fn join(self: &Arc<Self>, token: Option<Uuid>) -> Member {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(
            id,
            Entry {
                name: String::new(),
                token,
                revision: None,
                pushed: Instant::now(),
                spool_depth: None,
            },
        );
        Member {
            fleet: self.clone(),
            id,
        }
    }

    /// Appends both lag gauges in the Prometheus text format, one series per sidecar
    /// token (the worst of its sessions), given the replica's `current` revision.
    pub fn render(&self, current: u64, now: Instant, out: &mut String) {
        // Per token label: (revision lag, seconds since last push).
        let mut worst: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for e in self.sessions.lock().unwrap_or_else(PoisonError::into_inner).values() {
            let label = e.token.map_or_else(|| "bootstrap-admin".to_owned(), |t| t.to_string());
            // Before its first snapshot a sidecar holds nothing of this stream: it is as
            // far behind as the stream's age says, not a number of revisions.
            let lag = e.revision.map_or(0, |r| current.saturating_sub(r));
            let age = now.saturating_duration_since(e.pushed).as_secs_f64();
            let w = worst.entry(label).or_insert((0, 0.0));
            w.0 = w.0.max(lag);
            w.1 = w.1.max(age);
        }
        if worst.is_empty() {
            return;
        }
        let mut rows: Vec<(String, (u64, f64))> = worst.into_iter().collect();
        rows.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(b.1.1.total_cmp(&a.1.1)));
        rows.truncate(MAX_SIDECAR_SERIES);
        let _ = writeln!(
            out,
            "# HELP {SIDECAR_REVISION_LAG} Revisions the snapshot a connected sidecar holds is behind this replica's, by sidecar token\n# TYPE {SIDECAR_REVISION_LAG} gauge"
        );
        for (label, (lag, _)) in &rows {
            let _ = writeln!(out, "{SIDECAR_REVISION_LAG}{{sidecar_token=\"{label}\"}} {lag}");
        }
        let _ = writeln!(
            out,
            "# HELP {SIDECAR_PUSH_AGE} Seconds since this replica last sent a connected sidecar a snapshot, delta or heartbeat, by sidecar token\n# TYPE {SIDECAR_PUSH_AGE} gauge"
        );
        for (label, (_, age)) in &rows {
            let _ = writeln!(out, "{SIDECAR_PUSH_AGE}{{sidecar_token=\"{label}\"}} {age:.3}");
        }
    }
}

/// One connected sidecar as the admin console shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarView {
    pub name: String,
    /// `None` for the bootstrap admin token.
    pub token: Option<Uuid>,
    /// Revisions behind this replica's current one.
    pub lag: u64,
    /// Seconds since its snapshot, delta or heartbeat was last sent.
    pub snapshot_age_secs: f64,
    /// Whether it has received its first snapshot.
    pub synced: bool,
    /// Spooled events waiting behind its last batch; `None` before any batch.
    pub spool_depth: Option<u64>,
}

impl Fleet {
    /// The sessions connected now, the furthest behind first.
    pub fn view(&self, current: u64, now: Instant) -> Vec<SidecarView> {
        let mut out: Vec<SidecarView> = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|e| SidecarView {
                name: e.name.clone(),
                token: e.token,
                lag: e.revision.map_or(0, |r| current.saturating_sub(r)),
                snapshot_age_secs: now.saturating_duration_since(e.pushed).as_secs_f64(),
                synced: e.revision.is_some(),
                spool_depth: e.spool_depth,
            })
            .collect();
        out.sort_by(|a, b| b.lag.cmp(&a.lag).then(a.name.cmp(&b.name)));
        out
    }
}

impl Member {
    /// The sidecar reported its spool's backlog with a batch of events.
    pub fn spooled(&self, depth: u64) {
        self.fleet.update(self.id, |e| e.spool_depth = Some(depth));
    }

    /// Names the session (the sidecar's own name and its address), for display.
    pub fn named(&self, name: String) {
        self.fleet.update(self.id, |e| e.name = name);
    }

    /// The sidecar now holds the state of `revision` (a delta or snapshot was sent, or
    /// nothing it holds changed).
    pub fn synced(&self, revision: u64) {
        self.fleet.update(self.id, |e| e.revision = Some(revision));
    }

    /// A snapshot, delta or heartbeat was handed to the stream.
    pub fn pushed(&self) {
        self.fleet.update(self.id, |e| e.pushed = Instant::now());
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.fleet
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
#[path = "sync_fleet_tests.rs"]
mod tests;
