//! Signs the audit chains' heads with the control plane's Ed25519 key, periodically
//! and on demand. The key lives outside the database, so whoever can write the
//! database can no longer rewrite a chain consistently: the stored records stop
//! matching the latest signed checkpoint. Each checkpoint is also logged, so a copy
//! lives wherever the logs go, out of reach of a database owner who deletes rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use toolplane_core::audit_checkpoint::{AuditCheckpoint, CheckpointSigner, TrustedKeys};

use crate::storage::{Store, StoreResult};

pub struct Checkpoints {
    signer: CheckpointSigner,
    /// The signer's own public key and the earlier ones still trusted.
    trusted: TrustedKeys,
    earlier: Vec<String>,
    ephemeral: bool,
    /// One signing round at a time in this process (the timer and the RPC).
    signing: tokio::sync::Mutex<()>,
}

impl Checkpoints {
    /// Without a configured key, makes one up and says what that costs.
    pub fn new(signer: Option<CheckpointSigner>, earlier: TrustedKeys) -> Self {
        let ephemeral = signer.is_none();
        let signer = signer.unwrap_or_else(CheckpointSigner::generate);
        let public_key = signer.public_key().to_hex();
        if ephemeral {
            tracing::warn!(
                public_key,
                key_id = signer.key_id(),
                "no audit signing key configured (TOOLPLANE_AUDIT_SIGNING_KEY); signing checkpoints with a \
                 key made up for this run: they verify only while this public key is kept \
                 (add it to TOOLPLANE_AUDIT_TRUSTED_KEYS of later runs)"
            );
        } else {
            tracing::info!(public_key, key_id = signer.key_id(), "audit checkpoints are signed");
        }
        let earlier_hex: Vec<String> = earlier.keys().map(|k| k.to_hex()).collect();
        let mut trusted = earlier;
        trusted.add(signer.public_key().clone());
        Self {
            signer,
            trusted,
            earlier: earlier_hex,
            ephemeral,
            signing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn signer(&self) -> &CheckpointSigner {
        &self.signer
    }

    pub fn trusted(&self) -> &TrustedKeys {
        &self.trusted
    }

    /// Hex public keys of the earlier keys still trusted.
    pub fn earlier_keys(&self) -> &[String] {
        &self.earlier
    }

    pub fn ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// Signs the head of every chain whose head moved since its latest checkpoint by
    /// this key; returns the new checkpoints.
    pub async fn sign_moved_heads(&self, store: &dyn Store) -> StoreResult<Vec<AuditCheckpoint>> {
        let _one_at_a_time = self.signing.lock().await;
        let signed_up_to: HashMap<String, u64> = self
            .latest_by_this_key(store)
            .await?
            .into_iter()
            .map(|c| (c.chain, c.chain_seq))
            .collect();
        let mut signed = Vec::new();
        for (chain, head) in store.audit_chain_heads().await? {
            if head == 0 || signed_up_to.get(&chain).is_some_and(|s| *s >= head) {
                continue;
            }
            let Some(hash) = store.audit_link(&chain, head).await? else {
                tracing::warn!(
                    chain,
                    chain_seq = head,
                    "the head record of an audit chain is missing; not signed"
                );
                continue;
            };
            let cp = self.signer.sign(&chain, head, &hash, Utc::now());
            store.add_audit_checkpoint(&cp).await?;
            tracing::info!(
                chain = cp.chain,
                chain_seq = cp.chain_seq,
                head_hash = cp.head_hash,
                signed_at = %cp.signed_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                key_id = cp.key_id,
                signature = cp.signature,
                "audit checkpoint signed"
            );
            signed.push(cp);
        }
        Ok(signed)
    }

    /// The latest checkpoint of each chain by the current key.
    pub async fn latest_by_this_key(&self, store: &dyn Store) -> StoreResult<Vec<AuditCheckpoint>> {
        let mut latest = store.latest_audit_checkpoints().await?;
        latest.retain(|c| c.key_id == self.signer.key_id());
        Ok(latest)
    }

    /// Signs moved heads every `every` until the process ends.
    pub fn spawn(self: &Arc<Self>, store: Arc<dyn Store>, every: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = me.sign_moved_heads(store.as_ref()).await {
                    tracing::warn!(error = %e, "could not sign audit checkpoints; retrying at the next tick");
                }
            }
        });
    }
}
