//! The control plane's selector as the sidecar asks it for an agent (`ExecuteTask`,
//! the MCP front door's `toolplane_select`). An agent holding a toolplane token is
//! selected for with that token, so the control plane checks it itself. An agent
//! signed in with an identity provider's access token has no token the control plane
//! knows: the sidecar, which verified that token, asks with its own sidecar token and
//! names the agent (`x-toolplane-agent`); the control plane accepts that only from a
//! sidecar token, and selects among that agent's tools exactly as for the agent.

use std::time::Duration;

use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use toolplane_core::token::TOKEN_PREFIX;
use toolplane_proto::v1 as pb;
use uuid::Uuid;

/// The metadata key naming the agent a sidecar selects for.
pub const ON_BEHALF_HEADER: &str = "x-toolplane-agent";

#[derive(Clone)]
pub struct SelectionClient {
    client: pb::tool_selector_client::ToolSelectorClient<Channel>,
    /// This sidecar's own token (`None`: no identity-provider agent can select).
    sidecar_token: Option<String>,
}

impl SelectionClient {
    pub fn new(client: pb::tool_selector_client::ToolSelectorClient<Channel>, sidecar_token: Option<String>) -> Self {
        Self { client, sidecar_token }
    }

    /// Selects for `agent`, who authenticated to this sidecar with `agent_bearer`.
    pub async fn select(
        &self,
        agent: Uuid,
        agent_bearer: &str,
        req: pb::SelectToolRequest,
        deadline: Option<Duration>,
        traceparent: Option<String>,
    ) -> Result<pb::SelectToolResponse, Status> {
        let mut request = tonic::Request::new(req);
        let (bearer, on_behalf) = if agent_bearer.starts_with(TOKEN_PREFIX) {
            (agent_bearer, None)
        } else {
            let own = self.sidecar_token.as_deref().ok_or_else(|| {
                Status::failed_precondition("selection for an identity-provider agent needs the sidecar's own token")
            })?;
            (own, Some(agent))
        };
        let value = |s: String| {
            MetadataValue::try_from(s).map_err(|_| Status::invalid_argument("a credential that is not valid metadata"))
        };
        request
            .metadata_mut()
            .insert("authorization", value(format!("Bearer {bearer}"))?);
        if let Some(agent) = on_behalf {
            request
                .metadata_mut()
                .insert(ON_BEHALF_HEADER, value(agent.to_string())?);
        }
        if let Some(d) = deadline {
            request.set_timeout(d);
        }
        if let Some(t) = traceparent
            && let Ok(v) = MetadataValue::try_from(t)
        {
            request.metadata_mut().insert("traceparent", v);
        }
        Ok(self.client.clone().select_tool(request).await?.into_inner())
    }
}
