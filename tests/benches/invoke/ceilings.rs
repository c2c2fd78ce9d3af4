//! Reference fronts for `make bench-invoke`, each in a process of its own: what a bare
//! HTTP proxy and a bare gRPC front reach on this machine, so the sidecar's numbers can
//! be read against what any front could do here. Neither authenticates, checks
//! permissions, limits, caches or audits; both run on one worker thread, as the
//! sidecar does by default.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::{Request, Response, Status};
use toolplane_core::json::{struct_to_json, value_to_pb};
use toolplane_proto::v1 as pb;

/// Set to the tool server's address: serve as a bare HTTP/1.1 reverse proxy to it.
pub const PROXY_ROLE: &str = "INVOKE_BENCH_BARE_PROXY";
/// Set to the tool server's address: serve `Executor.Invoke` by forwarding to it.
pub const GRPC_FORWARD_ROLE: &str = "INVOKE_BENCH_GRPC_FORWARD";

type Http = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Serves `handle` over HTTP/1.1 and h2 on a fresh loopback port until the process
/// ends; the bench's tool server and the bare proxy both answer this way.
pub async fn serve_http<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
    addr
}

/// Forwards every request, body and all, to `upstream`, and its answer back.
pub async fn serve_bare_proxy(upstream: SocketAddr) -> SocketAddr {
    let http = http_client();
    serve_http(move |req: hyper::Request<hyper::body::Incoming>| {
        let http = http.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let uri: hyper::Uri = format!("http://{upstream}{}", parts.uri.path()).parse().unwrap();
            let forward = hyper::Request::builder()
                .method(parts.method)
                .uri(uri)
                .body(Full::new(body))
                .unwrap();
            let resp = http.request(forward).await.unwrap();
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Ok(hyper::Response::from_parts(parts, Full::new(body)))
        }
    })
    .await
}

/// `Invoke` and nothing else: the parameters as JSON to the tool, its JSON answer back
/// as the result's output, so the least any gRPC front to an HTTP tool must do.
struct Forward {
    http: Http,
    url: hyper::Uri,
}

#[tonic::async_trait]
impl pb::executor_server::Executor for Forward {
    async fn invoke(&self, request: Request<pb::InvokeRequest>) -> Result<Response<pb::InvokeResponse>, Status> {
        let params = struct_to_json(request.into_inner().parameters);
        let req = hyper::Request::post(self.url.clone())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&params).unwrap())))
            .unwrap();
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .to_bytes();
        let output: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::InvokeResponse {
            result: Some(pb::ToolResult {
                status: pb::ToolExecutionStatus::Success as i32,
                output: Some(value_to_pb(&output)),
                ..Default::default()
            }),
        }))
    }

    type BatchInvokeStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BatchInvokeResponse, Status>> + Send>>;

    async fn batch_invoke(
        &self,
        _: Request<pb::BatchInvokeRequest>,
    ) -> Result<Response<Self::BatchInvokeStream>, Status> {
        Err(Status::unimplemented("only Invoke"))
    }

    async fn execute_task(
        &self,
        _: Request<pb::ExecuteTaskRequest>,
    ) -> Result<Response<pb::ExecuteTaskResponse>, Status> {
        Err(Status::unimplemented("only Invoke"))
    }
}

/// Serves [`Forward`] to `<upstream>/fast`, with the health service beside it as the
/// sidecar has.
pub async fn serve_grpc_forward(upstream: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let forward = Forward {
        http: http_client(),
        url: format!("http://{upstream}/fast").parse().unwrap(),
    };
    let (_, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(health)
            .add_service(pb::executor_server::ExecutorServer::new(forward))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}
