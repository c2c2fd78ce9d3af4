//! The toolplane control plane: the source of truth for tools, agents, tokens and
//! grants, the sink of every sidecar's audit events and results, behind gRPC.

pub mod auth;
pub mod checkpoints;
pub mod config;
pub mod console;
pub mod error;
pub mod mcp_import;
pub mod mtls;
pub mod observe;
pub mod openapi_import;
pub mod relist;
pub mod selection;
pub mod server;
pub mod services;
pub mod state;
pub mod storage;
pub mod task_memory;
pub mod tool_review;
