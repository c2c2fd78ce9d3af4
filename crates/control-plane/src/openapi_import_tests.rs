use serde_json::json;

use super::*;

/// An OpenAPI 3.0 document: path-level and `$ref`'d parameters, a `$ref`'d body with a
/// nullable field, two security schemes, and operations that cannot be mapped.
fn petstore_30() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {"title": "pets", "version": "1"},
        "servers": [{"url": "https://{region}.pets.example/v1", "variables": {"region": {"default": "eu"}}}],
        "security": [{"key": []}],
        "paths": {
            "/pets/{petId}": {
                "parameters": [{"$ref": "#/components/parameters/PetId"}],
                "get": {
                    "operationId": "getPet",
                    "summary": "One pet",
                    "parameters": [{"name": "verbose", "in": "query", "schema": {"type": "boolean"}},
                                   {"name": "X-Request-Id", "in": "header", "required": true, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}}}
                },
                "put": {
                    "operationId": "putPet",
                    "security": [{"basic": []}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}},
                    "responses": {"204": {"description": "done"}}
                },
                "delete": {
                    "operationId": "deletePet",
                    "parameters": [{"name": "session", "in": "cookie", "schema": {"type": "string"}}],
                    "responses": {"204": {"description": "done"}}
                }
            },
            "/trees": {
                "post": {
                    "operationId": "plantTree",
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Tree"}}}},
                    "responses": {"201": {"description": "planted"}}
                }
            },
            "/pets": {
                "post": {
                    "operationId": "uploadPet",
                    "security": [],
                    "requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object"}}}},
                    "responses": {"201": {"description": "made"}}
                },
                "get": {
                    "operationId": "listTrees",
                    "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Tree"}}}}}
                }
            }
        },
        "components": {
            "parameters": {"PetId": {"name": "petId", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0, "exclusiveMinimum": true}}},
            "schemas": {
                "Pet": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"}, "tag": {"type": "string", "nullable": true}}},
                "Tree": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/components/schemas/Tree"}}}}
            },
            "securitySchemes": {
                "key": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "basic": {"type": "http", "scheme": "basic"}
            }
        }
    })
}

fn imported() -> Imported {
    let (doc, spec) = load(petstore_30()).unwrap();
    let opts = OpenApiOptions {
        name_prefix: "pets.".into(),
        ..OpenApiOptions::default()
    };
    import(&doc, &spec, &opts)
}

fn op<'a>(i: &'a Imported, id: &str) -> &'a ImportedOperation {
    i.operations.iter().find(|o| o.operation_id == id).unwrap()
}

#[test]
fn operations_become_http_tools_with_refs_inlined() {
    let i = imported();
    let get = op(&i, "getPet");
    assert_eq!(get.spec.name, "pets.getpet");
    assert_eq!(get.spec.endpoint, "https://eu.pets.example/v1");
    assert_eq!(get.spec.side_effects, SideEffects::Read);
    assert!(get.spec.idempotent);
    assert_eq!(get.spec.description, "One pet");
    let http = get.spec.http.as_ref().unwrap();
    assert_eq!((http.method.as_str(), http.path.as_str()), ("GET", "/pets/{petId}"));
    assert_eq!(
        get.spec.input_schema,
        json!({"type": "object", "additionalProperties": false,
            "required": ["X-Request-Id", "petId"],
            "properties": {
                "verbose": {"type": "boolean"},
                "X-Request-Id": {"type": "string"},
                "petId": {"type": "integer", "exclusiveMinimum": 0}}})
    );
    // The 3.0 `nullable` is a null type in the inlined output schema.
    assert_eq!(
        get.spec.output_schema["properties"]["tag"]["type"],
        json!(["string", "null"])
    );
    assert_eq!(
        get.credential
            .as_ref()
            .map(|c| (c.auth_type, c.name.as_str(), c.in_query)),
        Some((AuthType::ApiKey, "X-API-Key", false))
    );
    let put = op(&i, "putPet");
    assert_eq!(put.spec.side_effects, SideEffects::Write);
    assert_eq!(put.spec.http.as_ref().unwrap().body, "body");
    assert_eq!(put.spec.input_schema["required"], json!(["petId", "body"]));
    assert_eq!(put.spec.input_schema["properties"]["body"]["required"], json!(["name"]));
    assert_eq!(put.spec.requirements.authentication, AuthType::HttpBasic);
    assert_eq!(put.spec.output_schema, Value::Null);
    // Every imported spec passes the registry's own checks.
    for o in &i.operations {
        toolplane_core::validate::check_tool_spec(&o.spec, toolplane_core::validate::ToolPolicy::default())
            .unwrap_or_else(|v| panic!("{}: {v}", o.spec.name));
    }
}

#[test]
fn operations_that_cannot_be_mapped_are_listed_with_the_reason() {
    let i = imported();
    let reasons: BTreeMap<&str, &str> = i
        .skipped
        .iter()
        .map(|s| (s.operation_id.as_str(), s.reason.as_str()))
        .collect();
    assert!(reasons["deletePet"].contains("cookie"), "{reasons:?}");
    assert!(reasons["uploadPet"].contains("multipart/form-data"), "{reasons:?}");
    assert!(reasons["plantTree"].contains("refers to itself"), "{reasons:?}");
    // A recursive response schema only costs the output check.
    assert_eq!(op(&i, "listTrees").spec.output_schema, Value::Null);
    assert_eq!(i.operations.len(), 3);
}

#[test]
fn a_malformed_document_is_refused_naming_the_place() {
    let mut doc = petstore_30();
    doc["paths"]["/pets/{petId}"]["get"]["parameters"][0]
        .as_object_mut()
        .unwrap()
        .remove("in");
    let e = load(doc).unwrap_err();
    assert!(
        e.0[0]
            .field
            .starts_with("document/paths/~1pets~1{petId}/get/parameters/0"),
        "{e}"
    );
    let e = load(json!({"swagger": "2.0"})).unwrap_err();
    assert_eq!(e.0[0].field, "document/openapi");
    let e = parse_document("{\"openapi\": ").unwrap_err();
    assert_eq!(e.0[0].field, "document");
}

#[test]
fn reimport_keeps_governance_and_takes_the_document() {
    let i = imported();
    let fresh = &op(&i, "getPet").spec;
    let mut admin = fresh.clone();
    admin.category = "pets".into();
    admin.requirements.rate_limit_rpm = 10;
    admin.side_effects = SideEffects::None;
    admin.cacheable = true;
    admin.cache_ttl_seconds = 60;
    admin.description = "old".into();
    let merged = merge(&admin, fresh);
    assert_eq!(merged.category, "pets");
    assert_eq!(merged.requirements.rate_limit_rpm, 10);
    assert_eq!(merged.side_effects, SideEffects::None);
    assert!(merged.cacheable);
    assert_eq!(merged.description, "One pet");
    assert_eq!(document_changes(&admin, &merged), vec!["description"]);
}
