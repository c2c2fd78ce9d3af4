//! `ImportOpenApi`: one HTTP tool per operation of an OpenAPI 3.0 or 3.1 document.
//!
//! The document's shape is checked by the `oas3` parser (its typed model of OpenAPI
//! 3.1; a 3.0 document is first brought to 3.1: `nullable` becomes a `null` type and
//! boolean `exclusiveMinimum`/`exclusiveMaximum` become numbers), and a document it
//! refuses is named by the JSON pointer of the fault. Schemas are taken from the
//! document itself (every JSON Schema keyword kept) with each `$ref` inlined, so a
//! tool's schemas stand alone.
//!
//! Per operation: the name is `operationId` (or method and path) lowercased and
//! prefixed; the description is the summary and description; the input schema has one
//! property per path, query and header parameter plus `body` for a JSON request body;
//! the output schema is the first 2xx response's JSON schema; side effects follow the
//! method (GET/HEAD read, others write) unless the request overrides them; the
//! endpoint is the API's server and the path template goes into the tool's
//! [`HttpBinding`]. The first security requirement decides the tool's authentication
//! and is reported as the credential the tool needs. Operations that cannot be mapped
//! (cookie parameters, non-JSON bodies, recursive schemas, ...) are listed with why.

use std::collections::{BTreeMap, HashSet};

use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use toolplane_core::Violations;
use toolplane_core::http_binding::{HttpBinding, HttpParameter, ParamLocation};
use toolplane_core::model::{AuthType, DataSensitivity, SideEffects, ToolProtocol, ToolRequirements, ToolSpec};

use crate::mcp_import::registry_name;

/// Largest document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;
/// How deep `$ref`s may nest before a schema is called too deep.
const MAX_REF_DEPTH: usize = 64;

/// What an import request says about every operation it brings in.
#[derive(Debug, Clone, Default)]
pub struct OpenApiOptions {
    /// Overrides the document's server (required when that is relative or absent).
    pub base_url: String,
    pub category: String,
    pub provider: String,
    pub name_prefix: String,
    /// Side effects by operationId (or tool name), overriding the method's.
    pub side_effects: BTreeMap<String, SideEffects>,
}

/// Where a credential goes, as a security scheme says.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialNeed {
    pub scheme: String,
    pub auth_type: AuthType,
    /// API keys: the header (or, with `in_query`, the query parameter) carrying it.
    pub name: String,
    pub in_query: bool,
    /// OAuth 2.0 client credentials: where tokens come from, and the scopes asked.
    pub token_url: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ImportedOperation {
    pub operation_id: String,
    pub spec: ToolSpec,
    pub credential: Option<CredentialNeed>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SkippedOperation {
    pub method: String,
    pub path: String,
    pub operation_id: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Imported {
    pub operations: Vec<ImportedOperation>,
    pub skipped: Vec<SkippedOperation>,
}

/// A JSON pointer token (RFC 6901).
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Reads the document: JSON, or YAML (which JSON is also, but JSON errors say more).
pub fn parse_document(text: &str) -> Result<Value, Violations> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(Violations::single(
            "document",
            format!("is larger than the limit of {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|e| {
            Violations::single(
                "document",
                format!("is not valid JSON (line {}, column {}): {e}", e.line(), e.column()),
            )
        });
    }
    serde_norway::from_str(text).map_err(|e| Violations::single("document", format!("is not valid JSON or YAML: {e}")))
}

/// Brings an OpenAPI 3.0 document's schemas to 3.1 (JSON Schema 2020-12) in place.
fn upgrade_30(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.get("nullable") == Some(&Value::Bool(true)) {
                o.remove("nullable");
                match o.get_mut("type") {
                    Some(Value::String(t)) => {
                        let t = std::mem::take(t);
                        o.insert("type".into(), json!([t, "null"]));
                    }
                    Some(_) => {}
                    None => {
                        // `nullable` on an untyped (e.g. `$ref` or `allOf`) schema.
                        let inner = Value::Object(std::mem::take(o));
                        o.insert("anyOf".into(), json!([inner, {"type": "null"}]));
                    }
                }
            } else if matches!(o.get("nullable"), Some(Value::Bool(false))) {
                o.remove("nullable");
            }
            for (flag, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
                if let Some(Value::Bool(b)) = o.get(flag).cloned() {
                    o.remove(flag);
                    if b && let Some(n) = o.remove(bound) {
                        o.insert(flag.into(), n);
                    }
                }
            }
            for child in o.values_mut() {
                upgrade_30(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(upgrade_30),
        _ => {}
    }
}

/// The JSON pointer serde_path_to_error's path stands for.
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => out.push_str(&format!("/{}", token(key))),
            Segment::Enum { variant } => out.push_str(&format!("/{}", token(variant))),
            Segment::Unknown => {}
        }
    }
    out
}

/// Checks the document against the OpenAPI model; returns it as 3.1 JSON and typed.
pub fn load(doc: Value) -> Result<(Value, oas3::Spec), Violations> {
    let version = doc
        .get("openapi")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Violations::single(
                "document/openapi",
                "is required (an OpenAPI 3.0 or 3.1 document; Swagger 2.0 is not supported)",
            )
        })?
        .to_owned();
    let mut doc = doc;
    if version.starts_with("3.0.") {
        upgrade_30(&mut doc);
        doc["openapi"] = json!("3.1.0");
    } else if !version.starts_with("3.1.") {
        return Err(Violations::single(
            "document/openapi",
            format!("{version:?} is not an OpenAPI 3.0 or 3.1 version"),
        ));
    }
    let spec: oas3::Spec = serde_path_to_error::deserialize(doc.clone()).map_err(|e| {
        let at = pointer_of(e.path());
        Violations::single(format!("document{at}"), e.into_inner().to_string())
    })?;
    Ok((doc, spec))
}

/// The value a `#/...` reference points at in `doc`.
fn follow<'a>(doc: &'a Value, reference: &str) -> Result<&'a Value, String> {
    let pointer = reference
        .strip_prefix('#')
        .ok_or_else(|| format!("$ref {reference:?} is not local to the document"))?;
    doc.pointer(pointer)
        .ok_or_else(|| format!("$ref {reference:?} points at nothing"))
}

/// `v` with every `$ref` inlined (siblings of a `$ref` kept, as 3.1 allows). A
/// reference to itself, directly or not, cannot be inlined.
fn inline(doc: &Value, v: &Value, stack: &mut Vec<String>) -> Result<Value, String> {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                if stack.contains(r) {
                    return Err(format!("the schema {r} refers to itself"));
                }
                if stack.len() >= MAX_REF_DEPTH {
                    return Err(format!("$refs nest deeper than {MAX_REF_DEPTH}"));
                }
                stack.push(r.clone());
                let target = inline(doc, follow(doc, r)?, stack)?;
                stack.pop();
                let siblings: Map<String, Value> = o
                    .iter()
                    .filter(|(k, _)| k.as_str() != "$ref")
                    .map(|(k, v)| Ok((k.clone(), inline(doc, v, stack)?)))
                    .collect::<Result<_, String>>()?;
                if siblings.is_empty() {
                    return Ok(target);
                }
                let mut merged = match target {
                    Value::Object(t) => t,
                    other => return Ok(json!({"allOf": [other, Value::Object(siblings)]})),
                };
                for (k, v) in siblings {
                    merged.insert(k, v);
                }
                return Ok(Value::Object(merged));
            }
            let mut out = Map::new();
            for (k, child) in o {
                out.insert(k.clone(), inline(doc, child, stack)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(a) => a
            .iter()
            .map(|c| inline(doc, c, stack))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// An object of the document that may be a `$ref`: the object it stands for.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> Result<&'a Value, String> {
    let mut v = v;
    for _ in 0..MAX_REF_DEPTH {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => v = follow(doc, r)?,
            None => return Ok(v),
        }
    }
    Err(format!("$refs nest deeper than {MAX_REF_DEPTH}"))
}

/// The schema of the `application/json` (or `+json`) entry of a `content` map.
fn json_content(doc: &Value, content: Option<&Value>) -> Result<Option<Value>, String> {
    let Some(content) = content.and_then(Value::as_object) else {
        return Ok(None);
    };
    let json_entry = content.iter().find(|(t, _)| {
        let t = t.split(';').next().unwrap_or_default().trim();
        t == "application/json" || t.ends_with("+json")
    });
    match json_entry {
        Some((_, media)) => match media.get("schema") {
            Some(s) => inline(doc, s, &mut Vec::new()).map(Some),
            None => Ok(Some(json!({}))),
        },
        None if content.is_empty() => Ok(None),
        None => Err(format!(
            "its body is {} (only application/json bodies are supported)",
            content.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The API's base URL for an operation: the request's override, else the first server
/// (operation, path, document) with its variables at their defaults.
fn base_url(opts: &OpenApiOptions, servers: &[&oas3::spec::Server]) -> Result<String, String> {
    if !opts.base_url.is_empty() {
        return Ok(opts.base_url.trim_end_matches('/').to_owned());
    }
    let Some(server) = servers.first() else {
        return Err("the document names no server; give base_url".into());
    };
    let mut url = server.url.clone();
    for (name, var) in &server.variables {
        url = url.replace(&format!("{{{name}}}"), &var.default);
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("the server {url:?} is relative; give base_url"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The credential the operation's first security requirement calls for; `Ok(None)`
/// when it needs none.
fn credential_need(spec: &oas3::Spec, doc: &Value, op_raw: &Value) -> Result<Option<CredentialNeed>, String> {
    let requirements = op_raw
        .get("security")
        .or_else(|| doc.get("security"))
        .and_then(Value::as_array);
    let Some(first) = requirements.and_then(|r| r.first()).and_then(Value::as_object) else {
        return Ok(None);
    };
    let mut schemes = first.iter();
    let Some((name, scopes)) = schemes.next() else {
        // `{}`: authentication is optional.
        return Ok(None);
    };
    if schemes.next().is_some() {
        return Err("its security requirement combines several schemes, which one credential cannot meet".into());
    }
    let scheme = spec
        .components
        .as_ref()
        .and_then(|c| c.security_schemes.get(name))
        .ok_or_else(|| format!("its security scheme {name:?} is not in components.securitySchemes"))?
        .resolve(spec)
        .map_err(|e| format!("its security scheme {name:?}: {e}"))?;
    let scopes: Vec<String> = scopes
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let need = |auth_type, name: &str, in_query| CredentialNeed {
        scheme: String::new(),
        auth_type,
        name: name.to_owned(),
        in_query,
        token_url: String::new(),
        scopes: scopes.clone(),
    };
    use oas3::spec::SecurityScheme as S;
    let mut out = match scheme {
        S::ApiKey { name, location, .. } => match location.as_str() {
            "header" => need(AuthType::ApiKey, &name, false),
            "query" => need(AuthType::ApiKey, &name, true),
            other => return Err(format!("its API key goes in a {other}, which is not supported")),
        },
        S::Http { scheme, .. } => match scheme.to_ascii_lowercase().as_str() {
            "basic" => need(AuthType::HttpBasic, "", false),
            // `authorization: Bearer <secret>`, an API key credential's default header.
            "bearer" => need(AuthType::ApiKey, "", false),
            other => return Err(format!("its HTTP {other:?} authentication is not supported")),
        },
        S::OAuth2 { flows, .. } => match flows.client_credentials {
            Some(flow) => CredentialNeed {
                token_url: flow.token_url.to_string(),
                ..need(AuthType::OAuth2, "", false)
            },
            None => return Err("it needs an OAuth 2.0 flow other than client credentials".into()),
        },
        S::OpenIdConnect { .. } => need(AuthType::OAuth2, "", false),
        S::MutualTls { .. } => need(AuthType::MutualTls, "", false),
    };
    out.scheme = name.clone();
    Ok(Some(out))
}

/// One operation as a tool spec, or why it cannot be one.
#[allow(clippy::too_many_arguments)]
fn operation(
    spec: &oas3::Spec,
    doc: &Value,
    opts: &OpenApiOptions,
    path: &str,
    method: &str,
    op: &oas3::spec::Operation,
    item: &oas3::spec::PathItem,
    taken: &mut HashSet<String>,
) -> Result<ImportedOperation, String> {
    let upper = method.to_ascii_uppercase();
    if !toolplane_core::http_binding::METHODS.contains(&upper.as_str()) {
        return Err(format!("{upper} is not a method tools may use"));
    }
    let path_ptr = format!("/paths/{}", token(path));
    let op_raw = doc
        .pointer(&format!("{path_ptr}/{method}"))
        .ok_or("the operation is missing from the document")?;
    let operation_id = op.operation_id.clone().unwrap_or_else(|| {
        let slug: String = path
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("{method}{slug}").trim_end_matches('_').to_owned()
    });
    let name = registry_name(&opts.name_prefix, &operation_id);
    if !taken.insert(name.clone()) {
        return Err(format!("its tool name {name:?} is taken by another operation"));
    }

    // Operation parameters override path-level ones with the same name and location.
    let mut raw_params: Vec<&Value> = Vec::new();
    let path_level = doc.pointer(&format!("{path_ptr}/parameters")).and_then(Value::as_array);
    let op_level = op_raw.get("parameters").and_then(Value::as_array);
    let mut seen = HashSet::new();
    for p in op_level.into_iter().flatten().chain(path_level.into_iter().flatten()) {
        let p = deref(doc, p)?;
        let key = (
            p.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
            p.get("in").and_then(Value::as_str).unwrap_or_default().to_owned(),
        );
        if seen.insert(key) {
            raw_params.push(p);
        }
    }

    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut parameters = Vec::new();
    for p in raw_params {
        let wire = p.get("name").and_then(Value::as_str).unwrap_or_default();
        let location = match p.get("in").and_then(Value::as_str).unwrap_or_default() {
            "path" => ParamLocation::Path,
            "query" => ParamLocation::Query,
            "header" => ParamLocation::Header,
            other => {
                return Err(format!(
                    "its parameter {wire:?} is in a {other}, which is not supported"
                ));
            }
        };
        if location == ParamLocation::Header
            && ["accept", "content-type", "authorization"].contains(&wire.to_ascii_lowercase().as_str())
        {
            // OpenAPI says these are ignored as parameters.
            continue;
        }
        let style = p.get("style").and_then(Value::as_str);
        if let Some(style) = style
            && !matches!((location, style), (ParamLocation::Query, "form") | (_, "simple"))
        {
            return Err(format!(
                "its parameter {wire:?} uses style {style:?}, which is not supported"
            ));
        }
        let mut schema = match p.get("schema") {
            Some(s) => inline(doc, s, &mut Vec::new())?,
            None => {
                return Err(format!(
                    "its parameter {wire:?} has no schema (content parameters are not supported)"
                ));
            }
        };
        if location == ParamLocation::Query
            && p.get("explode") == Some(&Value::Bool(false))
            && schema.get("type") == Some(&json!("array"))
        {
            return Err(format!(
                "its array parameter {wire:?} is not exploded, which is not supported"
            ));
        }
        if let (Some(d), Value::Object(o)) = (p.get("description"), &mut schema)
            && !o.contains_key("description")
        {
            o.insert("description".into(), d.clone());
        }
        let mut prop = wire.to_owned();
        if properties.contains_key(&prop) {
            prop = format!("{wire}_{}", p["in"].as_str().unwrap_or_default());
        }
        let is_required = location == ParamLocation::Path || p.get("required") == Some(&Value::Bool(true));
        if is_required {
            required.push(Value::String(prop.clone()));
        }
        properties.insert(prop.clone(), schema);
        parameters.push(HttpParameter {
            wire_name: if prop == wire { String::new() } else { wire.to_owned() },
            name: prop,
            location,
        });
    }
    let mut body = String::new();
    if let Some(rb) = op_raw.get("requestBody") {
        let rb = deref(doc, rb)?;
        if let Some(schema) = json_content(doc, rb.get("content"))? {
            body = if properties.contains_key("body") {
                "request_body".to_owned()
            } else {
                "body".to_owned()
            };
            if rb.get("required") == Some(&Value::Bool(true)) {
                required.push(Value::String(body.clone()));
            }
            properties.insert(body.clone(), schema);
        }
    }
    let mut input_schema = json!({"type": "object", "properties": properties, "additionalProperties": false});
    if !required.is_empty() {
        input_schema["required"] = Value::Array(required);
    }

    let mut output_schema = Value::Null;
    if let Some(responses) = op_raw.get("responses").and_then(Value::as_object) {
        let mut codes: Vec<&String> = responses.keys().filter(|c| c.starts_with('2')).collect();
        codes.sort();
        for code in codes {
            let resp = deref(doc, &responses[code])?;
            // A response schema that cannot be inlined (recursive) leaves the output
            // unchecked rather than the operation out.
            if let Ok(Some(s)) = json_content(doc, resp.get("content")) {
                output_schema = s;
                break;
            }
        }
    }
    // A schema that says nothing checks nothing.
    if output_schema.as_object().is_some_and(Map::is_empty) {
        output_schema = Value::Null;
    }

    let servers: Vec<&oas3::spec::Server> = op.servers.iter().chain(&item.servers).chain(&spec.servers).collect();
    let endpoint = base_url(opts, &servers)?;
    let credential = credential_need(spec, doc, op_raw)?;

    let read = matches!(upper.as_str(), "GET" | "HEAD" | "OPTIONS");
    let side_effects = opts
        .side_effects
        .get(&operation_id)
        .or_else(|| opts.side_effects.get(&name))
        .copied()
        .unwrap_or(if read { SideEffects::Read } else { SideEffects::Write });
    let description = [op.summary.as_deref(), op.description.as_deref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n\n");
    let spec = ToolSpec {
        name,
        category: if opts.category.is_empty() {
            "integration".to_owned()
        } else {
            opts.category.clone()
        },
        description: first_chars(&description, 4000),
        input_schema,
        output_schema,
        examples: Vec::new(),
        capabilities: vec![
            if read { "retrieve" } else { "execute" }.to_owned(),
            "integrate".to_owned(),
        ],
        requirements: ToolRequirements {
            authentication: credential.as_ref().map_or(AuthType::None, |c| c.auth_type),
            rate_limit_rpm: 0,
            timeout_ms: 0,
            required_agent_skills: Vec::new(),
            data_sensitivity: DataSensitivity::Internal,
        },
        provider: if opts.provider.is_empty() {
            spec.info.title.clone()
        } else {
            opts.provider.clone()
        },
        endpoint,
        protocol: ToolProtocol::Http,
        reliability_score: 0.0,
        average_latency_ms: 0,
        cost_per_call: Decimal::ZERO,
        enabled: true,
        side_effects,
        idempotent: matches!(upper.as_str(), "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"),
        cacheable: false,
        cache_ttl_seconds: 0,
        cache_normalize_keys: false,
        cache_ignored_params: Vec::new(),
        remote_name: operation_id.clone(),
        compliance_frameworks: Vec::new(),
        http: Some(HttpBinding {
            method: upper,
            path: path.to_owned(),
            parameters,
            body,
        }),
    };
    Ok(ImportedOperation {
        operation_id,
        spec,
        credential,
    })
}

fn first_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Every operation of the document as a tool spec, or why not.
pub fn import(doc: &Value, spec: &oas3::Spec, opts: &OpenApiOptions) -> Imported {
    let mut out = Imported::default();
    let mut taken = HashSet::new();
    let Some(paths) = &spec.paths else {
        return out;
    };
    for (path, item) in paths {
        let ops = [
            ("get", &item.get),
            ("put", &item.put),
            ("post", &item.post),
            ("delete", &item.delete),
            ("options", &item.options),
            ("head", &item.head),
            ("patch", &item.patch),
            ("trace", &item.trace),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            match operation(spec, doc, opts, path, method, op, item, &mut taken) {
                Ok(o) => out.operations.push(o),
                Err(reason) => out.skipped.push(SkippedOperation {
                    method: method.to_ascii_uppercase(),
                    path: path.clone(),
                    operation_id: op.operation_id.clone().unwrap_or_default(),
                    reason,
                }),
            }
        }
    }
    out
}

/// `registered` with what the document owns taken from `fresh`: description, schemas,
/// how the API is reached (endpoint, method, path, parameters) and what credential it
/// takes, the method's side effects and idempotency. What an admin governs — category,
/// provider, capabilities, examples, limits, skills, data sensitivity, cost, caching,
/// compliance frameworks, the enabled switch — and learned statistics stay. As for MCP,
/// an admin's NONE (pure, so cacheable) is kept while the document still says READ.
pub fn merge(registered: &ToolSpec, fresh: &ToolSpec) -> ToolSpec {
    let server_owned = crate::mcp_import::merge(registered, fresh);
    ToolSpec {
        http: fresh.http.clone(),
        requirements: ToolRequirements {
            authentication: fresh.requirements.authentication,
            ..registered.requirements.clone()
        },
        ..server_owned
    }
}

/// The document-owned fields in which `merged` differs from `registered`: those an MCP
/// server owns too, and the HTTP binding and authentication a document also owns.
pub fn document_changes(registered: &ToolSpec, merged: &ToolSpec) -> Vec<&'static str> {
    let mut changed = crate::mcp_import::server_changes(registered, merged);
    if registered.http != merged.http {
        changed.push("http binding");
    }
    if registered.requirements.authentication != merged.requirements.authentication {
        changed.push("authentication");
    }
    changed
}

#[cfg(test)]
#[path = "openapi_import_tests.rs"]
mod tests;
