//! Logging and tracing set-up. Logs go to stderr (text or JSON); stdout carries only
//! the `listening` line that scripts and tests read. With an OTLP endpoint configured
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`), spans are exported over OTLP/gRPC too, and W3C
//! trace context links them to the caller's trace.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

/// Flushes exported spans when the process ends.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("could not flush spans: {e}");
        }
    }
}

/// Whether spans are exported (an OTLP endpoint is configured).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans go anywhere but the logs: hot paths skip building per-call spans
/// nobody will see (the log layer formats every span's fields, call after call).
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level.
/// `otlp_endpoint`: export spans there as `service`.
pub fn init(format: LogFormat, service: &'static str, otlp_endpoint: Option<&str>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let provider = otlp_endpoint.and_then(|endpoint| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build();
        match exporter {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service)
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                eprintln!("cannot export spans to {endpoint}: {e}; tracing to logs only");
                None
            }
        }
    });
    EXPORTING.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

use tracing_subscriber::Layer as _;

/// Makes `span` a child of the caller's `traceparent` (when valid), and returns the
/// `traceparent` to send downstream: this span when spans are exported, else a fresh
/// child span id in the caller's trace (or a new trace).
pub fn continue_trace(span: &tracing::Span, incoming: Option<&str>) -> String {
    if let Some(tp) = incoming {
        let carrier = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(cx);
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
    } else {
        toolplane_core::trace::child(incoming)
    }
}
