//! Events waiting to reach the control plane. An event leaves the outbox only when the
//! control plane acks its id (after its database commit); events in flight when a
//! connection drops go back to the front of the queue and are sent again. With a spool
//! directory every event is on disk before it is queued, so a restarted sidecar resends
//! what was never acked.
//!
//! The outbox is bounded. When it is full the configured policy applies: `reject`
//! refuses new calls (UNAVAILABLE) until the control plane catches up, so no call goes
//! unaudited; `drop` keeps serving and counts every event it could not keep. Under
//! `reject` a call reserves room for every event it can produce when it is admitted
//! ([`Outbox::reserve`]), so an admitted call never has its events dropped.
//!
//! Every event is cleaned ([`toolplane_core::audit_clean`]) before it is queued, so
//! nothing an agent sends can make the control plane refuse it, and batches are
//! bounded in bytes as well as in events.
//!
//! Spool writes are grouped (group commit): a call's events are encoded when it pushes
//! them, and written, with those of every call that finished meanwhile, by one write
//! (and one fsync when configured) before the call answers ([`Outbox::spooled`]) and
//! before any of them is sent ([`Outbox::take_batch`]). What the spool promised
//! per event still holds per call: an answered call's events are in the spool.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;
use toolplane_core::audit_clean::clean_event;
use toolplane_core::model::SyncEvent;
use uuid::Uuid;

use crate::spool::{Encoded, RECORD_OVERHEAD, Spool};

/// Default bound on waiting events.
pub const DEFAULT_CAPACITY: usize = 200_000;
/// Most events sent in one message; a queue this long is worth a wake-up of its own.
pub const BATCH: usize = 256;
/// Most bytes of encoded events in one message: far below what the control plane
/// accepts (64 MiB on its sync service; tonic's default is 4 MiB), so a batch of large
/// events is never refused for its size. One event larger than this still goes, alone.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Refuse new calls while full: nothing goes unaudited.
    #[default]
    Reject,
    /// Keep serving; events that do not fit are dropped and counted.
    Drop,
}

impl std::str::FromStr for FullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reject" => Ok(Self::Reject),
            "drop" => Ok(Self::Drop),
            other => Err(format!("unknown spool policy {other:?} (reject or drop)")),
        }
    }
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Encoded>,
    in_flight: HashMap<Uuid, Encoded>,
    dropped: u64,
    spool: Option<Spool>,
    /// Room held for the events of admitted calls still running.
    reserved: usize,
    /// Spool records of pushed events not written yet (see [`Outbox::spooled`]).
    unwritten: Vec<u8>,
    /// Pushes so far (each one call's events); [`Outbox::written`] catches up with it.
    pushed: u64,
}

impl Inner {
    fn pending(&self) -> usize {
        self.queue.len() + self.in_flight.len()
    }
}

/// Room in the outbox held for one admitted call's events; given back when dropped
/// (when the call has pushed all it will). The call's events count against capacity
/// both as pushed and as reserved until then: conservative, never short.
#[must_use = "the room is given back when the reservation is dropped"]
pub struct Reservation<'a> {
    outbox: &'a Outbox,
    events: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.outbox.running.fetch_sub(1, Ordering::AcqRel);
        if self.events > 0 {
            let mut inner = self.outbox.lock();
            inner.reserved = inner.reserved.saturating_sub(self.events);
        }
    }
}

pub struct Outbox {
    inner: Mutex<Inner>,
    capacity: usize,
    policy: FullPolicy,
    notify: Notify,
    /// Whether events go to a spool (fixed at construction; read without the lock).
    spooled: bool,
    /// The sender has been woken and has not taken a batch since: later events ride
    /// along without waking it again (a futex wake per call is not free).
    wake_pending: AtomicBool,
    /// Pushes whose records are written to the spool.
    written: AtomicU64,
    /// A call is gathering a group of records to write (see [`Outbox::spooled`]).
    writing: AtomicBool,
    /// Woken when a group has been written.
    wrote: Notify,
    /// Calls admitted and not finished (holding a [`Reservation`]), under any policy:
    /// whether a group is worth waiting for.
    running: AtomicUsize,
}

/// The call gathering a group: writes it when dropped, even if its future is dropped
/// while it waits, so no call waiting on the group is left hanging.
struct Leader<'a>(&'a Outbox);

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let outbox = self.0;
        outbox.write_spool();
        outbox.writing.store(false, Ordering::Release);
        outbox.wrote.notify_waiters();
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, FullPolicy::Reject)
    }
}

impl Outbox {
    /// An outbox in memory only.
    pub fn new(capacity: usize, policy: FullPolicy) -> Self {
        Self {
            inner: Mutex::default(),
            capacity,
            policy,
            notify: Notify::new(),
            spooled: false,
            wake_pending: AtomicBool::new(false),
            written: AtomicU64::new(0),
            writing: AtomicBool::new(false),
            wrote: Notify::new(),
            running: AtomicUsize::new(0),
        }
    }

    /// An outbox backed by the spool in `dir`, holding what it left unacked.
    pub fn open(dir: &Path, fsync: bool, capacity: usize, policy: FullPolicy) -> std::io::Result<Self> {
        let (spool, pending) = Spool::open(dir, fsync)?;
        if !pending.is_empty() {
            tracing::info!(events = pending.len(), dir = %dir.display(), "resending unacked events from the spool");
        }
        let mut outbox = Self::new(capacity, policy);
        outbox.spooled = true;
        {
            let mut inner = outbox.lock();
            inner.queue = pending.into();
            inner.spool = Some(spool);
        }
        Ok(outbox)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// False when the outbox is full and the policy is to reject new calls.
    pub fn accepts_calls(&self) -> bool {
        self.policy == FullPolicy::Drop || {
            let inner = self.lock();
            inner.pending() + inner.reserved < self.capacity
        }
    }

    /// Admits a call that may push up to `events` events: under `reject`, `None` when
    /// they might not fit (what is queued, in flight and reserved by running calls
    /// counts); under `drop`, always admitted, nothing held.
    pub fn reserve(&self, events: usize) -> Option<Reservation<'_>> {
        if self.policy == FullPolicy::Drop {
            self.running.fetch_add(1, Ordering::AcqRel);
            return Some(Reservation {
                outbox: self,
                events: 0,
            });
        }
        let mut inner = self.lock();
        if inner.pending() + inner.reserved + events > self.capacity {
            return None;
        }
        inner.reserved += events;
        self.running.fetch_add(1, Ordering::AcqRel);
        Some(Reservation { outbox: self, events })
    }

    /// Events not yet acked plus room held by running calls: zero once everything
    /// admitted has been delivered.
    pub fn outstanding(&self) -> usize {
        let inner = self.lock();
        inner.pending() + inner.reserved
    }

    pub fn push(&self, event: SyncEvent) {
        self.push_all(vec![event]);
    }

    /// Queues the events of one call together: cleaned and encoded once, outside the
    /// lock. Their spool records are written with those of other calls, before the
    /// call answers ([`Self::spooled`]) and before they are sent.
    pub fn push_all(&self, mut events: Vec<SyncEvent>) {
        events.iter_mut().for_each(clean_event);
        let events: Vec<Encoded> = events.iter().map(Encoded::new).collect();
        let records = self.spooled.then(|| {
            let mut records = Vec::with_capacity(events.iter().map(|e| e.bytes.len() + RECORD_OVERHEAD).sum());
            for e in &events {
                e.write_record(&mut records);
            }
            records
        });
        let queued = {
            let mut inner = self.lock();
            if inner.pending() + events.len() > self.capacity {
                inner.dropped += events.len() as u64;
                metrics::counter!(toolplane_runtime::metrics::SPOOL_DROPPED).increment(events.len() as u64);
                tracing::error!(dropped = inner.dropped, "outbox full; dropping events");
                return;
            }
            if let Some(records) = records {
                if inner.unwritten.is_empty() {
                    inner.unwritten = records;
                } else {
                    inner.unwritten.extend_from_slice(&records);
                }
                inner.pushed += 1;
            }
            inner.queue.extend(events);
            inner.queue.len()
        };
        if !self.wake_pending.swap(true, Ordering::AcqRel) || queued >= BATCH {
            self.notify.notify_one();
        }
    }

    /// Moves up to `max` events, and at most `max_bytes` of them (but always at least
    /// one), to in-flight and returns them for sending (sharing their bytes: nothing is
    /// copied).
    pub fn take_batch(&self, max: usize, max_bytes: usize) -> Vec<Encoded> {
        let mut inner = self.lock();
        // Nothing is sent before it is in the spool.
        self.write_locked(&mut inner);
        self.wake_pending.store(false, Ordering::Release);
        let mut n = 0;
        let mut bytes = 0;
        for e in inner.queue.iter().take(max) {
            if n > 0 && bytes + e.bytes.len() > max_bytes {
                break;
            }
            bytes += e.bytes.len();
            n += 1;
        }
        let batch: Vec<Encoded> = inner.queue.drain(..n).collect();
        for e in &batch {
            inner.in_flight.insert(e.id, e.clone());
        }
        batch
    }

    pub fn ack(&self, ids: impl IntoIterator<Item = Uuid>) {
        let mut inner = self.lock();
        let ids: Vec<Uuid> = ids
            .into_iter()
            .filter(|id| inner.in_flight.remove(id).is_some())
            .collect();
        let pending = inner.pending();
        let Inner {
            spool,
            queue,
            in_flight,
            unwritten,
            pushed,
            ..
        } = &mut *inner;
        if let Some(spool) = spool.as_mut() {
            if let Err(e) = spool.ack(&ids) {
                tracing::error!(error = %e, "cannot record acks in the spool; they may be resent");
            }
            if spool.wants_compaction(pending) {
                // The compacted log holds every queued event: records still waiting
                // for their group must not be appended to it again afterwards.
                unwritten.clear();
                self.written.store(*pushed, Ordering::Release);
                if let Err(e) = spool.compact(in_flight.values().chain(queue.iter())) {
                    tracing::error!(error = %e, "cannot compact the spool");
                }
            }
        }
    }

    /// Writes the records of every event pushed so far, with one write (and one fsync
    /// when configured).
    fn write_locked(&self, inner: &mut Inner) {
        if inner.unwritten.is_empty() {
            return;
        }
        let Inner { spool, unwritten, .. } = inner;
        if let Some(spool) = spool.as_mut()
            && let Err(e) = spool.append_records(unwritten)
        {
            // Still queued in memory: sent unless the sidecar dies first.
            tracing::error!(error = %e, "cannot write the event spool");
        }
        // A burst's buffer is not kept for ever.
        if unwritten.capacity() > MAX_BATCH_BYTES {
            *unwritten = Vec::new();
        } else {
            unwritten.clear();
        }
        self.written.store(inner.pushed, Ordering::Release);
    }

    /// Writes what is waiting for the spool now (see [`Self::spooled`]).
    fn write_spool(&self) {
        if self.spooled {
            self.write_locked(&mut self.lock());
        }
    }

    /// Returns once the events pushed before it was called are in the spool: what a
    /// call awaits before it answers. The first call to wait becomes the group's
    /// leader: while other admitted calls are running it yields once, so the calls
    /// that are ready now push their events too, then writes them all with one write
    /// (and one fsync); the others wait for that write. Alone, a call writes at once.
    /// Under `make bench-invoke`'s c=64 a write then serves several calls instead of
    /// one each.
    pub async fn spooled(&self) {
        if !self.spooled {
            return;
        }
        let target = self.lock().pushed;
        loop {
            if self.written.load(Ordering::Acquire) >= target {
                return;
            }
            if !self.writing.swap(true, Ordering::AcqRel) {
                let leader = Leader(self);
                if self.running.load(Ordering::Acquire) > 0 {
                    tokio::task::yield_now().await;
                }
                drop(leader);
                continue;
            }
            let wrote = self.wrote.notified();
            tokio::pin!(wrote);
            wrote.as_mut().enable();
            if self.written.load(Ordering::Acquire) >= target {
                return;
            }
            // The leader may have finished between the two looks: lead the next group.
            if !self.writing.load(Ordering::Acquire) {
                continue;
            }
            wrote.await;
        }
    }

    /// After a lost connection: everything unacked goes back to be sent first.
    pub fn requeue_in_flight(&self) {
        let mut inner = self.lock();
        let mut back: Vec<Encoded> = inner.in_flight.drain().map(|(_, e)| e).collect();
        // v7 ids: time order, i.e. the order the events were written.
        back.sort_by_key(|e| e.id);
        for e in back.into_iter().rev() {
            inner.queue.push_front(e);
        }
    }

    /// Events waiting to be sent (not in flight).
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Events not yet acked (queued and in flight).
    pub fn pending(&self) -> usize {
        self.lock().pending()
    }

    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Outbox {
    /// Whatever was pushed is in the spool when the outbox goes.
    fn drop(&mut self) {
        self.write_spool();
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
