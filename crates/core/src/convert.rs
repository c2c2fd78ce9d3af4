//! Explicit conversions between the wire contract (`toolplane_proto::v1`) and the
//! domain model. Conversions from the wire report the field at fault.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use rust_decimal::Decimal;
use toolplane_proto::v1 as pb;
use uuid::Uuid;

use crate::error::Violations;
use crate::json::{json_to_struct, struct_to_json, value_from_pb, value_to_pb};
use crate::model::*;

pub fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn from_ts(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

pub fn opt_ts(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(ts)
}

/// Parses a required UUID field, naming it on failure.
pub fn parse_uuid(field: &str, s: &str) -> Result<Uuid, Violations> {
    if s.is_empty() {
        return Err(Violations::single(field, "is required"));
    }
    Uuid::parse_str(s).map_err(|_| Violations::single(field, format!("{s:?} is not a UUID")))
}

/// An empty string means "none"; anything else must be a UUID.
pub fn parse_opt_uuid(field: &str, s: &str) -> Result<Option<Uuid>, Violations> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_uuid(field, s).map(Some)
    }
}

pub fn parse_decimal(field: &str, s: &str) -> Result<Decimal, Violations> {
    if s.is_empty() {
        return Ok(Decimal::ZERO);
    }
    let d = Decimal::from_str(s).map_err(|_| Violations::single(field, format!("{s:?} is not a decimal number")))?;
    if d.is_sign_negative() {
        return Err(Violations::single(field, "must not be negative"));
    }
    Ok(d)
}

/// Most decimal places of an amount counted exactly across sidecars (a tool's
/// `cost_per_call`, an agent's daily spend budget): counters hold millionths.
pub const MONEY_SCALE: u32 = 6;
/// Largest daily spend budget, so counters in millionths stay exact integers.
pub const MAX_SPEND_BUDGET: i64 = 1_000_000_000;

/// An optional money field: empty means unset; at most [`MONEY_SCALE`] decimal places.
pub fn parse_budget(field: &str, s: &str) -> Result<Option<Decimal>, Violations> {
    if s.is_empty() {
        return Ok(None);
    }
    let d = parse_decimal(field, s)?.normalize();
    if d.scale() > MONEY_SCALE {
        return Err(Violations::single(
            field,
            format!("has more than {MONEY_SCALE} decimal places"),
        ));
    }
    if d > Decimal::from(MAX_SPEND_BUDGET) {
        return Err(Violations::single(field, format!("must be at most {MAX_SPEND_BUDGET}")));
    }
    Ok(Some(d))
}

fn fmt_uuid(u: Option<Uuid>) -> String {
    u.map(|u| u.to_string()).unwrap_or_default()
}

pub fn sensitivity_from_pb(v: i32) -> Option<DataSensitivity> {
    match pb::DataSensitivity::try_from(v).ok()? {
        pb::DataSensitivity::Unspecified => None,
        pb::DataSensitivity::Public => Some(DataSensitivity::Public),
        pb::DataSensitivity::Internal => Some(DataSensitivity::Internal),
        pb::DataSensitivity::Confidential => Some(DataSensitivity::Confidential),
        pb::DataSensitivity::Restricted => Some(DataSensitivity::Restricted),
    }
}

pub fn sensitivity_to_pb(v: Option<DataSensitivity>) -> i32 {
    (match v {
        None => pb::DataSensitivity::Unspecified,
        Some(DataSensitivity::Public) => pb::DataSensitivity::Public,
        Some(DataSensitivity::Internal) => pb::DataSensitivity::Internal,
        Some(DataSensitivity::Confidential) => pb::DataSensitivity::Confidential,
        Some(DataSensitivity::Restricted) => pb::DataSensitivity::Restricted,
    }) as i32
}

pub fn side_effects_from_pb(v: i32) -> SideEffects {
    match pb::SideEffects::try_from(v) {
        Ok(pb::SideEffects::None) => SideEffects::None,
        Ok(pb::SideEffects::Read) => SideEffects::Read,
        // Unknown effects are assumed to write: never cached, never READ_ONLY.
        _ => SideEffects::Write,
    }
}

fn side_effects_to_pb(v: SideEffects) -> i32 {
    (match v {
        SideEffects::None => pb::SideEffects::None,
        SideEffects::Read => pb::SideEffects::Read,
        SideEffects::Write => pb::SideEffects::Write,
    }) as i32
}

pub fn auth_from_pb(v: i32) -> AuthType {
    match pb::AuthType::try_from(v) {
        Ok(pb::AuthType::ApiKey) => AuthType::ApiKey,
        Ok(pb::AuthType::Oauth2) => AuthType::OAuth2,
        Ok(pb::AuthType::MutualTls) => AuthType::MutualTls,
        Ok(pb::AuthType::HttpBasic) => AuthType::HttpBasic,
        _ => AuthType::None,
    }
}

pub fn auth_to_pb(v: AuthType) -> i32 {
    (match v {
        AuthType::None => pb::AuthType::None,
        AuthType::ApiKey => pb::AuthType::ApiKey,
        AuthType::OAuth2 => pb::AuthType::Oauth2,
        AuthType::MutualTls => pb::AuthType::MutualTls,
        AuthType::HttpBasic => pb::AuthType::HttpBasic,
    }) as i32
}

fn protocol_from_pb(v: i32) -> ToolProtocol {
    match pb::ToolProtocol::try_from(v) {
        Ok(pb::ToolProtocol::Mcp) => ToolProtocol::Mcp,
        _ => ToolProtocol::Http,
    }
}

fn protocol_to_pb(v: ToolProtocol) -> i32 {
    (match v {
        ToolProtocol::Http => pb::ToolProtocol::Http,
        ToolProtocol::Mcp => pb::ToolProtocol::Mcp,
    }) as i32
}

pub fn role_from_pb(v: i32) -> Option<Role> {
    match pb::Role::try_from(v).ok()? {
        pb::Role::Unspecified => None,
        pb::Role::Admin => Some(Role::Admin),
        pb::Role::Agent => Some(Role::Agent),
        pb::Role::Sidecar => Some(Role::Sidecar),
        pb::Role::Auditor => Some(Role::Auditor),
    }
}

pub fn role_to_pb(v: Role) -> i32 {
    (match v {
        Role::Admin => pb::Role::Admin,
        Role::Agent => pb::Role::Agent,
        Role::Sidecar => pb::Role::Sidecar,
        Role::Auditor => pb::Role::Auditor,
    }) as i32
}

pub fn permission_type_from_pb(v: i32) -> Option<PermissionType> {
    match pb::PermissionType::try_from(v).ok()? {
        pb::PermissionType::Unspecified => None,
        pb::PermissionType::FullAccess => Some(PermissionType::FullAccess),
        pb::PermissionType::ReadOnly => Some(PermissionType::ReadOnly),
        pb::PermissionType::LimitedInvocations => Some(PermissionType::LimitedInvocations),
        pb::PermissionType::TimeRestricted => Some(PermissionType::TimeRestricted),
        pb::PermissionType::DataRestricted => Some(PermissionType::DataRestricted),
    }
}

pub fn permission_type_to_pb(v: PermissionType) -> i32 {
    (match v {
        PermissionType::FullAccess => pb::PermissionType::FullAccess,
        PermissionType::ReadOnly => pb::PermissionType::ReadOnly,
        PermissionType::LimitedInvocations => pb::PermissionType::LimitedInvocations,
        PermissionType::TimeRestricted => pb::PermissionType::TimeRestricted,
        PermissionType::DataRestricted => pb::PermissionType::DataRestricted,
    }) as i32
}

pub fn status_from_pb(v: i32) -> ExecutionStatus {
    use pb::ToolExecutionStatus as S;
    match S::try_from(v) {
        Ok(S::Success) => ExecutionStatus::Success,
        Ok(S::PartialSuccess) => ExecutionStatus::PartialSuccess,
        Ok(S::ValidationError) => ExecutionStatus::ValidationError,
        Ok(S::Timeout) => ExecutionStatus::Timeout,
        Ok(S::RateLimited) => ExecutionStatus::RateLimited,
        Ok(S::PermissionDenied) => ExecutionStatus::PermissionDenied,
        Ok(S::CircuitOpen) => ExecutionStatus::CircuitOpen,
        _ => ExecutionStatus::ExecutionError,
    }
}

pub fn status_to_pb(v: ExecutionStatus) -> i32 {
    use pb::ToolExecutionStatus as S;
    (match v {
        ExecutionStatus::Success => S::Success,
        ExecutionStatus::PartialSuccess => S::PartialSuccess,
        ExecutionStatus::ValidationError => S::ValidationError,
        ExecutionStatus::ExecutionError => S::ExecutionError,
        ExecutionStatus::Timeout => S::Timeout,
        ExecutionStatus::RateLimited => S::RateLimited,
        ExecutionStatus::PermissionDenied => S::PermissionDenied,
        ExecutionStatus::CircuitOpen => S::CircuitOpen,
    }) as i32
}

pub fn action_from_pb(v: i32) -> Option<AuditAction> {
    use pb::AuditAction as A;
    Some(match A::try_from(v).ok()? {
        A::Unspecified => return None,
        A::ToolInvoked => AuditAction::ToolInvoked,
        A::PermissionChecked => AuditAction::PermissionChecked,
        A::CacheHit => AuditAction::CacheHit,
        A::CacheMiss => AuditAction::CacheMiss,
        A::FallbackUsed => AuditAction::FallbackUsed,
        A::RateLimited => AuditAction::RateLimited,
        A::ErrorOccurred => AuditAction::ErrorOccurred,
        A::ToolRegistered => AuditAction::ToolRegistered,
        A::ToolUpdated => AuditAction::ToolUpdated,
        A::ToolDisabled => AuditAction::ToolDisabled,
        A::PermissionGranted => AuditAction::PermissionGranted,
        A::PermissionRevoked => AuditAction::PermissionRevoked,
        A::AccessRequested => AuditAction::AccessRequested,
        A::AccessReviewed => AuditAction::AccessReviewed,
        A::TokenIssued => AuditAction::TokenIssued,
        A::TokenRevoked => AuditAction::TokenRevoked,
        A::ToolDeleted => AuditAction::ToolDeleted,
        A::CredentialSet => AuditAction::CredentialSet,
        A::AgentCreated => AuditAction::AgentCreated,
        A::FallbackStrategySet => AuditAction::FallbackStrategySet,
        A::AgentUpdated => AuditAction::AgentUpdated,
        A::AgentDeleted => AuditAction::AgentDeleted,
        A::FallbackStrategyDeleted => AuditAction::FallbackStrategyDeleted,
        A::ToolChangeDetected => AuditAction::ToolChangeDetected,
        A::ToolChangeReviewed => AuditAction::ToolChangeReviewed,
        A::ToolReviewPolicySet => AuditAction::ToolReviewPolicySet,
        A::CredentialDeleted => AuditAction::CredentialDeleted,
    })
}

pub fn action_to_pb(v: AuditAction) -> i32 {
    use pb::AuditAction as A;
    (match v {
        AuditAction::ToolInvoked => A::ToolInvoked,
        AuditAction::PermissionChecked => A::PermissionChecked,
        AuditAction::CacheHit => A::CacheHit,
        AuditAction::CacheMiss => A::CacheMiss,
        AuditAction::FallbackUsed => A::FallbackUsed,
        AuditAction::RateLimited => A::RateLimited,
        AuditAction::ErrorOccurred => A::ErrorOccurred,
        AuditAction::ToolRegistered => A::ToolRegistered,
        AuditAction::ToolUpdated => A::ToolUpdated,
        AuditAction::ToolDisabled => A::ToolDisabled,
        AuditAction::PermissionGranted => A::PermissionGranted,
        AuditAction::PermissionRevoked => A::PermissionRevoked,
        AuditAction::AccessRequested => A::AccessRequested,
        AuditAction::AccessReviewed => A::AccessReviewed,
        AuditAction::TokenIssued => A::TokenIssued,
        AuditAction::TokenRevoked => A::TokenRevoked,
        AuditAction::ToolDeleted => A::ToolDeleted,
        AuditAction::CredentialSet => A::CredentialSet,
        AuditAction::AgentCreated => A::AgentCreated,
        AuditAction::FallbackStrategySet => A::FallbackStrategySet,
        AuditAction::AgentUpdated => A::AgentUpdated,
        AuditAction::AgentDeleted => A::AgentDeleted,
        AuditAction::FallbackStrategyDeleted => A::FallbackStrategyDeleted,
        AuditAction::ToolChangeDetected => A::ToolChangeDetected,
        AuditAction::ToolChangeReviewed => A::ToolChangeReviewed,
        AuditAction::ToolReviewPolicySet => A::ToolReviewPolicySet,
        AuditAction::CredentialDeleted => A::CredentialDeleted,
    }) as i32
}

/// The writable part of a wire tool; output-only fields are ignored.
pub fn tool_spec_from_pb(t: pb::Tool) -> Result<ToolSpec, Violations> {
    let schema = t.schema.unwrap_or_default();
    let req = t.requirements.unwrap_or_default();
    Ok(ToolSpec {
        name: t.name,
        category: t.category,
        description: t.description,
        input_schema: struct_to_json(schema.input_schema),
        output_schema: struct_to_json(schema.output_schema),
        examples: schema
            .examples
            .into_iter()
            .map(|e| ToolExample {
                description: e.description,
                input: e.input.map_or(serde_json::Value::Null, value_from_pb),
                expected_output: e.expected_output.map_or(serde_json::Value::Null, value_from_pb),
            })
            .collect(),
        capabilities: t.capabilities,
        requirements: ToolRequirements {
            authentication: auth_from_pb(req.authentication),
            rate_limit_rpm: req.rate_limit_rpm,
            timeout_ms: req.timeout_ms,
            required_agent_skills: req.required_agent_skills,
            data_sensitivity: sensitivity_from_pb(req.data_sensitivity).unwrap_or(DataSensitivity::Internal),
        },
        provider: t.provider,
        endpoint: t.endpoint,
        protocol: protocol_from_pb(t.protocol),
        reliability_score: t.reliability_score,
        average_latency_ms: t.average_latency_ms,
        cost_per_call: parse_decimal("tool.cost_per_call", &t.cost_per_call)?,
        enabled: t.enabled,
        side_effects: side_effects_from_pb(t.side_effects),
        idempotent: t.idempotent,
        cacheable: t.cacheable,
        cache_ttl_seconds: t.cache_ttl_seconds,
        cache_normalize_keys: t.cache_normalize_keys,
        cache_ignored_params: t.cache_ignored_params,
        compliance_frameworks: t.compliance_frameworks,
        http: t.http.map(http_binding_from_pb).transpose()?,
        remote_name: t.remote_name,
    })
}

pub fn tool_to_pb(t: &Tool) -> pb::Tool {
    pb::Tool {
        id: t.id.to_string(),
        version: t.version,
        created_at: Some(ts(t.created_at)),
        updated_at: Some(ts(t.updated_at)),
        ..spec_to_pb(t.spec.clone())
    }
}

/// A spec on the wire, without identity, version or timestamps.
pub fn spec_to_pb(spec: ToolSpec) -> pb::Tool {
    let s = &spec;
    pb::Tool {
        id: String::new(),
        name: s.name.clone(),
        category: s.category.clone(),
        description: s.description.clone(),
        version: 0,
        schema: Some(pb::ToolSchema {
            input_schema: json_to_struct(&s.input_schema),
            output_schema: json_to_struct(&s.output_schema),
            required_params: s.required_params(),
            optional_params: s.optional_params(),
            examples: s
                .examples
                .iter()
                .map(|e| pb::ToolExample {
                    description: e.description.clone(),
                    input: Some(value_to_pb(&e.input)),
                    expected_output: Some(value_to_pb(&e.expected_output)),
                })
                .collect(),
        }),
        capabilities: s.capabilities.clone(),
        requirements: Some(pb::ToolRequirements {
            authentication: auth_to_pb(s.requirements.authentication),
            rate_limit_rpm: s.requirements.rate_limit_rpm,
            timeout_ms: s.requirements.timeout_ms,
            required_agent_skills: s.requirements.required_agent_skills.clone(),
            data_sensitivity: sensitivity_to_pb(Some(s.requirements.data_sensitivity)),
        }),
        provider: s.provider.clone(),
        endpoint: s.endpoint.clone(),
        protocol: protocol_to_pb(s.protocol),
        reliability_score: s.reliability_score,
        average_latency_ms: s.average_latency_ms,
        cost_per_call: s.cost_per_call.to_string(),
        enabled: s.enabled,
        side_effects: side_effects_to_pb(s.side_effects),
        idempotent: s.idempotent,
        cacheable: s.cacheable,
        cache_ttl_seconds: s.cache_ttl_seconds,
        cache_normalize_keys: s.cache_normalize_keys,
        cache_ignored_params: s.cache_ignored_params.clone(),
        compliance_frameworks: s.compliance_frameworks.clone(),
        http: s.http.as_ref().map(http_binding_to_pb),
        remote_name: s.remote_name.clone(),
        definition_hash: crate::definition::definition_hash(s),
        created_at: None,
        updated_at: None,
    }
}

/// A whole stored tool from the wire (snapshots), identity and timestamps included.
pub fn tool_from_pb(t: pb::Tool) -> Result<Tool, Violations> {
    let id = parse_uuid("tool.id", &t.id)?;
    let version = t.version;
    let created_at = t.created_at.as_ref().and_then(from_ts).unwrap_or_default();
    let updated_at = t.updated_at.as_ref().and_then(from_ts).unwrap_or_default();
    Ok(Tool {
        id,
        version,
        spec: tool_spec_from_pb(t)?,
        created_at,
        updated_at,
    })
}

pub fn agent_to_pb(a: &Agent) -> pb::Agent {
    pb::Agent {
        id: a.id.to_string(),
        name: a.name.clone(),
        skills: a.skills.clone(),
        team: a.team.clone(),
        created_at: Some(ts(a.created_at)),
        task_memory_opt_out: a.task_memory_opt_out,
        calls_per_minute: a.calls_per_minute,
        daily_spend_budget: a.daily_spend_budget.map(|d| d.to_string()).unwrap_or_default(),
    }
}

pub fn agent_from_pb(a: pb::Agent) -> Result<Agent, Violations> {
    Ok(Agent {
        id: parse_uuid("agent.id", &a.id)?,
        name: a.name,
        skills: a.skills,
        team: a.team,
        created_at: a.created_at.as_ref().and_then(from_ts).unwrap_or_default(),
        task_memory_opt_out: a.task_memory_opt_out,
        calls_per_minute: a.calls_per_minute,
        daily_spend_budget: parse_budget("agent.daily_spend_budget", &a.daily_spend_budget)?,
    })
}

pub fn permission_to_pb(p: &Permission) -> pb::Permission {
    pb::Permission {
        id: p.id.to_string(),
        agent_id: p.agent_id.to_string(),
        tool_id: p.tool_id.to_string(),
        r#type: permission_type_to_pb(p.kind),
        max_invocations_per_day: p.max_invocations_per_day,
        allowed_hours: p.allowed_hours.clone(),
        time_zone: p.time_zone.clone(),
        max_sensitivity: sensitivity_to_pb(p.max_sensitivity),
        granted_at: Some(ts(p.granted_at)),
        expires_at: opt_ts(p.expires_at),
        granted_by: p.granted_by.clone(),
    }
}

pub fn access_request_to_pb(r: &AccessRequest) -> pb::AccessRequest {
    pb::AccessRequest {
        id: r.id.to_string(),
        agent_id: r.agent_id.to_string(),
        tool_id: r.tool_id.to_string(),
        justification: r.justification.clone(),
        status: match r.status {
            AccessRequestStatus::Pending => pb::AccessRequestStatus::Pending,
            AccessRequestStatus::Approved => pb::AccessRequestStatus::Approved,
            AccessRequestStatus::Denied => pb::AccessRequestStatus::Denied,
        } as i32,
        requested_at: Some(ts(r.requested_at)),
        reviewed_at: opt_ts(r.reviewed_at),
        reviewed_by: r.reviewed_by.clone(),
        review_reason: r.review_reason.clone(),
        permission_id: r.permission_id.map(|p| p.to_string()).unwrap_or_default(),
    }
}

pub fn access_status_from_pb(v: i32) -> Option<AccessRequestStatus> {
    match pb::AccessRequestStatus::try_from(v).ok()? {
        pb::AccessRequestStatus::Pending => Some(AccessRequestStatus::Pending),
        pb::AccessRequestStatus::Approved => Some(AccessRequestStatus::Approved),
        pb::AccessRequestStatus::Denied => Some(AccessRequestStatus::Denied),
        pb::AccessRequestStatus::Unspecified => None,
    }
}

/// A stored permission from the wire (snapshots).
pub fn permission_from_pb(p: pb::Permission) -> Result<Permission, Violations> {
    Ok(Permission {
        id: parse_uuid("permission.id", &p.id)?,
        agent_id: parse_uuid("permission.agent_id", &p.agent_id)?,
        tool_id: parse_uuid("permission.tool_id", &p.tool_id)?,
        kind: permission_type_from_pb(p.r#type).ok_or_else(|| Violations::single("permission.type", "is required"))?,
        max_invocations_per_day: p.max_invocations_per_day,
        allowed_hours: p.allowed_hours,
        time_zone: p.time_zone,
        max_sensitivity: sensitivity_from_pb(p.max_sensitivity),
        granted_at: p.granted_at.as_ref().and_then(from_ts).unwrap_or_default(),
        expires_at: p.expires_at.as_ref().and_then(from_ts),
        granted_by: p.granted_by,
    })
}

pub fn token_to_pb(t: &TokenRecord) -> pb::TokenDigest {
    pb::TokenDigest {
        token_id: t.id.to_string(),
        sha256: t.sha256.clone(),
        role: role_to_pb(t.role),
        agent_id: fmt_uuid(t.agent_id),
        expires_at: Some(ts(t.expires_at)),
    }
}

/// A token's metadata for `ListTokens`: never the token nor its digest.
pub fn token_info_to_pb(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: t.id.to_string(),
        role: role_to_pb(t.role),
        agent_id: fmt_uuid(t.agent_id),
        description: t.description.clone(),
        created_at: Some(ts(t.created_at)),
        expires_at: Some(ts(t.expires_at)),
        revoked_at: opt_ts(t.revoked_at),
    }
}

pub fn token_from_pb(t: pb::TokenDigest) -> Result<TokenRecord, Violations> {
    Ok(TokenRecord {
        id: parse_uuid("token.token_id", &t.token_id)?,
        sha256: t.sha256,
        role: role_from_pb(t.role).ok_or_else(|| Violations::single("token.role", "is required"))?,
        agent_id: parse_opt_uuid("token.agent_id", &t.agent_id)?,
        description: String::new(),
        created_at: DateTime::<Utc>::default(),
        expires_at: t
            .expires_at
            .as_ref()
            .and_then(from_ts)
            .ok_or_else(|| Violations::single("token.expires_at", "is required"))?,
        revoked_at: None,
    })
}

pub fn fallback_condition_from_pb(v: i32) -> Option<FallbackCondition> {
    use pb::FallbackCondition as C;
    Some(match C::try_from(v).ok()? {
        C::Unspecified => return None,
        C::OnTimeout => FallbackCondition::OnTimeout,
        C::OnRateLimit => FallbackCondition::OnRateLimit,
        C::OnAuthFailure => FallbackCondition::OnAuthFailure,
        C::OnDataValidationFailure => FallbackCondition::OnDataValidationFailure,
        C::Always => FallbackCondition::Always,
    })
}

fn fallback_condition_to_pb(c: FallbackCondition) -> i32 {
    use pb::FallbackCondition as C;
    (match c {
        FallbackCondition::OnTimeout => C::OnTimeout,
        FallbackCondition::OnRateLimit => C::OnRateLimit,
        FallbackCondition::OnAuthFailure => C::OnAuthFailure,
        FallbackCondition::OnDataValidationFailure => C::OnDataValidationFailure,
        FallbackCondition::Always => C::Always,
    }) as i32
}

fn mode_to_pb(m: DegradationMode) -> i32 {
    use pb::DegradationMode as M;
    (match m {
        DegradationMode::Full => M::Full,
        DegradationMode::Cached => M::Cached,
        DegradationMode::Partial => M::Partial,
        DegradationMode::Abort => M::Abort,
    }) as i32
}

/// UNSPECIFIED means FULL.
pub fn mode_from_pb(v: i32) -> DegradationMode {
    use pb::DegradationMode as M;
    match M::try_from(v) {
        Ok(M::Cached) => DegradationMode::Cached,
        Ok(M::Partial) => DegradationMode::Partial,
        Ok(M::Abort) => DegradationMode::Abort,
        _ => DegradationMode::Full,
    }
}

pub fn fallback_to_pb(f: &FallbackStrategy) -> pb::FallbackStrategy {
    pb::FallbackStrategy {
        tool_id: f.tool_id.to_string(),
        fallback_tool_ids: ids(&f.fallback_tool_ids),
        max_attempts: f.max_attempts,
        initial_backoff_ms: f.initial_backoff_ms,
        max_backoff_ms: f.max_backoff_ms,
        conditions: f.conditions.iter().map(|c| fallback_condition_to_pb(*c)).collect(),
        mode: mode_to_pb(f.mode),
    }
}

/// From the wire; unknown conditions are refused, naming the field.
pub fn fallback_from_pb(f: pb::FallbackStrategy) -> Result<FallbackStrategy, Violations> {
    let mut conditions = Vec::new();
    for (i, c) in f.conditions.iter().enumerate() {
        conditions.push(
            fallback_condition_from_pb(*c)
                .ok_or_else(|| Violations::single(format!("strategy.conditions[{i}]"), "is not a known condition"))?,
        );
    }
    Ok(FallbackStrategy {
        tool_id: parse_uuid("strategy.tool_id", &f.tool_id)?,
        fallback_tool_ids: parse_ids("strategy.fallback_tool_ids", f.fallback_tool_ids)?,
        max_attempts: f.max_attempts,
        initial_backoff_ms: f.initial_backoff_ms,
        max_backoff_ms: f.max_backoff_ms,
        conditions,
        mode: mode_from_pb(f.mode),
    })
}

pub fn credential_to_pb(c: &Credential) -> pb::ToolCredential {
    pb::ToolCredential {
        tool_id: c.tool_id.to_string(),
        auth_type: auth_to_pb(c.auth_type),
        header_name: c.header_name.clone(),
        secret: c.secret.clone(),
        query_param: c.settings.query_param.clone(),
        username: c.settings.username.clone(),
        expires_at: opt_ts(c.expires_at),
        oauth2: c.settings.oauth2.as_ref().map(oauth2_to_pb),
        client_certificate_pem: c.settings.client_certificate_pem.clone(),
    }
}

pub fn credential_from_pb(c: pb::ToolCredential) -> Result<Credential, Violations> {
    Ok(Credential {
        tool_id: parse_uuid("credential.tool_id", &c.tool_id)?,
        auth_type: auth_from_pb(c.auth_type),
        header_name: c.header_name,
        secret: c.secret,
        settings: crate::model::CredentialSettings {
            query_param: c.query_param,
            username: c.username,
            oauth2: c.oauth2.map(oauth2_from_pb),
            client_certificate_pem: c.client_certificate_pem,
        },
        expires_at: c.expires_at.as_ref().and_then(from_ts),
    })
}

fn ids(v: &[Uuid]) -> Vec<String> {
    v.iter().map(Uuid::to_string).collect()
}

fn parse_ids(field: &str, v: Vec<String>) -> Result<Vec<Uuid>, Violations> {
    v.iter().map(|s| parse_uuid(field, s)).collect()
}

pub fn delta_to_pb(d: &crate::delta::SnapshotDelta) -> pb::SnapshotDelta {
    pb::SnapshotDelta {
        from_revision: d.from_revision,
        revision: d.revision,
        upserted_tools: d.upserted_tools.iter().map(|t| tool_to_pb(t)).collect(),
        removed_tool_ids: ids(&d.removed_tools),
        upserted_permissions: d.upserted_permissions.iter().map(permission_to_pb).collect(),
        removed_permission_ids: ids(&d.removed_permissions),
        upserted_agents: d.upserted_agents.iter().map(agent_to_pb).collect(),
        removed_agent_ids: ids(&d.removed_agents),
        upserted_tokens: d.upserted_tokens.iter().map(token_to_pb).collect(),
        removed_token_ids: ids(&d.removed_tokens),
        upserted_credentials: d.upserted_credentials.iter().map(credential_to_pb).collect(),
        removed_credential_tool_ids: ids(&d.removed_credentials),
        upserted_fallbacks: d.upserted_fallbacks.iter().map(fallback_to_pb).collect(),
        removed_fallback_tool_ids: ids(&d.removed_fallbacks),
        scope: d.scope.as_ref().map(scope_to_pb),
    }
}

pub fn delta_from_pb(d: pb::SnapshotDelta) -> Result<crate::delta::SnapshotDelta, Violations> {
    Ok(crate::delta::SnapshotDelta {
        from_revision: d.from_revision,
        revision: d.revision,
        upserted_tools: d
            .upserted_tools
            .into_iter()
            .map(|t| tool_from_pb(t).map(std::sync::Arc::new))
            .collect::<Result<_, _>>()?,
        removed_tools: parse_ids("delta.removed_tool_ids", d.removed_tool_ids)?,
        upserted_permissions: d
            .upserted_permissions
            .into_iter()
            .map(permission_from_pb)
            .collect::<Result<_, _>>()?,
        removed_permissions: parse_ids("delta.removed_permission_ids", d.removed_permission_ids)?,
        upserted_agents: d
            .upserted_agents
            .into_iter()
            .map(agent_from_pb)
            .collect::<Result<_, _>>()?,
        removed_agents: parse_ids("delta.removed_agent_ids", d.removed_agent_ids)?,
        upserted_tokens: d
            .upserted_tokens
            .into_iter()
            .map(token_from_pb)
            .collect::<Result<_, _>>()?,
        removed_tokens: parse_ids("delta.removed_token_ids", d.removed_token_ids)?,
        upserted_credentials: d
            .upserted_credentials
            .into_iter()
            .map(credential_from_pb)
            .collect::<Result<_, _>>()?,
        removed_credentials: parse_ids("delta.removed_credential_tool_ids", d.removed_credential_tool_ids)?,
        upserted_fallbacks: d
            .upserted_fallbacks
            .into_iter()
            .map(fallback_from_pb)
            .collect::<Result<_, _>>()?,
        removed_fallbacks: parse_ids("delta.removed_fallback_tool_ids", d.removed_fallback_tool_ids)?,
        scope: d.scope.map(|s| scope_from_pb("delta.scope", s)).transpose()?.flatten(),
    })
}

fn scope_to_pb(s: &crate::model::Scope) -> pb::SnapshotScope {
    pb::SnapshotScope {
        all_agents: false,
        agents: s.agents.iter().map(Uuid::to_string).collect(),
        tools: s.tools.iter().map(Uuid::to_string).collect(),
        request_id: s.request_id,
    }
}

/// A scope as the control plane resolved it (ids only); `None` for the whole catalog.
fn scope_from_pb(field: &str, s: pb::SnapshotScope) -> Result<Option<crate::model::Scope>, Violations> {
    if s.all_agents {
        return Ok(None);
    }
    Ok(Some(crate::model::Scope {
        agents: parse_ids(&format!("{field}.agents"), s.agents)?.into_iter().collect(),
        tools: parse_ids(&format!("{field}.tools"), s.tools)?.into_iter().collect(),
        request_id: s.request_id,
    }))
}

pub fn snapshot_to_pb(s: &Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        revision: s.revision,
        tools: s.tools.iter().map(|t| tool_to_pb(t)).collect(),
        permissions: s.permissions.iter().map(permission_to_pb).collect(),
        agents: s.agents.iter().map(agent_to_pb).collect(),
        tokens: s.tokens.iter().map(token_to_pb).collect(),
        generated_at: Some(ts(Utc::now())),
        credentials: s.credentials.iter().map(credential_to_pb).collect(),
        fallbacks: s.fallbacks.iter().map(fallback_to_pb).collect(),
        scope: s.scope.as_ref().map(scope_to_pb),
    }
}

pub fn snapshot_from_pb(s: pb::Snapshot) -> Result<Snapshot, Violations> {
    Ok(Snapshot {
        revision: s.revision,
        tools: s
            .tools
            .into_iter()
            .map(|t| tool_from_pb(t).map(std::sync::Arc::new))
            .collect::<Result<_, _>>()?,
        permissions: s
            .permissions
            .into_iter()
            .map(permission_from_pb)
            .collect::<Result<_, _>>()?,
        agents: s.agents.into_iter().map(agent_from_pb).collect::<Result<_, _>>()?,
        tokens: s.tokens.into_iter().map(token_from_pb).collect::<Result<_, _>>()?,
        credentials: s
            .credentials
            .into_iter()
            .map(credential_from_pb)
            .collect::<Result<_, _>>()?,
        fallbacks: s
            .fallbacks
            .into_iter()
            .map(fallback_from_pb)
            .collect::<Result<_, _>>()?,
        scope: s
            .scope
            .map(|s| scope_from_pb("snapshot.scope", s))
            .transpose()?
            .flatten(),
    })
}

pub fn result_to_pb(r: &ToolResult) -> pb::ToolResult {
    pb::ToolResult {
        invocation_id: r.invocation_id.to_string(),
        tool_id: r.tool_id.to_string(),
        tool_version: r.tool_version,
        status: status_to_pb(r.status),
        output: Some(value_to_pb(&r.output)),
        error: r.error.clone(),
        duration_ms: r.duration_ms,
        tokens_used: r.tokens_used,
        cost: r.cost.to_string(),
        completed_at: Some(ts(r.completed_at)),
        cache_hit: r.cache_hit,
        attempts: r.attempts,
        retry_after_ms: r.retry_after_ms,
        stale: r.stale,
        fallback_from_tool_id: fmt_uuid(r.fallback_from),
    }
}

pub fn result_from_pb(r: pb::ToolResult) -> Result<ToolResult, Violations> {
    Ok(ToolResult {
        invocation_id: parse_uuid("result.invocation_id", &r.invocation_id)?,
        tool_id: parse_uuid("result.tool_id", &r.tool_id)?,
        tool_version: r.tool_version,
        status: status_from_pb(r.status),
        output: r.output.map_or(serde_json::Value::Null, value_from_pb),
        error: r.error,
        duration_ms: r.duration_ms,
        tokens_used: r.tokens_used,
        cost: parse_decimal("result.cost", &r.cost)?,
        completed_at: r.completed_at.as_ref().and_then(from_ts).unwrap_or_default(),
        cache_hit: r.cache_hit,
        attempts: r.attempts,
        retry_after_ms: r.retry_after_ms,
        stale: r.stale,
        fallback_from: parse_opt_uuid("result.fallback_from_tool_id", &r.fallback_from_tool_id)?,
    })
}

pub fn audit_event_to_pb(e: &AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        event_id: e.event_id.to_string(),
        action: action_to_pb(e.action),
        invocation_id: fmt_uuid(e.invocation_id),
        actor_id: e.actor_id.clone(),
        agent_id: fmt_uuid(e.agent_id),
        tool_id: fmt_uuid(e.tool_id),
        tool_version: e.tool_version,
        task_id: e.task_id.clone(),
        occurred_at: Some(ts(e.occurred_at)),
        sanitized_parameters: json_to_struct(&e.sanitized_parameters),
        result: e.result.as_ref().map(|r| pb::ResultSummary {
            size_bytes: r.size_bytes,
            status: status_to_pb(r.status),
            digest: r.digest.clone(),
        }),
        success: e.success,
        detail: e.detail.clone(),
        compliance_frameworks: e.compliance_frameworks.clone(),
        data_classification: sensitivity_to_pb(e.data_classification),
        sidecar_id: e.sidecar_id.clone(),
        permission_id: fmt_uuid(e.permission_id),
    }
}

pub fn audit_event_from_pb(e: pb::AuditEvent) -> Result<AuditEvent, Violations> {
    Ok(AuditEvent {
        event_id: parse_uuid("audit.event_id", &e.event_id)?,
        action: action_from_pb(e.action).ok_or_else(|| Violations::single("audit.action", "is required"))?,
        invocation_id: parse_opt_uuid("audit.invocation_id", &e.invocation_id)?,
        actor_id: e.actor_id,
        agent_id: parse_opt_uuid("audit.agent_id", &e.agent_id)?,
        tool_id: parse_opt_uuid("audit.tool_id", &e.tool_id)?,
        tool_version: e.tool_version,
        task_id: e.task_id,
        occurred_at: e
            .occurred_at
            .as_ref()
            .and_then(from_ts)
            .ok_or_else(|| Violations::single("audit.occurred_at", "is required"))?,
        sanitized_parameters: struct_to_json(e.sanitized_parameters),
        result: e.result.map(|r| ResultSummary {
            size_bytes: r.size_bytes,
            status: status_from_pb(r.status),
            digest: r.digest,
        }),
        success: e.success,
        detail: e.detail,
        compliance_frameworks: e.compliance_frameworks,
        data_classification: sensitivity_from_pb(e.data_classification),
        sidecar_id: e.sidecar_id,
        permission_id: parse_opt_uuid("audit.permission_id", &e.permission_id)?,
    })
}

pub fn invocation_to_pb(i: &InvocationRecord) -> pb::InvocationRecord {
    pb::InvocationRecord {
        invocation_id: i.invocation_id.to_string(),
        agent_id: i.agent_id.to_string(),
        task_id: i.task_id.clone(),
        requested_tool_id: i.requested_tool_id.to_string(),
        parameters: json_to_struct(&i.parameters),
        invoked_at: Some(ts(i.invoked_at)),
        result: Some(result_to_pb(&i.result)),
        sidecar_id: i.sidecar_id.clone(),
        task_category: i.task_category.clone(),
        selection_id: i.selection_id.map(|s| s.to_string()).unwrap_or_default(),
        caller_cancelled: i.caller_cancelled,
    }
}

pub fn invocation_from_pb(i: pb::InvocationRecord) -> Result<InvocationRecord, Violations> {
    Ok(InvocationRecord {
        invocation_id: parse_uuid("invocation.invocation_id", &i.invocation_id)?,
        agent_id: parse_uuid("invocation.agent_id", &i.agent_id)?,
        task_id: i.task_id,
        requested_tool_id: parse_uuid("invocation.requested_tool_id", &i.requested_tool_id)?,
        parameters: struct_to_json(i.parameters),
        invoked_at: i.invoked_at.as_ref().and_then(from_ts).unwrap_or_default(),
        result: result_from_pb(
            i.result
                .ok_or_else(|| Violations::single("invocation.result", "is required"))?,
        )?,
        sidecar_id: i.sidecar_id,
        task_category: i.task_category,
        selection_id: parse_opt_uuid("invocation.selection_id", &i.selection_id)?,
        caller_cancelled: i.caller_cancelled,
    })
}

pub fn sync_event_to_pb(e: &SyncEvent) -> pb::SyncEvent {
    let payload = match e {
        SyncEvent::Audit(a) => pb::sync_event::Payload::Audit(audit_event_to_pb(a)),
        SyncEvent::Invocation(i) => pb::sync_event::Payload::Invocation(invocation_to_pb(i)),
    };
    pb::SyncEvent {
        event_id: e.event_id().to_string(),
        payload: Some(payload),
    }
}

/// Whether [`sync_event_from_pb`] will accept `e`, found without taking it apart: the
/// control plane keeps an event it cannot parse whole, so it checks before converting
/// (which moves the event's fields) rather than copying every event first.
pub fn check_sync_event(e: &pb::SyncEvent) -> Result<(), Violations> {
    match &e.payload {
        Some(pb::sync_event::Payload::Audit(a)) => {
            parse_uuid("audit.event_id", &a.event_id)?;
            action_from_pb(a.action).ok_or_else(|| match a.action {
                0 => Violations::single("audit.action", "is required"),
                n => Violations::single("audit.action", format!("{n} is not an action this control plane knows")),
            })?;
            parse_opt_uuid("audit.invocation_id", &a.invocation_id)?;
            parse_opt_uuid("audit.agent_id", &a.agent_id)?;
            parse_opt_uuid("audit.tool_id", &a.tool_id)?;
            a.occurred_at
                .as_ref()
                .and_then(from_ts)
                .ok_or_else(|| Violations::single("audit.occurred_at", "is required"))?;
            parse_opt_uuid("audit.permission_id", &a.permission_id)?;
        }
        Some(pb::sync_event::Payload::Invocation(i)) => {
            parse_uuid("invocation.invocation_id", &i.invocation_id)?;
            parse_uuid("invocation.agent_id", &i.agent_id)?;
            parse_uuid("invocation.requested_tool_id", &i.requested_tool_id)?;
            let r = i
                .result
                .as_ref()
                .ok_or_else(|| Violations::single("invocation.result", "is required"))?;
            parse_uuid("result.invocation_id", &r.invocation_id)?;
            parse_uuid("result.tool_id", &r.tool_id)?;
            parse_decimal("result.cost", &r.cost)?;
            parse_opt_uuid("result.fallback_from_tool_id", &r.fallback_from_tool_id)?;
            parse_opt_uuid("invocation.selection_id", &i.selection_id)?;
        }
        None => return Err(Violations::single("event.payload", "is required")),
    }
    Ok(())
}

pub fn sync_event_from_pb(e: pb::SyncEvent) -> Result<SyncEvent, Violations> {
    match e.payload {
        Some(pb::sync_event::Payload::Audit(a)) => audit_event_from_pb(a).map(SyncEvent::Audit),
        Some(pb::sync_event::Payload::Invocation(i)) => invocation_from_pb(i).map(SyncEvent::Invocation),
        None => Err(Violations::single("event.payload", "is required")),
    }
}

pub fn audit_record_to_pb(r: &crate::audit::AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        event: Some(audit_event_to_pb(&r.event)),
        sequence: r.seq,
        recorded_at: Some(ts(r.recorded_at)),
        prev_hash: r.prev_hash.clone(),
        hash: r.hash.clone(),
        chain: r.chain.clone(),
        chain_sequence: r.chain_seq,
        canonical_form: String::new(),
    }
}

pub fn checkpoint_to_pb(c: &crate::audit_checkpoint::AuditCheckpoint) -> pb::AuditCheckpoint {
    pb::AuditCheckpoint {
        chain: c.chain.clone(),
        chain_sequence: c.chain_seq,
        head_hash: c.head_hash.clone(),
        signed_at: Some(ts(c.signed_at)),
        key_id: c.key_id.clone(),
        signature: c.signature.clone(),
        version: c.version,
    }
}

pub fn checkpoint_from_pb(c: pb::AuditCheckpoint) -> Result<crate::audit_checkpoint::AuditCheckpoint, Violations> {
    Ok(crate::audit_checkpoint::AuditCheckpoint {
        signed_at: c
            .signed_at
            .as_ref()
            .and_then(from_ts)
            .ok_or_else(|| Violations::single("checkpoint.signed_at", "is required"))?,
        chain: c.chain,
        chain_seq: c.chain_sequence,
        head_hash: c.head_hash,
        key_id: c.key_id,
        signature: c.signature,
        version: c.version,
    })
}

pub fn http_binding_to_pb(b: &crate::http_binding::HttpBinding) -> pb::HttpBinding {
    use crate::http_binding::ParamLocation as L;
    pb::HttpBinding {
        method: b.method.clone(),
        path: b.path.clone(),
        parameters: b
            .parameters
            .iter()
            .map(|p| pb::HttpParameter {
                name: p.name.clone(),
                location: match p.location {
                    L::Path => pb::ParameterLocation::Path,
                    L::Query => pb::ParameterLocation::Query,
                    L::Header => pb::ParameterLocation::Header,
                } as i32,
                wire_name: p.wire_name.clone(),
            })
            .collect(),
        body: b.body.clone(),
    }
}

pub fn http_binding_from_pb(b: pb::HttpBinding) -> Result<crate::http_binding::HttpBinding, Violations> {
    use crate::http_binding::{HttpParameter, ParamLocation as L};
    let parameters = b
        .parameters
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let location = match pb::ParameterLocation::try_from(p.location) {
                Ok(pb::ParameterLocation::Path) => L::Path,
                Ok(pb::ParameterLocation::Query) => L::Query,
                Ok(pb::ParameterLocation::Header) => L::Header,
                _ => {
                    return Err(Violations::single(
                        format!("tool.http.parameters[{i}].location"),
                        "must be PATH, QUERY or HEADER",
                    ));
                }
            };
            Ok(HttpParameter {
                name: p.name,
                location,
                wire_name: p.wire_name,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::http_binding::HttpBinding {
        method: b.method,
        path: b.path,
        parameters,
        body: b.body,
    })
}

pub fn oauth2_to_pb(o: &crate::model::OAuth2Settings) -> pb::OAuth2ClientCredentials {
    pb::OAuth2ClientCredentials {
        token_url: o.token_url.clone(),
        client_id: o.client_id.clone(),
        scopes: o.scopes.clone(),
        audience: o.audience.clone(),
    }
}

pub fn oauth2_from_pb(o: pb::OAuth2ClientCredentials) -> crate::model::OAuth2Settings {
    crate::model::OAuth2Settings {
        token_url: o.token_url,
        client_id: o.client_id,
        scopes: o.scopes,
        audience: o.audience,
    }
}
