//! A real HTTP tool server for tests: well-behaved and misbehaving routes, and a count
//! of the calls each route received (to prove when no upstream call was made).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Clone, Default)]
pub struct ToolServer {
    pub addr: Option<SocketAddr>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    bodies: Arc<Mutex<Vec<(String, Value)>>>,
    headers: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
    /// `/switch/...` paths that fail now ([`ToolServer::set_failing`]).
    failing: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl ToolServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Self {
            addr: Some(listener.local_addr().unwrap()),
            ..Self::default()
        };
        let state = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { state.handle(req).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.unwrap())
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Makes a `/switch/...` path fail slowly (300 ms, then 503) or answer again, so a
    /// tool turns bad without any change to its registration.
    pub fn set_failing(&self, path: &str, failing: bool) {
        let mut set = self.failing.lock().unwrap();
        if failing {
            set.insert(path.to_owned());
        } else {
            set.remove(path);
        }
    }

    /// Parameters each call received, in order.
    pub fn bodies(&self, path: &str) -> Vec<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Request headers each call carried, in order.
    pub fn headers(&self, path: &str) -> Vec<http::HeaderMap> {
        self.headers
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .collect()
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        // `/redirect?to=<url>`: a 307 to `url` (method, body and headers kept by any
        // client that follows it).
        let redirect_to = req.uri().query().and_then(|q| q.strip_prefix("to=")).map(str::to_owned);
        self.headers.lock().unwrap().push((path.clone(), req.headers().clone()));
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let hit = {
            let mut hits = self.hits.lock().unwrap();
            let n = hits.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let params: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.bodies.lock().unwrap().push((path.clone(), params.clone()));
        if let ("/redirect", Some(to)) = (path.as_str(), redirect_to) {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            resp.headers_mut()
                .insert(http::header::LOCATION, http::HeaderValue::from_str(&to).unwrap());
            return Ok(resp);
        }
        let (status, body) = match path.as_str() {
            "/word_count" => {
                let text = params["text"].as_str().unwrap_or_default();
                (
                    StatusCode::OK,
                    json!({"words": text.split_whitespace().count()}).to_string(),
                )
            }
            "/echo" => (StatusCode::OK, params.to_string()),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                (StatusCode::OK, "{}".to_owned())
            }
            "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"boom"}"#.to_owned()),
            // Unavailable twice, then fine, over and over.
            "/flaky" | "/flaky_write" if hit % 3 != 0 => (StatusCode::SERVICE_UNAVAILABLE, "{}".to_owned()),
            "/flaky" | "/flaky_write" => (StatusCode::OK, json!({"words": 1}).to_string()),
            // Rate limited (Retry-After: 1) every other call.
            "/throttled" if hit % 2 == 1 => {
                let mut resp = Response::new(Full::new(Bytes::from("{}")));
                *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                resp.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("1"));
                return Ok(resp);
            }
            "/throttled" => (StatusCode::OK, json!({"words": 2}).to_string()),
            "/bad_json" => (StatusCode::OK, "this is not json".to_owned()),
            // A failure whose body is not text: NUL bytes and invalid UTF-8.
            "/binary_error" => {
                let mut resp = Response::new(Full::new(Bytes::from_static(b"oops\x00\xff\xfe{\x00}\xc3(")));
                *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return Ok(resp);
            }
            "/bad_output" => (StatusCode::OK, json!({"words": "many"}).to_string()),
            // Refuse the credential, quoting it back as careless APIs and proxies do.
            "/unauthorized_echo" => (StatusCode::UNAUTHORIZED, echo_credential(&authorization)),
            "/unavailable_echo" => (StatusCode::SERVICE_UNAVAILABLE, echo_credential(&authorization)),
            // Always unavailable (retryable); each path under it counts its own calls.
            p if p.starts_with("/unavailable/") => (StatusCode::SERVICE_UNAVAILABLE, "{}".to_owned()),
            // Counts words, or, while set failing, is slow and unavailable.
            p if p.starts_with("/switch/") => {
                if self.failing.lock().unwrap().contains(p) {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    (StatusCode::SERVICE_UNAVAILABLE, "{}".to_owned())
                } else {
                    let text = params["text"].as_str().unwrap_or_default();
                    (
                        StatusCode::OK,
                        json!({"words": text.split_whitespace().count()}).to_string(),
                    )
                }
            }
            // Counts words like /word_count; each path under it counts its own calls.
            p if p.starts_with("/count/") => {
                let text = params["text"].as_str().unwrap_or_default();
                (
                    StatusCode::OK,
                    json!({"words": text.split_whitespace().count()}).to_string(),
                )
            }
            _ => (StatusCode::NOT_FOUND, "{}".to_owned()),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        Ok(resp)
    }
}

/// An error body that quotes the request's `Authorization` header, and its token alone
/// in prose and URL-encoded (shapes no generic redaction recognises).
fn echo_credential(authorization: &str) -> String {
    let token = authorization.split_once(' ').map_or(authorization, |(_, t)| t);
    let encoded: String = token
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!(
        "invalid credentials\nreceived header Authorization: {authorization}\n\tthe key you sent ({token}) is revoked;\nsee https://auth.example/keys?k={encoded} for details"
    )
}
