//! The sidecar's side of `SidecarSync.Connect` with events already encoded.
//!
//! Every event is encoded once, when its call finishes (see [`crate::spool::Encoded`]);
//! those bytes are spooled and then sent as they are. [`OutboundRequest`] is
//! wire-identical to `toolplane.v1.ConnectRequest`: in protobuf, a repeated message
//! field and a repeated `bytes` field are both length-delimited records, so a batch of
//! pre-encoded `SyncEvent`s is a valid `EventBatch`. The control plane sees an ordinary
//! `ConnectRequest` (a test below decodes one to check).

use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tonic::{GrpcMethod, Status};
use toolplane_core::client::Bearer;
use toolplane_proto::v1 as pb;

/// `toolplane.v1.ConnectRequest`, whose `events` carry encoded `SyncEvent`s.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboundRequest {
    #[prost(oneof = "Outbound", tags = "1, 2, 3")]
    pub message: Option<Outbound>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Outbound {
    #[prost(message, tag = "1")]
    Hello(pb::SidecarHello),
    #[prost(message, tag = "2")]
    Events(EncodedBatch),
    #[prost(message, tag = "3")]
    Scope(pb::ScopeRequest),
}

/// `toolplane.v1.EventBatch` with each `SyncEvent` as its encoding.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncodedBatch {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub events: Vec<Bytes>,
    #[prost(uint64, tag = "2")]
    pub spool_depth: u64,
}

/// Opens the sync stream: what the generated client's `connect` does, with the
/// pre-encoded request type.
pub async fn connect(
    channel: Channel,
    bearer: Bearer,
    max_message_bytes: usize,
    outbound: impl tonic::IntoStreamingRequest<Message = OutboundRequest>,
) -> Result<Streaming<pb::ConnectResponse>, Status> {
    let service = tonic::service::interceptor::InterceptedService::new(channel, bearer);
    let mut grpc = tonic::client::Grpc::new(service)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the control plane is not ready: {e}")))?;
    let mut req = outbound.into_streaming_request();
    req.extensions_mut()
        .insert(GrpcMethod::new("toolplane.v1.SidecarSync", "Connect"));
    let codec = tonic_prost::ProstCodec::<OutboundRequest, pb::ConnectResponse>::default();
    let path = PathAndQuery::from_static("/toolplane.v1.SidecarSync/Connect");
    Ok(grpc.streaming(req, path, codec).await?.into_inner())
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use toolplane_core::convert::sync_event_to_pb;
    use toolplane_core::model::{AuditAction, AuditEvent, SyncEvent};

    use super::*;
    use crate::spool::Encoded;

    #[test]
    fn an_encoded_batch_is_an_ordinary_connect_request() {
        let events: Vec<SyncEvent> = (0..3)
            .map(|i| {
                SyncEvent::Audit(AuditEvent {
                    event_id: uuid::Uuid::now_v7(),
                    action: AuditAction::ToolInvoked,
                    invocation_id: Some(uuid::Uuid::now_v7()),
                    actor_id: format!("agent {i}"),
                    agent_id: None,
                    tool_id: None,
                    tool_version: i,
                    task_id: "t".into(),
                    occurred_at: chrono::Utc::now(),
                    sanitized_parameters: serde_json::json!({"city": "Zürich", "n": i}),
                    result: None,
                    success: true,
                    detail: String::new(),
                    compliance_frameworks: vec!["GDPR".into()],
                    data_classification: None,
                    sidecar_id: "s".into(),
                    permission_id: None,
                })
            })
            .collect();
        let raw = OutboundRequest {
            message: Some(Outbound::Events(EncodedBatch {
                events: events.iter().map(|e| Encoded::new(e).bytes).collect(),
                spool_depth: 7,
            })),
        };
        let decoded = pb::ConnectRequest::decode(raw.encode_to_vec().as_slice()).unwrap();
        let expected = pb::ConnectRequest {
            message: Some(pb::connect_request::Message::Events(pb::EventBatch {
                events: events.iter().map(sync_event_to_pb).collect(),
                spool_depth: 7,
            })),
        };
        assert_eq!(decoded, expected);

        let hello = pb::SidecarHello {
            sidecar_id: "s".into(),
            version: "1".into(),
            known_revision: 7,
            scope: None,
        };
        let raw = OutboundRequest {
            message: Some(Outbound::Hello(hello.clone())),
        };
        let decoded = pb::ConnectRequest::decode(raw.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.message, Some(pb::connect_request::Message::Hello(hello)));
    }
}
