//! gRPC services both servers expose without a token: health and reflection.

use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthReporter;

/// Reflection over every toolplane.v1 file and grpc.health.v1, in both protocol
/// versions: grpcurl 1.8 (the one installable here) speaks only v1alpha.
pub fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
)> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(toolplane_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(toolplane_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
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
