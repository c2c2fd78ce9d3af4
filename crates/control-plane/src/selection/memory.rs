//! Task memory: for each tool, the (redacted) task descriptions of past successful
//! calls, and a BM25 index over them. A new task is scored against the remembered
//! ones; its nearest neighbours vote for their tools. This is a signal of its own,
//! mixed into selection with a capped weight — not text appended to the tools' own
//! documents, which buries tools that have no history yet.

use std::collections::HashMap;
use std::sync::RwLock;

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::text::Analyzer;

/// Neighbours that vote.
pub const NEIGHBOURS: usize = 10;
/// A remembered task counts half after this long.
pub const HALF_LIFE_DAYS: f64 = 30.0;
/// Longest task text kept (characters).
pub const MAX_TASK_CHARS: usize = 2000;
const K1: f32 = 1.2;
const B: f32 = 0.75;

/// How a task came to be remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSource {
    /// A successful call that followed a selection (`SelectTool` then `Invoke` with
    /// its id, or `ExecuteTask`).
    Selection,
    /// The agent reported good quality for the call (`ReportOutcome`).
    Outcome,
}

impl TaskSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskSource::Selection => "selection",
            TaskSource::Outcome => "outcome",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "selection" => Some(TaskSource::Selection),
            "outcome" => Some(TaskSource::Outcome),
            _ => None,
        }
    }
}

/// One remembered task of one tool.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEntry {
    pub tool_id: Uuid,
    /// [`task_hash`] of the text: equal tasks are one entry.
    pub hash: String,
    /// Redacted.
    pub text: String,
    pub source: TaskSource,
    pub uses: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

impl TaskEntry {
    /// A task seen once, now. `text` must already be redacted.
    pub fn new(tool_id: Uuid, text: &str, source: TaskSource, at: DateTime<Utc>) -> Self {
        let text: String = text.trim().chars().take(MAX_TASK_CHARS).collect();
        Self {
            tool_id,
            hash: task_hash(&text),
            text,
            source,
            uses: 1,
            first_seen: at,
            last_seen: at,
        }
    }
}

/// The dedup key: tasks that differ only in case or spacing are the same task.
pub fn task_hash(text: &str) -> String {
    let normalized = text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    hex::encode(Sha256::digest(normalized.as_bytes()))
}

#[derive(Debug, Clone, Copy)]
pub struct MemoryConfig {
    /// Tasks kept per tool (the most recently seen).
    pub per_tool: usize,
    /// Tasks not seen for this long are forgotten; zero turns task memory off.
    pub retention: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            per_tool: 200,
            retention: Duration::days(90),
        }
    }
}

impl MemoryConfig {
    pub fn enabled(&self) -> bool {
        self.retention > Duration::zero() && self.per_tool > 0
    }
}

/// Tools the nearest past tasks vote for, and how close the closest one is.
#[derive(Debug, Clone, Default)]
pub struct Votes {
    /// Tool → vote, scaled so the best-voted tool has 1.
    pub tools: HashMap<Uuid, f64>,
    /// Similarity of the nearest past task to the query, 0..1 (1: it has every
    /// query word, at average length).
    pub nearest: f64,
}

struct Slot {
    entry: TaskEntry,
    /// Distinct term ids with their frequencies.
    terms: Vec<(u32, u16)>,
    len: u32,
}

#[derive(Default)]
struct Inner {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_key: HashMap<(Uuid, String), u32>,
    by_tool: HashMap<Uuid, Vec<u32>>,
    terms: HashMap<String, u32>,
    /// Per term: (slot, term frequency).
    postings: Vec<Vec<(u32, u16)>>,
    total_len: u64,
    live: usize,
}

impl Inner {
    fn insert(&mut self, analyzer: &Analyzer, entry: TaskEntry) {
        let mut tf: HashMap<u32, u16> = HashMap::new();
        let words = analyzer.terms(&entry.text);
        for w in &words {
            let next = u32::try_from(self.terms.len()).unwrap_or(u32::MAX);
            let id = *self.terms.entry(w.clone()).or_insert(next);
            let f = tf.entry(id).or_default();
            *f = f.saturating_add(1);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let terms: Vec<(u32, u16)> = tf.into_iter().collect();
        for &(id, f) in &terms {
            let id = id as usize;
            if id >= self.postings.len() {
                self.postings.resize_with(id + 1, Vec::new);
            }
            self.postings[id].push((slot, f));
        }
        let len = u32::try_from(words.len()).unwrap_or(u32::MAX);
        self.total_len += u64::from(len);
        self.live += 1;
        self.by_key.insert((entry.tool_id, entry.hash.clone()), slot);
        self.by_tool.entry(entry.tool_id).or_default().push(slot);
        self.slots[slot as usize] = Some(Slot { entry, terms, len });
    }

    fn remove(&mut self, slot: u32) -> Option<TaskEntry> {
        let s = self.slots.get_mut(slot as usize)?.take()?;
        for &(id, _) in &s.terms {
            if let Some(p) = self.postings.get_mut(id as usize) {
                p.retain(|(x, _)| *x != slot);
            }
        }
        self.total_len -= u64::from(s.len);
        self.live -= 1;
        self.by_key.remove(&(s.entry.tool_id, s.entry.hash.clone()));
        if let Some(v) = self.by_tool.get_mut(&s.entry.tool_id) {
            v.retain(|x| *x != slot);
            if v.is_empty() {
                self.by_tool.remove(&s.entry.tool_id);
            }
        }
        self.free.push(slot);
        Some(s.entry)
    }

    /// Drops the tool's least recently seen tasks beyond `keep`.
    fn bound(&mut self, tool: Uuid, keep: usize) {
        let Some(slots) = self.by_tool.get(&tool) else {
            return;
        };
        if slots.len() <= keep {
            return;
        }
        let mut aged: Vec<(DateTime<Utc>, u32)> = slots
            .iter()
            .filter_map(|s| self.slots[*s as usize].as_ref().map(|x| (x.entry.last_seen, *s)))
            .collect();
        aged.sort();
        let excess = aged.len() - keep;
        for (_, s) in aged.into_iter().take(excess) {
            self.remove(s);
        }
    }
}

/// The in-process task memory (loaded from the store at start, fed on every
/// successful call that followed a selection).
pub struct TaskMemory {
    analyzer: Analyzer,
    config: RwLock<MemoryConfig>,
    inner: RwLock<Inner>,
}

impl Default for TaskMemory {
    fn default() -> Self {
        Self {
            analyzer: Analyzer::default(),
            config: RwLock::new(MemoryConfig::default()),
            inner: RwLock::new(Inner::default()),
        }
    }
}

impl TaskMemory {
    pub fn config(&self) -> MemoryConfig {
        *self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_config(&self, c: MemoryConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = c;
        if !c.enabled() {
            *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Inner::default();
        }
    }

    /// Remembers a task (or, when it is known, counts it again and refreshes it).
    pub fn remember(&self, entry: TaskEntry) {
        let config = self.config();
        if !config.enabled() || entry.text.is_empty() {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let tool = entry.tool_id;
        match inner.by_key.get(&(entry.tool_id, entry.hash.clone())).copied() {
            Some(slot) => {
                if let Some(s) = inner.slots[slot as usize].as_mut() {
                    s.entry.uses += entry.uses;
                    s.entry.last_seen = s.entry.last_seen.max(entry.last_seen);
                    s.entry.first_seen = s.entry.first_seen.min(entry.first_seen);
                }
            }
            None => inner.insert(&self.analyzer, entry),
        }
        inner.bound(tool, config.per_tool);
    }

    /// Takes a task as the shared store holds it: its stored totals replace what this
    /// process counted, so every replica holds the same entry.
    pub fn set(&self, entry: TaskEntry) {
        let config = self.config();
        if !config.enabled() || entry.text.is_empty() {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let tool = entry.tool_id;
        match inner.by_key.get(&(entry.tool_id, entry.hash.clone())).copied() {
            Some(slot) => {
                if let Some(s) = inner.slots[slot as usize].as_mut() {
                    s.entry.uses = entry.uses;
                    s.entry.last_seen = entry.last_seen;
                    s.entry.first_seen = entry.first_seen;
                }
            }
            None => inner.insert(&self.analyzer, entry),
        }
        inner.bound(tool, config.per_tool);
    }

    /// Forgets one task of one tool (an agent said the call did not serve it).
    pub fn forget(&self, tool_id: Uuid, hash: &str) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match inner.by_key.get(&(tool_id, hash.to_owned())).copied() {
            Some(slot) => inner.remove(slot).is_some(),
            None => false,
        }
    }

    /// Forgets every task of a tool.
    pub fn forget_tool(&self, tool_id: Uuid) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for slot in inner.by_tool.get(&tool_id).cloned().unwrap_or_default() {
            inner.remove(slot);
        }
    }

    /// Forgets tasks not seen within the retention; returns how many.
    pub fn prune(&self, now: DateTime<Utc>) -> usize {
        let cutoff = now - self.config().retention;
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let old: Vec<u32> = inner
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| s.entry.last_seen < cutoff)
                    .map(|_| u32::try_from(i).unwrap_or(u32::MAX))
            })
            .collect();
        for s in &old {
            inner.remove(*s);
        }
        old.len()
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).live
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any task is remembered for the tool.
    pub fn has_history(&self, tool_id: Uuid) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_tool
            .contains_key(&tool_id)
    }

    /// How many tasks are remembered for a tool.
    pub fn remembered(&self, tool_id: Uuid) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_tool
            .get(&tool_id)
            .map_or(0, Vec::len)
    }

    /// The tasks remembered for a tool, most recently seen first.
    pub fn tasks_of(&self, tool_id: Uuid) -> Vec<TaskEntry> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<TaskEntry> = inner
            .by_tool
            .get(&tool_id)
            .into_iter()
            .flatten()
            .filter_map(|s| inner.slots[*s as usize].as_ref().map(|x| x.entry.clone()))
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.last_seen));
        out
    }

    /// The nearest past tasks to `terms` (analyzed query words), as votes per tool:
    /// each of the [`NEIGHBOURS`] nearest adds its similarity, halved every
    /// [`HALF_LIFE_DAYS`] since it was last seen.
    pub fn votes(&self, terms: &[String], now: DateTime<Utc>) -> Votes {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if inner.live == 0 || terms.is_empty() {
            return Votes::default();
        }
        let n = inner.live as f32;
        let avg = (inner.total_len as f32 / n).max(1.0);
        let idf = |df: f32| (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        let mut counts: HashMap<&str, f32> = HashMap::new();
        for t in terms {
            *counts.entry(t.as_str()).or_default() += 1.0;
        }
        let mut scores: HashMap<u32, f32> = HashMap::new();
        // The score of a task holding every query word once, at average length.
        let mut ideal = 0.0f32;
        for (t, qtf) in counts {
            let weight = qtf.sqrt();
            let Some(&id) = inner.terms.get(t) else {
                ideal += weight * idf(0.0);
                continue;
            };
            let postings = &inner.postings[id as usize];
            let w = idf(postings.len() as f32);
            ideal += weight * w;
            for &(slot, f) in postings {
                let Some(s) = inner.slots[slot as usize].as_ref() else {
                    continue;
                };
                let f = f32::from(f);
                let norm = 1.0 - B + B * s.len as f32 / avg;
                *scores.entry(slot).or_default() += weight * w * f * (K1 + 1.0) / (f + K1 * norm);
            }
        }
        if scores.is_empty() || ideal <= 0.0 {
            return Votes::default();
        }
        let mut ranked: Vec<(u32, f32)> = scores.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(NEIGHBOURS);
        let nearest = f64::from((ranked[0].1 / ideal).min(1.0));
        let mut tools: HashMap<Uuid, f64> = HashMap::new();
        for (slot, score) in ranked {
            let Some(s) = inner.slots[slot as usize].as_ref() else {
                continue;
            };
            let age_days = (now - s.entry.last_seen).num_seconds().max(0) as f64 / 86_400.0;
            let recency = 0.5f64.powf(age_days / HALF_LIFE_DAYS);
            let sim = f64::from((score / ideal).min(1.0));
            *tools.entry(s.entry.tool_id).or_default() += sim * recency;
        }
        let best = tools.values().copied().fold(0.0, f64::max);
        if best > 0.0 {
            for v in tools.values_mut() {
                *v /= best;
            }
        }
        Votes { tools, nearest }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(per_tool: usize) -> TaskMemory {
        let m = TaskMemory::default();
        m.set_config(MemoryConfig {
            per_tool,
            retention: Duration::days(30),
        });
        m
    }

    fn terms(s: &str) -> Vec<String> {
        Analyzer::default().terms(s)
    }

    #[test]
    fn nearest_past_tasks_vote_for_their_tools() {
        let m = memory(10);
        let (weather, shipping) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Utc::now();
        m.remember(TaskEntry::new(
            weather,
            "will it rain in Lisbon tomorrow",
            TaskSource::Selection,
            now,
        ));
        m.remember(TaskEntry::new(
            weather,
            "umbrella needed in Oslo today?",
            TaskSource::Selection,
            now,
        ));
        m.remember(TaskEntry::new(
            shipping,
            "where is my parcel 1Z999",
            TaskSource::Selection,
            now,
        ));
        let v = m.votes(&terms("is rain expected in Porto tomorrow"), now);
        assert_eq!(v.tools.get(&weather).copied(), Some(1.0));
        assert!(!v.tools.contains_key(&shipping));
        assert!(v.nearest > 0.3 && v.nearest <= 1.0, "{}", v.nearest);
        let exact = m.votes(&terms("where is my parcel 1Z999"), now);
        assert!(exact.nearest > 0.9, "{}", exact.nearest);
        assert!(m.votes(&terms("convert euros to yen"), now).tools.is_empty());
    }

    #[test]
    fn equal_tasks_are_one_entry_and_old_ones_count_less() {
        let m = memory(10);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Utc::now();
        m.remember(TaskEntry::new(
            a,
            "Translate this to German",
            TaskSource::Selection,
            now - Duration::days(60),
        ));
        m.remember(TaskEntry::new(
            a,
            "translate  this to german ",
            TaskSource::Outcome,
            now - Duration::days(60),
        ));
        assert_eq!(m.len(), 1);
        assert_eq!(m.tasks_of(a)[0].uses, 2);
        m.remember(TaskEntry::new(
            b,
            "translate this to German",
            TaskSource::Selection,
            now,
        ));
        let v = m.votes(&terms("translate this to german"), now);
        assert_eq!(v.tools[&b], 1.0);
        assert!((v.tools[&a] - 0.25).abs() < 0.01, "two half-lives: {}", v.tools[&a]);
    }

    #[test]
    fn bounded_per_tool_keeping_the_most_recent() {
        let m = memory(3);
        let tool = Uuid::new_v4();
        let now = Utc::now();
        for i in 0..5 {
            m.remember(TaskEntry::new(
                tool,
                &format!("task number {i}"),
                TaskSource::Selection,
                now - Duration::minutes(10 - i),
            ));
        }
        let kept: Vec<String> = m.tasks_of(tool).into_iter().map(|e| e.text).collect();
        assert_eq!(kept, ["task number 4", "task number 3", "task number 2"]);
        assert!(m.votes(&terms("number 0"), now).tools.values().all(|v| *v > 0.0));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn prune_and_forget() {
        let m = memory(10);
        let tool = Uuid::new_v4();
        let now = Utc::now();
        m.remember(TaskEntry::new(
            tool,
            "old task",
            TaskSource::Selection,
            now - Duration::days(31),
        ));
        let fresh = TaskEntry::new(tool, "fresh task", TaskSource::Selection, now);
        m.remember(fresh.clone());
        assert_eq!(m.prune(now), 1);
        assert!(m.votes(&terms("old task"), now).tools.values().all(|v| *v > 0.0));
        assert!(m.forget(tool, &fresh.hash));
        assert!(m.is_empty());
        assert!(m.votes(&terms("fresh task"), now).tools.is_empty());
    }

    #[test]
    fn retention_zero_turns_memory_off() {
        let m = TaskMemory::default();
        m.set_config(MemoryConfig {
            per_tool: 10,
            retention: Duration::zero(),
        });
        m.remember(TaskEntry::new(
            Uuid::new_v4(),
            "anything",
            TaskSource::Selection,
            Utc::now(),
        ));
        assert!(m.is_empty());
    }
}
