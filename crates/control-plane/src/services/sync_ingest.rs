//! What the control plane does with a batch of sidecar events: parse, stamp with the
//! sender's authenticated identity, store, and make sure no single event can hold the
//! stream up. A batch the database refuses is stored event by event; an event that
//! still cannot be stored, cannot be parsed, or claims an identity its sender does not
//! have goes whole into the dead-letter table. Every event of the batch is then acked,
//! so the sidecar's queue moves on; only an unreachable database leaves a batch unacked
//! (the sidecar resends it later).

use chrono::Utc;
use prost::Message;
use toolplane_core::convert::{check_sync_event, sync_event_from_pb, sync_event_to_pb};
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

/// A dead letter of `raw`, the event's protobuf encoding.
fn letter(sender: &Sender, event_id: String, kind: &str, error: String, raw: Vec<u8>) -> DeadLetter {
    DeadLetter {
        id: 0,
        received_at: Utc::now(),
        source: sender.source.clone(),
        event_id,
        kind: kind.to_owned(),
        error,
        raw,
    }
}

/// A parsed event's dead letter: its encoding again, which carries every field this
/// control plane knows (an event that did not parse is kept exactly as received).
fn parsed_letter(sender: &Sender, e: &SyncEvent, error: String) -> DeadLetter {
    let kind = match e {
        SyncEvent::Audit(_) => "audit",
        SyncEvent::Invocation(_) => "invocation",
    };
    let raw = sync_event_to_pb(e).encode_to_vec();
    letter(sender, e.event_id().to_string(), kind, error, raw)
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
    let mut events = Vec::with_capacity(batch.events.len());
    let mut letters = Vec::new();
    for e in batch.events {
        ids.push(e.event_id.clone());
        // Checked before converting, which takes the event apart: one that cannot be
        // parsed is kept exactly as received, and no event is copied just in case.
        if let Err(v) = check_sync_event(&e) {
            tracing::warn!(source = %sender.source, event_id = %e.event_id, error = %v, "unparseable sync event");
            metrics::counter!(m::EVENTS_DEAD_LETTERED, "reason" => "unparseable").increment(1);
            let (id, kind, raw) = (e.event_id.clone(), kind_of(&e), e.encode_to_vec());
            letters.push(letter(sender, id, kind, format!("unparseable: {v}"), raw));
            continue;
        }
        let mut ev = match sync_event_from_pb(e) {
            Ok(ev) => ev,
            // The check above accepts only what converts; kept for safety all the same.
            Err(v) => {
                let id = ids.last().cloned().unwrap_or_default();
                letters.push(letter(sender, id, "unknown", format!("unparseable: {v}"), Vec::new()));
                continue;
            }
        };
        match stamp(sender, &mut ev) {
            Ok(()) => events.push(ev),
            Err(why) => {
                tracing::warn!(source = %sender.source, event_id = %ev.event_id(), reason = %why, "refusing sync event");
                metrics::counter!(m::EVENTS_DEAD_LETTERED, "reason" => "refused").increment(1);
                letters.push(parsed_letter(sender, &ev, why));
            }
        }
    }
    let audits = audits_in(&events);
    let (stored, audits) = match state.store.append_owned_events(events).await {
        Ok(invocations) => (invocations, audits),
        Err((e, _)) if transient(&e) => return Err(e),
        Err((e, events)) => {
            tracing::warn!(source = %sender.source, events = events.len(), error = %e, "batch refused; storing its events one by one");
            let stored = store_one_by_one(state, sender, events, &mut letters).await?;
            let audits = audits_in(&stored);
            (stored, audits)
        }
    };
    state.store.dead_letter(&letters).await?;
    learn(state, &stored, audits).await;
    state.stats_stored(&stored);
    Ok(ids)
}

fn audits_in(events: &[SyncEvent]) -> usize {
    events.iter().filter(|e| matches!(e, SyncEvent::Audit(_))).count()
}

/// Stores each event on its own; returns those stored and adds the rest to `letters`.
async fn store_one_by_one(
    state: &AppState,
    sender: &Sender,
    events: Vec<SyncEvent>,
    letters: &mut Vec<DeadLetter>,
) -> StoreResult<Vec<SyncEvent>> {
    let mut stored = Vec::with_capacity(events.len());
    for event in events {
        match state.store.append_events(std::slice::from_ref(&event)).await {
            Ok(()) => stored.push(event),
            Err(e) if transient(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(source = %sender.source, event_id = %event.event_id(), error = %e, "sync event refused by the store; dead-lettered");
                metrics::counter!(m::EVENTS_DEAD_LETTERED, "reason" => "rejected").increment(1);
                letters.push(parsed_letter(sender, &event, format!("not stored: {e}")));
            }
        }
    }
    Ok(stored)
}

/// After the commit: the events are safe whatever happens here, so a failure only
/// costs what task memory would have learned from them. `stored` holds at least the
/// stored invocations; `audits` counts the audit events stored with them.
async fn learn(state: &AppState, stored: &[SyncEvent], audits: usize) {
    let invocations: Vec<&InvocationRecord> = stored
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Invocation(i) => Some(i),
            SyncEvent::Audit(_) => None,
        })
        .collect();
    if invocations.is_empty() {
        // Audit events alone teach selection nothing: no round trips for them.
        metrics::counter!(m::EVENTS_STORED, "kind" => "audit").increment(audits as u64);
        return;
    }
    if let Err(e) = state.remember_tasks(&invocations).await {
        tracing::warn!(error = %e, "could not update task memory from a batch");
    }
    for i in &invocations {
        state.learn(i, None);
    }
    // Counted per batch: a series lookup per event is a hash into the registry each.
    metrics::counter!(m::EVENTS_STORED, "kind" => "invocation").increment(invocations.len() as u64);
    if audits > 0 {
        metrics::counter!(m::EVENTS_STORED, "kind" => "audit").increment(audits as u64);
    }
    // The store folded the batch into the shared cells; this replica answers from
    // them at once, the others at their next refresh.
    if state.store.shares_learning()
        && let Err(e) = state.refresh_learning().await
    {
        tracing::warn!(error = %e, "could not refresh learning after a batch");
    }
}
