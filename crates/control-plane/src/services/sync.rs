//! `SidecarSync.Connect`: pushes a snapshot on connect and after every change; stores
//! the events a sidecar sends (see `sync_ingest`) and acks their ids only after the
//! database commit.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use toolplane_core::convert::{delta_to_pb, snapshot_to_pb};
use toolplane_core::delta::diff;
use toolplane_core::model::{Principal, Role, Snapshot};
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::sidecar_sync_server::SidecarSync;
use toolplane_runtime::auth::{PrincipalExt, principal};
use toolplane_runtime::metrics as m;
use uuid::Uuid;

use super::sync_fleet::{Fleet, Member};
use super::sync_ingest::{Sender, store_batch};
use crate::state::AppState;

/// A sidecar that says nothing for this long after connecting is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SyncService {
    state: Arc<AppState>,
    policy: SessionPolicy,
    fleet: Arc<Fleet>,
}

/// How long a sync session may go quiet, and how long it may live.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub heartbeat: Duration,
    pub max_lifetime: Duration,
}

impl SyncService {
    pub fn new(state: Arc<AppState>, policy: SessionPolicy) -> Self {
        Self {
            state,
            policy,
            fleet: Arc::default(),
        }
    }

    /// The sessions open on this service, for the per-sidecar lag metrics.
    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.clone()
    }
}

type Out = Result<pb::ConnectResponse, Status>;

/// The token a session was opened with; `None` for the bootstrap admin token, which
/// lives in configuration and cannot be revoked.
#[derive(Debug, Clone, Copy)]
struct SessionToken(Option<Uuid>);

impl SessionToken {
    fn of(p: &Principal) -> Self {
        Self(match p {
            Principal::Admin { token_id } => *token_id,
            Principal::Agent { token_id, .. } | Principal::Sidecar { token_id } | Principal::Auditor { token_id } => {
                Some(*token_id)
            }
        })
    }

    /// Whether the token is still unrevoked and unexpired in `snapshot` (which holds
    /// exactly the active tokens).
    fn valid_in(&self, snapshot: &Snapshot) -> bool {
        let now = Utc::now();
        self.0
            .is_none_or(|id| snapshot.tokens.iter().any(|t| t.id == id && t.is_active(now)))
    }
}

/// Sends the full snapshot when the sidecar holds nothing from this stream yet, and only
/// what changed afterwards, once the session's token is checked again against the
/// current state. Returns the snapshot the sidecar now holds, or `None` when the stream
/// is over.
async fn push_state(
    state: &AppState,
    token: SessionToken,
    tx: &mpsc::Sender<Out>,
    held: Option<Arc<Snapshot>>,
    member: &Member,
) -> Option<Arc<Snapshot>> {
    let current = match state.snapshot().await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(Status::from(e))).await;
            return None;
        }
    };
    if !token.valid_in(&current) {
        let _ = tx
            .send(Err(Status::unauthenticated(
                "the sync session's token was revoked or has expired",
            )))
            .await;
        return None;
    }
    let message = match &held {
        None => pb::connect_response::Message::Snapshot(snapshot_to_pb(&current)),
        Some(old) => {
            let delta = diff(old, &current);
            if delta.is_empty() {
                member.synced(current.revision);
                return held;
            }
            pb::connect_response::Message::Delta(delta_to_pb(&delta))
        }
    };
    tx.send(Ok(pb::ConnectResponse { message: Some(message) })).await.ok()?;
    member.synced(current.revision);
    member.pushed();
    Some(current)
}

/// A heartbeat, after checking the token again (it may have expired without any change
/// to announce). `false` when the stream is over.
async fn beat(state: &AppState, token: SessionToken, tx: &mpsc::Sender<Out>, held: &Snapshot, member: &Member) -> bool {
    if let Ok(current) = state.snapshot().await
        && !token.valid_in(&current)
    {
        let _ = tx
            .send(Err(Status::unauthenticated(
                "the sync session's token was revoked or has expired",
            )))
            .await;
        return false;
    }
    let heartbeat = pb::Heartbeat {
        revision: held.revision,
        sent_at: Some(toolplane_core::convert::ts(Utc::now())),
    };
    let sent = tx
        .send(Ok(pb::ConnectResponse {
            message: Some(pb::connect_response::Message::Heartbeat(heartbeat)),
        }))
        .await
        .is_ok();
    if sent {
        member.pushed();
    }
    sent
}

struct Session {
    state: Arc<AppState>,
    sender: Sender,
    token: SessionToken,
    policy: SessionPolicy,
    fleet: Arc<Fleet>,
}

async fn session(s: Session, mut inbound: Streaming<pb::ConnectRequest>, tx: mpsc::Sender<Out>) {
    let Session {
        state,
        sender,
        token,
        policy,
        fleet,
    } = s;
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
    tracing::info!(sidecar = %sidecar, version = %hello.version.chars().take(64).collect::<String>(), known_revision = hello.known_revision, "sidecar connected");
    metrics::gauge!(m::SYNC_SESSIONS).increment(1.0);
    let _connected = scopeguard(|| metrics::gauge!(m::SYNC_SESSIONS).decrement(1.0));
    let member = fleet.join(token.0);
    // The name it claims, for display next to the token that vouches for it.
    member.named(hello.sidecar_id.chars().take(128).collect());
    let mut changes = state.subscribe();
    changes.mark_unchanged();
    let Some(mut held) = push_state(&state, token, &tx, None, &member).await else {
        return;
    };
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + policy.heartbeat, policy.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let expires = tokio::time::sleep(policy.max_lifetime);
    tokio::pin!(expires);
    loop {
        tokio::select! {
            msg = inbound.next() => match msg {
                Some(Ok(pb::ConnectRequest { message: Some(pb::connect_request::Message::Events(batch)) })) => {
                    member.spooled(batch.spool_depth);
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
                match push_state(&state, token, &tx, Some(held), &member).await {
                    Some(now) => held = now,
                    None => break,
                }
            }
            _ = heartbeat.tick() => {
                if !beat(&state, token, &tx, &held, &member).await { break; }
            }
            () = &mut expires => {
                // Ending the stream cleanly: the sidecar reconnects at once, presenting
                // its token anew.
                tracing::info!(sidecar = %sidecar, "sync session reached its maximum lifetime");
                break;
            }
        }
    }
    tracing::info!(sidecar = %sidecar, "sidecar disconnected");
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
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
        let s = Session {
            state: self.state.clone(),
            sender: Sender::of(&who),
            token: SessionToken::of(&who),
            policy: self.policy,
            fleet: self.fleet.clone(),
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(session(s, request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
