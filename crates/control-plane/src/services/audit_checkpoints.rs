//! The signed-checkpoint part of `Audit`: signing on demand, publishing the public
//! key, listing checkpoints, and checking the stored chains against the latest
//! checkpoints during `VerifyAuditChain`.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use toolplane_core::audit_checkpoint::{AuditCheckpoint, Checked, check};
use toolplane_core::convert::checkpoint_to_pb;
use toolplane_proto::v1 as pb;

use super::audit::AuditService;
use crate::error::{ApiError, ApiResult};

/// Checkpoints fetched from storage per round trip while listing.
const PAGE: usize = 1000;

pub(super) type CheckpointStream = Pin<Box<dyn Stream<Item = Result<pb::ListAuditCheckpointsResponse, Status>> + Send>>;

impl AuditService {
    /// Adds the checkpoint checks to a verification answer. A chain the walk already
    /// found broken keeps that (more precise) finding.
    pub(super) async fn check_checkpoints(&self, r: &mut pb::VerifyAuditChainResponse) -> ApiResult<()> {
        let store = &self.state.store;
        r.public_key = self.checkpoints.signer().public_key().to_hex();
        if !r.intact {
            return Ok(());
        }
        let mut latest: BTreeMap<String, AuditCheckpoint> = BTreeMap::new();
        for cp in store.latest_audit_checkpoints().await? {
            let stored = store.audit_link(&cp.chain, cp.chain_seq).await?;
            match check(&cp, self.checkpoints.trusted(), stored.as_deref()) {
                Ok(Checked::Holds) => {
                    r.checkpoints_checked += 1;
                    if latest.get(&cp.chain).is_none_or(|l| l.chain_seq < cp.chain_seq) {
                        latest.insert(cp.chain.clone(), cp);
                    }
                }
                Ok(Checked::Unverifiable) => r.checkpoints_unverifiable += 1,
                Err(problem) => {
                    // The record at the checkpointed position, when there is one.
                    let at = store
                        .audit_chain_page(None, None, Some((cp.chain.clone(), cp.chain_seq.saturating_sub(1))), 1)
                        .await?
                        .into_iter()
                        .find(|x| x.chain == cp.chain && x.chain_seq == cp.chain_seq);
                    r.intact = false;
                    r.first_bad_sequence = at.as_ref().map_or(0, |x| x.seq);
                    r.first_bad_event_id = at.map(|x| x.event.event_id.to_string()).unwrap_or_default();
                    r.problem = format!("chain {}: {problem}", cp.chain);
                    r.chain = cp.chain;
                    break;
                }
            }
        }
        r.latest_checkpoints = latest.values().map(checkpoint_to_pb).collect();
        Ok(())
    }

    pub(super) async fn sign_checkpoints(&self) -> ApiResult<pb::SignAuditCheckpointsResponse> {
        let store = self.state.store.as_ref();
        let signed = self.checkpoints.sign_moved_heads(store).await?;
        let latest = self.checkpoints.latest_by_this_key(store).await?;
        Ok(pb::SignAuditCheckpointsResponse {
            signed: signed.iter().map(checkpoint_to_pb).collect(),
            latest: latest.iter().map(checkpoint_to_pb).collect(),
        })
    }

    pub(super) fn public_key(&self) -> pb::GetAuditPublicKeyResponse {
        let signer = self.checkpoints.signer();
        pb::GetAuditPublicKeyResponse {
            public_key: signer.public_key().to_hex(),
            key_id: signer.key_id().to_owned(),
            trusted_public_keys: self.checkpoints.earlier_keys().to_vec(),
            ephemeral: self.checkpoints.ephemeral(),
        }
    }

    pub(super) fn list_checkpoints(&self, req: pb::ListAuditCheckpointsRequest) -> CheckpointStream {
        let store = self.state.store.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let chain = (!req.chain.is_empty()).then_some(req.chain);
            let mut after = None;
            loop {
                let page = match store.audit_checkpoints(chain.as_deref(), after.take(), PAGE).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(ApiError::from(e)))).await;
                        return;
                    }
                };
                for c in &page {
                    let item = pb::ListAuditCheckpointsResponse {
                        checkpoint: Some(checkpoint_to_pb(c)),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return; // the caller went away
                    }
                }
                match page.last() {
                    Some(c) if page.len() == PAGE => after = Some((c.chain.clone(), c.chain_seq, c.key_id.clone())),
                    _ => return,
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}
