//! One simulated sidecar: a real `SidecarSync.Connect` stream that holds what the
//! control plane sends (decoded and applied as a sidecar does), streams audit events at
//! a steady rate, and reports when it first holds each admin change under test.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use toolplane_core::client::Bearer;
use toolplane_core::convert::{delta_from_pb, snapshot_from_pb, sync_event_to_pb};
use toolplane_core::delta::apply;
use toolplane_core::model::{AuditEvent, Snapshot, SyncEvent};
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::connect_response::Message as In;
use toolplane_proto::v1::sidecar_sync_client::SidecarSyncClient;
use toolplane_tests::events::tool_invoked;
use uuid::Uuid;

/// What a change under test looks like once a sidecar holds it.
#[derive(Debug, Clone)]
pub enum Expect {
    /// The agent's grant on the tool, and the tool itself (what a call needs).
    Granted { agent: Uuid, tool: Uuid },
    /// No grant of the agent on the tool.
    Revoked { agent: Uuid, tool: Uuid },
    /// The tool with this description.
    Described { tool: Uuid, description: String },
    /// The tool's fallback strategy, and the tool it falls back to.
    FallsBack { tool: Uuid, to: Uuid },
}

impl Expect {
    fn holds(&self, s: &Snapshot) -> bool {
        let granted =
            |agent: &Uuid, tool: &Uuid| s.permissions.iter().any(|p| p.agent_id == *agent && p.tool_id == *tool);
        match self {
            Self::Granted { agent, tool } => granted(agent, tool) && s.tools.iter().any(|t| t.id == *tool),
            Self::Revoked { agent, tool } => !granted(agent, tool),
            Self::Described { tool, description } => s
                .tools
                .iter()
                .any(|t| t.id == *tool && t.spec.description == *description),
            Self::FallsBack { tool, to } => {
                s.fallbacks.iter().any(|f| f.tool_id == *tool) && s.tools.iter().any(|t| t.id == *to)
            }
        }
    }
}

/// A change in flight: its number, when its RPC was about to be sent, what to look for.
#[derive(Debug)]
pub struct Change {
    pub seq: usize,
    pub started: Instant,
    pub expect: Expect,
}

/// Counters over every simulated sidecar of one run.
#[derive(Default)]
pub struct Counters {
    /// Sidecars holding their first snapshot.
    pub synced: AtomicU64,
    pub apply_errors: AtomicU64,
    pub snapshot_bytes: AtomicU64,
    pub delta_bytes: AtomicU64,
    pub events_sent: AtomicU64,
    pub events_acked: AtomicU64,
    /// Batches not sent because the stream's send buffer was full.
    pub batches_skipped: AtomicU64,
}

/// What every simulated sidecar of a run shares.
#[derive(Clone)]
pub struct Shared {
    pub counters: Arc<Counters>,
    /// The change under test (or none).
    pub change: watch::Receiver<Option<Arc<Change>>>,
    /// `(change seq, sidecar, time from just before the RPC until held)`.
    pub observed: mpsc::UnboundedSender<(usize, usize, Duration)>,
    /// The agent the sidecars serve (their scope) and the ids their audit events name.
    pub agent: Uuid,
    pub tool: Uuid,
    /// What a sidecar's first snapshot must hold (its agent's grants and fallbacks).
    pub must_hold: Arc<Vec<Expect>>,
    /// Audit events per batch, and the time between a sidecar's batches.
    pub batch: usize,
    pub batch_every: Duration,
}

fn audit_event(agent: Uuid, tool: Uuid, sidecar: &str) -> SyncEvent {
    SyncEvent::Audit(AuditEvent {
        task_id: "fleet-task".to_owned(),
        ..tool_invoked(agent, tool, sidecar)
    })
}

fn error(counters: &Counters, sidecar: usize, what: &str) {
    let n = counters.apply_errors.fetch_add(1, Ordering::Relaxed);
    // The first few are enough to see what went wrong.
    if n < 10 {
        eprintln!("fleet sidecar {sidecar}: {what}");
    }
}

/// Runs sidecar `idx` on `channel` until aborted.
pub async fn run(idx: usize, channel: Channel, token: String, shared: Shared) {
    let counters = &shared.counters;
    let name = format!("fleet-sim-{idx}");
    let (tx, rx) = mpsc::channel::<pb::ConnectRequest>(8);
    let hello = pb::SidecarHello {
        sidecar_id: name.clone(),
        version: "bench".to_owned(),
        known_revision: 0,
        scope: Some(pb::SnapshotScope {
            agents: vec![shared.agent.to_string()],
            ..Default::default()
        }),
    };
    tx.send(pb::ConnectRequest {
        message: Some(pb::connect_request::Message::Hello(hello)),
    })
    .await
    .unwrap();
    let authed = InterceptedService::new(channel, Bearer::new(Some(&token)).unwrap());
    // As the real sidecar: a whole-catalog snapshot may be far beyond tonic's 4 MiB.
    let mut client = SidecarSyncClient::new(authed).max_decoding_message_size(1 << 30);
    let mut inbound = match client.connect(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return error(counters, idx, &format!("connect: {e}")),
    };
    let mut held: Option<Snapshot> = None;
    let mut change_rx = shared.change.clone();
    let mut pending: Option<Arc<Change>> = None;
    // Spread the fleet's batches over the period instead of sending them in step.
    let offset = shared.batch_every.mul_f64(rand::random::<f64>());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, shared.batch_every);
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m.message,
                    Ok(None) => return error(counters, idx, "the control plane ended the stream"),
                    Err(e) => return error(counters, idx, &format!("stream error: {e}")),
                };
                match msg {
                    Some(In::Snapshot(s)) => {
                        counters.snapshot_bytes.fetch_add(s.encoded_len() as u64, Ordering::Relaxed);
                        match snapshot_from_pb(s) {
                            Ok(s) => {
                                let first = held.is_none();
                                for e in shared.must_hold.iter().filter(|e| !e.holds(&s)) {
                                    error(counters, idx, &format!("the snapshot lacks {e:?}"));
                                }
                                held = Some(s);
                                if first {
                                    counters.synced.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(e) => error(counters, idx, &format!("undecodable snapshot: {e:?}")),
                        }
                    }
                    Some(In::Delta(d)) => {
                        counters.delta_bytes.fetch_add(d.encoded_len() as u64, Ordering::Relaxed);
                        match (held.as_mut(), delta_from_pb(d)) {
                            (Some(h), Ok(d)) => {
                                if let Err(e) = apply(h, d) {
                                    error(counters, idx, &format!("delta does not apply: {e}"));
                                }
                            }
                            (None, _) => error(counters, idx, "a delta before any snapshot"),
                            (_, Err(e)) => error(counters, idx, &format!("undecodable delta: {e:?}")),
                        }
                    }
                    Some(In::Ack(a)) => {
                        counters.events_acked.fetch_add(a.event_ids.len() as u64, Ordering::Relaxed);
                    }
                    Some(In::Heartbeat(h)) => {
                        let at = held.as_ref().map(|s| s.revision);
                        if at != Some(h.revision) {
                            error(counters, idx, &format!("heartbeat for revision {} while holding {at:?}", h.revision));
                        }
                    }
                    None => error(counters, idx, "an empty message"),
                }
            }
            changed = change_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                pending = change_rx.borrow_and_update().clone();
            }
            _ = ticks.tick() => {
                let events = (0..shared.batch)
                    .map(|_| sync_event_to_pb(&audit_event(shared.agent, shared.tool, &name)))
                    .collect();
                let batch = pb::ConnectRequest {
                    message: Some(pb::connect_request::Message::Events(pb::EventBatch { events, spool_depth: 0 })),
                };
                // Never wait here: the stream's inbound side is what is measured.
                if tx.try_send(batch).is_ok() {
                    counters.events_sent.fetch_add(shared.batch as u64, Ordering::Relaxed);
                } else {
                    counters.batches_skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let (Some(c), Some(h)) = (&pending, &held)
            && c.expect.holds(h)
        {
            let _ = shared.observed.send((c.seq, idx, c.started.elapsed()));
            pending = None;
        }
    }
}
