//! Generates the toolplane.v1 client and server code and the file descriptor set
//! served by gRPC reflection. Uses the vendored protoc so no system package is needed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        return generate(Some(protoc));
    }
    generate(None)
}

fn generate(protoc: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let dir = root.join("toolplane/v1");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    files.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    if let Some(protoc) = protoc {
        config.protoc_executable(protoc);
    }
    // `SidecarSync.Connect` would clash with the generated `connect` constructor, so
    // clients are built from a `Channel` (`XClient::new(channel)`).
    tonic_prost_build::configure()
        .build_transport(false)
        .file_descriptor_set_path(out.join("toolplane_descriptor.bin"))
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
