#![allow(clippy::unwrap_used)]

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;

use super::*;

const ISSUER: &str = "https://idp.example";
const RESOURCE: &str = "http://127.0.0.1:50062/mcp";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Key {
    der: Vec<u8>,
    public: Vec<u8>,
}

fn key() -> Key {
    let rng = ring::rand::SystemRandom::new();
    let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref().to_vec();
    let public = Ed25519KeyPair::from_pkcs8(&der).unwrap().public_key().as_ref().to_vec();
    Key { der, public }
}

fn jwks(keys: &[(&str, &Key)]) -> Value {
    json!({"keys": keys.iter().map(|(kid, k)| json!({
        "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "x": b64(&k.public)
    })).collect::<Vec<_>>()})
}

fn validator(jwks: &Value) -> (JwtValidator, PathBuf) {
    let path = std::env::temp_dir().join(format!("jwks-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, jwks.to_string()).unwrap();
    let v = JwtValidator::new(OAuthSettings {
        issuers: vec![],
        jwks_file: Some((ISSUER.to_owned(), path.clone())),
        resource: RESOURCE.to_owned(),
        agent_claim: "sub".to_owned(),
        leeway: Duration::from_secs(5),
        algorithms: parse_algorithms(DEFAULT_ALGORITHMS).unwrap(),
        min_refresh: Duration::ZERO,
        ca_file: None,
    })
    .unwrap();
    (v, path)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn sign(key: &Key, kid: &str, claims: Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&key.der)).unwrap()
}

fn claims(aud: &str, exp: u64) -> Value {
    json!({"iss": ISSUER, "sub": "agent-7", "aud": aud, "exp": exp, "iat": now()})
}

fn invalid(r: Result<Claims, TokenError>) -> String {
    match r {
        Err(TokenError::Invalid(m)) => m,
        other => panic!("expected an invalid-token refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_of_the_issuer_for_this_resource_is_accepted_and_every_forgery_refused() {
    let k1 = key();
    let (v, path) = validator(&jwks(&[("k1", &k1)]));
    let good = v
        .validate(&sign(&k1, "k1", claims(RESOURCE, now() + 60)))
        .await
        .unwrap();
    assert_eq!(good["sub"], "agent-7");

    let m = invalid(
        v.validate(&sign(&k1, "k1", claims("http://other/mcp", now() + 60)))
            .await,
    );
    assert!(m.contains("audience"), "{m}");
    let m = invalid(v.validate(&sign(&k1, "k1", claims(RESOURCE, now() - 60))).await);
    assert!(m.contains("expired"), "{m}");
    // Within the allowed skew an expired token still passes; past it, not.
    assert!(v.validate(&sign(&k1, "k1", claims(RESOURCE, now() - 2))).await.is_ok());

    // Another key under the known kid, and an unknown kid.
    let other = key();
    let m = invalid(v.validate(&sign(&other, "k1", claims(RESOURCE, now() + 60))).await);
    assert!(m.contains("signature"), "{m}");
    let m = invalid(v.validate(&sign(&other, "k2", claims(RESOURCE, now() + 60))).await);
    assert!(m.contains("no key \"k2\""), "{m}");

    // alg none: the signed part kept, the signature dropped.
    let real = sign(&k1, "k1", claims(RESOURCE, now() + 60));
    let body = real.split('.').nth(1).unwrap();
    let none = format!("{}.{body}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert!(invalid(v.validate(&none).await).contains("alg none"));
    // HS256 keyed with the public key (the classic confusion attack).
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".to_owned());
    let confused = jsonwebtoken::encode(
        &hs,
        &claims(RESOURCE, now() + 60),
        &EncodingKey::from_secret(&k1.public),
    )
    .unwrap();
    assert!(invalid(v.validate(&confused).await).contains("HS256"));

    // Another issuer, even with a key this one trusts.
    let mut foreign = claims(RESOURCE, now() + 60);
    foreign["iss"] = json!("https://evil.example");
    assert!(invalid(v.validate(&sign(&k1, "k1", foreign)).await).contains("not trusted"));

    // Rotation: a new key in the JWKS is picked up when a token names it.
    let k2 = key();
    std::fs::write(&path, jwks(&[("k1", &k1), ("k2", &k2)]).to_string()).unwrap();
    assert!(v.validate(&sign(&k2, "k2", claims(RESOURCE, now() + 60))).await.is_ok());
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_remembered_token_still_expires() {
    let k1 = key();
    let (v, path) = validator(&jwks(&[("k1", &k1)]));
    // Valid for one second past the 5 s skew.
    let token = sign(&k1, "k1", claims(RESOURCE, now() - 4));
    assert!(v.validate(&token).await.is_ok());
    assert!(v.validate(&token).await.is_ok(), "remembered");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(invalid(v.validate(&token).await).contains("expired"));
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn unknown_kids_refresh_the_keys_at_most_once_per_interval() {
    let k1 = key();
    let (mut v, path) = validator(&jwks(&[("k1", &k1)]));
    v.settings.min_refresh = Duration::from_secs(3600);
    assert!(v.validate(&sign(&k1, "k1", claims(RESOURCE, now() + 60))).await.is_ok());
    let k2 = key();
    std::fs::write(&path, jwks(&[("k1", &k1), ("k2", &k2)]).to_string()).unwrap();
    // Loaded at the first token just now: no refetch within the interval.
    assert!(
        v.validate(&sign(&k2, "k2", claims(RESOURCE, now() + 60)))
            .await
            .is_err()
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn shared_secret_and_unsigned_algorithms_cannot_be_configured() {
    assert!(parse_algorithms("RS256, ES256").is_ok());
    assert!(parse_algorithms("none").unwrap_err().contains("none"));
    assert!(parse_algorithms("RS256,HS256").unwrap_err().contains("HS256"));
    assert!(parse_algorithms("").is_err());
    assert!(parse_algorithms("XX1").is_err());
}

#[test]
fn rfc8414_metadata_goes_before_the_issuer_path() {
    assert_eq!(
        oauth_metadata_url("https://idp.example/realms/a/"),
        "https://idp.example/.well-known/oauth-authorization-server/realms/a"
    );
    assert_eq!(
        oauth_metadata_url("https://idp.example"),
        "https://idp.example/.well-known/oauth-authorization-server"
    );
}

/// What validating an access token costs per request (EdDSA; `cargo test --release
/// -p toolplane-sidecar --lib validation_cost -- --ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn validation_cost() {
    let k1 = key();
    let (v, path) = validator(&jwks(&[("k1", &k1)]));
    let token = sign(&k1, "k1", claims(RESOURCE, now() + 600));
    v.validate(&token).await.unwrap();
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        v.verify(&token).await.unwrap();
    }
    let verify = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let start = Instant::now();
    for _ in 0..n {
        v.validate(&token).await.unwrap();
    }
    let remembered = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("verify: {verify:.1} µs per token; remembered: {remembered:.1} µs");
    let _ = std::fs::remove_file(path);
}
