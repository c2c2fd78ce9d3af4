//! Domain model and I/O-free logic shared by the control plane, the sidecar and the CLI:
//! conversions between the wire contract and the domain, JSON Schema checks, canonical
//! JSON and digests, redaction, tokens and permission evaluation.

pub mod audit;
pub mod audit_checkpoint;
pub mod audit_clean;
pub mod audit_export;
pub mod cache_key;
pub mod call_limits;
pub mod circuit;
pub mod client;
pub mod compliance;
pub mod convert;
pub mod crypto;
pub mod definition;
pub mod delta;
pub mod endpoint;
pub mod error;
pub mod http_binding;
pub mod json;
pub mod model;
pub mod permission;
pub mod redact;
pub mod retry;
pub mod schema;
pub mod scope;
pub mod stats;
pub mod token;
pub mod trace;
pub mod usage;
pub mod validate;

#[doc(hidden)]
pub mod testutil;

pub use error::{Violation, Violations};
