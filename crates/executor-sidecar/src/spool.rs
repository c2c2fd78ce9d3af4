//! The on-disk spool behind the outbox: every event is appended to `events.log`
//! before it is sent, every ack to `acked.log`, so a restarted sidecar resends exactly
//! what the control plane never acknowledged. A call's events are written to the OS
//! before it answers (in groups: see [`crate::outbox::Outbox::spooled`]), so an
//! answered call's events survive a crash or kill of the sidecar; with `fsync` they
//! also survive losing the host. The logs are compacted when everything is acked, or when acked events make up
//! most of them.
//!
//! A record is a 4-byte magic, the body's length and CRC-32 (little-endian u32s), then
//! the body (a protobuf `SyncEvent`). A torn or corrupt record anywhere in the file (a
//! crash mid-write, a disk that filled up and later had room again) is skipped with a
//! log line: the reader looks for the next magic whose length and checksum hold, and
//! keeps every record after it. Files written before the magic (a bare length, then
//! the body) are still read, up to their first damaged record, and rewritten in the
//! current format at start-up. (No legacy record can start with the magic: read as a
//! length it is far above [`MAX_EVENT_BYTES`].)
//!
//! Events read back are cleaned again ([`toolplane_core::audit_clean`]): a spool
//! written by an older sidecar may hold an event the control plane would refuse.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use toolplane_core::audit_clean::clean_event;
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
/// Start of every record: what a reader resynchronises on after damage.
const MAGIC: [u8; 4] = [0xE7, 0x70, 0x5A, 0x1C];
/// Bytes a record adds to its event: magic, length, CRC-32.
pub const RECORD_OVERHEAD: usize = 12;

/// CRC-32 (IEEE) of a record's body. `crc32fast` uses the CPU's carry-less multiply:
/// a byte-at-a-time table took 2.5 % of the sidecar's CPU under `make bench-invoke`
/// (every event is checksummed once, on the hot path).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

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

    /// Appends the spool record: magic, little-endian length and CRC-32, the bytes.
    pub fn write_record(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&u32::try_from(self.bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&crc32(&self.bytes).to_le_bytes());
        out.extend_from_slice(&self.bytes);
    }
}

/// The event a spooled body holds, cleaned (and re-encoded if cleaning changed it).
fn decode(body: Vec<u8>) -> Result<Encoded, String> {
    let event = pb::SyncEvent::decode(body.as_slice())
        .map_err(|e| e.to_string())
        .and_then(|e| sync_event_from_pb(e).map_err(|e| e.to_string()))?;
    let mut cleaned = event.clone();
    clean_event(&mut cleaned);
    Ok(if cleaned == event {
        Encoded {
            id: event.event_id(),
            bytes: body.into(),
        }
    } else {
        Encoded::new(&cleaned)
    })
}

/// Reads every whole event of the file at `path`, skipping damage.
fn read_events(path: &Path) -> io::Result<Vec<Encoded>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if !bytes.starts_with(&MAGIC) {
        return read_legacy_events(&bytes);
    }
    Ok(read_records(&bytes))
}

/// The whole record at the start of `bytes`, if its magic, length and checksum hold.
fn record_at(bytes: &[u8]) -> Option<&[u8]> {
    let header = bytes.get(..RECORD_OVERHEAD)?;
    if header[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if len > MAX_EVENT_BYTES {
        return None;
    }
    let body = bytes.get(RECORD_OVERHEAD..RECORD_OVERHEAD + len as usize)?;
    (crc32(body) == crc).then_some(body)
}

/// Reads records in the current format; damaged stretches are skipped up to the next
/// record that checks out.
fn read_records(bytes: &[u8]) -> Vec<Encoded> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if let Some(body) = record_at(&bytes[at..]) {
            at += RECORD_OVERHEAD + body.len();
            match decode(body.to_vec()) {
                Ok(e) => out.push(e),
                Err(e) => tracing::error!(error = %e, "skipping unreadable spool record"),
            }
            continue;
        }
        let next = bytes[at + 1..]
            .windows(MAGIC.len())
            .enumerate()
            .filter(|(_, w)| *w == MAGIC)
            .map(|(i, _)| at + 1 + i)
            .find(|&i| record_at(&bytes[i..]).is_some());
        let skipped = next.unwrap_or(bytes.len()) - at;
        tracing::error!(
            offset = at,
            skipped_bytes = skipped,
            "skipping a torn or corrupt stretch of the spool; keeping the records after it"
        );
        at += skipped;
    }
    out
}

/// Reads a spool written before records had a magic: every whole event up to the end,
/// or up to the first damaged record (nothing after it can be found again).
fn read_legacy_events(bytes: &[u8]) -> io::Result<Vec<Encoded>> {
    let mut r = BufReader::new(bytes);
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
        match decode(body) {
            Ok(e) => out.push(e),
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
