//! The on-disk spool behind the outbox: every event is appended to `events.log`
//! (length-prefixed protobuf) before it is sent, every ack to `acked.log`, so a
//! restarted sidecar resends exactly what the control plane never acknowledged.
//! Writes go to the OS at once (they survive a crash or kill of the sidecar); with
//! `fsync` they also survive losing the host. The logs are compacted when everything
//! is acked, or when acked events make up most of them.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use toolplane_core::convert::{sync_event_from_pb, sync_event_to_pb};
use toolplane_core::model::SyncEvent;
use toolplane_proto::v1 as pb;
use uuid::Uuid;

const EVENTS: &str = "events.log";
const ACKS: &str = "acked.log";
/// The log is compacted once it is this large (and mostly acked).
const COMPACT_AFTER_BYTES: u64 = 8 * 1024 * 1024;
/// An event larger than this is corrupt, not real.
const MAX_EVENT_BYTES: u32 = 16 * 1024 * 1024;

pub struct Spool {
    dir: PathBuf,
    events: File,
    acks: File,
    fsync: bool,
    /// Size of `events.log`.
    pub bytes: u64,
    /// Acks written since the last compaction.
    acked: usize,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// An event as it is spooled and sent: its id and its protobuf encoding, made once.
/// The same bytes go to the spool and, unchanged, onto the sync stream, so the hot
/// path converts and encodes each event exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub id: Uuid,
    pub bytes: Bytes,
}

impl Encoded {
    pub fn new(e: &SyncEvent) -> Self {
        Self {
            id: e.event_id(),
            bytes: sync_event_to_pb(e).encode_to_vec().into(),
        }
    }

    /// Appends the spool record: a little-endian length, then the bytes.
    pub fn write_record(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&u32::try_from(self.bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&self.bytes);
    }
}

/// Reads every whole event; a torn last record (a crash mid-write) is ignored.
fn read_events(path: &Path) -> io::Result<Vec<Encoded>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut r = BufReader::new(file);
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).is_err() {
            break;
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_EVENT_BYTES {
            tracing::error!(len, "spool record too large; ignoring the rest of the spool");
            break;
        }
        let mut body = vec![0u8; len as usize];
        if r.read_exact(&mut body).is_err() {
            break;
        }
        match pb::SyncEvent::decode(body.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|e| sync_event_from_pb(e).map_err(|e| e.to_string()))
        {
            Ok(e) => out.push(Encoded {
                id: e.event_id(),
                bytes: body.into(),
            }),
            Err(e) => tracing::error!(error = %e, "skipping unreadable spool record"),
        }
    }
    Ok(out)
}

fn read_acks(path: &Path) -> io::Result<HashSet<Uuid>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .chunks_exact(16)
        .filter_map(|c| Uuid::from_slice(c).ok())
        .collect())
}

impl Spool {
    /// Opens (creating) the spool in `dir` and returns the events still unacked, in the
    /// order they were written.
    pub fn open(dir: &Path, fsync: bool) -> io::Result<(Self, Vec<Encoded>)> {
        std::fs::create_dir_all(dir)?;
        let acked = read_acks(&dir.join(ACKS))?;
        let pending: Vec<Encoded> = read_events(&dir.join(EVENTS))?
            .into_iter()
            .filter(|e| !acked.contains(&e.id))
            .collect();
        let mut spool = Self {
            dir: dir.to_owned(),
            events: open_append(&dir.join(EVENTS))?,
            acks: open_append(&dir.join(ACKS))?,
            fsync,
            bytes: 0,
            acked: 0,
        };
        spool.compact(pending.iter())?;
        Ok((spool, pending))
    }

    /// Appends records made with [`Encoded::write_record`] (one or more, concatenated)
    /// with one write.
    pub fn append_records(&mut self, record: &[u8]) -> io::Result<()> {
        self.events.write_all(record)?;
        if self.fsync {
            self.events.sync_data()?;
        }
        self.bytes += record.len() as u64;
        Ok(())
    }

    pub fn ack(&mut self, ids: &[Uuid]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(ids.len() * 16);
        for id in ids {
            buf.extend_from_slice(id.as_bytes());
        }
        self.acks.write_all(&buf)?;
        if self.fsync {
            self.acks.sync_data()?;
        }
        self.acked += ids.len();
        Ok(())
    }

    /// Whether compacting now is worth it: the log is large and mostly acked. (Not on
    /// every ack: rewriting the log is file-system work the hot path should not wait on.)
    pub fn wants_compaction(&self, pending: usize) -> bool {
        self.bytes > COMPACT_AFTER_BYTES && (pending == 0 || self.acked > pending * 4)
    }

    /// Rewrites the log with only `pending` (atomically, through a rename) and empties
    /// the ack log.
    pub fn compact<'a>(&mut self, pending: impl Iterator<Item = &'a Encoded>) -> io::Result<()> {
        let tmp = self.dir.join("events.log.tmp");
        let mut bytes = 0u64;
        {
            let mut f = io::BufWriter::new(File::create(&tmp)?);
            let mut record = Vec::new();
            for e in pending {
                record.clear();
                e.write_record(&mut record);
                bytes += record.len() as u64;
                f.write_all(&record)?;
            }
            let f = f.into_inner().map_err(io::IntoInnerError::into_error)?;
            if self.fsync {
                f.sync_all()?;
            }
        }
        std::fs::rename(&tmp, self.dir.join(EVENTS))?;
        self.events = open_append(&self.dir.join(EVENTS))?;
        File::create(self.dir.join(ACKS))?;
        self.acks = open_append(&self.dir.join(ACKS))?;
        self.bytes = bytes;
        self.acked = 0;
        Ok(())
    }
}
