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
use toolplane_core::delta::{SnapshotDelta, diff};
use toolplane_core::model::{Principal, Role, Scope};
use toolplane_core::scope::{Catalog, Held, scoped_delta};
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
    catalogs: Arc<Catalogs>,
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
            catalogs: Arc::default(),
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

    /// Whether the token is still unrevoked and unexpired in `catalog` (whose snapshot
    /// holds exactly the active tokens).
    fn valid_in(&self, catalog: &Catalog) -> bool {
        let now = Utc::now();
        self.0
            .is_none_or(|id| catalog.token(id).is_some_and(|t| t.is_active(now)))
    }
}

/// Most agents and on-demand tools one session's scope holds: a sidecar asking for more
/// gets the first ones (and a warning in the log), not an unbounded set.
const MAX_SCOPE_AGENTS: usize = 10_000;
const MAX_SCOPE_TOOLS: usize = 10_000;

/// The scope a sidecar asked for, resolved against `catalog`; `None` for the whole
/// catalog. Agent and tool names become ids; tools that do not exist are left out (the
/// sidecar learns of their absence from the answer's `request_id`).
fn resolve(requested: Option<pb::SnapshotScope>, catalog: &Catalog) -> Option<Scope> {
    let requested = requested.filter(|s| !s.all_agents)?;
    let mut scope = Scope::default();
    widen(
        &mut scope,
        &requested.agents,
        &requested.tools,
        requested.request_id,
        catalog,
    );
    Some(scope)
}

/// Adds what a `ScopeRequest` (or a hello) names to `scope`, within the bounds.
fn widen(scope: &mut Scope, agents: &[String], tools: &[String], request_id: u64, catalog: &Catalog) {
    for a in agents.iter().filter_map(|r| catalog.agent_ref(r)) {
        if scope.agents.len() >= MAX_SCOPE_AGENTS {
            tracing::warn!(max = MAX_SCOPE_AGENTS, "a sidecar's scope is full; not adding agents");
            break;
        }
        scope.agents.insert(a);
    }
    for t in tools.iter().filter_map(|r| catalog.tool_ref(r)) {
        if scope.tools.len() >= MAX_SCOPE_TOOLS {
            tracing::warn!(max = MAX_SCOPE_TOOLS, "a sidecar's scope is full; not adding tools");
            break;
        }
        scope.tools.insert(t);
    }
    scope.request_id = scope.request_id.max(request_id);
}

/// The catalog at the current revision with its lookups, and the catalog's deltas
/// between revisions: built once per revision for every session, so a change costs
/// each sidecar what concerns it rather than a pass over the catalog.
#[derive(Default)]
pub struct Catalogs {
    current: tokio::sync::Mutex<Option<Arc<Catalog>>>,
    deltas: std::sync::Mutex<std::collections::VecDeque<KeptDelta>>,
}

/// A catalog delta by (from, to) revision.
type KeptDelta = ((u64, u64), Arc<SnapshotDelta>);

/// Deltas kept for sessions still catching up (a few revisions behind).
const KEPT_DELTAS: usize = 16;

impl Catalogs {
    async fn current(&self, state: &AppState) -> crate::error::ApiResult<Arc<Catalog>> {
        let snapshot = state.snapshot().await?;
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref().filter(|c| Arc::ptr_eq(&c.snapshot, &snapshot)) {
            return Ok(c.clone());
        }
        let built = Arc::new(Catalog::new(snapshot));
        *current = Some(built.clone());
        Ok(built)
    }

    /// The catalog's delta from `old` to `new`, computed by the first session to need it.
    fn delta(&self, old: &Catalog, new: &Catalog) -> Arc<SnapshotDelta> {
        let key = (old.revision(), new.revision());
        let mut deltas = self.deltas.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, d)) = deltas.iter().find(|(k, _)| *k == key) {
            return d.clone();
        }
        let d = Arc::new(diff(&old.snapshot, &new.snapshot));
        if deltas.len() >= KEPT_DELTAS {
            deltas.pop_front();
        }
        deltas.push_back((key, d.clone()));
        d
    }
}

/// What one session's sidecar holds and asked for.
struct View {
    /// `None`: the whole catalog.
    scope: Option<Scope>,
    held: Option<Held>,
}

/// Sends the full (scoped) snapshot when the sidecar holds nothing from this stream
/// yet, and only what changed for it afterwards, once the session's token is checked
/// again against the current state. `false` when the stream is over.
async fn push_state(s: &Session, tx: &mpsc::Sender<Out>, view: &mut View, member: &Member) -> bool {
    let current = match s.catalogs.current(&s.state).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(Status::from(e))).await;
            return false;
        }
    };
    if !s.token.valid_in(&current) {
        let _ = tx
            .send(Err(Status::unauthenticated(
                "the sync session's token was revoked or has expired",
            )))
            .await;
        return false;
    }
    if let Some(scope) = view.scope.as_mut() {
        scope.tools.retain(|t| current.has_tool(*t));
    }
    let whole = Scope::default();
    let scope = view.scope.as_ref().unwrap_or(&whole);
    let (message, now) = match &view.held {
        None => {
            let (snapshot, held) = if view.scope.is_some() {
                let (snapshot, held) = Held::scoped(&current, scope);
                (snapshot_to_pb(&snapshot), held)
            } else {
                let held = Held::whole(&current);
                (snapshot_to_pb(&current.snapshot), held)
            };
            (pb::connect_response::Message::Snapshot(snapshot), held)
        }
        Some(held) => {
            let catalog_delta = s.catalogs.delta(&held.catalog, &current);
            let (delta, now) = if view.scope.is_some() {
                scoped_delta(held, &current, &catalog_delta, scope)
            } else {
                let mut delta = catalog_delta.as_ref().clone();
                delta.from_revision = held.revision;
                let now = Held::whole(&current);
                (delta, now)
            };
            if delta.is_empty() {
                member.synced(current.revision());
                view.held = Some(Held::unsent(now, held));
                return true;
            }
            (pb::connect_response::Message::Delta(delta_to_pb(&delta)), now)
        }
    };
    if tx
        .send(Ok(pb::ConnectResponse { message: Some(message) }))
        .await
        .is_err()
    {
        return false;
    }
    member.synced(current.revision());
    member.pushed();
    view.held = Some(now);
    true
}

/// A heartbeat, after checking the token again (it may have expired without any change
/// to announce). `false` when the stream is over.
async fn beat(s: &Session, tx: &mpsc::Sender<Out>, revision: u64, member: &Member) -> bool {
    if let Ok(current) = s.catalogs.current(&s.state).await
        && !s.token.valid_in(&current)
    {
        let _ = tx
            .send(Err(Status::unauthenticated(
                "the sync session's token was revoked or has expired",
            )))
            .await;
        return false;
    }
    let heartbeat = pb::Heartbeat {
        revision,
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
    catalogs: Arc<Catalogs>,
}

async fn session(s: Session, mut inbound: Streaming<pb::ConnectRequest>, tx: mpsc::Sender<Out>) {
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
        s.sender.source
    );
    tracing::info!(sidecar = %sidecar, version = %hello.version.chars().take(64).collect::<String>(), known_revision = hello.known_revision, scoped = hello.scope.as_ref().is_some_and(|s| !s.all_agents), "sidecar connected");
    metrics::gauge!(m::SYNC_SESSIONS).increment(1.0);
    let _connected = scopeguard(|| metrics::gauge!(m::SYNC_SESSIONS).decrement(1.0));
    let member = s.fleet.join(s.token.0);
    // The name it claims, for display next to the token that vouches for it.
    member.named(hello.sidecar_id.chars().take(128).collect());
    let mut changes = s.state.subscribe();
    changes.mark_unchanged();
    let scope = match s.catalogs.current(&s.state).await {
        Ok(c) => resolve(hello.scope, &c),
        Err(e) => {
            let _ = tx.send(Err(Status::from(e))).await;
            return;
        }
    };
    let mut view = View { scope, held: None };
    if !push_state(&s, &tx, &mut view, &member).await {
        return;
    }
    let policy = s.policy;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + policy.heartbeat, policy.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let expires = tokio::time::sleep(policy.max_lifetime);
    tokio::pin!(expires);
    loop {
        tokio::select! {
            msg = inbound.next() => match msg {
                Some(Ok(pb::ConnectRequest { message: Some(pb::connect_request::Message::Events(batch)) })) => {
                    member.spooled(batch.spool_depth);
                    match store_batch(&s.state, &s.sender, batch).await {
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
                Some(Ok(pb::ConnectRequest { message: Some(pb::connect_request::Message::Scope(req)) })) => {
                    let Some(scope) = view.scope.as_mut() else {
                        // A sidecar holding the whole catalog has nothing to ask for.
                        continue;
                    };
                    match s.catalogs.current(&s.state).await {
                        Ok(c) => widen(scope, &req.agents, &req.tools, req.request_id, &c),
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            break;
                        }
                    }
                    if !push_state(&s, &tx, &mut view, &member).await { break; }
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
                if !push_state(&s, &tx, &mut view, &member).await { break; }
            }
            _ = heartbeat.tick() => {
                let revision = view.held.as_ref().map_or(0, |h| h.revision);
                if !beat(&s, &tx, revision, &member).await { break; }
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
            catalogs: self.catalogs.clone(),
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(session(s, request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
