//! Tool selection: text relevance (BM25F over the catalog, in memory, rebuilt when the
//! registry changes), capability match, learned suitability and latency/cost headroom,
//! combined with documented weights; only tools the agent may use are candidates.
//!
//! combined = 0.6 · match + 0.3 · suitability + 0.1 · headroom, where
//! match = (1 − α) · relevance + α · similar, relevance being text (scaled so the best
//! candidate is 1) — or, when capabilities are required, 0.7 · text + 0.3 · the share
//! of required capabilities the tool has; similar is the vote of the ten nearest past
//! tasks for the tool (task memory, scaled so the best-voted tool is 1; for a tool
//! with no remembered task, its relevance) and α = 0.7 when any past task shares a
//! word with the task, else 0;
//! suitability is [`learning::Learning::suitability`]; headroom is how far under the
//! caller's latency and cost limits the tool runs (0.5 when no limit is given).
//! confidence = combined · (0.5 + 0.5 · min(1, margin / 0.15)), margin being the lead
//! over the runner-up.
//!
//! `reasoning` names only signals with evidence: similar past tasks when tasks are
//! remembered for the tool (a tool without any stands on its relevance, which is not
//! history), suitability when outcomes were observed, capabilities when required,
//! headroom when limits were given — and says so when text relevance alone decided.

#[cfg(feature = "embeddings")]
pub mod embed;
pub mod index;
pub mod learning;
pub mod memory;
pub mod text;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use toolplane_core::model::{DataSensitivity, Snapshot, Tool};
use toolplane_core::permission::evaluate;
use uuid::Uuid;

use index::{Bm25Params, Document, FIELDS, Field, TextIndex};
use learning::Learning;
use memory::TaskMemory;
use text::Analyzer;

pub const WEIGHT_MATCH: f64 = 0.6;
pub const WEIGHT_SUITABILITY: f64 = 0.3;
pub const WEIGHT_HEADROOM: f64 = 0.1;
const CAPABILITY_SHARE: f64 = 0.3;
/// Weight of the similar-past-tasks signal in `match` when any past task is similar
/// (tuned on the dev halves with `make eval-history`: 0.5 left history unused, 0.8
/// started to bury tools without history).
pub const SIMILAR_WEIGHT: f64 = 0.7;
/// Candidates scored in full, best text relevance first.
const SHORTLIST: usize = 50;
/// With an embedding model: the tools closest in meaning that join the candidates, and
/// the weight of that closeness in text relevance (after min-max scaling of both; a
/// linear mix did better than reciprocal rank fusion on the public data). 0.55 was
/// chosen on the dev halves: NDCG@5 toollens 39.1 / 38.7 / 38.0 and metatool
/// 65.7 / 69.0 / 70.0 at 0.4 / 0.55 / 0.6.
const DENSE_SHORTLIST: usize = 50;
pub const DENSE_WEIGHT: f64 = 0.55;

/// A sentence-embedding model: unit-length vectors, so a dot product is a cosine.
pub trait Embed: Send + Sync {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String>;
}
const CONFIDENT_MARGIN: f64 = 0.15;

/// What is derived from the tools' text: rebuilt only when a tool's version changes.
struct CatalogText {
    /// Hash of the (tool id, version) sequence it was built from.
    versions: u64,
    index: TextIndex,
    /// Lowercase capability → tools (snapshot indices) that have it.
    capabilities: HashMap<String, Vec<u32>>,
    /// Tool id → snapshot index.
    by_id: HashMap<Uuid, u32>,
    /// Per tool (snapshot index), its embedding; `None` without a model.
    vectors: Option<Vec<Arc<[f32]>>>,
}

fn versions_key(tools: &[Arc<Tool>]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in tools {
        (t.id, t.version).hash(&mut h);
    }
    h.finish()
}

/// The catalog as selection sees it at one snapshot revision.
pub struct Built {
    pub revision: u64,
    pub snapshot: Arc<Snapshot>,
    /// Shared by every revision with the same tool versions (a grant change does not
    /// re-index the catalog).
    text: Arc<CatalogText>,
    /// Agent → tool → its grants (indices into `snapshot.permissions`).
    grants: HashMap<Uuid, HashMap<Uuid, Vec<usize>>>,
    agents: HashMap<Uuid, usize>,
}

#[derive(Debug, Clone, Default)]
pub struct Query {
    pub text: String,
    pub capabilities: Vec<String>,
    pub category: String,
    pub max_latency_ms: u32,
    pub max_cost: Option<Decimal>,
    pub max_sensitivity: Option<DataSensitivity>,
    pub alternatives: usize,
    /// `None`: an admin asking about the whole catalog (no permission filter).
    pub agent: Option<Uuid>,
    /// The task's embedding, when a model is configured.
    pub embedding: Option<Vec<f32>>,
    /// The agent's `LIMITED_INVOCATIONS` grants whose budget for today is spent: they
    /// do not make a tool a candidate until their day ends.
    pub spent_grants: std::collections::HashSet<Uuid>,
}

#[derive(Debug, Clone)]
pub struct Scored {
    pub tool: usize,
    pub text: f64,
    /// Required capabilities the tool has, of how many.
    pub capabilities: (usize, usize),
    pub matching: f64,
    /// The vote of similar past tasks (task memory), 0..1.
    pub similar: f64,
    /// Tasks remembered for the tool when similar past tasks took part in `matching`;
    /// 0 when they did not or none is remembered for it (then `similar` is its
    /// relevance, not a vote, and explanations do not call it history).
    pub past_tasks: usize,
    pub suitability: f64,
    /// This agent's own outcomes behind `suitability`.
    pub evidence: u64,
    /// Outcomes across the fleet behind `suitability`; 0: it is the prior alone.
    pub fleet_evidence: u64,
    pub headroom: f64,
    pub combined: f64,
}

pub struct Selection {
    pub built: Arc<Built>,
    pub primary: Scored,
    pub alternatives: Vec<Scored>,
    pub confidence: f64,
    pub reasoning: String,
}

impl Selection {
    pub fn tool(&self, s: &Scored) -> &Tool {
        &self.built.snapshot.tools[s.tool]
    }
}

#[derive(Default)]
pub struct Selector {
    analyzer: Analyzer,
    params: Bm25Params,
    built: RwLock<Option<Arc<Built>>>,
    pub learning: Learning,
    pub memory: TaskMemory,
    /// Thompson sampling instead of the posterior mean (off: deterministic).
    explore: std::sync::atomic::AtomicBool,
    embedder: RwLock<Option<Arc<dyn Embed>>>,
    /// Embeddings of every tool version seen, so a rebuild embeds only what changed.
    embedded: std::sync::Mutex<HashMap<ToolVersion, Arc<[f32]>>>,
}

/// A tool id and version.
type ToolVersion = (Uuid, u32);

/// What the embedding model reads of a tool.
fn embedding_text(t: &Tool) -> String {
    format!("{}: {}", text::words(&t.spec.name).join(" "), t.spec.description)
}

fn schema_text(schema: &serde_json::Value, out: &mut String, depth: usize) {
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        return;
    };
    for (name, sub) in props {
        out.push_str(name);
        out.push(' ');
        if let Some(d) = sub.get("description").and_then(|d| d.as_str()) {
            out.push_str(d);
            out.push(' ');
        }
        if depth < 2 {
            schema_text(sub, out, depth + 1);
            schema_text(&sub["items"], out, depth + 1);
        }
    }
}

fn document(t: &Tool) -> Document {
    let s = &t.spec;
    let mut d: Document = Default::default();
    d[Field::Name as usize] = s.name.clone();
    d[Field::Description as usize] = s.description.clone();
    d[Field::Category as usize] = s.category.clone();
    d[Field::Capabilities as usize] = s.capabilities.join(" ");
    schema_text(&s.input_schema, &mut d[Field::Parameters as usize], 0);
    schema_text(&s.output_schema, &mut d[Field::Returns as usize], 0);
    d[Field::Examples as usize] = s
        .examples
        .iter()
        .map(|e| e.description.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    debug_assert_eq!(d.len(), FIELDS);
    d
}

impl Selector {
    pub fn set_embedder(&self, e: Arc<dyn Embed>) {
        *self.embedder.write().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    pub fn embedder(&self) -> Option<Arc<dyn Embed>> {
        self.embedder.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Embeddings of the catalog, computing only tool versions not seen before.
    fn catalog_vectors(&self, tools: &[Arc<Tool>]) -> Option<Vec<Arc<[f32]>>> {
        let embedder = self.embedder()?;
        let mut cache = self.embedded.lock().unwrap_or_else(|e| e.into_inner());
        let missing: Vec<&Tool> = tools
            .iter()
            .map(|t| &**t)
            .filter(|t| !cache.contains_key(&(t.id, t.version)))
            .collect();
        if !missing.is_empty() {
            let texts: Vec<String> = missing.iter().map(|t| embedding_text(t)).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            match embedder.embed(&refs) {
                Ok(vectors) => {
                    for (t, v) in missing.iter().zip(vectors) {
                        cache.insert((t.id, t.version), v.into());
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not embed the catalog; selecting by text alone");
                    return None;
                }
            }
        }
        tools.iter().map(|t| cache.get(&(t.id, t.version)).cloned()).collect()
    }

    pub fn set_exploration(&self, on: bool) {
        self.explore.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// A selector with other BM25F parameters (tuning and experiments).
    pub fn with_params(params: Bm25Params) -> Self {
        Self {
            params,
            ..Self::default()
        }
    }

    /// The index for `snapshot`, built once per revision.
    pub fn index(&self, snapshot: Arc<Snapshot>) -> Arc<Built> {
        if let Some(b) = self.built.read().unwrap_or_else(|e| e.into_inner()).as_ref()
            && b.revision == snapshot.revision
        {
            return b.clone();
        }
        let versions = versions_key(&snapshot.tools);
        let previous = self.built.read().unwrap_or_else(|e| e.into_inner()).clone();
        let text = match previous.filter(|b| b.text.versions == versions) {
            Some(b) => b.text.clone(),
            None => {
                let docs: Vec<Document> = snapshot.tools.iter().map(|t| document(t)).collect();
                let index = TextIndex::build(&self.analyzer, &docs, &self.params);
                let mut capabilities: HashMap<String, Vec<u32>> = HashMap::new();
                for (i, t) in snapshot.tools.iter().enumerate() {
                    for c in &t.spec.capabilities {
                        capabilities.entry(c.to_lowercase()).or_default().push(i as u32);
                    }
                }
                let vectors = self.catalog_vectors(&snapshot.tools);
                let by_id = snapshot
                    .tools
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.id, i as u32))
                    .collect();
                Arc::new(CatalogText {
                    versions,
                    index,
                    capabilities,
                    by_id,
                    vectors,
                })
            }
        };
        let mut grants: HashMap<Uuid, HashMap<Uuid, Vec<usize>>> = HashMap::new();
        for (i, p) in snapshot.permissions.iter().enumerate() {
            grants
                .entry(p.agent_id)
                .or_default()
                .entry(p.tool_id)
                .or_default()
                .push(i);
        }
        let agents = snapshot.agents.iter().enumerate().map(|(i, a)| (a.id, i)).collect();
        let built = Arc::new(Built {
            revision: snapshot.revision,
            snapshot,
            text,
            grants,
            agents,
        });
        *self.built.write().unwrap_or_else(|e| e.into_inner()) = Some(built.clone());
        built
    }

    /// Whether the agent may use the tool now (permissions, skills, enabled).
    fn allowed(built: &Built, q: &Query, tool: &Tool, now: DateTime<Utc>) -> bool {
        let agent = q.agent;
        let Some(agent_id) = agent else {
            return tool.spec.enabled;
        };
        let Some(agent) = built.agents.get(&agent_id).map(|i| &built.snapshot.agents[*i]) else {
            return false;
        };
        let Some(ids) = built.grants.get(&agent_id).and_then(|m| m.get(&tool.id)) else {
            return false;
        };
        let grants = ids
            .iter()
            .map(|i| &built.snapshot.permissions[*i])
            .filter(|g| !q.spent_grants.contains(&g.id));
        evaluate(agent, tool, grants, now).allowed
    }

    fn within_limits(q: &Query, t: &Tool) -> bool {
        let s = &t.spec;
        (q.max_latency_ms == 0 || s.average_latency_ms <= q.max_latency_ms)
            && q.max_cost.is_none_or(|m| s.cost_per_call <= m)
            && q.max_sensitivity.is_none_or(|m| s.requirements.data_sensitivity <= m)
    }

    fn headroom(q: &Query, t: &Tool) -> f64 {
        let mut parts = Vec::new();
        if q.max_latency_ms > 0 {
            parts.push(1.0 - f64::from(t.spec.average_latency_ms) / f64::from(q.max_latency_ms));
        }
        if let Some(m) = q.max_cost.filter(|m| !m.is_zero()) {
            parts.push(1.0 - (t.spec.cost_per_call / m).to_f64().unwrap_or(1.0));
        }
        if parts.is_empty() {
            0.5
        } else {
            (parts.iter().sum::<f64>() / parts.len() as f64).clamp(0.0, 1.0)
        }
    }

    /// The best tools for `q`, or why there is none.
    pub fn select(&self, built: Arc<Built>, q: &Query, now: DateTime<Utc>) -> Result<Selection, String> {
        let tools = &built.snapshot.tools;
        let terms = self.analyzer.terms(&q.text);
        let mut scores = Vec::new();
        let mut touched = built.text.index.score(&terms, &mut scores);
        let required: Vec<String> = q.capabilities.iter().map(|c| c.to_lowercase()).collect();
        if !required.is_empty() {
            let mut with_cap: Vec<u32> = required
                .iter()
                .filter_map(|c| built.text.capabilities.get(c))
                .flatten()
                .copied()
                .collect();
            with_cap.sort_unstable();
            with_cap.dedup();
            touched = with_cap;
        } else if touched.is_empty() {
            // Nothing in the text matched: every tool the agent may use is a candidate.
            touched = match q.agent.and_then(|a| built.grants.get(&a)) {
                Some(m) => tools
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| m.contains_key(&t.id))
                    .map(|(i, _)| i as u32)
                    .collect(),
                None if q.agent.is_none() => (0..tools.len() as u32).collect(),
                None => Vec::new(),
            };
        }
        touched.sort_by(|a, b| {
            let (sa, sb) = (
                scores.get(*a as usize).copied().unwrap_or(0.0),
                scores.get(*b as usize).copied().unwrap_or(0.0),
            );
            sb.total_cmp(&sa).then(a.cmp(b))
        });
        let mut shortlist: Vec<(usize, f64)> = Vec::new();
        for doc in touched {
            let t = &tools[doc as usize];
            if Self::within_limits(q, t) && Self::allowed(&built, q, t, now) {
                shortlist.push((
                    doc as usize,
                    f64::from(scores.get(doc as usize).copied().unwrap_or(0.0)),
                ));
                if shortlist.len() >= SHORTLIST {
                    break;
                }
            }
        }
        // Closeness in meaning (with a model): the closest tools join the candidates.
        let dense: Option<Vec<f32>> = match (&built.text.vectors, &q.embedding) {
            (Some(vectors), Some(e)) => Some(
                vectors
                    .iter()
                    .map(|v| v.iter().zip(e).map(|(a, b)| a * b).sum())
                    .collect(),
            ),
            _ => None,
        };
        if let Some(dense) = &dense {
            let mut by_meaning: Vec<usize> = (0..tools.len()).collect();
            by_meaning.sort_by(|a, b| dense[*b].total_cmp(&dense[*a]).then(a.cmp(b)));
            let mut added = 0;
            for doc in by_meaning {
                if added >= DENSE_SHORTLIST {
                    break;
                }
                let t = &tools[doc];
                let has_capability =
                    required.is_empty() || t.spec.capabilities.iter().any(|c| required.contains(&c.to_lowercase()));
                if has_capability && Self::within_limits(q, t) && Self::allowed(&built, q, t, now) {
                    added += 1;
                    if !shortlist.iter().any(|(i, _)| *i == doc) {
                        shortlist.push((doc, f64::from(scores.get(doc).copied().unwrap_or(0.0))));
                    }
                }
            }
        }
        let votes = self.memory.votes(&terms, now);
        let alpha = if votes.tools.is_empty() { 0.0 } else { SIMILAR_WEIGHT };
        // Tools that similar past tasks vote for are candidates whatever their text.
        for tool_id in votes.tools.keys() {
            let Some(&doc) = built.text.by_id.get(tool_id) else {
                continue;
            };
            let t = &tools[doc as usize];
            let has_capability =
                required.is_empty() || t.spec.capabilities.iter().any(|c| required.contains(&c.to_lowercase()));
            if has_capability
                && !shortlist.iter().any(|(i, _)| *i == doc as usize)
                && Self::within_limits(q, t)
                && Self::allowed(&built, q, t, now)
            {
                shortlist.push((
                    doc as usize,
                    f64::from(scores.get(doc as usize).copied().unwrap_or(0.0)),
                ));
            }
        }
        if shortlist.is_empty() {
            return Err(if required.is_empty() {
                "no tool this agent may use fits the task and the limits".to_owned()
            } else {
                format!(
                    "no tool this agent may use has any of the capabilities {} within the limits",
                    q.capabilities.join(", ")
                )
            });
        }
        let best = shortlist.iter().map(|(_, s)| *s).fold(0.0, f64::max);
        let lexical_min = shortlist.iter().map(|(_, s)| *s).fold(f64::INFINITY, f64::min);
        let meaning = dense.as_ref().map(|d| {
            let (lo, hi) = shortlist
                .iter()
                .map(|(i, _)| f64::from(d[*i]))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
            (d, lo, hi)
        });
        let explore = self.explore.load(std::sync::atomic::Ordering::Relaxed);
        let mut rng = rand::rng();
        let mut scored: Vec<Scored> = shortlist
            .into_iter()
            .map(|(i, raw)| {
                let t = &tools[i];
                let text = match &meaning {
                    // Both signals min-max scaled over the candidates, then mixed.
                    Some((d, lo, hi)) => {
                        let scale = |x: f64, lo: f64, hi: f64| if hi > lo { (x - lo) / (hi - lo) } else { 1.0 };
                        (1.0 - DENSE_WEIGHT) * scale(raw, lexical_min, best)
                            + DENSE_WEIGHT * scale(f64::from(d[i]), *lo, *hi)
                    }
                    None if best > 0.0 => raw / best,
                    None => 0.0,
                };
                let have = required
                    .iter()
                    .filter(|c| t.spec.capabilities.iter().any(|x| x.to_lowercase() == **c))
                    .count();
                let relevance = if required.is_empty() {
                    text
                } else {
                    (1.0 - CAPABILITY_SHARE) * text + CAPABILITY_SHARE * have as f64 / required.len() as f64
                };
                // A tool with no remembered task cannot be voted for: the similar-tasks
                // signal knows nothing about it, so it stands on its relevance alone
                // (scoring it 0 would bury every tool that has no history yet).
                let remembered = self.memory.remembered(t.id);
                let similar = if remembered > 0 {
                    votes.tools.get(&t.id).copied().unwrap_or(0.0)
                } else {
                    relevance
                };
                let past_tasks = if alpha > 0.0 { remembered } else { 0 };
                let matching = (1.0 - alpha) * relevance + alpha * similar;
                let (suitability, evidence) = if explore {
                    self.learning.sample(t.id, q.agent, &q.category, &mut rng)
                } else {
                    self.learning.suitability(t.id, q.agent, &q.category)
                };
                let headroom = Self::headroom(q, t);
                Scored {
                    tool: i,
                    text,
                    capabilities: (have, required.len()),
                    matching,
                    similar,
                    past_tasks,
                    suitability,
                    evidence,
                    fleet_evidence: self.learning.fleet_outcomes(t.id),
                    headroom,
                    combined: WEIGHT_MATCH * matching + WEIGHT_SUITABILITY * suitability + WEIGHT_HEADROOM * headroom,
                }
            })
            .collect();
        scored.sort_by(|a, b| b.combined.total_cmp(&a.combined).then(a.tool.cmp(&b.tool)));
        scored.truncate(q.alternatives + 1);
        let primary = scored.remove(0);
        let margin = scored
            .first()
            .map_or(primary.combined, |r| primary.combined - r.combined);
        let confidence = (primary.combined * (0.5 + 0.5 * (margin / CONFIDENT_MARGIN).min(1.0))).clamp(0.0, 1.0);
        let how = Explained {
            limited: q.max_latency_ms > 0 || q.max_cost.is_some_and(|m| !m.is_zero()),
            explore,
        };
        let reasoning = reasoning(tools, &primary, &scored, how);
        Ok(Selection {
            built,
            primary,
            alternatives: scored,
            confidence,
            reasoning,
        })
    }
}

impl Scored {
    /// Similar past tasks took part in this tool's match with a vote about it.
    fn has_history(&self) -> bool {
        self.past_tasks > 0
    }

    /// Real outcomes (this agent's or the fleet's) stand behind its suitability.
    fn has_outcomes(&self) -> bool {
        self.evidence > 0 || self.fleet_evidence > 0
    }
}

/// What shaped a selection besides the candidates' own numbers.
#[derive(Debug, Clone, Copy)]
struct Explained {
    /// The caller set a latency or cost limit, so headroom differs between tools.
    limited: bool,
    /// Suitability is a Thompson draw, which varies even without outcomes.
    explore: bool,
}

/// One tool's breakdown, naming only the signals that had evidence: similar past tasks
/// when some are remembered for it, suitability when outcomes were observed (or a
/// draw when exploring), capabilities when the caller required some, headroom when it
/// set limits.
fn describe(t: &Tool, s: &Scored, how: Explained) -> String {
    let mut parts = vec![format!("text {:.2}", s.text)];
    if s.capabilities.1 > 0 {
        parts.push(format!("capabilities {}/{}", s.capabilities.0, s.capabilities.1));
    }
    if s.has_history() {
        parts.push(format!(
            "similar past tasks {:.2} (of {} remembered for it)",
            s.similar, s.past_tasks
        ));
    }
    if s.evidence > 0 {
        parts.push(format!(
            "suitability {:.2} from {} of this agent's calls",
            s.suitability, s.evidence
        ));
    } else if s.fleet_evidence > 0 {
        parts.push(format!(
            "suitability {:.2} from {} calls across the fleet",
            s.suitability, s.fleet_evidence
        ));
    } else if how.explore {
        parts.push(format!(
            "exploratory suitability draw {:.2} (no outcomes yet)",
            s.suitability
        ));
    }
    if how.limited {
        parts.push(format!("headroom {:.2}", s.headroom));
    }
    format!("{} (combined {:.2}: {})", t.spec.name, s.combined, parts.join(", "))
}

/// Why the primary won, from the numbers: its breakdown, then against each
/// alternative the factor with evidence that made the biggest weighted difference.
/// When no tool shown had remembered tasks or outcomes, it says so: the choice then
/// rests on text relevance (and capabilities, headroom and exploration when they took
/// part) alone.
fn reasoning(tools: &[Arc<Tool>], primary: &Scored, alternatives: &[Scored], how: Explained) -> String {
    let mut out = format!("chose {}", describe(&tools[primary.tool], primary, how));
    let shown = || std::iter::once(primary).chain(alternatives);
    let history = shown().any(Scored::has_history);
    let outcomes = shown().any(Scored::has_outcomes);
    if !history && !outcomes {
        let mut signals = vec!["text relevance"];
        if primary.capabilities.1 > 0 {
            signals.push("required capabilities");
        }
        if how.limited {
            signals.push("headroom under the limits");
        }
        if how.explore {
            signals.push("an exploratory draw");
        }
        out.push_str(&format!(
            "; nothing learned for these tools yet (no remembered task, no outcome), so it rests on {} alone",
            signals.join(" and ")
        ));
    }
    for a in alternatives {
        let mut diffs = vec![(
            if primary.has_history() || a.has_history() {
                "match (text and similar past tasks)"
            } else {
                "text relevance"
            },
            WEIGHT_MATCH * (primary.matching - a.matching),
            primary.matching,
            a.matching,
        )];
        if primary.has_outcomes() || a.has_outcomes() || how.explore {
            diffs.push((
                if how.explore {
                    "suitability (a draw)"
                } else {
                    "suitability"
                },
                WEIGHT_SUITABILITY * (primary.suitability - a.suitability),
                primary.suitability,
                a.suitability,
            ));
        }
        if how.limited {
            diffs.push((
                "headroom",
                WEIGHT_HEADROOM * (primary.headroom - a.headroom),
                primary.headroom,
                a.headroom,
            ));
        }
        let (what, _, p, o) = diffs
            .iter()
            .copied()
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .unwrap_or(diffs[0]);
        out.push_str(&format!(
            "; over {} ({:.2}): {what} {p:.2} vs {o:.2}",
            tools[a.tool].spec.name, a.combined
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use toolplane_core::model::{AuthType, SideEffects, ToolProtocol, ToolRequirements, ToolSpec};

    fn tool(name: &str) -> Tool {
        Tool {
            id: Uuid::new_v4(),
            version: 1,
            spec: ToolSpec {
                name: name.to_owned(),
                category: "weather".to_owned(),
                description: String::new(),
                input_schema: serde_json::json!({"type": "object"}),
                output_schema: serde_json::Value::Null,
                examples: Vec::new(),
                capabilities: Vec::new(),
                requirements: ToolRequirements {
                    authentication: AuthType::None,
                    rate_limit_rpm: 0,
                    timeout_ms: 0,
                    required_agent_skills: Vec::new(),
                    data_sensitivity: DataSensitivity::Internal,
                },
                provider: String::new(),
                endpoint: String::new(),
                protocol: ToolProtocol::Http,
                reliability_score: 0.0,
                average_latency_ms: 0,
                cost_per_call: Decimal::ZERO,
                enabled: true,
                side_effects: SideEffects::Read,
                idempotent: true,
                cacheable: false,
                cache_ttl_seconds: 0,
                cache_normalize_keys: false,
                cache_ignored_params: Vec::new(),
                remote_name: String::new(),
                http: None,
                compliance_frameworks: Vec::new(),
            },
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    const PLAIN: Explained = Explained {
        limited: false,
        explore: false,
    };

    /// A candidate with no remembered task and no outcome: its `similar` is its
    /// relevance and its suitability the prior.
    fn fresh(tool: usize, text: f64) -> Scored {
        Scored {
            tool,
            text,
            capabilities: (0, 0),
            matching: text,
            similar: text,
            past_tasks: 0,
            suitability: 0.8,
            evidence: 0,
            fleet_evidence: 0,
            headroom: 0.5,
            combined: WEIGHT_MATCH * text + WEIGHT_SUITABILITY * 0.8 + WEIGHT_HEADROOM * 0.5,
        }
    }

    #[test]
    fn without_evidence_it_claims_no_history_and_says_text_decided() {
        let tools = [tool("forecast"), tool("word_count")].map(Arc::new);
        let r = reasoning(&tools, &fresh(0, 1.0), &[fresh(1, 0.2)], PLAIN);
        assert!(r.starts_with("chose forecast (combined "), "{r}");
        for claim in [
            "past tasks 1.00",
            "similar past tasks",
            "suitability",
            "calls",
            "headroom",
        ] {
            assert!(!r.contains(claim), "claims {claim:?} without evidence: {r}");
        }
        assert!(r.contains("rests on text relevance alone"), "{r}");
        assert!(r.contains("over word_count (0.41): text relevance 1.00 vs 0.20"), "{r}");
    }

    #[test]
    fn capabilities_and_limits_are_named_when_asked_for() {
        let tools = [tool("forecast"), tool("word_count")].map(Arc::new);
        let mut p = fresh(0, 1.0);
        p.capabilities = (1, 1);
        let r = reasoning(
            &tools,
            &p,
            &[],
            Explained {
                limited: true,
                explore: false,
            },
        );
        assert!(r.contains("capabilities 1/1") && r.contains("headroom 0.50"), "{r}");
        assert!(
            r.contains("rests on text relevance and required capabilities and headroom under the limits alone"),
            "{r}"
        );
    }

    #[test]
    fn exploring_without_outcomes_says_the_draw_took_part() {
        let tools = [tool("forecast"), tool("word_count")].map(Arc::new);
        let how = Explained {
            limited: false,
            explore: true,
        };
        let r = reasoning(&tools, &fresh(0, 1.0), &[fresh(1, 0.9)], how);
        assert!(r.contains("exploratory suitability draw 0.80 (no outcomes yet)"), "{r}");
        assert!(
            r.contains("rests on text relevance and an exploratory draw alone"),
            "{r}"
        );
        assert!(!r.contains("calls"), "{r}");
    }

    #[test]
    fn history_and_outcomes_are_named_with_their_numbers() {
        let tools = [tool("tracker"), tool("installer")].map(Arc::new);
        let mut p = fresh(0, 0.3);
        p.past_tasks = 2;
        p.similar = 1.0;
        p.matching = 0.3 * 0.3 + 0.7;
        p.evidence = 7;
        p.fleet_evidence = 9;
        p.suitability = 0.95;
        let mut a = fresh(1, 1.0);
        a.fleet_evidence = 4;
        a.suitability = 0.6;
        let r = reasoning(&tools, &p, std::slice::from_ref(&a), PLAIN);
        assert!(r.contains("similar past tasks 1.00 (of 2 remembered for it)"), "{r}");
        assert!(r.contains("suitability 0.95 from 7 of this agent's calls"), "{r}");
        assert!(!r.contains("rests on"), "{r}");
        assert!(r.contains("over installer"), "{r}");
        let r = reasoning(&tools, &a, &[], PLAIN);
        assert!(r.contains("suitability 0.60 from 4 calls across the fleet"), "{r}");
        assert!(!r.contains("past tasks"), "{r}");
    }
}
