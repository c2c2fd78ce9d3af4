//! Sidecar audit events as the benches send them: shaped like a real TOOL_INVOKED
//! event (redacted parameters, a result digest, a compliance framework), so ingest is
//! measured on realistic rows.

use chrono::Utc;
use serde_json::json;
use toolplane_core::model::{AuditAction, AuditEvent, DataSensitivity, ExecutionStatus, ResultSummary};
use uuid::Uuid;

/// A successful call of `tool` by `agent`, recorded by the sidecar named `sidecar`.
pub fn tool_invoked(agent: Uuid, tool: Uuid, sidecar: &str) -> AuditEvent {
    AuditEvent {
        event_id: Uuid::now_v7(),
        action: AuditAction::ToolInvoked,
        invocation_id: Some(Uuid::now_v7()),
        // A sidecar's event names its agent as the actor, or the control plane refuses it.
        actor_id: agent.to_string(),
        agent_id: Some(agent),
        tool_id: Some(tool),
        tool_version: 1,
        task_id: String::new(),
        occurred_at: Utc::now(),
        sanitized_parameters: json!({"text": "count the words of this sentence", "api_key": "[REDACTED]"}),
        result: Some(ResultSummary {
            size_bytes: 42,
            status: ExecutionStatus::Success,
            digest: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        }),
        success: true,
        detail: String::new(),
        compliance_frameworks: vec!["SOC2".to_owned()],
        data_classification: Some(DataSensitivity::Internal),
        sidecar_id: sidecar.to_owned(),
        permission_id: None,
    }
}
