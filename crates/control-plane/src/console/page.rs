//! What every console page shares: the layout's data, error pages, the stylesheet and
//! the security headers (a strict Content-Security-Policy: no inline script or style,
//! nothing from elsewhere, no framing).

use askama::Template;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use super::session::Viewer;

pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../templates/console/console.css"),
    )
        .into_response()
}

pub async fn not_found() -> Response {
    ConsoleError::NotFound("no such page".into()).into_response()
}

/// The layout's data: who is logged in, the CSRF token for its forms, the active tab.
pub struct Layout {
    pub who: String,
    pub role: String,
    pub csrf: String,
    pub read_only: bool,
    pub tab: &'static str,
}

impl Layout {
    pub fn of(v: &Viewer, tab: &'static str) -> Self {
        Self {
            who: v.who(),
            role: if v.read_only() { "auditor (read-only)" } else { "admin" }.to_owned(),
            csrf: v.csrf.clone(),
            read_only: v.read_only(),
            tab,
        }
    }
}

/// Renders a template; a template that fails to render is a 500, logged.
pub fn html(t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => Html(body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console: a template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page failed to render").into_response()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Rpc(#[from] tonic::Status),
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    status: u16,
    title: String,
    message: String,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ConsoleError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            ConsoleError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            ConsoleError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            ConsoleError::Rpc(s) => {
                let status = match s.code() {
                    tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
                    tonic::Code::NotFound => StatusCode::NOT_FOUND,
                    tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition | tonic::Code::Aborted => {
                        StatusCode::CONFLICT
                    }
                    tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                    tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                    tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, s.message().to_owned())
            }
        };
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            message,
        };
        let mut r = html(&page);
        *r.status_mut() = status;
        r
    }
}

pub type PageResult = Result<Response, ConsoleError>;

/// Short form of an id for tables (the full id is in the link and the title): its last
/// 8 characters, the random part of a UUIDv7 (its first ones are a timestamp).
pub fn short(id: &str) -> String {
    let n = id.chars().count();
    if n <= 8 {
        return id.to_owned();
    }
    format!("…{}", id.chars().skip(n - 8).collect::<String>())
}

/// A timestamp as `YYYY-MM-DD HH:MM:SS` UTC, or empty.
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// A JSON value for display, indented.
pub fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
