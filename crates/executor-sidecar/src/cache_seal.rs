//! Sealing of the values the sidecar keeps in the shared (Redis) result cache.
//!
//! Redis is reachable from more places than the sidecar (the agent shares its pod's
//! network), so a value read back from Redis is only trusted if it carries an
//! HMAC-SHA256 made with a key only sidecars hold. The MAC covers the Redis key, so a
//! value cannot be moved to another key (another agent's, another tool's or other
//! parameters' entry), and the expiry, so a value cannot be made to outlive its TTL by
//! re-writing it without one.
//!
//! Stored form: `v1.<expires at, Unix ms>.<hex MAC>.<JSON>`.

use ring::hmac;
use serde_json::Value;

const VERSION: &str = "v1";
/// Shortest key accepted: 32 characters, e.g. `openssl rand -hex 32` gives 64.
pub const MIN_KEY_LEN: usize = 32;

/// Why a value read back from Redis was refused (the `reason` label of the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not in the sealed form at all.
    Malformed,
    /// The MAC does not match: written without the key, or moved from another key.
    Mac,
    /// Sealed, but past the expiry it was sealed with.
    Expired,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Mac => "mac",
            Self::Expired => "expired",
        }
    }
}

/// The HMAC key shared by the sidecars (and nobody else).
#[derive(Clone)]
pub struct Sealer {
    key: hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// `secret` is the configured key text; too short a key is refused, as a MAC with a
    /// guessable key authenticates nothing.
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_KEY_LEN {
            return Err(format!(
                "the Redis HMAC key must be at least {MIN_KEY_LEN} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        })
    }

    /// What the MAC covers: length-prefixed fields, so no two (key, expiry, value)
    /// triples share an input.
    fn input(redis_key: &str, expires_ms: i64, json: &str) -> Vec<u8> {
        let mut input = Vec::with_capacity(64 + redis_key.len() + json.len());
        for part in [VERSION.as_bytes(), redis_key.as_bytes(), &expires_ms.to_be_bytes()] {
            input.extend_from_slice(&(part.len() as u64).to_be_bytes());
            input.extend_from_slice(part);
        }
        input.extend_from_slice(json.as_bytes());
        input
    }

    /// The text to store under `redis_key`, valid until `expires_ms` (Unix ms).
    pub fn seal(&self, redis_key: &str, expires_ms: i64, value: &Value) -> String {
        let json = value.to_string();
        let tag = hmac::sign(&self.key, &Self::input(redis_key, expires_ms, &json));
        format!("{VERSION}.{expires_ms}.{}.{json}", hex::encode(tag.as_ref()))
    }

    /// The value stored under `redis_key` and its expiry, if it was sealed by a holder
    /// of the key for this very key and has not expired at `now_ms`.
    pub fn open(&self, redis_key: &str, now_ms: i64, stored: &str) -> Result<(Value, i64), Refused> {
        let mut parts = stored.splitn(4, '.');
        let (Some(VERSION), Some(expires), Some(mac), Some(json)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refused::Malformed);
        };
        let expires_ms: i64 = expires.parse().map_err(|_| Refused::Malformed)?;
        let mac = hex::decode(mac).map_err(|_| Refused::Malformed)?;
        // Constant-time comparison.
        hmac::verify(&self.key, &Self::input(redis_key, expires_ms, json), &mac).map_err(|_| Refused::Mac)?;
        if expires_ms <= now_ms {
            return Err(Refused::Expired);
        }
        let value = serde_json::from_str(json).map_err(|_| Refused::Malformed)?;
        Ok((value, expires_ms))
    }
}

#[cfg(test)]
#[path = "cache_seal_tests.rs"]
mod tests;
