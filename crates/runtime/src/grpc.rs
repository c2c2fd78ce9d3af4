//! gRPC services both servers expose without a token: health and reflection.

use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthReporter;

/// The reflection services' own names, listed by both binaries.
const REFLECTION: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];
const HEALTH: &str = "grpc.health.v1.Health";

/// The toolplane.v1 descriptors a binary that serves `services` describes: each file
/// with the services it does not serve removed (the sidecar's `executor.proto` imports
/// `selector.proto`, which declares the control plane's `ToolSelector`), and only the
/// files those services need.
fn served_descriptors(services: &[&str]) -> anyhow::Result<prost_types::FileDescriptorSet> {
    use prost::Message as _;
    let mut set = prost_types::FileDescriptorSet::decode(toolplane_proto::FILE_DESCRIPTOR_SET)?;
    let mut needed = std::collections::HashSet::new();
    let mut todo = Vec::new();
    for file in &mut set.file {
        let package = file.package().to_owned();
        file.service
            .retain(|s| services.contains(&format!("{package}.{}", s.name()).as_str()));
        if !file.service.is_empty() {
            todo.push(file.name().to_owned());
        }
    }
    while let Some(name) = todo.pop() {
        if !needed.insert(name.clone()) {
            continue;
        }
        if let Some(file) = set.file.iter().find(|f| f.name() == name) {
            todo.extend(file.dependency.iter().cloned());
        }
    }
    set.file.retain(|f| needed.contains(f.name()));
    Ok(set)
}

/// Reflection over the toolplane.v1 `services` this binary serves, grpc.health.v1 and
/// reflection itself, in both protocol versions (grpcurl 1.8, the one installable here,
/// speaks only v1alpha). Services it does not serve are neither listed nor described,
/// so a client is not led to call what can only answer UNIMPLEMENTED.
pub fn reflection(
    services: &[&str],
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
)> {
    let served = served_descriptors(services)?;
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(served.clone())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
        for name in services.iter().copied().chain([HEALTH]).chain(REFLECTION) {
            b = b.with_service_name(name);
        }
        b
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// A health service with `services` (and the server as a whole, "") SERVING.
pub async fn health(
    services: &[&str],
) -> (
    HealthReporter,
    HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    set_health(&reporter, services, true).await;
    (reporter, service)
}

pub async fn set_health(reporter: &HealthReporter, services: &[&str], serving: bool) {
    crate::metrics::set_serving(serving);
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in services.iter().chain(std::iter::once(&"")) {
        reporter.set_service_status(*name, status).await;
    }
}

#[cfg(test)]
#[path = "grpc_tests.rs"]
mod tests;
