//! A compliance report over a period of the audit trail: what happened, to which
//! tools, by which agents, what was refused and what touched sensitive data. Folded
//! record by record, so a report over a long period streams instead of loading it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use uuid::Uuid;

use crate::model::{AuditAction, AuditEvent, DataSensitivity};

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub events: u64,
    pub successes: u64,
    /// Events that did not succeed (denials included).
    pub failures: u64,
    /// Refused permission checks.
    pub denials: u64,
    pub fallbacks: u64,
    /// Tool uses (invocations, cache hits, fallbacks) of CONFIDENTIAL or RESTRICTED tools.
    pub sensitive_accesses: u64,
}

impl Counts {
    fn add(&mut self, e: &AuditEvent) {
        self.events += 1;
        if e.success {
            self.successes += 1;
        } else {
            self.failures += 1;
        }
        if e.action == AuditAction::PermissionChecked && !e.success {
            self.denials += 1;
        }
        if e.action == AuditAction::FallbackUsed {
            self.fallbacks += 1;
        }
        if is_sensitive_use(e) {
            self.sensitive_accesses += 1;
        }
    }
}

fn is_sensitive_use(e: &AuditEvent) -> bool {
    matches!(
        e.action,
        AuditAction::ToolInvoked | AuditAction::CacheHit | AuditAction::FallbackUsed
    ) && e
        .data_classification
        .is_some_and(|d| d >= DataSensitivity::Confidential)
}

/// One agent × tool line of the report (and of its CSV export).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Line {
    pub agent_id: String,
    pub tool_id: String,
    pub data_classification: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// Empty: every event.
    pub framework: String,
    pub totals: Counts,
    pub by_action: BTreeMap<String, u64>,
    pub agents: BTreeSet<String>,
    pub tools: BTreeSet<String>,
    pub lines: Vec<Line>,
    #[serde(skip)]
    index: BTreeMap<(String, String), usize>,
}

fn id(u: Option<Uuid>) -> String {
    u.map(|u| u.to_string()).unwrap_or_default()
}

impl Report {
    pub fn new(framework: &str) -> Self {
        Self {
            framework: framework.to_owned(),
            ..Self::default()
        }
    }

    /// Whether the event belongs to the report's framework.
    pub fn covers(&self, e: &AuditEvent) -> bool {
        self.framework.is_empty()
            || e.compliance_frameworks
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&self.framework))
    }

    pub fn add(&mut self, e: &AuditEvent) {
        if !self.covers(e) {
            return;
        }
        self.totals.add(e);
        *self.by_action.entry(e.action.as_str().to_owned()).or_default() += 1;
        if let Some(a) = e.agent_id {
            self.agents.insert(a.to_string());
        }
        if let Some(t) = e.tool_id {
            self.tools.insert(t.to_string());
        }
        let key = (id(e.agent_id), id(e.tool_id));
        let i = *self.index.entry(key.clone()).or_insert_with(|| {
            self.lines.push(Line {
                agent_id: key.0.clone(),
                tool_id: key.1.clone(),
                ..Line::default()
            });
            self.lines.len() - 1
        });
        let line = &mut self.lines[i];
        if let Some(d) = e.data_classification {
            line.data_classification = d.as_str().to_owned();
        }
        line.counts.add(e);
    }

    /// The agent × tool lines as CSV, with a header.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "agent_id,tool_id,data_classification,events,successes,failures,denials,fallbacks,sensitive_accesses\n",
        );
        let mut lines: Vec<&Line> = self.lines.iter().collect();
        lines.sort_by(|a, b| (&a.agent_id, &a.tool_id).cmp(&(&b.agent_id, &b.tool_id)));
        for l in lines {
            let c = &l.counts;
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{}\n",
                l.agent_id,
                l.tool_id,
                l.data_classification,
                c.events,
                c.successes,
                c.failures,
                c.denials,
                c.fallbacks,
                c.sensitive_accesses
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::Value;

    use super::*;

    fn event(action: AuditAction, success: bool, class: DataSensitivity, frameworks: &[&str]) -> AuditEvent {
        AuditEvent {
            event_id: Uuid::now_v7(),
            action,
            invocation_id: None,
            actor_id: "a".to_owned(),
            agent_id: Some(Uuid::from_u128(1)),
            tool_id: Some(Uuid::from_u128(2)),
            tool_version: 1,
            task_id: String::new(),
            occurred_at: Utc::now(),
            sanitized_parameters: Value::Null,
            result: None,
            success,
            detail: String::new(),
            compliance_frameworks: frameworks.iter().map(|s| (*s).to_owned()).collect(),
            data_classification: Some(class),
            sidecar_id: String::new(),
            permission_id: None,
        }
    }

    #[test]
    fn counts_denials_fallbacks_and_sensitive_uses_of_the_framework_only() {
        use AuditAction::*;
        use DataSensitivity::*;
        let mut r = Report::new("hipaa");
        r.add(&event(ToolInvoked, true, Restricted, &["HIPAA"]));
        r.add(&event(CacheHit, true, Confidential, &["HIPAA", "SOC2"]));
        r.add(&event(PermissionChecked, false, Restricted, &["HIPAA"]));
        r.add(&event(FallbackUsed, true, Internal, &["HIPAA"]));
        r.add(&event(ToolInvoked, false, Public, &["HIPAA"]));
        r.add(&event(ToolInvoked, true, Restricted, &["SOC2"]));
        assert_eq!(
            r.totals,
            Counts {
                events: 5,
                successes: 3,
                failures: 2,
                denials: 1,
                fallbacks: 1,
                sensitive_accesses: 2,
            }
        );
        assert_eq!(r.by_action["tool_invoked"], 2);
        assert_eq!(r.lines.len(), 1);
        let csv = r.to_csv();
        assert!(csv.starts_with("agent_id,tool_id,"));
        assert!(csv.lines().nth(1).unwrap().ends_with(",5,3,2,1,1,2"), "{csv}");
    }
}
