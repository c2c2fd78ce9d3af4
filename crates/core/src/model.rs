//! The domain model. Prost types stop at the RPC edge (see `convert`); storage and logic
//! work on these.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The stable text used in storage and messages.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// A `&&'static str`, which database drivers can bind as a parameter.
            pub fn as_str_ref(self) -> &'static &'static str {
                match self { $(Self::$variant => &$text),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Ordered from least to most sensitive.
    DataSensitivity { Public = "public", Internal = "internal", Confidential = "confidential", Restricted = "restricted" }
);
text_enum!(SideEffects { None = "none", Read = "read", Write = "write" });
text_enum!(AuthType {
    None = "none",
    ApiKey = "api_key",
    OAuth2 = "oauth2",
    MutualTls = "mutual_tls",
    HttpBasic = "http_basic",
});
text_enum!(ToolProtocol { Http = "http", Mcp = "mcp" });
text_enum!(Role {
    Admin = "admin",
    Agent = "agent",
    Sidecar = "sidecar",
    Auditor = "auditor"
});
text_enum!(PermissionType {
    FullAccess = "full_access",
    ReadOnly = "read_only",
    LimitedInvocations = "limited_invocations",
    TimeRestricted = "time_restricted",
    DataRestricted = "data_restricted",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolExample {
    pub description: String,
    pub input: Value,
    pub expected_output: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolRequirements {
    pub authentication: AuthType,
    pub rate_limit_rpm: u32,
    pub timeout_ms: u32,
    pub required_agent_skills: Vec<String>,
    pub data_sensitivity: DataSensitivity,
}

/// What an admin supplies to register or update a tool: everything but identity,
/// version and timestamps. Serialised whole into the version history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub category: String,
    pub description: String,
    pub input_schema: Value,
    /// `Value::Null` when the tool declares no output schema.
    pub output_schema: Value,
    pub examples: Vec<ToolExample>,
    pub capabilities: Vec<String>,
    pub requirements: ToolRequirements,
    pub provider: String,
    pub endpoint: String,
    pub protocol: ToolProtocol,
    /// Learned from real outcomes; what a caller sends is ignored.
    pub reliability_score: f64,
    /// Learned from real outcomes; what a caller sends is ignored.
    pub average_latency_ms: u32,
    pub cost_per_call: Decimal,
    pub enabled: bool,
    pub side_effects: SideEffects,
    pub idempotent: bool,
    pub cacheable: bool,
    pub cache_ttl_seconds: u32,
    /// Requests that differ only in form share a cache entry.
    #[serde(default)]
    pub cache_normalize_keys: bool,
    /// Top-level parameters left out of the cache key.
    #[serde(default)]
    pub cache_ignored_params: Vec<String>,
    pub remote_name: String,
    /// Frameworks whose compliance reports include this tool's audit events.
    #[serde(default)]
    pub compliance_frameworks: Vec<String>,
    /// HTTP tools only: method, path template and where each parameter goes; `None`
    /// posts the parameters as JSON to the endpoint.
    #[serde(default)]
    pub http: Option<crate::http_binding::HttpBinding>,
}

impl ToolSpec {
    /// Parameter names the schema requires, derived rather than typed twice.
    pub fn required_params(&self) -> Vec<String> {
        self.input_schema["required"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    pub fn optional_params(&self) -> Vec<String> {
        let required = self.required_params();
        self.input_schema["properties"]
            .as_object()
            .map(|p| p.keys().filter(|k| !required.contains(k)).cloned().collect())
            .unwrap_or_default()
    }
}

/// A registered tool at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub id: Uuid,
    pub version: u32,
    pub spec: ToolSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Tool {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn required_params(&self) -> Vec<String> {
        self.spec.required_params()
    }

    pub fn optional_params(&self) -> Vec<String> {
        self.spec.optional_params()
    }

    /// Upstream timeout, with the documented default when unset.
    pub fn timeout(&self) -> std::time::Duration {
        match self.spec.requirements.timeout_ms {
            0 => std::time::Duration::from_secs(30),
            ms => std::time::Duration::from_millis(u64::from(ms)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub skills: Vec<String>,
    pub team: String,
    pub created_at: DateTime<Utc>,
    /// Never keep this agent's task descriptions in task memory.
    pub task_memory_opt_out: bool,
    /// Calls per minute across all sidecars; 0: no limit of its own.
    pub calls_per_minute: u32,
    /// Most the agent may spend per UTC day, in the tools' `cost_per_call` units.
    pub daily_spend_budget: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Permission {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub tool_id: Uuid,
    pub kind: PermissionType,
    pub max_invocations_per_day: u32,
    pub allowed_hours: Vec<u32>,
    pub time_zone: String,
    pub max_sensitivity: Option<DataSensitivity>,
    pub granted_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub granted_by: String,
}

text_enum!(AccessRequestStatus { Pending = "pending", Approved = "approved", Denied = "denied" });

/// An agent asking for a tool, and the admin's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRequest {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub tool_id: Uuid,
    pub justification: String,
    pub status: AccessRequestStatus,
    pub requested_at: DateTime<Utc>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub reviewed_by: String,
    pub review_reason: String,
    /// The grant an approval created.
    pub permission_id: Option<Uuid>,
}

/// A token as stored and as pushed to sidecars: its digest, never the token itself.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: Uuid,
    pub sha256: String,
    pub role: Role,
    pub agent_id: Option<Uuid>,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// Who is calling, as decided by the bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin {
        token_id: Option<Uuid>,
    },
    Agent {
        agent_id: Uuid,
        token_id: Uuid,
    },
    Sidecar {
        token_id: Uuid,
    },
    /// Read-only: sees what an admin sees, changes nothing.
    Auditor {
        token_id: Uuid,
    },
}

impl Principal {
    /// The id recorded as the actor in audit events.
    pub fn actor_id(&self) -> String {
        match self {
            Principal::Admin { token_id: Some(t) } => format!("admin:{t}"),
            Principal::Admin { token_id: None } => "admin:bootstrap".to_owned(),
            Principal::Agent { agent_id, .. } => agent_id.to_string(),
            Principal::Sidecar { token_id } => format!("sidecar:{token_id}"),
            Principal::Auditor { token_id } => format!("auditor:{token_id}"),
        }
    }
}

text_enum!(AuditAction {
    ToolInvoked = "tool_invoked",
    PermissionChecked = "permission_checked",
    CacheHit = "cache_hit",
    CacheMiss = "cache_miss",
    FallbackUsed = "fallback_used",
    RateLimited = "rate_limited",
    ErrorOccurred = "error_occurred",
    ToolRegistered = "tool_registered",
    ToolUpdated = "tool_updated",
    ToolDisabled = "tool_disabled",
    PermissionGranted = "permission_granted",
    PermissionRevoked = "permission_revoked",
    AccessRequested = "access_requested",
    AccessReviewed = "access_reviewed",
    TokenIssued = "token_issued",
    TokenRevoked = "token_revoked",
    ToolDeleted = "tool_deleted",
    CredentialSet = "credential_set",
    AgentCreated = "agent_created",
    FallbackStrategySet = "fallback_strategy_set",
    AgentUpdated = "agent_updated",
    AgentDeleted = "agent_deleted",
    FallbackStrategyDeleted = "fallback_strategy_deleted",
    ToolChangeDetected = "tool_change_detected",
    ToolChangeReviewed = "tool_change_reviewed",
    ToolReviewPolicySet = "tool_review_policy_set",
    CredentialDeleted = "credential_deleted",
});
text_enum!(ExecutionStatus {
    Success = "success",
    PartialSuccess = "partial_success",
    ValidationError = "validation_error",
    ExecutionError = "execution_error",
    Timeout = "timeout",
    RateLimited = "rate_limited",
    PermissionDenied = "permission_denied",
    CircuitOpen = "circuit_open",
});

/// Size, status and digest of a result: enough to prove what came back without
/// keeping the output in the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSummary {
    pub size_bytes: u64,
    pub status: ExecutionStatus,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub event_id: Uuid,
    pub action: AuditAction,
    pub invocation_id: Option<Uuid>,
    pub actor_id: String,
    pub agent_id: Option<Uuid>,
    pub tool_id: Option<Uuid>,
    pub tool_version: u32,
    pub task_id: String,
    pub occurred_at: DateTime<Utc>,
    /// Already redacted.
    pub sanitized_parameters: Value,
    pub result: Option<ResultSummary>,
    pub success: bool,
    pub detail: String,
    pub compliance_frameworks: Vec<String>,
    pub data_classification: Option<DataSensitivity>,
    pub sidecar_id: String,
    pub permission_id: Option<Uuid>,
}

impl AuditEvent {
    /// Marks an administrative event as concerning `tool`: its version, data class and
    /// compliance frameworks, so the event is in that framework's reports.
    pub fn about(mut self, tool: &Tool) -> Self {
        self.tool_id = Some(tool.id);
        self.tool_version = tool.version;
        self.compliance_frameworks = tool.spec.compliance_frameworks.clone();
        self.data_classification = Some(tool.spec.requirements.data_sensitivity);
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub invocation_id: Uuid,
    pub tool_id: Uuid,
    pub tool_version: u32,
    pub status: ExecutionStatus,
    pub output: Value,
    pub error: String,
    pub duration_ms: u32,
    pub tokens_used: u32,
    pub cost: Decimal,
    pub completed_at: DateTime<Utc>,
    pub cache_hit: bool,
    pub attempts: u32,
    /// For rate-limited and circuit-open results: when a new call may succeed. Not stored.
    pub retry_after_ms: u32,
    /// An earlier good result served because the tool failed. Not stored.
    pub stale: bool,
    /// The tool the caller asked for, when a fallback answered. Not stored (the
    /// invocation record's `requested_tool_id` keeps it).
    pub fallback_from: Option<Uuid>,
}

text_enum!(FallbackCondition {
    OnTimeout = "on_timeout",
    OnRateLimit = "on_rate_limit",
    OnAuthFailure = "on_auth_failure",
    OnDataValidationFailure = "on_data_validation_failure",
    Always = "always",
});
text_enum!(DegradationMode { Full = "full", Cached = "cached", Partial = "partial", Abort = "abort" });

/// How a tool's calls are retried and what they fall back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FallbackStrategy {
    pub tool_id: Uuid,
    pub fallback_tool_ids: Vec<Uuid>,
    pub max_attempts: u32,
    pub initial_backoff_ms: u32,
    pub max_backoff_ms: u32,
    /// Empty means always.
    pub conditions: Vec<FallbackCondition>,
    pub mode: DegradationMode,
}

impl FallbackStrategy {
    /// The retry policy the sidecar runs for this tool: the strategy's own attempts
    /// and backoff bounds, with `defaults` only for the fields left unset (0), so what
    /// an admin configured is what runs.
    pub fn retry_policy(&self, defaults: crate::retry::RetryPolicy) -> crate::retry::RetryPolicy {
        let ms = |v: u32, default: std::time::Duration| {
            if v == 0 {
                default
            } else {
                std::time::Duration::from_millis(u64::from(v))
            }
        };
        crate::retry::RetryPolicy {
            max_attempts: if self.max_attempts == 0 {
                defaults.max_attempts
            } else {
                self.max_attempts
            },
            initial_backoff: ms(self.initial_backoff_ms, defaults.initial_backoff),
            max_backoff: ms(self.max_backoff_ms, defaults.max_backoff),
        }
    }

    /// Whether a call that failed with `status` (`auth_failure`: the tool answered
    /// 401/403) falls back.
    pub fn applies(&self, status: ExecutionStatus, auth_failure: bool) -> bool {
        if matches!(status, ExecutionStatus::Success | ExecutionStatus::PartialSuccess) {
            return false;
        }
        self.conditions.is_empty()
            || self.conditions.iter().any(|c| match c {
                FallbackCondition::Always => true,
                FallbackCondition::OnTimeout => status == ExecutionStatus::Timeout,
                FallbackCondition::OnRateLimit => status == ExecutionStatus::RateLimited,
                FallbackCondition::OnAuthFailure => auth_failure,
                FallbackCondition::OnDataValidationFailure => status == ExecutionStatus::ValidationError,
            })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InvocationRecord {
    pub invocation_id: Uuid,
    pub agent_id: Uuid,
    pub task_id: String,
    pub requested_tool_id: Uuid,
    /// Already redacted.
    pub parameters: Value,
    pub invoked_at: DateTime<Utc>,
    pub result: ToolResult,
    pub sidecar_id: String,
    pub task_category: String,
    /// The `SelectTool` decision this call followed.
    pub selection_id: Option<Uuid>,
    /// The caller went away (cancelled, or its connection dropped) before the answer;
    /// the call still ran to its end.
    pub caller_cancelled: bool,
}

/// What a sidecar reports; each is stored once by `event_id`.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncEvent {
    Audit(AuditEvent),
    Invocation(InvocationRecord),
}

impl SyncEvent {
    pub fn event_id(&self) -> Uuid {
        match self {
            SyncEvent::Audit(a) => a.event_id,
            // An invocation record is keyed by its invocation id: one per call.
            SyncEvent::Invocation(i) => i.invocation_id,
        }
    }
}

/// What a credential says besides its secret, kept in the clear beside the sealed
/// secret: where an API key goes, the user name of HTTP basic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialSettings {
    /// API keys: sent as this query parameter instead of a header.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query_param: String,
    /// HTTP basic: the user name (the secret is the password).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// OAuth 2.0 client credentials (the secret is the client secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Settings>,
    /// Mutual TLS: the client certificate chain, PEM (the secret is its private key).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_certificate_pem: String,
}

/// Where an OAuth 2.0 client-credentials token comes from and what it asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth2Settings {
    pub token_url: String,
    pub client_id: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Sent as `audience` when set (Auth0, Okta and others name the API this way).
    #[serde(default)]
    pub audience: String,
}

/// A tool's credential in the clear: only in control plane memory while building a
/// snapshot, on the sync stream, and in sidecar memory. Debug never shows the secret.
#[derive(Clone, PartialEq)]
pub struct Credential {
    pub tool_id: Uuid,
    pub auth_type: AuthType,
    /// Empty: sent as `authorization: Bearer <secret>`.
    pub header_name: String,
    pub secret: String,
    pub settings: CredentialSettings,
    /// Refused for calls after this instant.
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("tool_id", &self.tool_id)
            .field("auth_type", &self.auth_type)
            .field("header_name", &self.header_name)
            .field("settings", &self.settings)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// The header the sidecar adds to calls of the tool, if the credential goes in one.
    pub fn header(&self) -> Option<(String, String)> {
        if self.auth_type == AuthType::HttpBasic {
            use base64::Engine as _;
            let pair = format!("{}:{}", self.settings.username, self.secret);
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            return Some(("authorization".to_owned(), format!("Basic {encoded}")));
        }
        if !self.settings.query_param.is_empty() || matches!(self.auth_type, AuthType::OAuth2 | AuthType::MutualTls) {
            // Query keys go in the URL; OAuth 2.0 tokens are fetched per call; a client
            // certificate is presented in the TLS handshake.
            return None;
        }
        Some(if self.header_name.is_empty() {
            ("authorization".to_owned(), format!("Bearer {}", self.secret))
        } else {
            (self.header_name.to_ascii_lowercase(), self.secret.clone())
        })
    }

    /// The query parameter the sidecar adds to HTTP calls of the tool, if the
    /// credential goes in the query.
    pub fn query(&self) -> Option<(&str, &str)> {
        (self.auth_type != AuthType::HttpBasic && !self.settings.query_param.is_empty())
            .then_some((self.settings.query_param.as_str(), self.secret.as_str()))
    }

    /// Whether the credential has expired at `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// A credential as stored: encrypted.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCredential {
    pub tool_id: Uuid,
    pub auth_type: AuthType,
    pub header_name: String,
    pub sealed: crate::crypto::Sealed,
    pub updated_at: DateTime<Utc>,
    pub settings: CredentialSettings,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The state a sidecar serves from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub revision: u64,
    /// Shared: a revision that changes a few tools (learned statistics) shares the
    /// others with the revision before, so building and diffing it costs those few.
    pub tools: Vec<std::sync::Arc<Tool>>,
    pub permissions: Vec<Permission>,
    pub agents: Vec<Agent>,
    pub tokens: Vec<TokenRecord>,
    pub credentials: Vec<Credential>,
    pub fallbacks: Vec<FallbackStrategy>,
    /// `None`: the whole catalog. Otherwise the tools (with their permissions,
    /// credentials and fallbacks) of these agents only; agents and tokens are always
    /// whole, so a sidecar authenticates any agent and learns whose tools to ask for.
    pub scope: Option<Scope>,
}

/// The part of the catalog a sidecar holds (see [`crate::scope`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Agents whose granted tools (and the fallbacks those name) are held.
    pub agents: std::collections::BTreeSet<Uuid>,
    /// Tools held on demand besides (a call named them).
    pub tools: std::collections::BTreeSet<Uuid>,
    /// Every scope request of the stream up to this one is answered.
    pub request_id: u64,
}

text_enum!(ToolChangeStatus {
    Pending = "pending",
    Approved = "approved",
    Rejected = "rejected",
    Superseded = "superseded",
});

/// A changed definition of an approved tool, found on its MCP server (by an import or
/// the scheduled re-list), that sidecars do not serve until an admin approves it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolChange {
    pub id: Uuid,
    pub tool_id: Uuid,
    pub tool_name: String,
    /// The approved version the change was found against.
    pub base_version: u32,
    /// [`crate::definition::definition_hash`] of that version.
    pub base_hash: String,
    /// The server's definition merged onto the approved tool (governance kept).
    pub proposed: ToolSpec,
    pub proposed_hash: String,
    /// `import` or `relist`.
    pub source: String,
    pub status: ToolChangeStatus,
    pub detected_at: DateTime<Utc>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub reviewed_by: String,
    pub review_reason: String,
}

/// Whether an MCP server's changes to a provider's tools are approved without review.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolReviewPolicy {
    pub provider: String,
    pub auto_approve: bool,
    pub updated_at: DateTime<Utc>,
}
