//! Signed checkpoints of the audit chains. The hash chain alone proves nothing to
//! someone who can write the database: they can edit a record and recompute every
//! later hash. A checkpoint is the control plane's Ed25519 signature over one chain's
//! head (position and hash) with a key kept outside the database, so a consistent
//! rewrite of anything at or before a checkpointed position no longer matches it.
//!
//! The signed message is canonical and versioned: a domain-separation line, then the
//! checkpoint's fields as compact JSON with sorted keys (see [`message`]).

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The message format this build signs.
pub const FORMAT_VERSION: u32 = 1;
/// First line of every v1 message, so a checkpoint signature can never be replayed as
/// a signature over anything else.
const DOMAIN_V1: &[u8] = b"toolplane.audit.checkpoint.v1\n";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not an Ed25519 {what}: expected {expected} hex characters")]
    BadKey { what: &'static str, expected: usize },
    #[error("checkpoint format version {0} is not known to this build")]
    UnsupportedVersion(u32),
    #[error("signed by key {0}, which is not trusted")]
    UnknownKey(String),
    #[error("the signature does not verify")]
    BadSignature,
}

/// One chain's head as signed: position `chain_seq` of `chain` hashed to `head_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    pub chain: String,
    pub chain_seq: u64,
    pub head_hash: String,
    /// Microsecond precision (what storage keeps), so the message re-forms exactly.
    pub signed_at: DateTime<Utc>,
    /// [`PublicKey::key_id`] of the signing key.
    pub key_id: String,
    /// Hex Ed25519 signature over [`message`].
    pub signature: String,
    pub version: u32,
}

impl AuditCheckpoint {
    /// How a problem report names this checkpoint.
    pub fn describe(&self) -> String {
        format!(
            "the checkpoint of chain {} at position {} signed {} by key {}",
            self.chain,
            self.chain_seq,
            self.signed_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            self.key_id
        )
    }
}

/// The bytes a checkpoint's signature covers.
pub fn message(cp: &AuditCheckpoint) -> Result<Vec<u8>, CheckpointError> {
    if cp.version != 1 {
        return Err(CheckpointError::UnsupportedVersion(cp.version));
    }
    // Sorted keys, no whitespace; serde_json escapes whatever a chain name holds.
    let body = serde_json::json!({
        "chain": cp.chain,
        "chain_seq": cp.chain_seq,
        "head_hash": cp.head_hash,
        "key_id": cp.key_id,
        "signed_at": cp.signed_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "version": cp.version,
    });
    let mut out = DOMAIN_V1.to_vec();
    out.extend_from_slice(crate::json::canonical(&body).as_bytes());
    Ok(out)
}

/// An Ed25519 public key, written as 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn parse(hex_key: &str) -> Result<Self, CheckpointError> {
        let bad = CheckpointError::BadKey {
            what: "public key",
            expected: 64,
        };
        let bytes: [u8; 32] = hex::decode(hex_key.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad.clone())?;
        VerifyingKey::from_bytes(&bytes).map(Self).map_err(|_| bad)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// Short, stable name of the key: the first 8 bytes of SHA-256 over it, in hex.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }
}

/// The private half, seeded by 32 bytes (64 hex characters).
pub struct CheckpointSigner {
    key: SigningKey,
    public: PublicKey,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    pub fn from_seed_hex(seed: &str) -> Result<Self, CheckpointError> {
        let seed: [u8; 32] =
            hex::decode(seed.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or(CheckpointError::BadKey {
                    what: "signing key seed",
                    expected: 64,
                })?;
        Ok(Self::from_seed(seed))
    }

    /// A fresh random key (for a control plane started without one).
    pub fn generate() -> Self {
        Self::from_seed(rand::random())
    }

    fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let public = PublicKey(key.verifying_key());
        let key_id = public.key_id();
        Self { key, public, key_id }
    }

    /// The seed, for `toolctl audit keygen` to print once.
    pub fn seed_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn sign(&self, chain: &str, chain_seq: u64, head_hash: &str, signed_at: DateTime<Utc>) -> AuditCheckpoint {
        let mut cp = AuditCheckpoint {
            chain: chain.to_owned(),
            chain_seq,
            head_hash: head_hash.to_owned(),
            signed_at: signed_at.trunc_subsecs(6),
            key_id: self.key_id.clone(),
            signature: String::new(),
            version: FORMAT_VERSION,
        };
        // The version is ours, so the message always forms.
        if let Ok(msg) = message(&cp) {
            cp.signature = hex::encode(self.key.sign(&msg).to_bytes());
        }
        cp
    }
}

/// The public keys whose checkpoints are believed: the current key and earlier ones.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, PublicKey)>,
}

impl TrustedKeys {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut out = Self::default();
        for k in keys {
            out.add(k);
        }
        out
    }

    /// Hex keys, e.g. from a comma-separated setting; blanks are skipped.
    pub fn parse<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<Self, CheckpointError> {
        let keys = keys
            .into_iter()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(PublicKey::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(keys))
    }

    pub fn add(&mut self, key: PublicKey) {
        let id = key.key_id();
        if !self.keys.iter().any(|(k, _)| *k == id) {
            self.keys.push((id, key));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.iter().map(|(_, k)| k)
    }

    /// Checks the signature under the trusted key the checkpoint names.
    pub fn verify(&self, cp: &AuditCheckpoint) -> Result<(), CheckpointError> {
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == cp.key_id)
            .map(|(_, k)| k)
            .ok_or_else(|| CheckpointError::UnknownKey(cp.key_id.clone()))?;
        let msg = message(cp)?;
        let sig: [u8; 64] = hex::decode(&cp.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(CheckpointError::BadSignature)?;
        key.0
            .verify(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| CheckpointError::BadSignature)
    }
}

/// What checking one checkpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Signed by a trusted key, and the stored record at its position has its hash.
    Holds,
    /// Signed by a key not trusted here (e.g. an ephemeral key of an earlier run):
    /// says nothing either way.
    Unverifiable,
}

/// Checks `cp` against the hash stored at its position (`None`: no record there).
/// `Err` is the problem, naming the checkpoint: a signature that does not verify
/// under a trusted key (altered or forged), or a record that is gone or differs (the
/// chain was rewritten after it was signed).
pub fn check(cp: &AuditCheckpoint, trusted: &TrustedKeys, stored_hash: Option<&str>) -> Result<Checked, String> {
    match trusted.verify(cp) {
        Ok(()) => {}
        Err(CheckpointError::UnknownKey(_)) => return Ok(Checked::Unverifiable),
        Err(e) => return Err(format!("{} is not genuine: {e} (altered or forged)", cp.describe())),
    }
    match stored_hash {
        Some(h) if h == cp.head_hash => Ok(Checked::Holds),
        Some(h) => Err(format!(
            "the record at position {} does not match {}: the chain was rewritten after it was signed \
             (signed hash {}, stored hash {})",
            cp.chain_seq,
            cp.describe(),
            short(&cp.head_hash),
            short(h)
        )),
        None => Err(format!(
            "the record at position {} is missing, yet {} vouches for it (deleted?)",
            cp.chain_seq,
            cp.describe()
        )),
    }
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

#[cfg(test)]
#[path = "audit_checkpoint_tests.rs"]
mod tests;
