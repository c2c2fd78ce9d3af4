//! What the control plane does with a batch of sidecar events: parse, stamp with the
//! sender's authenticated identity, store, and make sure no single event can hold the
//! stream up. A batch the database refuses is stored event by event; an event that
//! still cannot be stored, cannot be parsed, or claims an identity its sender does not
//! have goes whole into the dead-letter table. Every event of the batch is then acked,
//! so the sidecar's queue moves on; only an unreachable database leaves a batch unacked
//! (the sidecar resends it later).

use chrono::Utc;
use prost::Message;
use toolplane_core::convert::sync_event_from_pb;
use toolplane_core::model::{AuditAction, InvocationRecord, Principal, SyncEvent};
use toolplane_proto::v1 as pb;
use toolplane_runtime::metrics as m;

use crate::state::AppState;
use crate::storage::{DeadLetter, StoreError, StoreResult};

/// The identity a sync stream was authenticated with, which every event it carries is
/// stamped with (never taken from the event).
#[derive(Debug, Clone)]
pub struct Sender {
    /// `sidecar:<token id>`: the chain its audit events go to, and the dead-letter source.
    pub source: String,
    /// What the events' `sidecar_id` is set to; `None` when the token may not send events.
    sidecar_id: Option<String>,
}

impl Sender {
    pub fn of(principal: &Principal) -> Self {
        match principal {
            Principal::Sidecar { token_id } => Self {
                source: format!("sidecar:{token_id}"),
                sidecar_id: Some(token_id.to_string()),
            },
            other => Self {
                source: other.actor_id(),
                sidecar_id: None,
            },
        }
    }
}

/// Actions a sidecar records; everything else is an administrative action, which only
/// the control plane itself writes.
fn sidecar_action(a: AuditAction) -> bool {
    matches!(
        a,
        AuditAction::ToolInvoked
            | AuditAction::PermissionChecked
            | AuditAction::CacheHit
            | AuditAction::CacheMiss
            | AuditAction::FallbackUsed
            | AuditAction::RateLimited
            | AuditAction::ErrorOccurred
    )
}

/// Stamps `e` with the sender's identity, or says why the sender may not have sent it.
fn stamp(sender: &Sender, e: &mut SyncEvent) -> Result<(), String> {
    let Some(sidecar_id) = &sender.sidecar_id else {
        return Err(format!(
            "refused: events must be sent with a sidecar token, not as {}",
            sender.source
        ));
    };
    match e {
        SyncEvent::Audit(a) => {
            if !sidecar_action(a.action) {
                return Err(format!(
                    "refused: a sidecar may not record the administrative action {}",
                    a.action
                ));
            }
            let Some(agent) = a.agent_id else {
                return Err("refused: a sidecar's audit event must name its agent".to_owned());
            };
            if a.actor_id != agent.to_string() {
                return Err(format!(
                    "refused: the actor {:?} is not the event's agent {agent}",
                    a.actor_id
                ));
            }
            a.sidecar_id.clone_from(sidecar_id);
        }
        SyncEvent::Invocation(i) => i.sidecar_id.clone_from(sidecar_id),
    }
    Ok(())
}

fn kind_of(e: &pb::SyncEvent) -> &'static str {
    match e.payload {
        Some(pb::sync_event::Payload::Audit(_)) => "audit",
        Some(pb::sync_event::Payload::Invocation(_)) => "invocation",
        None => "unknown",
    }
}

/// One event of a batch on its way in, with its bytes as received.
struct Incoming {
    raw: Vec<u8>,
    event_id: String,
    kind: &'static str,
}

impl Incoming {
    fn letter(&self, sender: &Sender, error: String) -> DeadLetter {
        DeadLetter {
            id: 0,
            received_at: Utc::now(),
            source: sender.source.clone(),
            event_id: self.event_id.clone(),
            kind: self.kind.to_owned(),
            error,
            raw: self.raw.clone(),
        }
    }
}

/// Errors that say the database cannot take anything right now (not that this event is
/// bad): the batch stays unacked and is resent.
fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_))
}

/// Stores a batch and returns the ids to ack: every event of the batch, stored in the
/// trail or kept as a dead letter. `Err` only when the database is unavailable.
pub async fn store_batch(state: &AppState, sender: &Sender, batch: pb::EventBatch) -> StoreResult<Vec<String>> {
    let mut ids = Vec::with_capacity(batch.events.len());
    let mut incoming = Vec::with_capacity(batch.events.len());
    let mut events = Vec::with_capacity(batch.events.len());
    let mut letters = Vec::new();
    for e in batch.events {
        let meta = Incoming {
            raw: e.encode_to_vec(),
            event_id: e.event_id.clone(),
            kind: kind_of(&e),
        };
        ids.push(e.event_id.clone());
        match sync_event_from_pb(e) {
            Ok(mut ev) => match stamp(sender, &mut ev) {
                Ok(()) => {
                    events.push(ev);
                    incoming.push(meta);
                }
                Err(why) => {
                    tracing::warn!(source = %sender.source, event_id = %meta.event_id, reason = %why, "refusing sync event");
                    metrics::counter!(m::EVENTS_DEAD_LETTERED, "reason" => "refused").increment(1);
                    letters.push(meta.letter(sender, why));
                }
            },
            Err(v) => {
                tracing::warn!(source = %sender.source, event_id = %meta.event_id, error = %v, "unparseable sync event");
                metrics::counter!(m::EVENTS_DEAD_LETTERED, "reason" => "unparseable").increment(1);
                letters.push(meta.letter(sender, format!("unparseable: {v}")));
            }
        }
    }
    let stored = match state.store.append_events(&events).await {
        Ok(()) => events,
        Err(e) if transient(&e) => return Err(e),
        Err(e) => {
            tracing::warn!(source = %sender.source, events = events.len(), error = %e, "batch refused; storing its events one by one");
            store_one_by_one(state, sender, events, incoming, &mut letters).await?
        }
    };
    state.store.dead_letter(&letters).await?;
    learn(state, &stored).await;
    Ok(ids)
}

/// Stores each event on its own; returns those stored and adds the rest to `letters`.
async fn store_one_by_one(
    state: &AppState,
    sender: &Sender,
    events: Vec<SyncEvent>,
    incoming: Vec<Incoming>,
    letters: &mut Vec<DeadLetter>,
) -> StoreResult<Vec<SyncEvent>> {
    let mut stored = Vec::with_capacity(events.len());
    for (event, meta) in events.into_iter().zip(incoming) {
        match state.store.append_events(std::slice::from_ref(&event)).await {
            Ok(()) => stored.push(event),
            Err(e) if transient(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(source = %sender.source, event_id = %meta.event_id, error = %e, "sync event refused by the store; dead-lettered");
                metrics::counter!(m::EVENTS_DEAD_LETTERED, "reason" => "rejected").increment(1);
                letters.push(meta.letter(sender, format!("not stored: {e}")));
            }
        }
    }
    Ok(stored)
}

/// After the commit: the events are safe whatever happens here, so a failure only
/// costs what task memory would have learned from them.
async fn learn(state: &AppState, stored: &[SyncEvent]) {
    let invocations: Vec<&InvocationRecord> = stored
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Invocation(i) => Some(i),
            SyncEvent::Audit(_) => None,
        })
        .collect();
    if let Err(e) = state.remember_tasks(&invocations).await {
        tracing::warn!(error = %e, "could not update task memory from a batch");
    }
    for e in stored {
        match e {
            SyncEvent::Invocation(i) => {
                metrics::counter!(m::EVENTS_STORED, "kind" => "invocation").increment(1);
                state.learn(i, None);
            }
            SyncEvent::Audit(_) => {
                metrics::counter!(m::EVENTS_STORED, "kind" => "audit").increment(1);
            }
        }
    }
    // The store folded the batch into the shared cells; this replica answers from
    // them at once, the others at their next refresh.
    if state.store.shares_learning()
        && let Err(e) = state.refresh_learning().await
    {
        tracing::warn!(error = %e, "could not refresh learning after a batch");
    }
}
