//! Generated code for the public gRPC contract, package `toolplane.v1`.
//!
//! Kept in its own crate so the generated code is compiled once and both binaries,
//! the CLI and the tests speak exactly the same contract.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("toolplane.v1");
}

/// Encoded `FileDescriptorSet` of every toolplane.v1 file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("toolplane_descriptor");
