//! Signed checkpoints of the audit chains, end to end: a real control plane on
//! PostgreSQL with a configured signing key, admin events and a real sidecar's calls,
//! a checkpoint signed on demand, then a database owner rewriting a chain consistently
//! with SQL (every later hash recomputed, the chain head moved along). The plain hash
//! walk still passes; `VerifyAuditChain`, `toolctl audit verify` and the offline check
//! of an export (`toolctl audit export` + `audit verify --public-key --file`) report
//! the rewrite through the signed checkpoint.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use toolplane_control_plane::storage::{PostgresStore, Store};
use toolplane_core::audit::{AuditRecord, ChainWalk, record_hash};
use toolplane_core::audit_checkpoint::CheckpointSigner;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, Authed, channel, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, bin, control_plane_with, sidecar};
use toolplane_tests::tool_server::ToolServer;

const WAIT: Duration = Duration::from_secs(20);
/// The signing key's seed, as an operator would put it in a Secret.
const SEED: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";

fn public_key() -> String {
    CheckpointSigner::from_seed_hex(SEED).unwrap().public_key().to_hex()
}

struct Stack {
    db: TestDb,
    _tools: ToolServer,
    cp: Proc,
    _sidecar: Proc,
    audit: pb::audit_client::AuditClient<Authed>,
    /// `sidecar:<token id>`: the control plane names a sidecar's chain after its token.
    sidecar_chain: String,
}

async fn start_control_plane(db: &TestDb, env: &[(&str, &str)]) -> Proc {
    let mut all = vec![("TOOLPLANE_AUDIT_CHECKPOINT_SECS", "0")];
    all.extend_from_slice(env);
    control_plane_with(Some(&db.url), &all).await
}

/// Admin events on the control plane's chain and a handful of calls on the sidecar's.
async fn stack() -> Stack {
    let db = TestDb::create().await;
    let tools = ToolServer::start().await;
    let cp = start_control_plane(&db, &[("TOOLPLANE_AUDIT_SIGNING_KEY", SEED)]).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let tool = admin
        .register(http_tool("word_count", &tools.url("/word_count")))
        .await
        .unwrap();
    let agent = admin.agent("checkpointed").await;
    admin.grant_full(&agent.id, &tool.id).await;
    let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
    let issued = admin.issue(pb::Role::Sidecar, "").await;
    let sidecar_chain = format!("sidecar:{}", issued.token_id);
    let sc = sidecar(&cp, &issued.token).await;
    let ex = executor(&sc.url(), Some(&agent_token)).await;
    let params = json!({"text": "one two three"});
    eventually("the sidecar to serve", WAIT, || {
        let (mut ex, params) = (ex.clone(), params.clone());
        async move { ex.invoke(invoke_request("word_count", &params)).await.ok() }
    })
    .await;
    for i in 0..4 {
        let params = json!({"text": format!("call number {i}")});
        ex.clone().invoke(invoke_request("word_count", &params)).await.unwrap();
    }
    let client = db.client().await;
    eventually("the calls' audit events in PostgreSQL", WAIT, || {
        let (client, sidecar_chain) = (&client, &sidecar_chain);
        async move {
            let n: i64 = client
                .query_one("SELECT count(*) FROM audit_events WHERE chain = $1", &[sidecar_chain])
                .await
                .unwrap()
                .get(0);
            (n >= 5).then_some(())
        }
    })
    .await;
    let audit = pb::audit_client::AuditClient::new(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    Stack {
        db,
        _tools: tools,
        cp,
        _sidecar: sc,
        audit,
        sidecar_chain,
    }
}

async fn verify(audit: &mut pb::audit_client::AuditClient<Authed>) -> pb::VerifyAuditChainResponse {
    audit
        .verify_audit_chain(pb::VerifyAuditChainRequest::default())
        .await
        .unwrap()
        .into_inner()
}

fn toolctl(cp: &Proc, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = std::process::Command::new(bin("toolctl"))
        .args(["--server", &cp.url(), "--output", "json"])
        .args(args)
        .env("TOOLPLANE_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code(), v, format!("{stdout}{stderr}"))
}

fn export_path() -> PathBuf {
    std::env::temp_dir().join(format!("toolplane-audit-export-{}.jsonl", uuid::Uuid::new_v4()))
}

/// `toolctl audit export` then `toolctl audit verify --public-key KEY --file FILE`.
fn export(cp: &Proc, path: &Path) {
    let (code, v, out) = toolctl(cp, &["audit", "export", "--out", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(v["records"].as_u64().unwrap() >= 8, "{v}");
}

fn verify_offline(cp: &Proc, path: &Path, key: &str) -> (Option<i32>, Value, String) {
    toolctl(
        cp,
        &["audit", "verify", "--public-key", key, "--file", path.to_str().unwrap()],
    )
}

/// One chain as stored, in position order.
async fn chain(store: &PostgresStore, name: &str) -> Vec<AuditRecord> {
    let all = store.audit_chain_page(None, None, None, 10_000).await.unwrap();
    all.into_iter().filter(|r| r.chain == name).collect()
}

/// What a database owner can do: edit record `victim` of the chain and recompute its
/// hash and every later one (and the chain's head), with triggers off.
async fn rewrite(db: &TestDb, records: &[AuditRecord], victim: usize) {
    let client = db.client().await;
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    let mut prev = records[victim].prev_hash.clone();
    for (i, r) in records.iter().enumerate().skip(victim) {
        let mut event = r.event.clone();
        if i == victim {
            event.detail = "nothing happened here".to_owned();
        }
        let hash = record_hash(&prev, &r.chain, r.chain_seq, &event);
        client
            .execute(
                "UPDATE audit_events SET detail = $2, prev_hash = $3, hash = $4 WHERE event_id = $1",
                &[&r.event.event_id, &event.detail, &prev, &hash],
            )
            .await
            .unwrap();
        prev = hash;
    }
    let head = i64::try_from(records.last().unwrap().chain_seq).unwrap();
    client
        .execute(
            "UPDATE audit_chain_heads SET hash = $2 WHERE chain = $1 AND chain_seq = $3",
            &[&records[0].chain, &prev, &head],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_consistent_rewrite_is_caught_by_the_signed_checkpoint_online_and_offline() {
    let mut s = stack().await;
    let sidecar_chain_name = s.sidecar_chain.clone();
    let sidecar_chain_name = sidecar_chain_name.as_str();
    let key = s
        .audit
        .get_audit_public_key(pb::GetAuditPublicKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.public_key, public_key());
    assert!(!key.ephemeral);

    // On demand: both chains signed at their heads; asked again, nothing moved.
    let signed = s
        .audit
        .sign_audit_checkpoints(pb::SignAuditCheckpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    let chains: Vec<&str> = signed.signed.iter().map(|c| c.chain.as_str()).collect();
    assert_eq!(chains, ["control-plane", sidecar_chain_name]);
    let store = PostgresStore::connect(&s.db.url, 1).await.unwrap();
    let sidecar_chain = chain(&store, sidecar_chain_name).await;
    let head = sidecar_chain.last().unwrap();
    let cp = signed.signed.iter().find(|c| c.chain == sidecar_chain_name).unwrap();
    assert_eq!(
        (cp.chain_sequence, cp.head_hash.as_str()),
        (head.chain_seq, head.hash.as_str())
    );
    let again = s
        .audit
        .sign_audit_checkpoints(pb::SignAuditCheckpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(again.signed.is_empty(), "no head moved: {:?}", again.signed);
    assert_eq!(again.latest.len(), 2);

    let ok = verify(&mut s.audit).await;
    assert!(ok.intact, "{}", ok.problem);
    assert_eq!(ok.checkpoints_checked, 2);
    assert_eq!(ok.checkpoints_unverifiable, 0);
    assert_eq!(ok.latest_checkpoints.len(), 2);
    assert_eq!(ok.public_key, public_key());
    let (code, v, out) = toolctl(&s.cp, &["audit", "verify", "--public-key", &public_key()]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(v["checkpoints_checked"], 2, "{v}");

    // The untouched trail verifies offline; under another key it does not.
    let untouched = export_path();
    export(&s.cp, &untouched);
    let (code, v, out) = verify_offline(&s.cp, &untouched, &public_key());
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["checkpoints_checked"], 2, "{v}");
    assert_eq!(v["chains"][sidecar_chain_name]["signed_up_to"], head.chain_seq, "{v}");
    let stranger = CheckpointSigner::generate().public_key().to_hex();
    let (code, v, out) = verify_offline(&s.cp, &untouched, &stranger);
    assert_eq!(code, Some(4), "{out}");
    assert_eq!(v["checkpoints_unverifiable"], 2, "{v}");
    assert!(v["problem"].as_str().unwrap().contains("no checkpoint"), "{v}");
    let (code, _, out) = toolctl(&s.cp, &["audit", "verify", "--public-key", &stranger]);
    assert_eq!(code, Some(4), "online, another key than the server's: {out}");

    // A consistent rewrite of the sidecar's second record.
    rewrite(&s.db, &sidecar_chain, 1).await;
    let rewritten = chain(&store, sidecar_chain_name).await;
    assert_eq!(rewritten[1].event.detail, "nothing happened here");
    assert_ne!(rewritten.last().unwrap().hash, head.hash);
    let mut walk = ChainWalk::default();
    for r in &rewritten {
        walk.next(r, None).expect("the plain hash walk does not notice");
    }

    let v = verify(&mut s.audit).await;
    assert!(!v.intact, "the rewrite went unnoticed");
    assert_eq!(v.chain, sidecar_chain_name);
    assert!(v.problem.contains("rewritten after it was signed"), "{}", v.problem);
    assert!(
        v.problem.contains(&format!("position {}", head.chain_seq)) && v.problem.contains(&key.key_id),
        "names the checkpoint: {}",
        v.problem
    );
    assert_eq!(v.first_bad_event_id, head.event.event_id.to_string());
    let total: u64 = store.audit_chain_heads().await.unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(v.records_checked, total, "every link held");

    let (code, v, out) = toolctl(&s.cp, &["audit", "verify"]);
    assert_eq!(code, Some(4), "{out}");
    assert!(
        v["problem"].as_str().unwrap().contains("rewritten after it was signed"),
        "{v}"
    );

    let tampered = export_path();
    export(&s.cp, &tampered);
    let (code, v, out) = verify_offline(&s.cp, &tampered, &public_key());
    assert_eq!(code, Some(4), "{out}");
    assert_eq!(v["chain"], sidecar_chain_name, "{v}");
    assert!(
        v["problem"].as_str().unwrap().contains("rewritten after it was signed"),
        "{v}"
    );
    // The export taken before still verifies: it is the evidence of what was there.
    assert_eq!(verify_offline(&s.cp, &untouched, &public_key()).0, Some(0));
    for f in [untouched, tampered] {
        std::fs::remove_file(f).unwrap();
    }
}

#[tokio::test]
async fn a_rotated_key_keeps_earlier_checkpoints_verifiable_when_trusted() {
    let mut s = stack().await;
    s.audit
        .sign_audit_checkpoints(pb::SignAuditCheckpointsRequest {})
        .await
        .unwrap();
    drop(s.audit);
    s.cp.stop().await;

    // A new key; the old one not trusted: its checkpoints prove nothing either way.
    let next = CheckpointSigner::generate();
    let cp = start_control_plane(&s.db, &[("TOOLPLANE_AUDIT_SIGNING_KEY", &next.seed_hex())]).await;
    let mut audit = pb::audit_client::AuditClient::new(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    let v = verify(&mut audit).await;
    assert!(v.intact, "{}", v.problem);
    assert_eq!((v.checkpoints_checked, v.checkpoints_unverifiable), (0, 2));
    drop(audit);
    cp.stop().await;

    // Trusted as an earlier key: checked again, and published.
    let cp = start_control_plane(
        &s.db,
        &[
            ("TOOLPLANE_AUDIT_SIGNING_KEY", &next.seed_hex()),
            ("TOOLPLANE_AUDIT_TRUSTED_KEYS", &public_key()),
        ],
    )
    .await;
    let mut audit = pb::audit_client::AuditClient::new(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    let v = verify(&mut audit).await;
    assert!(v.intact, "{}", v.problem);
    assert_eq!((v.checkpoints_checked, v.checkpoints_unverifiable), (2, 0));
    assert_eq!(v.public_key, next.public_key().to_hex());
    let key = audit
        .get_audit_public_key(pb::GetAuditPublicKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.trusted_public_keys, [public_key()]);
    // The new key signs the same heads again: each chain now has both.
    let signed = audit
        .sign_audit_checkpoints(pb::SignAuditCheckpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed.signed.len(), 2);
    assert_eq!(verify(&mut audit).await.checkpoints_checked, 4);
}

#[tokio::test]
async fn without_a_key_an_ephemeral_one_signs_periodically_and_only_admins_may_sign() {
    let db = TestDb::create().await;
    let cp = control_plane_with(Some(&db.url), &[("TOOLPLANE_AUDIT_CHECKPOINT_SECS", "1")]).await;
    eventually("the warning about the made-up key", WAIT, || {
        let logs = cp.logs();
        async move { logs.contains("no audit signing key configured").then_some(()) }
    })
    .await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let agent = admin.agent("someone").await;
    let token = admin.token(pb::Role::Agent, &agent.id).await; // an admin event to sign
    let mut audit = pb::audit_client::AuditClient::new(channel(&cp.url(), Some(ADMIN_TOKEN)).await);
    let key = audit
        .get_audit_public_key(pb::GetAuditPublicKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(key.ephemeral);
    assert!(cp.logs().contains(&key.public_key), "the made-up key is logged");
    let first = eventually("a periodic checkpoint", WAIT, || {
        let mut audit = audit.clone();
        async move {
            let mut stream = audit
                .list_audit_checkpoints(pb::ListAuditCheckpointsRequest::default())
                .await
                .unwrap()
                .into_inner();
            let mut all = Vec::new();
            while let Some(c) = stream.message().await.unwrap() {
                all.push(c.checkpoint.unwrap());
            }
            (!all.is_empty()).then_some(all)
        }
    })
    .await;
    assert_eq!(first[0].chain, "control-plane");
    assert_eq!(first[0].key_id, key.key_id);
    assert!(cp.logs().contains("audit checkpoint signed"));
    // The head moves; the next tick signs the new head.
    admin.token(pb::Role::Admin, "").await;
    eventually("a checkpoint of the moved head", WAIT, || {
        let mut audit = audit.clone();
        let seen = first[0].chain_sequence;
        async move {
            let v = verify(&mut audit).await;
            v.latest_checkpoints
                .iter()
                .any(|c| c.chain_sequence > seen)
                .then_some(())
        }
    })
    .await;

    // Agents may read the public key, never sign or list.
    let mut as_agent = pb::audit_client::AuditClient::new(channel(&cp.url(), Some(&token)).await);
    assert!(
        as_agent
            .get_audit_public_key(pb::GetAuditPublicKeyRequest {})
            .await
            .is_ok()
    );
    let e = as_agent
        .sign_audit_checkpoints(pb::SignAuditCheckpointsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = as_agent
        .list_audit_checkpoints(pb::ListAuditCheckpointsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}
