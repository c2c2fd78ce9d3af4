//! The sidecar's end of `SidecarSync.Connect`: installs snapshots, sends outbox batches,
//! removes acked events, and reconnects with capped exponential backoff and jitter.
//!
//! A connection can die without a FIN (the control plane's node gone, a network
//! partition): TCP and HTTP/2 keepalive probe it, and a read-side watchdog abandons a
//! stream on which nothing (not even a heartbeat) arrived for the idle timeout. Every
//! message received proves the snapshot current ([`SharedSnapshot::heard`]); without
//! one for `TOOLPLANE_MAX_SNAPSHOT_AGE` the sidecar refuses calls.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Endpoint;
use toolplane_core::client::Bearer;
use toolplane_core::convert::{delta_from_pb, snapshot_from_pb};
use toolplane_core::delta::apply;
use toolplane_core::model::Snapshot;
use toolplane_proto::v1 as pb;
use uuid::Uuid;

use crate::outbox::{BATCH, MAX_BATCH_BYTES, Outbox};
use crate::snapshot::{SharedSnapshot, SnapshotIndex, ValidatorCache};
use crate::wire::{EncodedBatch, Outbound, OutboundRequest};
/// Largest snapshot or delta accepted from the control plane.
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 * 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Sends what is queued at least this often even without a wake-up.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// HTTP/2 PINGs on the sync connection, even while no call is in flight, and how long
/// an answer may take before the connection is dropped.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive: first probe after this much silence, then every interval.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

pub struct SyncClient {
    pub control_plane: String,
    /// TLS (and the client certificate for mutual TLS) towards the control plane.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub token: String,
    pub sidecar_id: String,
    pub snapshot: SharedSnapshot,
    pub outbox: Arc<Outbox>,
    /// How long a new event waits for others to share its batch. One message (and one
    /// ack, one database commit) per many calls rather than per few: at low load the
    /// wake-ups of each flush (sidecar, control plane, ack back) cost more CPU than the
    /// calls, and at c=1 they took ~60 µs off every call's latency in `make
    /// bench-invoke` going from 2 ms to 50 ms. The event is already spooled; only its
    /// delivery waits. A full batch goes at once.
    pub linger: Duration,
    /// The snapshot deltas apply to (the index keeps only what serving needs).
    pub held: std::sync::Mutex<Option<Snapshot>>,
    /// Compiled schemas, kept across snapshots.
    pub validators: ValidatorCache,
    /// A stream (or an attempt to open one) on which nothing arrives for this long is
    /// abandoned and replaced: a few of the control plane's heartbeat intervals.
    pub idle_timeout: Duration,
}

/// Whether a session brought the sidecar a snapshot (then the next attempt starts
/// over from the shortest backoff).
#[derive(Default)]
struct Progress {
    synced: bool,
}

/// `base * 2^attempt`, capped, with full jitter so a fleet does not reconnect in step.
pub fn backoff(attempt: u32) -> Duration {
    let exp = MIN_BACKOFF.saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let cap = exp.min(MAX_BACKOFF);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

impl SyncClient {
    /// Runs until the process ends. A refused token is retried with backoff like any
    /// other failure (it may be a brief mix-up, and an operator may issue a new one);
    /// meanwhile the sidecar serves its snapshot until it is too old.
    pub async fn run(self) {
        let mut attempt = 0u32;
        loop {
            let mut progress = Progress::default();
            let ended = self.session(&mut progress).await;
            match &ended {
                Ok(()) => tracing::info!("control plane closed the sync stream"),
                Err(e) => match e.downcast_ref::<tonic::Status>() {
                    Some(s) if s.code() == tonic::Code::Unauthenticated => tracing::error!(
                        error = %s.message(),
                        attempt,
                        snapshot_age_secs = self.snapshot.age().map(|a| a.as_secs()),
                        max_snapshot_age_secs = self.snapshot.max_age().as_secs(),
                        "the control plane refused this sidecar's token (revoked or expired?): no further \
                         snapshot arrives, and calls are refused once the snapshot is older than \
                         TOOLPLANE_MAX_SNAPSHOT_AGE; issue a new ROLE_SIDECAR token"
                    ),
                    _ => tracing::warn!(error = %e, attempt, "sync with control plane failed"),
                },
            }
            if progress.synced {
                attempt = 0;
            }
            self.outbox.requeue_in_flight();
            tokio::time::sleep(backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// The sync channel, with TCP and HTTP/2 keepalive so a dead peer is noticed even
    /// on a quiet connection.
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let mut endpoint = Endpoint::from_shared(self.control_plane.clone())?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(TCP_KEEPALIVE))
            .tcp_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
            .tcp_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint)
    }

    /// Connects and opens the stream. A control plane that accepts the connection but
    /// never answers (frozen, or behind a half-open path) is given up on after the idle
    /// timeout instead of being waited for.
    async fn open(&self, rx: mpsc::Receiver<OutboundRequest>) -> anyhow::Result<Streaming<pb::ConnectResponse>> {
        let bearer = Bearer::new(Some(&self.token))
            .ok_or_else(|| anyhow::anyhow!("the sidecar token has characters a header cannot carry"))?;
        let endpoint = self.endpoint()?;
        let opening = async {
            let channel = endpoint.connect().await?;
            // A snapshot of a large registry is far above tonic's 4 MiB default.
            let inbound = crate::wire::connect(channel, bearer, MAX_SNAPSHOT_BYTES, ReceiverStream::new(rx)).await?;
            anyhow::Ok(inbound)
        };
        tokio::time::timeout(self.idle_timeout, opening).await.map_err(|_| {
            anyhow::anyhow!(
                "the control plane did not open the sync stream within {} ms",
                self.idle_timeout.as_millis()
            )
        })?
    }

    async fn session(&self, progress: &mut Progress) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<OutboundRequest>(8);
        let current = self.snapshot.current();
        let known = current.as_ref().map_or(0, |s| s.revision);
        let on_demand = current.map(|s| s.on_demand_tools()).unwrap_or_default();
        // Held for the session: scope requests go out on this stream only.
        let mut scope_requests = self.snapshot.fetcher().requests().await;
        // Requests made while disconnected are in the hello's scope already.
        while scope_requests.try_recv().is_ok() {}
        tx.send(OutboundRequest {
            message: Some(Outbound::Hello(pb::SidecarHello {
                sidecar_id: self.sidecar_id.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                known_revision: known,
                scope: Some(self.snapshot.fetcher().hello(&on_demand)),
            })),
        })
        .await?;
        let mut inbound = self.open(rx).await?;
        tracing::info!(control_plane = %self.control_plane, "connected to control plane");
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        let mut lingering = false;
        // The read-side watchdog: pushed back by every message received.
        let silence = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(silence);
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(m)) => {
                        self.handle(m, progress).await?;
                        silence.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
                    }
                    Some(Err(status)) => return Err(status.into()),
                    None => return Ok(()),
                },
                () = &mut silence => anyhow::bail!(
                    "nothing from the control plane for {} ms (not even a heartbeat); abandoning the connection",
                    self.idle_timeout.as_millis()
                ),
                _ = self.outbox.notified() => {
                    if self.outbox.queued() >= BATCH {
                        lingering = false;
                        self.flush(&tx).await?;
                    } else if !lingering {
                        lingering = true;
                        linger.as_mut().reset(tokio::time::Instant::now() + self.linger);
                    }
                }
                () = &mut linger, if lingering => {
                    lingering = false;
                    self.flush(&tx).await?;
                }
                _ = tick.tick() => self.flush(&tx).await?,
                Some(request) = scope_requests.recv() => {
                    tx.send(OutboundRequest { message: Some(Outbound::Scope(request)) }).await?;
                }
            }
        }
    }

    fn install(&self, index: SnapshotIndex) {
        tracing::info!(
            revision = index.revision,
            tools = index.tool_count(),
            "installed snapshot"
        );
        self.snapshot.install(index);
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies what the control plane sent; an error ends the session (a reconnect
    /// brings a full snapshot). Decoding and indexing a snapshot (hashing every
    /// tool's schemas) runs on the blocking pool: with a large registry it takes long
    /// enough to stall calls on a runtime with one worker thread.
    ///
    /// Each message the stream delivers in order proves the snapshot current: a
    /// heartbeat names the revision the stream brought the sidecar to, and one naming
    /// another ends the session (a reconnect brings a full snapshot).
    async fn handle(&self, msg: pb::ConnectResponse, progress: &mut Progress) -> anyhow::Result<()> {
        match msg.message {
            Some(pb::connect_response::Message::Snapshot(s)) => {
                let previous = self.snapshot.current();
                let validators = self.validators.clone();
                let built = tokio::task::spawn_blocking(move || {
                    snapshot_from_pb(s).map(|snap| {
                        let index = SnapshotIndex::build(snap.clone(), previous.as_deref(), &validators);
                        (snap, index)
                    })
                })
                .await?;
                match built {
                    Ok((snap, index)) => {
                        *self.held() = Some(snap);
                        self.install(index);
                        progress.synced = true;
                    }
                    Err(e) => tracing::error!(error = %e, "ignoring malformed snapshot; keeping the previous one"),
                }
            }
            Some(pb::connect_response::Message::Delta(d)) => {
                let delta = delta_from_pb(d).map_err(|e| anyhow::anyhow!("malformed delta: {e}"))?;
                let mut snap = self
                    .held()
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("delta before any snapshot"))?;
                let previous = self.snapshot.current();
                let validators = self.validators.clone();
                let (snap, built) = tokio::task::spawn_blocking(move || {
                    let built = apply(&mut snap, delta)
                        .map(|()| SnapshotIndex::build(snap.clone(), previous.as_deref(), &validators));
                    (snap, built)
                })
                .await?;
                *self.held() = Some(snap);
                self.install(built?);
            }
            Some(pb::connect_response::Message::Ack(ack)) => {
                self.outbox
                    .ack(ack.event_ids.iter().filter_map(|id| Uuid::parse_str(id).ok()));
                self.heard_on_this_stream(progress);
            }
            Some(pb::connect_response::Message::Heartbeat(h)) => {
                let held = self.snapshot.current().map(|s| s.revision);
                if held != Some(h.revision) {
                    anyhow::bail!(
                        "heartbeat for revision {} while this sidecar holds {held:?}; reconnecting for a full snapshot",
                        h.revision
                    );
                }
                self.heard_on_this_stream(progress);
            }
            None => {}
        }
        Ok(())
    }

    /// Only a stream that delivered a snapshot vouches for it: an ack or heartbeat
    /// before this stream's first snapshot was installed proves nothing about it.
    fn heard_on_this_stream(&self, progress: &Progress) {
        if progress.synced {
            self.snapshot.heard();
        }
    }

    async fn flush(&self, tx: &mpsc::Sender<OutboundRequest>) -> anyhow::Result<()> {
        loop {
            let batch = self.outbox.take_batch(BATCH, MAX_BATCH_BYTES);
            if batch.is_empty() {
                return Ok(());
            }
            let events: Vec<_> = batch.into_iter().map(|e| e.bytes).collect();
            // The backlog still waiting behind this batch (a sidecar catching up after an
            // outage reports thousands; one keeping up, 0).
            let spool_depth = self.outbox.queued() as u64;
            tx.send(OutboundRequest {
                message: Some(Outbound::Events(EncodedBatch { events, spool_depth })),
            })
            .await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for attempt in 0..30 {
            let d = backoff(attempt);
            assert!(d <= MAX_BACKOFF, "{attempt}: {d:?}");
            assert!(d >= MIN_BACKOFF / 2);
        }
        assert!(backoff(3) >= Duration::from_millis(400));
        assert!(backoff(20) >= MAX_BACKOFF / 2);
    }
}
