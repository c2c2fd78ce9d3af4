//! What the fleet learned about tools: per tool × task category × agent, decayed
//! success counts (recent outcomes weigh more, so a tool that turns bad is noticed),
//! EWMA duration and cost, reported quality, last use and a trend; and the Bayesian
//! suitability selection ranks with.
//!
//! Suitability shrinks hierarchically: the tool's fleet-wide rate (itself shrunk toward
//! `FLEET_PRIOR`) is the prior of its rate for a task category, which is the prior of
//! one agent's rate for that category. A new agent starts at what the fleet knows, not
//! at 0.5; a new tool starts optimistic, so it gets tried.
//!
//! Task categories are whatever agents send, so they are bounded before they become
//! keys: cut to [`MAX_CATEGORY_CHARS`] characters, at most
//! [`MAX_CATEGORIES_PER_AGENT`] distinct ones per agent and [`MAX_CATEGORIES`] in all;
//! categories beyond those fold into [`OTHER_CATEGORY`]. The maps therefore hold at
//! most tools × agents × (categories per agent + 2) cells, whatever agents send.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, RwLock};

use chrono::{DateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use toolplane_core::model::{ExecutionStatus, InvocationRecord};
use uuid::Uuid;

/// Prior success rate of a tool nobody has used yet, and its weight in outcomes.
const FLEET_PRIOR: f64 = 0.8;
const FLEET_PRIOR_WEIGHT: f64 = 2.0;
/// Weight (in outcomes) of each level's prior on the level below.
const SHRINKAGE: f64 = 4.0;
/// How much of the fleet's evidence counts toward one agent's certainty when sampling.
const FLEET_EVIDENCE_SHARE: f64 = 1.0;
/// Each new outcome multiplies the earlier counts by this: an effective memory of
/// about 1 / (1 - DECAY) = 100 outcomes.
const DECAY: f64 = 0.99;
const EWMA_ALPHA: f64 = 0.2;
/// Outcomes in the trend's recent window, and how far it must move from the longer
/// history to count as a trend.
const RECENT: usize = 20;
const TREND_MARGIN: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    Improving,
    Stable,
    Declining,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cell {
    pub invocations: u64,
    /// Decayed counts.
    pub(crate) weight: f64,
    pub(crate) successes: f64,
    /// Undecayed, for the trend's long history.
    pub(crate) total_successes: u64,
    pub ewma_duration_ms: f64,
    pub ewma_cost: f64,
    pub(crate) quality_sum: f64,
    pub(crate) quality_n: u64,
    pub last_used: Option<DateTime<Utc>>,
    /// The last [`RECENT`] outcomes, oldest first.
    pub(crate) recent: VecDeque<bool>,
}

impl Cell {
    pub(crate) fn record(&mut self, success: bool, duration_ms: f64, cost: f64, at: DateTime<Utc>) {
        self.weight = self.weight * DECAY + 1.0;
        self.successes = self.successes * DECAY + if success { 1.0 } else { 0.0 };
        if self.invocations == 0 {
            self.ewma_duration_ms = duration_ms;
            self.ewma_cost = cost;
        } else {
            self.ewma_duration_ms += EWMA_ALPHA * (duration_ms - self.ewma_duration_ms);
            self.ewma_cost += EWMA_ALPHA * (cost - self.ewma_cost);
        }
        self.invocations += 1;
        self.total_successes += u64::from(success);
        self.last_used = Some(self.last_used.map_or(at, |l| l.max(at)));
        self.recent.push_back(success);
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// An agent's verdict (see [`Learning::record_quality`]), `served` being the
    /// quality, or 0 when the task did not succeed.
    pub(crate) fn verdict(&mut self, quality: f64, served: f64, call_succeeded: bool) {
        self.quality_sum += quality;
        self.quality_n += 1;
        // Replace the last outcome's full success with the verdict's share of it.
        if call_succeeded && self.weight > 0.0 {
            self.successes = (self.successes - (1.0 - served)).max(0.0);
        }
    }

    /// Posterior mean with `prior` weighted as `strength` outcomes.
    fn posterior(&self, prior: f64, strength: f64) -> f64 {
        (self.successes + strength * prior) / (self.weight + strength)
    }

    pub fn success_rate(&self) -> f64 {
        if self.invocations == 0 {
            0.0
        } else {
            self.total_successes as f64 / self.invocations as f64
        }
    }

    pub fn quality(&self) -> Option<f64> {
        (self.quality_n > 0).then(|| self.quality_sum / self.quality_n as f64)
    }

    /// The recent window against the whole history.
    pub fn trend(&self) -> Trend {
        if self.recent.len() < RECENT / 2 || self.invocations < (RECENT as u64) {
            return Trend::Stable;
        }
        let recent = self.recent.iter().filter(|s| **s).count() as f64 / self.recent.len() as f64;
        let long = self.success_rate();
        if recent > long + TREND_MARGIN {
            Trend::Improving
        } else if recent < long - TREND_MARGIN {
            Trend::Declining
        } else {
            Trend::Stable
        }
    }
}

/// One observed outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub tool_id: Uuid,
    pub agent_id: Uuid,
    pub category: String,
    pub success: bool,
    pub duration_ms: f64,
    pub cost: f64,
    pub at: DateTime<Utc>,
}

impl Outcome {
    /// What an invocation says about its tool: nothing for cache hits and calls that
    /// never reached the tool (refused, rate limited).
    pub fn of(i: &InvocationRecord) -> Option<Self> {
        let r = &i.result;
        if r.cache_hit || !toolplane_core::stats::counts(r.status) {
            return None;
        }
        Some(Self {
            tool_id: r.tool_id,
            agent_id: i.agent_id,
            category: i.task_category.clone(),
            success: succeeded(i),
            duration_ms: f64::from(r.duration_ms),
            cost: r.cost.to_f64().unwrap_or(0.0),
            at: r.completed_at,
        })
    }

    /// The cells this outcome updates, its category already keyed: the tool's
    /// aggregate, per category, per agent and per agent and category.
    pub(crate) fn keys(&self) -> Vec<Key> {
        let any = Uuid::nil();
        let mut keys = vec![
            (self.tool_id, String::new(), any),
            (self.tool_id, String::new(), self.agent_id),
        ];
        // Without a category, the per-category cells are the aggregates.
        if !self.category.is_empty() {
            keys.push((self.tool_id, self.category.clone(), any));
            keys.push((self.tool_id, self.category.clone(), self.agent_id));
        }
        keys
    }
}

/// The invocation itself counts as a success.
pub fn succeeded(i: &InvocationRecord) -> bool {
    matches!(
        i.result.status,
        ExecutionStatus::Success | ExecutionStatus::PartialSuccess
    )
}

/// The cells an agent's verdict on a call of `tool` for the keyed `category` updates.
pub(crate) fn verdict_keys(tool: Uuid, agent: Uuid, category: &str) -> Vec<Key> {
    let mut keys = vec![(tool, String::new(), Uuid::nil())];
    if !category.is_empty() {
        keys.push((tool, category.to_owned(), Uuid::nil()));
    }
    keys.push((tool, category.to_owned(), agent));
    keys
}

/// Keys: (tool, category, agent); `""` and `Uuid::nil()` stand for "any".
pub type Key = (Uuid, String, Uuid);

/// How often agents followed a category's recommendation, and how that went.
#[derive(Debug, Clone, Default)]
pub struct FollowStats {
    pub recommended: u64,
    pub followed: u64,
    pub followed_succeeded: u64,
}

/// Longest task category kept, in characters; longer ones are cut.
pub const MAX_CATEGORY_CHARS: usize = 64;
/// Distinct task categories learned per agent; more fold into [`OTHER_CATEGORY`].
pub const MAX_CATEGORIES_PER_AGENT: usize = 32;
/// Distinct task categories learned across the fleet; more fold into [`OTHER_CATEGORY`].
pub const MAX_CATEGORIES: usize = 1024;
/// Where categories beyond the caps are learned.
pub const OTHER_CATEGORY: &str = "other";

/// A task category as learning keys it: trimmed and cut to [`MAX_CATEGORY_CHARS`]
/// characters (at a character boundary, then trimmed again).
pub fn normalize_category(raw: &str) -> String {
    let raw = raw.trim();
    match raw.char_indices().nth(MAX_CATEGORY_CHARS) {
        Some((cut, _)) => raw[..cut].trim_end().to_owned(),
        None => raw.to_owned(),
    }
}

/// The categories learned so far, per agent and in all.
#[derive(Default)]
pub(crate) struct Categories {
    by_agent: HashMap<Uuid, HashSet<String>>,
    all: HashSet<String>,
}

impl Categories {
    /// The key `raw` is learned under for `agent`; with `register`, a new category
    /// with room under both caps is added.
    pub(crate) fn key(&mut self, agent: Option<Uuid>, raw: &str, register: bool) -> String {
        let c = normalize_category(raw);
        if c.is_empty() || c == OTHER_CATEGORY {
            return c;
        }
        let fleet_room = self.all.contains(&c) || self.all.len() < MAX_CATEGORIES;
        let Some(agent) = agent else {
            return if fleet_room { c } else { OTHER_CATEGORY.to_owned() };
        };
        let mine = self.by_agent.get(&agent);
        if mine.is_some_and(|m| m.contains(&c)) {
            return c;
        }
        let agent_room = mine.is_none_or(|m| m.len() < MAX_CATEGORIES_PER_AGENT);
        if !(fleet_room && agent_room) {
            return OTHER_CATEGORY.to_owned();
        }
        if register {
            self.all.insert(c.clone());
            self.by_agent.entry(agent).or_default().insert(c.clone());
        }
        c
    }

    /// Registers a category already learned (`agent` nil: fleet-wide), whatever the caps.
    pub(crate) fn known(&mut self, agent: Uuid, category: &str) {
        if category.is_empty() || category == OTHER_CATEGORY {
            return;
        }
        self.all.insert(category.to_owned());
        if !agent.is_nil() {
            self.by_agent.entry(agent).or_default().insert(category.to_owned());
        }
    }
}

#[derive(Default)]
pub struct Learning {
    categories: Mutex<Categories>,
    cells: RwLock<HashMap<Key, Cell>>,
    /// The latest recommendation per (agent, category), to tell whether it was followed.
    last_pick: RwLock<HashMap<(Uuid, String), Uuid>>,
    follow: RwLock<HashMap<String, FollowStats>>,
}

impl Learning {
    /// The key `raw` is learned under for `agent` (see [`Categories::key`]).
    fn category(&self, agent: Option<Uuid>, raw: &str, register: bool) -> String {
        self.categories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .key(agent, raw, register)
    }

    /// Distinct categories learned (across the fleet, and for the busiest agent).
    pub fn category_counts(&self) -> (usize, usize) {
        let c = self.categories.lock().unwrap_or_else(|e| e.into_inner());
        (c.all.len(), c.by_agent.values().map(HashSet::len).max().unwrap_or(0))
    }

    /// Cells held (for bounds checks).
    pub fn cell_count(&self) -> usize {
        self.cells.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn record(&self, o: &Outcome) {
        let category = self.category(Some(o.agent_id), &o.category, true);
        let o = &Outcome { category, ..o.clone() };
        let mut cells = self.cells.write().unwrap_or_else(|e| e.into_inner());
        for k in o.keys() {
            cells
                .entry(k)
                .or_default()
                .record(o.success, o.duration_ms, o.cost, o.at);
        }
        drop(cells);
        let pick = self
            .last_pick
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(o.agent_id, o.category.clone()))
            .copied();
        if let Some(recommended) = pick {
            let mut follow = self.follow.write().unwrap_or_else(|e| e.into_inner());
            let f = follow.entry(o.category.clone()).or_default();
            if recommended == o.tool_id {
                f.followed += 1;
                f.followed_succeeded += u64::from(o.success);
            }
            self.last_pick
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(o.agent_id, o.category.clone()));
        }
    }

    /// An agent's verdict on a result it received: the quality is kept, and it also
    /// corrects the success estimate — a call that "succeeded" but did not serve the
    /// task (low quality, or `task_succeeded` false) counts as that much failure.
    /// `call_succeeded`: the invocation itself was counted a success (only then is
    /// there a success to correct).
    pub fn record_quality(
        &self,
        tool: Uuid,
        agent: Uuid,
        category: &str,
        quality: f64,
        task_succeeded: bool,
        call_succeeded: bool,
    ) {
        let category = &self.category(Some(agent), category, true);
        let quality = quality.clamp(0.0, 1.0);
        let served = if task_succeeded { quality } else { 0.0 };
        let mut cells = self.cells.write().unwrap_or_else(|e| e.into_inner());
        for k in verdict_keys(tool, agent, category) {
            cells.entry(k).or_default().verdict(quality, served, call_succeeded);
        }
    }

    /// Takes cells as the shared store holds them (newer versions of cells already
    /// held replace them), registering their categories.
    pub fn load(&self, rows: Vec<(Key, Cell)>) {
        let mut categories = self.categories.lock().unwrap_or_else(|e| e.into_inner());
        let mut cells = self.cells.write().unwrap_or_else(|e| e.into_inner());
        for (k, c) in rows {
            categories.known(k.2, &k.1);
            cells.insert(k, c);
        }
    }

    /// Selection recommended `tool` to `agent` for `category`.
    pub fn recommended(&self, agent: Uuid, category: &str, tool: Uuid) {
        let category = &self.category(Some(agent), category, true);
        self.last_pick
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((agent, category.to_owned()), tool);
        self.follow
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(category.to_owned())
            .or_default()
            .recommended += 1;
    }

    /// A draw from the posterior of `tool`'s success for `agent` on `category`
    /// (Thompson sampling), and the agent's own outcomes behind it.
    pub fn sample(&self, tool: Uuid, agent: Option<Uuid>, category: &str, rng: &mut impl rand::Rng) -> (f64, u64) {
        let (mean, strength, evidence) = self.posterior(tool, agent, category);
        let (a, b) = ((mean * strength).max(1e-3), ((1.0 - mean) * strength).max(1e-3));
        match rand_distr::Beta::new(a, b) {
            Ok(beta) => (rand_distr::Distribution::sample(&beta, rng), evidence),
            Err(_) => (mean, evidence),
        }
    }

    /// Posterior success estimate of `tool` for `agent` on `category`, and how many
    /// of this agent's own outcomes it rests on.
    pub fn suitability(&self, tool: Uuid, agent: Option<Uuid>, category: &str) -> (f64, u64) {
        let (mean, _, evidence) = self.posterior(tool, agent, category);
        (mean, evidence)
    }

    /// Mean, strength (in outcomes) and the agent's own evidence.
    fn posterior(&self, tool: Uuid, agent: Option<Uuid>, category: &str) -> (f64, f64, u64) {
        let category = &self.category(agent, category, false);
        let cells = self.cells.read().unwrap_or_else(|e| e.into_inner());
        let get = |c: &str, a: Uuid| cells.get(&(tool, c.to_owned(), a));
        let any = Uuid::nil();
        let strength = |c: Option<&Cell>, prior: f64| c.map_or(0.0, |c| c.weight) + prior;
        let g = get("", any);
        let global = g.map_or(FLEET_PRIOR, |c| c.posterior(FLEET_PRIOR, FLEET_PRIOR_WEIGHT));
        let mut level = (global, strength(g, FLEET_PRIOR_WEIGHT));
        if !category.is_empty() {
            let c = get(category, any);
            level = (
                c.map_or(level.0, |c| c.posterior(level.0, SHRINKAGE)),
                strength(c, SHRINKAGE),
            );
        }
        let Some(agent) = agent else {
            return (level.0, level.1, 0);
        };
        // The agent's own evidence plus what the fleet's evidence lends it: a newcomer
        // is as certain as the fleet, not as uncertain as its own empty record.
        match get(category, agent) {
            Some(c) => (
                c.posterior(level.0, SHRINKAGE),
                c.weight + SHRINKAGE.max(level.1 * FLEET_EVIDENCE_SHARE),
                c.invocations,
            ),
            None => (level.0, level.1, 0),
        }
    }

    /// Outcomes observed for `tool` across the fleet (any agent, any category): the
    /// evidence behind its suitability beyond the prior. Explanations name learned
    /// suitability only when this is above 0.
    pub fn fleet_outcomes(&self, tool: Uuid) -> u64 {
        self.cells
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tool, String::new(), Uuid::nil()))
            .map_or(0, |c| c.invocations)
    }

    /// Rows matching the filters (`None`: any); category `""` and agent `nil` rows are
    /// the aggregates.
    pub fn effectiveness(&self, tool: Option<Uuid>, category: Option<&str>, agent: Option<Uuid>) -> Vec<(Key, Cell)> {
        let category = category.map(|c| self.category(None, c, false));
        let category = category.as_deref();
        let cells = self.cells.read().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<(Key, Cell)> = cells
            .iter()
            .filter(|((t, c, a), _)| {
                tool.is_none_or(|x| *t == x) && category.is_none_or(|x| c == x) && agent.is_none_or(|x| *a == x)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    pub fn follow_stats(&self, category: &str) -> FollowStats {
        let category = &self.category(None, category, false);
        self.follow
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(category)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(tool: Uuid, agent: Uuid, success: bool) -> Outcome {
        Outcome {
            tool_id: tool,
            agent_id: agent,
            category: "search".to_owned(),
            success,
            duration_ms: 10.0,
            cost: 0.0,
            at: Utc::now(),
        }
    }

    #[test]
    fn a_new_agent_starts_from_what_the_fleet_knows_and_bad_news_shows_fast() {
        let l = Learning::default();
        let (tool, veteran, newcomer) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for i in 0..100 {
            l.record(&outcome(tool, veteran, i % 10 != 0)); // 90 %
        }
        let (s, n) = l.suitability(tool, Some(newcomer), "search");
        assert_eq!(n, 0);
        assert!(
            (0.8..0.95).contains(&s),
            "a newcomer inherits the fleet's ~0.9, got {s}"
        );
        let (before, _) = l.suitability(tool, Some(veteran), "search");
        for _ in 0..30 {
            l.record(&outcome(tool, veteran, false));
        }
        let (after, _) = l.suitability(tool, Some(veteran), "search");
        assert!(
            after < before - 0.3,
            "decayed counts notice a drop: {before} -> {after}"
        );
        let row = &l.effectiveness(Some(tool), Some("search"), Some(veteran))[0].1;
        assert_eq!(row.trend(), Trend::Declining);
    }

    #[test]
    fn poor_verdicts_on_successful_calls_lower_suitability() {
        let l = Learning::default();
        let (good, hollow, agent) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for _ in 0..10 {
            l.record(&outcome(good, agent, true));
            l.record(&outcome(hollow, agent, true));
            // Every call of `hollow` succeeds technically but does not serve the task.
            l.record_quality(hollow, agent, "search", 0.1, false, true);
            l.record_quality(good, agent, "search", 0.9, true, true);
        }
        let (g, _) = l.suitability(good, Some(agent), "search");
        let (h, _) = l.suitability(hollow, Some(agent), "search");
        assert!(g > h + 0.4, "{g} vs {h}");
        let row = &l.effectiveness(Some(hollow), Some("search"), Some(agent))[0].1;
        assert!((row.quality().unwrap() - 0.1).abs() < 1e-9);
    }

    fn outcome_in(tool: Uuid, agent: Uuid, category: &str) -> Outcome {
        Outcome {
            category: category.to_owned(),
            ..outcome(tool, agent, true)
        }
    }

    #[test]
    fn long_categories_are_cut_at_a_character_boundary() {
        let long = format!("  {}  ", "é".repeat(100));
        let cut = normalize_category(&long);
        assert_eq!(cut.chars().count(), MAX_CATEGORY_CHARS);
        assert_eq!(normalize_category(" search "), "search");
        let l = Learning::default();
        let (tool, agent) = (Uuid::new_v4(), Uuid::new_v4());
        l.record(&outcome_in(tool, agent, &format!("{}{}", "a".repeat(64), "tail one")));
        l.record(&outcome_in(tool, agent, &format!("{}{}", "a".repeat(64), "tail two")));
        assert_eq!(l.category_counts(), (1, 1), "both learned under the same cut key");
        assert_eq!(
            l.effectiveness(Some(tool), Some(&"a".repeat(64)), Some(agent))[0]
                .1
                .invocations,
            2
        );
    }

    #[test]
    fn an_agent_s_categories_beyond_the_cap_fold_into_other() {
        let l = Learning::default();
        let (tool, agent, other_agent) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for i in 0..MAX_CATEGORIES_PER_AGENT + 50 {
            l.record(&outcome_in(tool, agent, &format!("junk-{i}")));
            l.recommended(agent, &format!("junk-{i}"), tool);
        }
        assert_eq!(
            l.category_counts(),
            (MAX_CATEGORIES_PER_AGENT, MAX_CATEGORIES_PER_AGENT)
        );
        let folded = l.effectiveness(Some(tool), Some(OTHER_CATEGORY), Some(agent));
        assert_eq!(folded[0].1.invocations, 50, "the extra categories are learned as other");
        // Cells: the aggregate, and per category (incl. other) for the fleet and the agent.
        assert_eq!(l.cell_count(), 2 + 2 * (MAX_CATEGORIES_PER_AGENT + 1));
        assert!(l.last_pick.read().unwrap().len() <= MAX_CATEGORIES_PER_AGENT + 1);
        // An unseen category of a full agent is looked up as other too.
        let (via_new, _) = l.suitability(tool, Some(agent), "never-seen");
        let (via_other, _) = l.suitability(tool, Some(agent), OTHER_CATEGORY);
        assert_eq!(via_new, via_other);
        // Another agent still has room of its own.
        l.record(&outcome_in(tool, other_agent, "search"));
        assert_eq!(l.effectiveness(Some(tool), Some("search"), Some(other_agent)).len(), 1);
    }

    #[test]
    fn the_fleet_s_categories_are_capped_too() {
        let l = Learning::default();
        let tool = Uuid::new_v4();
        let agents = MAX_CATEGORIES / MAX_CATEGORIES_PER_AGENT + 3;
        for a in 0..agents {
            let agent = Uuid::new_v4();
            for i in 0..MAX_CATEGORIES_PER_AGENT {
                l.record(&outcome_in(tool, agent, &format!("c-{a}-{i}")));
            }
        }
        assert_eq!(l.category_counts().0, MAX_CATEGORIES);
        assert!(l.follow.read().unwrap().len() <= MAX_CATEGORIES + 1);
    }
}
