//! `ImportOpenApi` on the registry service: the document is read and mapped by
//! [`crate::openapi_import`]; each operation's tool is registered, re-versioned with
//! governance kept, or left unchanged, every change audited like any registration.

use std::collections::BTreeMap;

use toolplane_core::Violations;
use toolplane_core::convert::{auth_to_pb, side_effects_from_pb, spec_to_pb, tool_spec_from_pb, tool_to_pb};
use toolplane_core::endpoint::check_endpoint;
use toolplane_core::model::Principal;
use toolplane_core::validate::check_tool_spec;
use toolplane_proto::v1 as pb;

use super::RegistryService;
use crate::error::ApiResult;
use crate::openapi_import::{self, OpenApiOptions};

impl RegistryService {
    pub(super) async fn import_openapi(
        &self,
        who: &Principal,
        req: pb::ImportOpenApiRequest,
    ) -> ApiResult<pb::ImportOpenApiResponse> {
        let policy = self.state.policy;
        if req.document.trim().is_empty() {
            return Err(Violations::single("document", "is required").into());
        }
        if !req.base_url.is_empty() {
            check_endpoint("base_url", &req.base_url, policy.allow_link_local_endpoints)?;
        }
        let mut side_effects = BTreeMap::new();
        for (op, v) in &req.side_effects {
            if pb::SideEffects::try_from(*v).is_err() || *v == pb::SideEffects::Unspecified as i32 {
                return Err(Violations::single(format!("side_effects[{op}]"), "must be NONE, READ or WRITE").into());
            }
            side_effects.insert(op.clone(), side_effects_from_pb(*v));
        }
        let doc = openapi_import::parse_document(&req.document)?;
        let (doc, spec) = openapi_import::load(doc)?;
        let absolute_server = spec
            .servers
            .first()
            .is_some_and(|s| s.url.starts_with("http://") || s.url.starts_with("https://"));
        if req.base_url.is_empty() && !absolute_server {
            return Err(
                Violations::single("base_url", "is required: the document names no absolute server URL").into(),
            );
        }
        let opts = OpenApiOptions {
            base_url: req.base_url,
            category: req.category,
            provider: req.provider,
            name_prefix: req.name_prefix,
            side_effects,
        };
        let imported = openapi_import::import(&doc, &spec, &opts);
        let mut out = pb::ImportOpenApiResponse::default();
        for s in imported.skipped {
            out.skipped.push(pb::SkippedOperation {
                method: s.method,
                path: s.path,
                operation_id: s.operation_id,
                reason: s.reason,
            });
        }
        for mut op in imported.operations {
            // As stored: through the wire form, whose numbers are f64 (`0.0` in the
            // document is `0` once stored), so an unchanged document compares equal.
            op.spec = tool_spec_from_pb(spec_to_pb(op.spec))?;
            let http = op.spec.http.clone().unwrap_or_default();
            let skip = |reason: String| pb::SkippedOperation {
                method: http.method.clone(),
                path: http.path.clone(),
                operation_id: op.operation_id.clone(),
                reason,
            };
            if let Err(v) = check_tool_spec(&op.spec, policy) {
                out.skipped.push(skip(v.to_string()));
                continue;
            }
            let name = op.spec.name.clone();
            match self.state.store.get_tool_by_name(&name).await? {
                None => {
                    let tool = self
                        .register(
                            who,
                            pb::RegisterToolRequest {
                                tool: Some(spec_to_pb(op.spec.clone())),
                            },
                        )
                        .await?;
                    out.created.push(tool_to_pb(&tool));
                }
                Some(current) => {
                    let merged = openapi_import::merge(&current.spec, &op.spec);
                    let changes = openapi_import::document_changes(&current.spec, &merged);
                    if changes.is_empty() {
                        out.unchanged.push(current.spec.name);
                    } else if let Err(v) = check_tool_spec(&merged, policy) {
                        out.skipped.push(skip(v.to_string()));
                        continue;
                    } else {
                        let why = format!(
                            " (re-imported from its OpenAPI document: {} changed)",
                            changes.join(", ")
                        );
                        let tool = self.save_version(who, current, merged, &why).await?;
                        out.updated.push(tool_to_pb(&tool));
                    }
                }
            }
            if let Some(c) = op.credential {
                out.credentials.push(pb::CredentialRequirement {
                    tool_name: name,
                    scheme: c.scheme,
                    auth_type: auth_to_pb(c.auth_type),
                    header_name: if c.in_query { String::new() } else { c.name.clone() },
                    query_param: if c.in_query { c.name } else { String::new() },
                    token_url: c.token_url,
                    scopes: c.scopes,
                });
            }
        }
        tracing::info!(
            created = out.created.len(),
            updated = out.updated.len(),
            unchanged = out.unchanged.len(),
            skipped = out.skipped.len(),
            "imported an OpenAPI document"
        );
        Ok(out)
    }
}
