//! The toolplane executor sidecar: serves `Executor` to the agent beside it, from the
//! latest snapshot the control plane pushed, and streams every result and audit event
//! back, acked and at least once.

pub mod auth;
pub mod cache_seal;
pub mod config;
pub mod detach;
pub mod error;
pub mod executor;
pub mod http_client;
pub mod mcp_client;
pub mod mcp_search;
pub mod mcp_server;
pub mod oauth;
pub mod outbox;
pub mod quota;
pub mod rate_limit;
pub mod redis_conn;
pub mod reliability;
pub mod resource_metadata;
pub mod result_cache;
pub mod scope_fetch;
pub mod selection_client;
pub mod server;
pub mod shared_redis;
pub mod snapshot;
pub mod spend;
pub mod spool;
pub mod sync;
pub mod task;
pub mod tool_metrics;
pub mod upstream;
pub mod upstream_oauth;
pub mod wire;
