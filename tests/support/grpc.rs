//! Generated clients with a bearer token, and the common set-up of an end-to-end test.

use serde_json::Value;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use toolplane_core::client::Bearer;
use toolplane_core::json::json_to_struct;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::executor_client::ExecutorClient;
use toolplane_proto::v1::identity_client::IdentityClient;
use toolplane_proto::v1::permissions_client::PermissionsClient;
use toolplane_proto::v1::tool_registry_client::ToolRegistryClient;

pub type Authed = InterceptedService<Channel, Bearer>;

pub async fn channel(url: &str, token: Option<&str>) -> Authed {
    let ch = Endpoint::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    InterceptedService::new(ch, Bearer::new(token).unwrap())
}

#[derive(Clone)]
pub struct Admin {
    pub registry: ToolRegistryClient<Authed>,
    pub identity: IdentityClient<Authed>,
    pub permissions: PermissionsClient<Authed>,
}

impl Admin {
    pub async fn connect(url: &str, token: &str) -> Self {
        let ch = channel(url, Some(token)).await;
        Self {
            registry: ToolRegistryClient::new(ch.clone()),
            identity: IdentityClient::new(ch.clone()),
            permissions: PermissionsClient::new(ch),
        }
    }

    pub async fn register(&mut self, tool: pb::Tool) -> Result<pb::Tool, tonic::Status> {
        let r = self
            .registry
            .register_tool(pb::RegisterToolRequest { tool: Some(tool) })
            .await?;
        Ok(r.into_inner().tool.unwrap())
    }

    pub async fn agent(&mut self, name: &str) -> pb::Agent {
        let r = self
            .identity
            .create_agent(pb::CreateAgentRequest {
                name: name.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        r.into_inner().agent.unwrap()
    }

    pub async fn token(&mut self, role: pb::Role, agent_id: &str) -> String {
        self.issue(role, agent_id).await.token
    }

    /// A new token with its id (a sidecar's id names its audit chain).
    pub async fn issue(&mut self, role: pb::Role, agent_id: &str) -> pb::IssueTokenResponse {
        self.identity
            .issue_token(pb::IssueTokenRequest {
                role: role as i32,
                agent_id: agent_id.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn grant_full(&mut self, agent_id: &str, tool_id: &str) -> pb::Permission {
        let r = self
            .permissions
            .grant(pb::GrantRequest {
                permission: Some(pb::Permission {
                    agent_id: agent_id.to_owned(),
                    tool_id: tool_id.to_owned(),
                    r#type: pb::PermissionType::FullAccess as i32,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        r.into_inner().permission.unwrap()
    }
}

/// A valid HTTP tool definition whose input needs a string `text`.
pub fn http_tool(name: &str, endpoint: &str) -> pb::Tool {
    let input = serde_json::json!({
        "type": "object", "required": ["text"],
        "properties": {"text": {"type": "string", "maxLength": 100}, "api_key": {"type": "string"}}
    });
    let output = serde_json::json!({"type": "object", "properties": {"words": {"type": "integer"}}});
    pb::Tool {
        name: name.to_owned(),
        category: "analysis".to_owned(),
        description: "Counts the words of a text".to_owned(),
        schema: Some(pb::ToolSchema {
            input_schema: json_to_struct(&input),
            output_schema: json_to_struct(&output),
            ..Default::default()
        }),
        capabilities: vec!["analyze".to_owned()],
        requirements: Some(pb::ToolRequirements {
            timeout_ms: 1000,
            data_sensitivity: pb::DataSensitivity::Internal as i32,
            ..Default::default()
        }),
        provider: "test".to_owned(),
        endpoint: endpoint.to_owned(),
        protocol: pb::ToolProtocol::Http as i32,
        cost_per_call: "0.0020".to_owned(),
        enabled: true,
        side_effects: pb::SideEffects::None as i32,
        idempotent: true,
        ..Default::default()
    }
}

pub fn invoke_request(tool_name: &str, params: &Value) -> pb::InvokeRequest {
    pb::InvokeRequest {
        tool: Some(pb::invoke_request::Tool::ToolName(tool_name.to_owned())),
        parameters: json_to_struct(params),
        task_id: "task-1".to_owned(),
        task_category: String::new(),
        selection_id: String::new(),
    }
}

pub async fn executor(url: &str, token: Option<&str>) -> ExecutorClient<Authed> {
    ExecutorClient::new(channel(url, token).await)
}
