//! `SidecarSync.Connect`: pushes a snapshot on connect and after every change; stores
//! the events a sidecar sends (see `sync_ingest`) and acks their ids only after the
//! database commit.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use toolplane_core::convert::{delta_to_pb, snapshot_to_pb};
use toolplane_core::delta::diff;
use toolplane_core::model::Role;
use toolplane_core::model::Snapshot;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::sidecar_sync_server::SidecarSync;
use toolplane_runtime::auth::{PrincipalExt, principal};

use super::sync_ingest::{Sender, store_batch};
use crate::state::AppState;

/// A sidecar that says nothing for this long after connecting is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SyncService {
    state: Arc<AppState>,
}

impl SyncService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

type Out = Result<pb::ConnectResponse, Status>;

/// Sends the full snapshot when the sidecar holds nothing from this stream yet, and only
/// what changed afterwards. Returns the snapshot the sidecar now holds, or `None` when
/// the stream is over.
async fn push_state(state: &AppState, tx: &mpsc::Sender<Out>, held: Option<Arc<Snapshot>>) -> Option<Arc<Snapshot>> {
    let current = match state.snapshot().await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(Status::from(e))).await;
            return None;
        }
    };
    let message = match &held {
        None => pb::connect_response::Message::Snapshot(snapshot_to_pb(&current)),
        Some(old) => {
            let delta = diff(old, &current);
            if delta.is_empty() {
                return held;
            }
            pb::connect_response::Message::Delta(delta_to_pb(&delta))
        }
    };
    tx.send(Ok(pb::ConnectResponse { message: Some(message) })).await.ok()?;
    Some(current)
}

async fn session(
    state: Arc<AppState>,
    sender: Sender,
    mut inbound: Streaming<pb::ConnectRequest>,
    tx: mpsc::Sender<Out>,
) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.next()).await {
        Ok(Some(Ok(pb::ConnectRequest {
            message: Some(pb::connect_request::Message::Hello(h)),
        }))) => h,
        _ => {
            let _ = tx
                .send(Err(Status::invalid_argument("the first message must be SidecarHello")))
                .await;
            return;
        }
    };
    // The sidecar's own name for itself, for logs only: its events carry the identity
    // of its token.
    let sidecar = format!(
        "{} ({})",
        hello.sidecar_id.chars().take(128).collect::<String>(),
        sender.source
    );
    tracing::info!(sidecar = %sidecar, version = %hello.version, known_revision = hello.known_revision, "sidecar connected");
    let mut changes = state.subscribe();
    changes.mark_unchanged();
    let Some(mut held) = push_state(&state, &tx, None).await else {
        return;
    };
    loop {
        tokio::select! {
            msg = inbound.next() => match msg {
                Some(Ok(pb::ConnectRequest { message: Some(pb::connect_request::Message::Events(batch)) })) => {
                    match store_batch(&state, &sender, batch).await {
                        Ok(ids) => {
                            let ack = pb::ConnectResponse { message: Some(pb::connect_response::Message::Ack(pb::EventAck { event_ids: ids })) };
                            if tx.send(Ok(ack)).await.is_err() { break; }
                        }
                        // Not acked: end the stream so the sidecar requeues its in-flight
                        // events and resends them after reconnecting with backoff.
                        Err(e) => {
                            tracing::warn!(sidecar = %sidecar, error = %e, "could not store events; closing stream");
                            let _ = tx.send(Err(Status::from(crate::error::ApiError::from(e)))).await;
                            break;
                        }
                    }
                }
                Some(Ok(_)) => tracing::debug!(sidecar = %sidecar, "ignoring unexpected message"),
                Some(Err(status)) => {
                    tracing::info!(sidecar = %sidecar, error = %status.message(), "sidecar stream error");
                    break;
                }
                None => break,
            },
            changed = changes.changed() => {
                if changed.is_err() { break; }
                match push_state(&state, &tx, Some(held)).await {
                    Some(now) => held = now,
                    None => break,
                }
            }
        }
    }
    tracing::info!(sidecar = %sidecar, "sidecar disconnected");
}

#[tonic::async_trait]
impl SidecarSync for SyncService {
    type ConnectStream = Pin<Box<dyn Stream<Item = Out> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let who = principal(&request)?;
        who.require(&[Role::Sidecar, Role::Admin], "SidecarSync.Connect")?;
        let sender = Sender::of(&who);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(session(self.state.clone(), sender, request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
