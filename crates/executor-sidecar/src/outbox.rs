//! Events waiting to reach the control plane. An event leaves the outbox only when the
//! control plane acks its id (after its database commit); events in flight when a
//! connection drops go back to the front of the queue and are sent again.
//!
//! This version keeps the outbox in memory: events survive control plane outages but
//! not a sidecar restart (the on-disk spool is listed under "not implemented yet").

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;
use toolplane_core::model::SyncEvent;
use uuid::Uuid;

/// Beyond this many waiting events new ones are dropped and counted.
pub const DEFAULT_CAPACITY: usize = 200_000;

#[derive(Default)]
struct Inner {
    queue: VecDeque<SyncEvent>,
    in_flight: HashMap<Uuid, SyncEvent>,
    dropped: u64,
}

pub struct Outbox {
    inner: Mutex<Inner>,
    capacity: usize,
    notify: Notify,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity,
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, event: SyncEvent) {
        {
            let mut inner = self.lock();
            if inner.queue.len() + inner.in_flight.len() >= self.capacity {
                inner.dropped += 1;
                tracing::error!(dropped = inner.dropped, "outbox full; dropping event");
                return;
            }
            inner.queue.push_back(event);
        }
        self.notify.notify_one();
    }

    /// Moves up to `max` events to in-flight and returns them for sending.
    pub fn take_batch(&self, max: usize) -> Vec<SyncEvent> {
        let mut inner = self.lock();
        let n = max.min(inner.queue.len());
        let batch: Vec<SyncEvent> = inner.queue.drain(..n).collect();
        for e in &batch {
            inner.in_flight.insert(e.event_id(), e.clone());
        }
        batch
    }

    pub fn ack(&self, ids: impl IntoIterator<Item = Uuid>) {
        let mut inner = self.lock();
        for id in ids {
            inner.in_flight.remove(&id);
        }
    }

    /// After a lost connection: everything unacked goes back to be sent first.
    pub fn requeue_in_flight(&self) {
        let mut inner = self.lock();
        let mut back: Vec<SyncEvent> = inner.in_flight.drain().map(|(_, e)| e).collect();
        back.sort_by_key(SyncEvent::event_id);
        for e in back.into_iter().rev() {
            inner.queue.push_front(e);
        }
    }

    /// Events not yet acked (queued and in flight).
    pub fn pending(&self) -> usize {
        let inner = self.lock();
        inner.queue.len() + inner.in_flight.len()
    }

    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
