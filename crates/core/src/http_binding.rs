//! HTTP tools beyond "POST JSON to one URL": a tool may name its method and a path
//! template, and say where each parameter goes — the path, the query, a header — and
//! which parameter is the JSON body (OpenAPI's parameter model). A tool without a
//! binding is called as before: its parameters POSTed as JSON to its endpoint.
//!
//! [`render`] builds the request from parameters that already passed the input
//! schema; [`check`] refuses, at registration, a binding that could not be rendered.

use http::Method;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Violations;

/// Where a parameter goes in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamLocation {
    Path,
    Query,
    Header,
}

/// One parameter of the input schema placed outside the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpParameter {
    /// The property of the input schema that holds the value.
    pub name: String,
    pub location: ParamLocation,
    /// Its name in the request (the path placeholder, query key or header name);
    /// empty means `name`.
    #[serde(default)]
    pub wire_name: String,
}

impl HttpParameter {
    pub fn wire(&self) -> &str {
        if self.wire_name.is_empty() {
            &self.name
        } else {
            &self.wire_name
        }
    }
}

/// How a tool's parameters become an HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpBinding {
    /// GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS; empty means POST.
    #[serde(default)]
    pub method: String,
    /// Appended to the endpoint, e.g. `/items/{item_id}`; `{name}` is the path
    /// parameter whose wire name is `name`.
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub parameters: Vec<HttpParameter>,
    /// The input property whose value is sent as the JSON body; empty: no body.
    #[serde(default)]
    pub body: String,
}

/// The methods a binding may name.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// A request ready to send: everything but the credential.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// Characters escaped in a path segment: everything but RFC 3986 unreserved characters
/// and the sub-delimiters that are safe inside one segment.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'@')
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'&')
    .add(b'+')
    .add(b',');

/// Why a request could not be built from the parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RenderError {
    pub field: String,
    pub reason: String,
}

fn err(field: &str, reason: impl Into<String>) -> RenderError {
    RenderError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl HttpBinding {
    pub fn method(&self) -> Method {
        if self.method.is_empty() {
            Method::POST
        } else {
            Method::from_bytes(self.method.to_ascii_uppercase().as_bytes()).unwrap_or(Method::POST)
        }
    }
}

/// A scalar as text in a path, query or header; arrays (in a path or header) are
/// joined with commas (OpenAPI's `simple` style). Objects are sent as JSON.
fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(scalar_text).collect::<Vec<_>>().join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The request for `params` (already validated against the input schema) to the tool
/// at `endpoint`. With no binding: POST of all parameters as canonical JSON.
pub fn render(endpoint: &str, binding: Option<&HttpBinding>, params: &Value) -> Result<RenderedRequest, RenderError> {
    let Some(b) = binding else {
        return Ok(RenderedRequest {
            method: Method::POST,
            url: endpoint.to_owned(),
            headers: Vec::new(),
            body: Some(crate::json::canonical(params).into_bytes()),
        });
    };
    let mut url = url::Url::parse(endpoint).map_err(|e| err("endpoint", format!("is not a URL: {e}")))?;
    let mut path = String::new();
    let mut rest = b.path.as_str();
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| err("http.path", "has an unclosed {"))?;
        let wire = &rest[open + 1..open + close];
        let param = b
            .parameters
            .iter()
            .find(|p| p.location == ParamLocation::Path && p.wire() == wire)
            .ok_or_else(|| err("http.path", format!("names {{{wire}}}, which no path parameter fills")))?;
        let value = params
            .get(&param.name)
            .filter(|v| !v.is_null())
            .ok_or_else(|| err(&param.name, "is required: it is part of the path"))?;
        let text = scalar_text(value);
        if text.is_empty() || text == "." || text == ".." {
            // An empty or dot segment would change which resource the path names.
            return Err(err(&param.name, format!("{text:?} cannot be a path segment")));
        }
        path.push_str(&utf8_percent_encode(&text, PATH_SEGMENT).to_string());
        rest = &rest[open + close + 1..];
    }
    path.push_str(rest);
    if !path.is_empty() {
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{path}"));
    }
    let mut headers = Vec::new();
    for p in &b.parameters {
        let Some(value) = params.get(&p.name).filter(|v| !v.is_null()) else {
            continue;
        };
        match p.location {
            ParamLocation::Path => {}
            ParamLocation::Query => {
                let mut pairs = url.query_pairs_mut();
                match value {
                    // Arrays repeat the key (OpenAPI's default `form` style, exploded).
                    Value::Array(items) => {
                        for item in items {
                            pairs.append_pair(p.wire(), &scalar_text(item));
                        }
                    }
                    v => {
                        pairs.append_pair(p.wire(), &scalar_text(v));
                    }
                }
            }
            ParamLocation::Header => {
                let text = scalar_text(value);
                if http::HeaderValue::from_str(&text).is_err() {
                    return Err(err(&p.name, "cannot be sent in a header (control characters)"));
                }
                headers.push((p.wire().to_ascii_lowercase(), text));
            }
        }
    }
    let body = if b.body.is_empty() {
        None
    } else {
        params
            .get(&b.body)
            .filter(|v| !v.is_null())
            .map(|v| crate::json::canonical(v).into_bytes())
    };
    Ok(RenderedRequest {
        method: b.method(),
        url: url.to_string(),
        headers,
        body,
    })
}

/// Refuses a binding that cannot be rendered for some valid input: unknown method,
/// a placeholder no path parameter fills, a parameter or body that is not a property
/// of the input schema, a path parameter that is not required, a bad header name.
pub fn check(v: &mut Violations, binding: &HttpBinding, input_schema: &Value) {
    let f = "tool.http";
    if !binding.method.is_empty() && !METHODS.contains(&binding.method.to_ascii_uppercase().as_str()) {
        v.push(format!("{f}.method"), format!("must be one of {}", METHODS.join(", ")));
    }
    if !binding.path.is_empty() && !binding.path.starts_with('/') {
        v.push(format!("{f}.path"), "must start with /");
    }
    if binding.path.contains(['?', '#']) {
        v.push(format!("{f}.path"), "must not contain ? or # (use query parameters)");
    }
    let props = input_schema.get("properties").and_then(Value::as_object);
    let required: Vec<&str> = input_schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let has = |name: &str| props.is_some_and(|p| p.contains_key(name));
    let mut seen = std::collections::HashSet::new();
    for (i, p) in binding.parameters.iter().enumerate() {
        let field = format!("{f}.parameters[{i}]");
        if !has(&p.name) {
            v.push(
                format!("{field}.name"),
                format!("{:?} is not a property of the input schema", p.name),
            );
        }
        if !seen.insert(p.name.as_str()) || p.name == binding.body {
            v.push(format!("{field}.name"), format!("{:?} is placed twice", p.name));
        }
        match p.location {
            ParamLocation::Path => {
                if !required.contains(&p.name.as_str()) {
                    v.push(
                        format!("{field}.name"),
                        "a path parameter must be required by the input schema",
                    );
                }
                if !binding.path.contains(&format!("{{{}}}", p.wire())) {
                    v.push(format!("{field}.wire_name"), "names no {placeholder} of the path");
                }
            }
            ParamLocation::Header => {
                if http::HeaderName::from_bytes(p.wire().as_bytes()).is_err() {
                    v.push(format!("{field}.wire_name"), "is not a valid header name");
                }
            }
            ParamLocation::Query => {}
        }
    }
    let mut rest = binding.path.as_str();
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            v.push(format!("{f}.path"), "has an unclosed {");
            break;
        };
        let wire = &rest[open + 1..open + close];
        if !binding
            .parameters
            .iter()
            .any(|p| p.location == ParamLocation::Path && p.wire() == wire)
        {
            v.push(
                format!("{f}.path"),
                format!("names {{{wire}}}, which no path parameter fills"),
            );
        }
        rest = &rest[open + close + 1..];
    }
    if !binding.body.is_empty() && !has(&binding.body) {
        v.push(
            format!("{f}.body"),
            format!("{:?} is not a property of the input schema", binding.body),
        );
    }
}

#[cfg(test)]
#[path = "http_binding_tests.rs"]
mod tests;
