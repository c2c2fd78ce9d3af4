//! The sidecar's caller-facing errors and their one mapping to gRPC status codes.
//! What goes wrong at the tool itself is not an error: it is a `ToolResult` status.

use tonic_types::StatusExt;
use toolplane_core::Violations;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    InvalidArgument(#[from] Violations),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error(
        "the daily invocation budget of this agent for this tool is spent ({limits:?} per day); it resets at {}",
        resets_at.to_rfc3339()
    )]
    QuotaExhausted {
        resets_at: chrono::DateTime<chrono::Utc>,
        limits: Vec<u32>,
    },
    #[error(
        "the daily spend budget of this agent is spent: {spent} of {budget} used today (UTC), and this call costs {cost}; it resets at {}",
        resets_at.to_rfc3339()
    )]
    SpendExhausted {
        budget: rust_decimal::Decimal,
        spent: rust_decimal::Decimal,
        cost: rust_decimal::Decimal,
        resets_at: chrono::DateTime<chrono::Utc>,
    },
    #[error("no snapshot from the control plane yet; retry shortly")]
    NoSnapshot,
    /// Cut off from the control plane for too long: tokens and grants may have been
    /// revoked since, so nothing is admitted until the sidecar syncs again.
    #[error(
        "the sidecar has not heard from the control plane for {} s (since {}), more than its maximum snapshot age of {} s (TOOLPLANE_MAX_SNAPSHOT_AGE): tokens and grants may have changed, so calls are refused until it syncs again",
        age.as_secs(),
        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        max_age.as_secs()
    )]
    Stale {
        age: std::time::Duration,
        since: chrono::DateTime<chrono::Utc>,
        max_age: std::time::Duration,
    },
    /// A scoped sidecar could not get what a call needs from the control plane.
    #[error("this sidecar does not hold {what} yet and could not fetch it: {why}; retry shortly")]
    ScopeFetch { what: String, why: String },
    #[error("the audit spool is full (the control plane is not acknowledging events); retry later")]
    SpoolFull,
    #[error("{0} is not implemented yet (see README: not implemented yet)")]
    Unimplemented(&'static str),
    /// A bug: the call's task panicked.
    #[error("{0}")]
    Internal(String),
}

impl From<ExecError> for tonic::Status {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::InvalidArgument(v) => v.to_status(),
            ExecError::NotFound(m) => tonic::Status::not_found(m),
            ExecError::PermissionDenied(m) => tonic::Status::permission_denied(m),
            e @ (ExecError::QuotaExhausted { resets_at, .. } | ExecError::SpendExhausted { resets_at, .. }) => {
                let wait = (resets_at - chrono::Utc::now()).to_std().unwrap_or_default();
                let mut details = tonic_types::ErrorDetails::new();
                details.set_retry_info(Some(wait));
                tonic::Status::with_error_details(tonic::Code::ResourceExhausted, e.to_string(), details)
            }
            e @ (ExecError::NoSnapshot
            | ExecError::Stale { .. }
            | ExecError::SpoolFull
            | ExecError::ScopeFetch { .. }) => tonic::Status::unavailable(e.to_string()),
            e @ ExecError::Unimplemented(_) => tonic::Status::unimplemented(e.to_string()),
            ExecError::Internal(m) => tonic::Status::internal(m),
        }
    }
}
