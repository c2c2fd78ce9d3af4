//! Server plumbing shared by the control plane and the sidecar, so both authenticate,
//! log and shut down the same way.

pub mod auth;
pub mod config;
pub mod egress;
pub mod grpc;
pub mod lifecycle;
pub mod metrics;
pub mod rpc_metrics;
pub mod telemetry;
pub mod tls;
pub mod tool_tls;
