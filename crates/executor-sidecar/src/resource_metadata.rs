//! The MCP front door as an OAuth 2.1 protected resource: its metadata document
//! (RFC 9728) naming the authorization servers, and the 401 / 403 answers that point
//! clients at it (`WWW-Authenticate: Bearer resource_metadata="…"`), as the MCP
//! authorization spec has clients discover where to get a token.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde_json::json;

use crate::auth::Refusal;
use crate::oauth::JwtValidator;

/// The well-known path of protected-resource metadata (RFC 9728 §3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

type Body = BoxBody<Bytes, std::convert::Infallible>;

pub struct Metadata {
    /// Where this document is served, for `WWW-Authenticate`.
    url: String,
    /// Paths it is answered at: the path-aware one (RFC 9728 §3.1) and the root one
    /// older clients try.
    paths: [String; 2],
    document: Bytes,
}

/// Splits `scheme://authority/path` into the origin and the path (without a trailing
/// slash).
fn split_url(url: &str) -> (String, String) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (String::new(), url.to_owned());
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.trim_end_matches('/');
    (
        format!("{scheme}://{authority}"),
        if path.is_empty() {
            String::new()
        } else {
            format!("/{path}")
        },
    )
}

impl Metadata {
    pub fn new(oauth: &JwtValidator) -> Self {
        let resource = &oauth.settings().resource;
        let (origin, path) = split_url(resource);
        let document = json!({
            "resource": resource,
            "authorization_servers": oauth.authorization_servers(),
            "bearer_methods_supported": ["header"],
            "resource_signing_alg_values_supported": oauth.settings().algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
            "resource_name": "toolplane",
        });
        Self {
            url: format!("{origin}{WELL_KNOWN}{path}"),
            paths: [format!("{WELL_KNOWN}{path}"), WELL_KNOWN.to_owned()],
            document: Bytes::from(document.to_string()),
        }
    }

    /// The metadata document, if `req` asks for it.
    pub fn answer<B>(&self, req: &http::Request<B>) -> Option<http::Response<Body>> {
        if req.method() != http::Method::GET || !self.paths.iter().any(|p| p == req.uri().path()) {
            return None;
        }
        let mut resp = http::Response::new(Full::new(self.document.clone()).boxed());
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("max-age=300"),
        );
        Some(resp)
    }
}

/// A plain-text answer.
pub fn plain(status: http::StatusCode, text: &'static str) -> http::Response<Body> {
    let mut resp = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *resp.status_mut() = status;
    resp
}

/// `"` and `\` would end a quoted-string of a header early; control characters are not
/// allowed in one.
fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '"' || c == '\\' { '\'' } else { c })
        .take(300)
        .collect()
}

/// The answer to a request refused as `r`: 401 with a challenge naming the metadata
/// (and, when a token was presented, why it failed), 403 with the reason, or 503.
pub fn refused(meta: Option<&Metadata>, r: &Refusal, presented: bool) -> http::Response<Body> {
    let (status, challenge) = match r {
        Refusal::Unauthenticated(m) => {
            let mut c = match meta {
                Some(meta) => format!("Bearer resource_metadata=\"{}\"", meta.url),
                None => "Bearer realm=\"toolplane\"".to_owned(),
            };
            if presented {
                c.push_str(&format!(
                    ", error=\"invalid_token\", error_description=\"{}\"",
                    quoted(m)
                ));
            }
            (http::StatusCode::UNAUTHORIZED, Some(c))
        }
        Refusal::Forbidden(_) => (http::StatusCode::FORBIDDEN, None),
        Refusal::Unavailable(_) => (http::StatusCode::SERVICE_UNAVAILABLE, None),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(r.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(c) = challenge.and_then(|c| http::HeaderValue::try_from(c).ok()) {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, c);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_url_inserts_the_well_known_segment_before_the_resource_path() {
        assert_eq!(
            split_url("https://tools.example.com/mcp/"),
            ("https://tools.example.com".to_owned(), "/mcp".to_owned())
        );
        assert_eq!(
            split_url("http://127.0.0.1:5/"),
            ("http://127.0.0.1:5".to_owned(), String::new())
        );
    }

    #[test]
    fn a_refusal_reason_cannot_break_out_of_the_challenge() {
        let r = Refusal::Unauthenticated("issuer \"x\"\r\nSet-Cookie: a=b".to_owned());
        let resp = refused(None, &r, true);
        assert_eq!(resp.status(), http::StatusCode::UNAUTHORIZED);
        let c = resp.headers()[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap_or_default();
        assert_eq!(
            c,
            "Bearer realm=\"toolplane\", error=\"invalid_token\", error_description=\"issuer 'x'Set-Cookie: a=b\""
        );
        let forbidden = refused(None, &Refusal::Forbidden("no agent".to_owned()), true);
        assert_eq!(forbidden.status(), http::StatusCode::FORBIDDEN);
        assert!(forbidden.headers().get(http::header::WWW_AUTHENTICATE).is_none());
    }
}
