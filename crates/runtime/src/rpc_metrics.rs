//! Per-RPC metrics on both servers, in one tower layer placed outside [`AuthLayer`] so
//! refused calls (UNAUTHENTICATED) are counted too.
//!
//! What is recorded, by `grpc_service`, `grpc_method` and `grpc_type` (`unary`,
//! `client_stream`, `server_stream`, `bidi_stream`):
//!
//! - [`RPC_STARTED`]: when the request arrives, so a long-lived stream (the sidecars'
//!   `SidecarSync.Connect`) shows up while it is open, not only when it ends.
//! - [`RPC_HANDLED`], with `grpc_code` (`OK`, `PERMISSION_DENIED`, ...): when the call
//!   is over, i.e. when its `grpc-status` is sent: in the response headers for a
//!   trailers-only answer (every error a handler or the auth layer returns before the
//!   first message), otherwise in the trailers after the last message. A call whose
//!   client went away before the status was sent counts as `CANCELLED`.
//! - [`RPC_SECONDS`]: from the request's arrival to that same moment. For streams this
//!   is the stream's lifetime; dashboards and alerts filter on `grpc_type="unary"` for
//!   latency.
//!
//! Label values are bounded: a path is labelled as itself only when it names a method
//! of a `toolplane.v1` service, gRPC health or gRPC reflection (known from the
//! compiled descriptors); anything else (scanners, typos, other protocols) is
//! `other`/`other`.
//!
//! [`AuthLayer`]: crate::auth::AuthLayer
//! [`RPC_STARTED`]: crate::metrics::RPC_STARTED
//! [`RPC_HANDLED`]: crate::metrics::RPC_HANDLED
//! [`RPC_SECONDS`]: crate::metrics::RPC_SECONDS

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use prost::Message as _;
use tonic::Code;
use tower::{Layer, Service};

use crate::metrics::{RPC_HANDLED, RPC_SECONDS, RPC_STARTED};

/// The labels of one known method (or of `other`), and its series once registered.
#[derive(Debug)]
struct Method {
    service: String,
    method: String,
    kind: &'static str,
    handles: OnceLock<Handles>,
}

/// A method's series, registered on its first call once the recorder is installed:
/// looking a labelled series up builds its key (label strings and all) and hashes it
/// into the registry, three times per call; a handle is one atomic add.
#[derive(Debug)]
struct Handles {
    started: metrics::Counter,
    seconds: metrics::Histogram,
    /// By `grpc_code` (its number): each registered when that code first occurs, so
    /// only codes that happened appear, as without handles.
    handled: [OnceLock<metrics::Counter>; 17],
}

/// Every method either binary could be asked for, by HTTP/2 path (`/pkg.Service/Method`).
fn known() -> &'static HashMap<String, Method> {
    static KNOWN: OnceLock<HashMap<String, Method>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let sets: [&[u8]; 4] = [
            toolplane_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut out = HashMap::new();
        for set in sets {
            // The descriptors are compiled in; one that does not decode only means its
            // methods are labelled `other`.
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = format!("{package}.{}", service.name.unwrap_or_default());
                    for m in service.method {
                        let method = m.name().to_owned();
                        let kind = match (m.client_streaming(), m.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        out.insert(
                            format!("/{service_name}/{method}"),
                            Method {
                                service: service_name.clone(),
                                method,
                                kind,
                                handles: OnceLock::new(),
                            },
                        );
                    }
                }
            }
        }
        out
    })
}

static OTHER: Method = Method {
    service: String::new(),
    method: String::new(),
    kind: "unknown",
    handles: OnceLock::new(),
};

fn method_of(path: &str) -> &'static Method {
    known().get(path).unwrap_or(&OTHER)
}

impl Method {
    fn service(&'static self) -> &'static str {
        if self.service.is_empty() {
            "other"
        } else {
            &self.service
        }
    }

    fn method(&'static self) -> &'static str {
        if self.method.is_empty() { "other" } else { &self.method }
    }

    /// The method's series; `None` until the recorder is installed (see
    /// [`crate::metrics::recording`]).
    fn handles(&'static self) -> Option<&'static Handles> {
        if let Some(h) = self.handles.get() {
            return Some(h);
        }
        if !crate::metrics::recording() {
            return None;
        }
        Some(self.handles.get_or_init(|| Handles {
            started: metrics::counter!(RPC_STARTED,
                "grpc_service" => self.service(),
                "grpc_method" => self.method(),
                "grpc_type" => self.kind),
            seconds: metrics::histogram!(RPC_SECONDS,
                "grpc_service" => self.service(),
                "grpc_method" => self.method(),
                "grpc_type" => self.kind),
            handled: Default::default(),
        }))
    }

    /// Counts one call finished with `code`.
    fn count_handled(&'static self, code: Code) {
        let counter = || {
            metrics::counter!(RPC_HANDLED,
                "grpc_service" => self.service(),
                "grpc_method" => self.method(),
                "grpc_type" => self.kind,
                "grpc_code" => code_name(code))
        };
        let slot = usize::try_from(i32::from(code))
            .ok()
            .and_then(|i| self.handles().and_then(|h| h.handled.get(i)));
        match slot {
            Some(slot) => slot.get_or_init(counter).increment(1),
            None => counter().increment(1),
        }
    }
}

/// The canonical name of a status code, as the gRPC spec spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One call in flight: recorded as handled exactly once, as `CANCELLED` if it is
/// dropped (the client went away) before its status was sent.
struct Call {
    method: &'static Method,
    started: Instant,
    done: bool,
}

impl Call {
    fn start(path: &str) -> Self {
        let method = method_of(path);
        match method.handles() {
            Some(h) => h.started.increment(1),
            None => metrics::counter!(RPC_STARTED,
                "grpc_service" => method.service(),
                "grpc_method" => method.method(),
                "grpc_type" => method.kind)
            .increment(1),
        }
        Self {
            method,
            started: Instant::now(),
            done: false,
        }
    }

    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let m = self.method;
        m.count_handled(code);
        let seconds = self.started.elapsed().as_secs_f64();
        match m.handles() {
            Some(h) => h.seconds.record(seconds),
            None => metrics::histogram!(RPC_SECONDS,
                "grpc_service" => m.service(),
                "grpc_method" => m.method(),
                "grpc_type" => m.kind)
            .record(seconds),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|v| Code::from_bytes(v.as_bytes()))
}

/// Counts and times every RPC; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = http::Response<RpcMetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let mut call = Call::start(req.uri().path());
        let response = self.inner.call(req);
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    // A status in the headers is a trailers-only answer: the call is
                    // over (and its empty body may never be polled).
                    if let Some(code) = grpc_status(response.headers()) {
                        call.finish(code);
                    }
                    Ok(response.map(|inner| RpcMetricsBody { inner, call }))
                }
                Err(e) => {
                    call.finish(Code::Unknown);
                    Err(e)
                }
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the trailers carrying its status
    /// are sent (or when it ends or fails without them).
    pub struct RpcMetricsBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: Body> Body for RpcMetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call.finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(Code::Unknown),
            Poll::Ready(None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[path = "rpc_metrics_tests.rs"]
mod tests;
