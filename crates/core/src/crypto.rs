//! Credentials at rest: AES-256-GCM under a master key. Each sealed value records the
//! id of the key that sealed it, so keys can rotate: new values use the current key,
//! old ones still open with the keys kept for decryption.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("a master key must be 64 hex characters (32 bytes)")]
    BadKey,
    #[error("no master key with id {0} is configured")]
    UnknownKey(String),
    #[error("the credential does not decrypt (wrong key or tampered)")]
    Tampered,
}

/// A sealed secret as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The current master key (seals and opens) and retired ones (open only).
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| &k.id)).finish()
    }
}

fn parse_key(hex_key: &str) -> Result<MasterKey, CryptoError> {
    let bytes = hex::decode(hex_key.trim()).map_err(|_| CryptoError::BadKey)?;
    if bytes.len() != 32 {
        return Err(CryptoError::BadKey);
    }
    // The id names the key without revealing it.
    let id = hex::encode(&Sha256::digest(&bytes)[..8]);
    Ok(MasterKey {
        id,
        cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
    })
}

impl Keyring {
    /// `current` seals; `retired` keys only open values sealed before a rotation.
    pub fn new<'a>(current: &str, retired: impl IntoIterator<Item = &'a str>) -> Result<Self, CryptoError> {
        let mut keys = vec![parse_key(current)?];
        for k in retired {
            keys.push(parse_key(k)?);
        }
        Ok(Self { keys })
    }

    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// `context` (e.g. the tool id) is authenticated, so a sealed value cannot be
    /// moved to another tool's row.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Sealed {
        let key = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            // AES-GCM encryption fails only for inputs beyond 64 GiB.
            .unwrap_or_default();
        Sealed {
            key_id: key.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.nonce.len() != 12 {
            return Err(CryptoError::Tampered);
        }
        key.cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| CryptoError::Tampered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn seals_opens_and_rotates() {
        let old = Keyring::new(K1, []).unwrap();
        let sealed = old.seal(b"sk-live-123", b"tool-a");
        assert!(!sealed.ciphertext.windows(11).any(|w| w == b"sk-live-123"));
        assert_eq!(old.open(&sealed, b"tool-a").unwrap(), b"sk-live-123");
        assert_eq!(old.open(&sealed, b"tool-b"), Err(CryptoError::Tampered));

        let rotated = Keyring::new(K2, [K1]).unwrap();
        assert_eq!(rotated.open(&sealed, b"tool-a").unwrap(), b"sk-live-123");
        let fresh = rotated.seal(b"x", b"tool-a");
        assert_eq!(fresh.key_id, rotated.current_id());
        assert_ne!(fresh.key_id, sealed.key_id);
        assert!(matches!(old.open(&fresh, b"tool-a"), Err(CryptoError::UnknownKey(_))));

        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert_eq!(old.open(&tampered, b"tool-a"), Err(CryptoError::Tampered));
        assert_eq!(Keyring::new("abcd", []).err(), Some(CryptoError::BadKey));
    }
}
