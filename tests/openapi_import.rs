//! `ImportOpenApi` against a real web application: a FastAPI app the test starts
//! (tests/support/fastapi_inventory.py, installed into the project venv by the
//! Makefile) publishes its generated OpenAPI 3.1 document, with path, query and header
//! parameters, a JSON body, `$ref`s and two security schemes (an API key header and
//! HTTP basic). `toolctl tools import-openapi URL` registers its operations on a
//! control plane over PostgreSQL; three of them are called through a real sidecar,
//! with sealed credentials, and give the app's real answers.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;
use toolplane_core::json::struct_to_json;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, Authed, executor, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, bin, control_plane, sidecar_with, spool_dir};
use toolplane_tests::{eventually, free_port};

const WAIT: Duration = Duration::from_secs(30);

struct App {
    _child: tokio::process::Child,
    base: String,
}

/// The FastAPI app on a free port, once it serves its OpenAPI document.
async fn fastapi() -> App {
    let port = free_port();
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/support/fastapi_inventory.py");
    let child = tokio::process::Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .kill_on_drop(true)
        .spawn()
        .expect("the project venv with fastapi and uvicorn (make tools)");
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}/openapi.json");
    eventually("the FastAPI app to serve /openapi.json", WAIT, || {
        let url = url.clone();
        async move {
            toolplane_tests::http_get(&url)
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        }
    })
    .await;
    App { _child: child, base }
}

fn toolctl(cp: &Proc, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("toolctl"))
        .args(["--server", &cp.url(), "-o", "json"])
        .args(args)
        .env("TOOLPLANE_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap()
}

async fn tool(admin: &mut Admin, name: &str) -> pb::Tool {
    admin
        .registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name(name.to_owned())),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap()
}

async fn call(
    ex: &toolplane_proto::v1::executor_client::ExecutorClient<Authed>,
    name: &str,
    params: Value,
) -> pb::ToolResult {
    let ex = ex.clone();
    eventually(&format!("the sidecar to call {name}"), WAIT, || {
        let (mut ex, params) = (ex.clone(), params.clone());
        async move {
            match ex.invoke(invoke_request(name, &params)).await {
                Err(s) if matches!(s.code(), Code::Unavailable | Code::NotFound | Code::PermissionDenied) => None,
                r => Some(r.unwrap().into_inner().result.unwrap()),
            }
        }
    })
    .await
}

fn output(r: &pb::ToolResult) -> Value {
    assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
    r.output
        .clone()
        .map(toolplane_core::json::value_from_pb)
        .unwrap_or(Value::Null)
}

fn has_ref(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.contains_key("$ref") || o.values().any(has_ref),
        Value::Array(a) => a.iter().any(has_ref),
        _ => false,
    }
}

#[tokio::test]
async fn a_fastapi_apps_operations_are_imported_and_answer_through_a_sidecar() {
    let app = fastapi().await;
    let db = TestDb::create().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;

    // Imported with toolctl, straight from the app's URL (its document names no
    // server, so the URL's origin is the API's base).
    let out = toolctl(
        &cp,
        &[
            "tools",
            "import-openapi",
            &format!("{}/openapi.json", app.base),
            "--prefix",
            "inv.",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut created: Vec<&str> = report["created"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    created.sort_unstable();
    assert_eq!(
        created,
        ["inv.createitem", "inv.getitem", "inv.searchitems"],
        "{report}"
    );
    let skipped = &report["skipped"][0];
    assert_eq!(
        (skipped["operation_id"].as_str(), skipped["path"].as_str()),
        (Some("getPreferences"), Some("/preferences"))
    );
    assert!(skipped["reason"].as_str().unwrap().contains("cookie"), "{skipped}");
    let needs: Vec<(String, String, String)> = report["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("tool"), s("auth_type"), s("header_name"))
        })
        .collect();
    assert!(
        needs.contains(&("inv.getitem".into(), "AUTH_TYPE_API_KEY".into(), "X-API-Key".into())),
        "{needs:?}"
    );
    assert!(
        needs.contains(&("inv.createitem".into(), "AUTH_TYPE_HTTP_BASIC".into(), String::new())),
        "{needs:?}"
    );

    // What the document says became the tools' definitions, `$ref`s resolved.
    let get = tool(&mut admin, "inv.getitem").await;
    assert_eq!(get.endpoint, app.base);
    assert_eq!(get.side_effects, pb::SideEffects::Read as i32);
    assert_eq!(get.description, "One item, priced in a currency");
    let http = get.http.clone().unwrap();
    assert_eq!((http.method.as_str(), http.path.as_str()), ("GET", "/items/{item_id}"));
    let schema = get.schema.clone().unwrap();
    let input = struct_to_json(schema.input_schema);
    let output_schema = struct_to_json(schema.output_schema);
    assert_eq!(input["required"], json!(["item_id"]));
    assert!(input["properties"]["x-request-id"].is_object(), "{input}");
    assert_eq!(
        output_schema["properties"]["item"]["properties"]["tags"]["type"], "array",
        "{output_schema}"
    );
    assert!(!has_ref(&input) && !has_ref(&output_schema), "{output_schema}");
    let create = tool(&mut admin, "inv.createitem").await;
    assert_eq!(create.side_effects, pb::SideEffects::Write as i32);
    assert_eq!(
        create.requirements.as_ref().unwrap().authentication,
        pb::AuthType::HttpBasic as i32
    );
    let search = tool(&mut admin, "inv.searchitems").await;

    // Credentials as the security schemes ask: an API key header, HTTP basic.
    for req in [
        pb::SetCredentialRequest {
            tool_id: get.id.clone(),
            auth_type: pb::AuthType::ApiKey as i32,
            header_name: "X-API-Key".into(),
            secret: "inv-key-7f3a".into(),
            ..Default::default()
        },
        pb::SetCredentialRequest {
            tool_id: create.id.clone(),
            auth_type: pb::AuthType::HttpBasic as i32,
            username: "alice".into(),
            secret: "s3cret pass".into(),
            ..Default::default()
        },
    ] {
        admin.registry.set_credential(req).await.unwrap();
    }
    let agent = admin.agent("agent-inventory").await;
    for t in [&get, &create, &search] {
        admin.grant_full(&agent.id, &t.id).await;
    }
    let token = admin.token(pb::Role::Agent, &agent.id).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let sc = sidecar_with(&cp, &sidecar_token, &spool_dir(), &[]).await;
    let ex = executor(&sc.url(), Some(&token)).await;

    // A path parameter, a query parameter and a header parameter, with the API key.
    let r = call(
        &ex,
        "inv.getitem",
        json!({"item_id": 7, "currency": "USD", "x-request-id": "req-42"}),
    )
    .await;
    let v = output(&r);
    assert_eq!(v["item"]["name"], "lamp", "{v}");
    assert_eq!(
        (v["currency"].as_str(), v["request_id"].as_str()),
        (Some("USD"), Some("req-42"))
    );

    // A JSON body, a path segment that needs escaping and a query flag, with HTTP basic.
    // (ASGI servers decode %2F before routing, so no `/` here: render's tests cover it.)
    let r = call(
        &ex,
        "inv.createitem",
        json!({"store": "west side #2?", "dry_run": true, "body": {"name": "chair", "price": 45.5, "tags": ["home"]}}),
    )
    .await;
    let v = output(&r);
    assert_eq!(v["created_by"], "alice", "{v}");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["item"]["store"], "west side #2?", "{v}");
    assert_eq!(v["item"]["tags"], json!(["home"]));

    // A repeated query parameter and no credential at all.
    let r = call(&ex, "inv.searchitems", json!({"tag": ["home", "office"]})).await;
    let v = output(&r);
    assert_eq!(
        (v["total"].as_i64(), v["items"][0]["name"].as_str()),
        (Some(1), Some("desk")),
        "{v}"
    );
    let v = output(&call(&ex, "inv.searchitems", json!({"tag": ["office"], "limit": 1})).await);
    assert_eq!(
        (v["total"].as_i64(), v["items"].as_array().map(Vec::len)),
        (Some(2), Some(1)),
        "{v}"
    );

    // The app's own refusals come back as the tool's errors; parameters its schema
    // refuses never leave the sidecar.
    let r = call(&ex, "inv.getitem", json!({"item_id": 999})).await;
    assert_eq!(r.status, pb::ToolExecutionStatus::ExecutionError as i32);
    assert!(r.error.contains("404"), "{}", r.error);
    let e = ex
        .clone()
        .invoke(invoke_request("inv.getitem", &json!({"item_id": "seven"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("parameters/item_id"), "{e:?}");

    // Without its credential the app refuses the call.
    let bare = admin
        .register(pb::Tool {
            name: "inv.getitem-bare".into(),
            ..get.clone()
        })
        .await
        .unwrap();
    admin.grant_full(&agent.id, &bare.id).await;
    let r = call(&ex, "inv.getitem-bare", json!({"item_id": 7})).await;
    assert!(r.error.contains("401"), "{}", r.error);
}

#[tokio::test]
async fn reimport_keeps_what_the_admin_governs_and_takes_what_the_document_owns() {
    let app = fastapi().await;
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let text = toolplane_tests::http_get(format!("{}/openapi.json", app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    let import = |document: String| pb::ImportOpenApiRequest {
        document,
        base_url: app.base.clone(),
        name_prefix: "inv.".into(),
        side_effects: [("searchItems".to_owned(), pb::SideEffects::None as i32)].into(),
        ..Default::default()
    };
    let first = admin
        .registry
        .import_open_api(import(doc.to_string()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.created.len(), 3);
    let search = tool(&mut admin, "inv.searchitems").await;
    assert_eq!(
        search.side_effects,
        pb::SideEffects::None as i32,
        "the override applies"
    );

    // The admin governs the tool...
    let governed = pb::Tool {
        category: "inventory".into(),
        cacheable: true,
        cache_ttl_seconds: 60,
        requirements: Some(pb::ToolRequirements {
            rate_limit_rpm: 30,
            ..search.requirements.clone().unwrap()
        }),
        ..search.clone()
    };
    admin
        .registry
        .update_tool(pb::UpdateToolRequest { tool: Some(governed) })
        .await
        .unwrap();
    // ...the same document changes nothing...
    let again = admin
        .registry
        .import_open_api(import(doc.to_string()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.created.len(), again.updated.len(), again.unchanged.len()),
        (0, 0, 3),
        "{:?}",
        again.updated.first().map(|t| (&t.name, &t.version, &t.schema, &t.http))
    );
    // ...and a changed one takes the document's part only.
    doc["paths"]["/search"]["get"]["summary"] = json!("Items carrying all the tags");
    let changed = admin
        .registry
        .import_open_api(import(doc.to_string()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.updated.len(), 1, "{changed:?}");
    let t = &changed.updated[0];
    assert_eq!(t.description, "Items carrying all the tags");
    assert_eq!(
        (t.category.as_str(), t.cacheable, t.version),
        ("inventory", true, search.version + 2)
    );
    assert_eq!(t.requirements.as_ref().unwrap().rate_limit_rpm, 30);
}

#[tokio::test]
async fn a_malformed_document_is_refused_naming_the_place() {
    let cp = control_plane(None).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let field = |e: &tonic::Status| {
        e.get_details_bad_request()
            .map(|b| b.field_violations[0].field.clone())
            .unwrap_or_default()
    };
    let refused = |document: Value| {
        let mut registry = admin.registry.clone();
        async move {
            registry
                .import_open_api(pb::ImportOpenApiRequest {
                    document: document.to_string(),
                    base_url: "https://api.example.com".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err()
        }
    };
    // A parameter without `in`.
    let doc = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/x/{id}": {"get": {
        "parameters": [{"name": "id", "schema": {"type": "string"}}], "responses": {}}}}});
    let e = refused(doc).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        field(&e).starts_with("document/paths/~1x~1{id}/get/parameters/0"),
        "{e:?}"
    );
    // A security scheme of an unknown type.
    let doc = json!({"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {},
        "components": {"securitySchemes": {"k": {"type": "magic"}}}});
    let e = refused(doc).await;
    assert!(field(&e).starts_with("document/components/securitySchemes/k"), "{e:?}");
    // Not OpenAPI 3.
    let e = refused(json!({"swagger": "2.0"})).await;
    assert_eq!(field(&e), "document/openapi", "{e:?}");
    // Not JSON or YAML at all.
    let e = admin
        .registry
        .import_open_api(pb::ImportOpenApiRequest {
            document: "{\"openapi\": \"3.1.0\",".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), field(&e).as_str()),
        (Code::InvalidArgument, "document"),
        "{e:?}"
    );
    // No server and no base URL.
    let e = admin
        .registry
        .import_open_api(pb::ImportOpenApiRequest {
            document: json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {}}).to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field(&e), "base_url", "{e:?}");
}
