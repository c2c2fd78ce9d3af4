use chrono::{TimeZone, Utc};

use super::*;

const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const HEAD: &str = "4f0c5d7e9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef01234567";

fn signer() -> CheckpointSigner {
    CheckpointSigner::from_seed_hex(SEED).unwrap()
}

fn signed() -> AuditCheckpoint {
    let at = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap() + chrono::Duration::nanoseconds(123_456_789);
    signer().sign("sidecar:s1", 42, HEAD, at)
}

fn trusted() -> TrustedKeys {
    TrustedKeys::new([signer().public_key().clone()])
}

#[test]
fn a_signed_checkpoint_verifies_under_its_key() {
    let cp = signed();
    assert_eq!(cp.version, FORMAT_VERSION);
    assert_eq!(cp.key_id, signer().public_key().key_id());
    assert_eq!(cp.signature.len(), 128);
    assert_eq!(trusted().verify(&cp), Ok(()));
    assert_eq!(check(&cp, &trusted(), Some(HEAD)), Ok(Checked::Holds));
}

#[test]
fn the_message_is_canonical_and_versioned() {
    // RFC 8032's first test key: the public key is published, so this pins the format.
    assert_eq!(
        signer().public_key().to_hex(),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    let msg = String::from_utf8(message(&signed()).unwrap()).unwrap();
    assert_eq!(
        msg,
        format!(
            "toolplane.audit.checkpoint.v1\n{{\"chain\":\"sidecar:s1\",\"chain_seq\":42,\"head_hash\":\"{HEAD}\",\
             \"key_id\":\"{}\",\"signed_at\":\"2026-12-01T12:00:00.123456Z\",\"version\":1}}",
            signer().key_id()
        )
    );
    let mut v2 = signed();
    v2.version = 2;
    assert_eq!(message(&v2), Err(CheckpointError::UnsupportedVersion(2)));
}

#[test]
fn any_changed_field_breaks_the_signature() {
    let edits: [fn(&mut AuditCheckpoint); 5] = [
        |c| c.chain = "sidecar:s2".to_owned(),
        |c| c.chain_seq += 1,
        |c| c.head_hash = c.head_hash.replacen('4', "5", 1),
        |c| c.signed_at += chrono::Duration::microseconds(1),
        |c| {
            let mut sig = hex::decode(&c.signature).unwrap();
            sig[10] ^= 1;
            c.signature = hex::encode(sig);
        },
    ];
    for edit in edits {
        let mut cp = signed();
        edit(&mut cp);
        assert_eq!(trusted().verify(&cp), Err(CheckpointError::BadSignature), "{cp:?}");
        let problem = check(&cp, &trusted(), Some(&cp.head_hash.clone())).unwrap_err();
        assert!(problem.contains("not genuine"), "{problem}");
        assert!(problem.contains(&cp.key_id), "names the checkpoint: {problem}");
    }
}

#[test]
fn another_key_is_not_trusted_and_cannot_borrow_a_trusted_keys_name() {
    let other = CheckpointSigner::generate();
    assert_ne!(other.key_id(), signer().key_id());
    let cp = other.sign("sidecar:s1", 42, HEAD, Utc::now());
    assert_eq!(
        trusted().verify(&cp),
        Err(CheckpointError::UnknownKey(other.key_id().to_owned()))
    );
    assert_eq!(check(&cp, &trusted(), Some(HEAD)), Ok(Checked::Unverifiable));
    // Signed by another key but claiming the trusted key's id: forged.
    let mut forged = cp;
    forged.key_id = signer().key_id().to_owned();
    assert_eq!(trusted().verify(&forged), Err(CheckpointError::BadSignature));
    // Trusting it (e.g. a rotated key listed in the trusted keys) makes it verify.
    let mut both = trusted();
    both.add(PublicKey::parse(&other.public_key().to_hex()).unwrap());
    let cp = other.sign("sidecar:s1", 42, HEAD, Utc::now());
    assert_eq!(both.verify(&cp), Ok(()));
}

#[test]
fn a_rewritten_or_missing_record_is_named_with_the_checkpoint() {
    let cp = signed();
    let other = "ab".repeat(32);
    let problem = check(&cp, &trusted(), Some(&other)).unwrap_err();
    assert!(problem.contains("rewritten after it was signed"), "{problem}");
    assert!(
        problem.contains("position 42") && problem.contains(&cp.key_id),
        "{problem}"
    );
    let problem = check(&cp, &trusted(), None).unwrap_err();
    assert!(problem.contains("missing"), "{problem}");
}

#[test]
fn keys_parse_from_hex_only() {
    assert!(CheckpointSigner::from_seed_hex("00").is_err());
    assert!(CheckpointSigner::from_seed_hex(&"zz".repeat(32)).is_err());
    assert!(PublicKey::parse("abc").is_err());
    let pk = signer().public_key().to_hex();
    assert_eq!(PublicKey::parse(&format!(" {pk}\n")).unwrap().to_hex(), pk);
    let keys = TrustedKeys::parse(["", &pk, &pk]).unwrap();
    assert_eq!(keys.keys().count(), 1, "duplicates collapse, blanks are skipped");
    assert!(TrustedKeys::parse([pk.as_str(), "nope"]).is_err());
    let seed = CheckpointSigner::generate().seed_hex();
    assert_eq!(CheckpointSigner::from_seed_hex(&seed).unwrap().seed_hex(), seed);
}

#[test]
fn checkpoints_survive_a_json_round_trip() {
    let cp = signed();
    let back: AuditCheckpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
    assert_eq!(back, cp);
    assert_eq!(trusted().verify(&back), Ok(()));
}
