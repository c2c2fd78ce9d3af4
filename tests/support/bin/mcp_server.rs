//! A real MCP server (rmcp, Streamable HTTP) for tests. `--variant 2` serves a changed
//! catalog (an edited description and one more tool), to test re-imports;
//! `--tools N` adds N generated tools (`tool_0`..) for large catalogs. With
//! `--tls-cert`/`--tls-key` (PEM) it serves https; with `--require-header name=value`
//! it answers 401 to requests without that header.
//!
//! Prints `toolplane-test-mcp-server listening grpc=<addr>` (the harness's format).

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

#[derive(Clone)]
struct Catalog {
    variant: u32,
    generated: u32,
    /// MCP sessions opened so far (the service factory runs once per session).
    sessions: Arc<std::sync::atomic::AtomicU64>,
}

fn schema(v: Value) -> Arc<serde_json::Map<String, Value>> {
    Arc::new(v.as_object().cloned().unwrap_or_default())
}

impl Catalog {
    fn tools(&self) -> Vec<Tool> {
        let numbers = json!({"type": "object", "required": ["a", "b"],
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}}});
        let sum_description = if self.variant >= 2 {
            "Add two numbers (exactly)"
        } else {
            "Add two numbers"
        };
        let mut tools = vec![
            Tool::new("sum", sum_description, schema(numbers.clone()))
                .annotate(ToolAnnotations::new().read_only(true).idempotent(true)),
            Tool::new(
                "echo",
                "Repeat a message back",
                schema(
                    json!({"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}),
                ),
            )
            .annotate(ToolAnnotations::new().read_only(true)),
            Tool::new(
                "deleteNote",
                "Delete a note by id",
                schema(json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}})),
            )
            .annotate(
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(true)
                    .idempotent(true),
            ),
            Tool::new(
                "broken",
                "A tool whose schema is not valid JSON Schema",
                schema(json!({"type": "object", "properties": {"x": {"type": "nonsense"}}})),
            ),
        ];
        tools.push(
            Tool::new(
                "sessions",
                "How many MCP sessions this server has opened",
                schema(json!({"type": "object"})),
            )
            .annotate(ToolAnnotations::new().read_only(true)),
        );
        for i in 0..self.generated {
            tools.push(
                Tool::new(
                    format!("tool_{i}"),
                    format!("Generated tool number {i}"),
                    schema(json!({"type": "object"})),
                )
                .annotate(ToolAnnotations::new().read_only(true)),
            );
        }
        if self.variant >= 2 {
            tools.push(
                Tool::new("multiply", "Multiply two numbers", schema(numbers))
                    .annotate(ToolAnnotations::new().read_only(true).idempotent(true)),
            );
        }
        tools
    }
}

impl ServerHandler for Catalog {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        let result = match request.name.as_ref() {
            "sum" => CallToolResult::structured(
                json!({"sum": args["a"].as_f64().unwrap_or(0.0) + args["b"].as_f64().unwrap_or(0.0)}),
            ),
            "multiply" => CallToolResult::structured(
                json!({"product": args["a"].as_f64().unwrap_or(0.0) * args["b"].as_f64().unwrap_or(0.0)}),
            ),
            "echo" => CallToolResult::success(vec![ContentBlock::text(args["message"].as_str().unwrap_or_default())]),
            "deleteNote" => CallToolResult::success(vec![ContentBlock::text("deleted")]),
            "sessions" => {
                CallToolResult::structured(json!({"sessions": self.sessions.load(std::sync::atomic::Ordering::SeqCst)}))
            }
            other => CallToolResult::error(vec![ContentBlock::text(format!("no tool {other}"))]),
        };
        Ok(result.into())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let variant: u32 = flag("--variant").map_or(Ok(1), |v| v.parse())?;
    let listen = flag("--listen").unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let generated: u32 = flag("--tools").map_or(Ok(0), |v| v.parse())?;
    let required =
        flag("--require-header").and_then(|h| h.split_once('=').map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned())));
    let tls = match (flag("--tls-cert"), flag("--tls-key")) {
        (Some(cert), Some(key)) => {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&cert)?.collect::<Result<_, _>>()?;
            let key = PrivateKeyDer::from_pem_file(&key)?;
            let mut config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()?
                    .with_no_client_auth()
                    .with_single_cert(certs, key)?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
        _ => None,
    };
    let catalog = Catalog {
        variant,
        generated,
        sessions: Arc::default(),
    };
    let service: StreamableHttpService<Catalog, LocalSessionManager> = StreamableHttpService::new(
        move || {
            catalog.sessions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(catalog.clone())
        },
        Arc::default(),
        StreamableHttpServerConfig::default().with_sse_keep_alive(None),
    );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("toolplane-test-mcp-server listening grpc={}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let (service, required, tls) = (service.clone(), required.clone(), tls.clone());
        let guarded = tower::util::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (service, required) = (service.clone(), required.clone());
            async move {
                if let Some((name, value)) = &required
                    && req.headers().get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
                {
                    let body = http_body_util::Full::new(bytes::Bytes::from_static(b"credential required"));
                    let mut refused = http::Response::new(http_body_util::BodyExt::boxed(body));
                    *refused.status_mut() = http::StatusCode::UNAUTHORIZED;
                    return Ok::<_, std::convert::Infallible>(refused);
                }
                Ok(service.handle(req).await)
            }
        });
        let service = TowerToHyperService::new(guarded);
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}
