//! The control plane's errors and their one mapping to gRPC status codes.

use toolplane_core::Violations;

use crate::storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    InvalidArgument(#[from] Violations),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Something the request depends on (e.g. an MCP server) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0} is not implemented yet (see README: not implemented yet)")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidArgument(v) => v.to_status(),
            ApiError::NotFound(m) => tonic::Status::not_found(m),
            ApiError::AlreadyExists(m) => tonic::Status::already_exists(m),
            ApiError::PermissionDenied(m) => tonic::Status::permission_denied(m),
            ApiError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            ApiError::Unavailable(m) => tonic::Status::unavailable(m),
            e @ ApiError::Unimplemented(_) => tonic::Status::unimplemented(e.to_string()),
            ApiError::Storage(StoreError::Conflict(m)) => tonic::Status::already_exists(m),
            ApiError::Storage(StoreError::NotFound(m)) => tonic::Status::not_found(format!("{m} not found")),
            ApiError::Storage(StoreError::Unavailable(m)) => {
                tracing::warn!(error = %m, "storage unavailable");
                tonic::Status::unavailable("storage is unavailable; retry later")
            }
            ApiError::Storage(StoreError::Backend(m)) => {
                // Details stay in the log: they may name tables, values or hosts.
                tracing::error!(error = %m, "storage failure");
                tonic::Status::internal("internal storage error")
            }
        }
    }
}
