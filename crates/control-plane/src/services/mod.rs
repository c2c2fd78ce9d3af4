//! gRPC service implementations, one file per service of `toolplane.v1`.

pub mod audit;
mod audit_checkpoints;
pub mod identity;
pub mod learning;
pub(crate) mod paging;
pub mod permissions;
pub mod registry;
pub mod selector;
pub mod sync;
pub mod sync_fleet;
mod sync_ingest;
pub mod tool_review;

use toolplane_core::Violations;
use uuid::Uuid;

use crate::error::ApiError;

/// Parses a required UUID field of a request.
pub(crate) fn uuid_field(field: &str, value: &str) -> Result<Uuid, ApiError> {
    Ok(toolplane_core::convert::parse_uuid(field, value)?)
}

/// An optional UUID field: empty means unset.
pub(crate) fn opt_uuid(field: &str, value: &str) -> Result<Option<Uuid>, ApiError> {
    if value.is_empty() {
        Ok(None)
    } else {
        uuid_field(field, value).map(Some)
    }
}

pub(crate) fn required<T>(field: &str, v: Option<T>) -> Result<T, ApiError> {
    v.ok_or_else(|| Violations::single(field, "is required").into())
}
