//! Builders for tests across the workspace.

use chrono::Utc;
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

use crate::model::*;

/// A valid HTTP tool spec with a small object schema.
pub fn tool_spec(name: &str) -> ToolSpec {
    ToolSpec {
        name: name.to_owned(),
        category: "analysis".to_owned(),
        description: "Counts words in a text".to_owned(),
        input_schema: json!({"type": "object", "required": ["text"],
            "properties": {"text": {"type": "string"}, "lang": {"type": "string"}}}),
        output_schema: json!({"type": "object", "properties": {"words": {"type": "integer"}}}),
        examples: vec![ToolExample {
            description: "two words".to_owned(),
            input: json!({"text": "hello world"}),
            expected_output: json!({"words": 2}),
        }],
        capabilities: vec!["analyze".to_owned()],
        requirements: ToolRequirements {
            authentication: AuthType::None,
            rate_limit_rpm: 0,
            timeout_ms: 5000,
            required_agent_skills: vec![],
            data_sensitivity: DataSensitivity::Internal,
        },
        provider: "internal".to_owned(),
        endpoint: "http://127.0.0.1:9/word_count".to_owned(),
        protocol: ToolProtocol::Http,
        reliability_score: 0.9,
        average_latency_ms: 10,
        cost_per_call: Decimal::new(20, 4),
        enabled: true,
        side_effects: SideEffects::None,
        idempotent: true,
        cacheable: false,
        cache_ttl_seconds: 0,
        cache_normalize_keys: false,
        cache_ignored_params: vec![],
        compliance_frameworks: vec![],
        remote_name: String::new(),
        http: None,
    }
}

pub fn tool(name: &str) -> Tool {
    let now = Utc::now();
    Tool {
        id: Uuid::new_v4(),
        version: 1,
        spec: tool_spec(name),
        created_at: now,
        updated_at: now,
    }
}

pub fn agent(name: &str) -> Agent {
    Agent {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        skills: vec![],
        team: String::new(),
        created_at: Utc::now(),
        task_memory_opt_out: false,
        calls_per_minute: 0,
        daily_spend_budget: None,
    }
}

pub fn grant(agent: &Agent, tool: &Tool, kind: PermissionType) -> Permission {
    Permission {
        id: Uuid::new_v4(),
        agent_id: agent.id,
        tool_id: tool.id,
        kind,
        max_invocations_per_day: 0,
        allowed_hours: vec![],
        time_zone: String::new(),
        max_sensitivity: None,
        granted_at: Utc::now(),
        expires_at: None,
        granted_by: "test".to_owned(),
    }
}

/// An administrative audit event, as the control plane writes one.
pub fn admin_event() -> AuditEvent {
    AuditEvent {
        event_id: Uuid::now_v7(),
        action: AuditAction::ToolUpdated,
        invocation_id: None,
        actor_id: "admin:bootstrap".to_owned(),
        agent_id: None,
        tool_id: None,
        tool_version: 0,
        task_id: String::new(),
        occurred_at: Utc::now(),
        sanitized_parameters: serde_json::Value::Null,
        result: None,
        success: true,
        detail: "test change".to_owned(),
        compliance_frameworks: Vec::new(),
        data_classification: None,
        sidecar_id: String::new(),
        permission_id: None,
    }
}

/// A sidecar's record of one call of `tool` (version 1 unless changed), answered with
/// `status` after `duration_ms`.
pub fn invocation(tool_id: Uuid, status: ExecutionStatus, duration_ms: u32) -> InvocationRecord {
    let id = Uuid::now_v7();
    InvocationRecord {
        invocation_id: id,
        agent_id: Uuid::nil(),
        task_id: String::new(),
        requested_tool_id: tool_id,
        parameters: serde_json::Value::Null,
        invoked_at: Utc::now(),
        result: ToolResult {
            invocation_id: id,
            tool_id,
            tool_version: 1,
            status,
            output: serde_json::Value::Null,
            error: String::new(),
            duration_ms,
            tokens_used: 0,
            cost: Decimal::ZERO,
            completed_at: Utc::now(),
            cache_hit: false,
            attempts: 1,
            retry_after_ms: 0,
            stale: false,
            fallback_from: None,
        },
        sidecar_id: "s".into(),
        task_category: String::new(),
        selection_id: None,
        caller_cancelled: false,
    }
}
