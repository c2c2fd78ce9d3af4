use serde_json::json;

use super::*;

const KEY: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn a_sealed_value_opens_only_under_its_key_unchanged_and_before_it_expires() {
    let s = Sealer::new(KEY).unwrap();
    let v = json!({"count": 2, "text": "a.b.c"});
    let sealed = s.seal("toolplane:cache:k1", 2_000, &v);
    assert_eq!(s.open("toolplane:cache:k1", 1_000, &sealed), Ok((v.clone(), 2_000)));

    assert_eq!(
        s.open("toolplane:cache:k2", 1_000, &sealed),
        Err(Refused::Mac),
        "moved to another key"
    );
    assert_eq!(s.open("toolplane:cache:k1", 2_000, &sealed), Err(Refused::Expired));
    let other = Sealer::new("another key, also 32 characters long").unwrap();
    assert_eq!(other.open("toolplane:cache:k1", 1_000, &sealed), Err(Refused::Mac));

    let changed = sealed.replace("\"count\":2", "\"count\":3");
    assert_ne!(changed, sealed);
    assert_eq!(s.open("toolplane:cache:k1", 1_000, &changed), Err(Refused::Mac));
    let extended = sealed.replacen("2000", "9000", 1);
    assert_eq!(
        s.open("toolplane:cache:k1", 1_000, &extended),
        Err(Refused::Mac),
        "the expiry is covered"
    );
}

#[test]
fn unsealed_or_garbled_values_are_malformed() {
    let s = Sealer::new(KEY).unwrap();
    for stored in ["{\"count\":2}", "v1.1.zz.{}", "v1.x.00.{}", "v2.1.00.{}", ""] {
        assert_eq!(s.open("k", 0, stored), Err(Refused::Malformed), "{stored}");
    }
}

#[test]
fn short_keys_are_refused() {
    assert!(Sealer::new("short").is_err());
}
