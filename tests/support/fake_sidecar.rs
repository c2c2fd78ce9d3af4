//! A test client that speaks `SidecarSync.Connect` as a sidecar would (or as a
//! compromised one might), to see exactly what the control plane sends and accepts.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::sidecar_sync_client::SidecarSyncClient;

use crate::grpc::channel;

const WAIT: Duration = Duration::from_secs(20);

/// A sync stream opened by the test, as a sidecar would.
pub struct FakeSidecar {
    pub tx: mpsc::Sender<pb::ConnectRequest>,
    pub inbound: tonic::Streaming<pb::ConnectResponse>,
}

impl FakeSidecar {
    pub async fn connect(url: &str, token: &str, claimed_id: &str) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::ConnectRequest {
            message: Some(pb::connect_request::Message::Hello(pb::SidecarHello {
                sidecar_id: claimed_id.to_owned(),
                version: "test".to_owned(),
                known_revision: 0,
                scope: None,
            })),
        })
        .await
        .unwrap();
        let mut client = SidecarSyncClient::new(channel(url, Some(token)).await);
        let inbound = client.connect(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Self { tx, inbound }
    }

    /// Sends a batch and returns the ids the control plane acked for it.
    pub async fn send(&mut self, events: Vec<pb::SyncEvent>) -> Vec<String> {
        self.tx
            .send(pb::ConnectRequest {
                message: Some(pb::connect_request::Message::Events(pb::EventBatch {
                    events,
                    spool_depth: 0,
                })),
            })
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(WAIT, self.inbound.next())
                .await
                .expect("an answer from the control plane")
                .expect("the stream stays open")
                .expect("no stream error");
            if let Some(pb::connect_response::Message::Ack(a)) = msg.message {
                return a.event_ids;
            }
        }
    }

    /// The next message or stream end (`None`), waiting at most `timeout`.
    pub async fn next_within(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Result<pb::ConnectResponse, tonic::Status>>, tokio::time::error::Elapsed> {
        tokio::time::timeout(timeout, self.inbound.next()).await
    }
}
