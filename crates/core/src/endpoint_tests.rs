use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

#[test]
fn metadata_and_link_local_are_refused() {
    for bad in [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/x",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/computeMetadata",
        "http://metadata.google.internal./computeMetadata",
        "http://100.100.100.200/",
        "http://168.63.129.16/machine",
        "http://192.0.0.192/",
        "http://[fd00:ec2::254]/latest",
        "http://0.0.0.0:8080/",
        "http://[::]:8080/",
    ] {
        assert!(check_endpoint("e", bad, false).is_err(), "{bad}");
        assert!(check_endpoint("e", bad, true).is_ok(), "{bad}");
    }
    assert!(check_endpoint("e", "http://127.0.0.1:8080/t", false).is_ok());
    assert!(check_endpoint("e", "http://localhost:8080/t", false).is_ok());
    assert!(check_endpoint("e", "http://[::1]:8080/t", false).is_ok());
    assert!(check_endpoint("e", "http://10.0.0.7/t", false).is_ok());
    assert!(check_endpoint("e", "https://api.example.com/x", false).is_ok());
    assert!(check_endpoint("e", "ftp://x/", false).is_err());
    assert!(check_endpoint("e", "not a url", false).is_err());
}

/// Every spelling of 169.254.169.254 a resolver or URL parser accepts.
const SPELLINGS: &[&str] = &[
    "169.254.169.254",
    "2852039166",
    "0xa9fea9fe",
    "0XA9FEA9FE",
    "0251.0376.0251.0376",
    "0xa9.0xfe.0xa9.0xfe",
    "169.254.43518",
    "169.16689662",
    "0xa9.16689662",
    "169.254.169.254.",
    "00000251.254.169.254",
    "169%2e254%2e169%2e254",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[::169.254.169.254]",
    "[::a9fe:a9fe]",
    "[::ffff:0:a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",
    "[64:ff9b::169.254.169.254]",
    "[2002:a9fe:a9fe::1]",
    "[2002:a9fe:a9fe:1234:5678::9]",
    "[2001:0:4136:e378:8000:63bf:5601:5601]",
];

#[test]
fn every_spelling_of_the_metadata_address_is_refused() {
    for host in SPELLINGS {
        let ip = host_ip(host).unwrap_or_else(|| panic!("{host} is not read as an address"));
        assert!(is_forbidden_ip(ip), "{host} -> {ip} passes");
        assert!(check_host(host, false).is_err(), "{host}");
        assert!(check_host(host, true).is_ok(), "{host}");
        let url = format!("http://{host}:8080/latest/meta-data");
        let err = check_endpoint("endpoint", &url, false).unwrap_err();
        assert_eq!(err.0[0].field, "endpoint", "{url}");
    }
    for host in &SPELLINGS[..12] {
        assert_eq!(host_ip(host), Some(IpAddr::V4(METADATA)), "{host}");
    }
}

#[test]
fn the_url_crate_reads_these_hosts_as_the_policy_does() {
    // reqwest (the MCP client) connects to what url::Url parses; the policy must see
    // the same address, or a literal would slip past it.
    for host in SPELLINGS {
        let url = url::Url::parse(&format!("http://{host}/")).unwrap();
        let connected = match url.host().unwrap() {
            url::Host::Ipv4(a) => IpAddr::V4(a),
            url::Host::Ipv6(a) => IpAddr::V6(a),
            url::Host::Domain(d) => panic!("{host} read as a name {d}"),
        };
        assert_eq!(Some(connected), host_ip(host), "{host}");
    }
}

#[test]
fn embedded_forms_are_unwrapped() {
    for (form, embedded) in [
        ("::ffff:169.254.169.254", METADATA),
        ("::169.254.169.254", METADATA),
        ("::ffff:0:169.254.169.254", METADATA),
        ("64:ff9b::169.254.169.254", METADATA),
        ("2002:a9fe:a9fe::", METADATA),
        // Teredo: client 169.254.169.254 obfuscated (bits inverted).
        ("2001:0:102:304::5601:5601", METADATA),
        // Teredo server field.
        ("2001:0:a9fe:a9fe::1", METADATA),
        ("64:ff9b::100.100.100.200", Ipv4Addr::new(100, 100, 100, 200)),
    ] {
        let ip: Ipv6Addr = form.parse().unwrap();
        assert!(embedded_ipv4(ip).contains(&embedded), "{form}: {:?}", embedded_ipv4(ip));
        assert!(is_forbidden_ip(IpAddr::V6(ip)), "{form}");
    }
    // Local-use NAT64 (RFC 8215), 169.254.169.254 at each RFC 6052 prefix length.
    for form in [
        "64:ff9b:1:a9fe:a9:fe00::",   // /48
        "64:ff9b:1:a9:fe:a9fe::",     // /56
        "64:ff9b:1:0:a9:fea9:fe00:0", // /64
        "64:ff9b:1::a9fe:a9fe",       // /96
    ] {
        assert!(is_forbidden_ip(v6(form)), "{form}");
    }
    assert!(!is_forbidden_ip(v6("::1")));
    assert!(!is_forbidden_ip(v6("::ffff:127.0.0.1")));
    assert!(!is_forbidden_ip(v6("64:ff9b::8.8.8.8")));
    assert!(!is_forbidden_ip(v6("2002:0808:0808::1")));
    assert!(!is_forbidden_ip(v6("2606:4700::1111")));
    assert_eq!(refusal(v6("fe80::1")), Some(Refusal::LinkLocal));
    assert_eq!(refusal(v6("fd00:ec2::254")), Some(Refusal::Metadata));
    assert_eq!(refusal(v6("::")), Some(Refusal::Unspecified));
}

fn embeddings(v4: Ipv4Addr) -> Vec<Ipv6Addr> {
    let a = u128::from(u32::from(v4));
    vec![
        v4.to_ipv6_mapped(),
        v4.to_ipv6_compatible(),
        Ipv6Addr::from((0xffff_0000u128 << 32) | a),
        Ipv6Addr::from((0x0064_ff9bu128 << 96) | a),
        Ipv6Addr::from((0x0064_ff9b_0001u128 << 80) | a),
        Ipv6Addr::from((0x2002u128 << 112) | (a << 80) | 0x1234),
        Ipv6Addr::from((0x2001_0000u128 << 96) | u128::from(!u32::from(v4))),
    ]
}

/// Decimal, hex, octal and short forms of an IPv4 address, as inet_aton reads them.
fn spellings(v4: Ipv4Addr) -> Vec<String> {
    let [a, b, c, d] = v4.octets();
    let n = u32::from(v4);
    vec![
        format!("{n}"),
        format!("0x{n:x}"),
        format!("0{n:o}"),
        format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
        format!("0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}"),
        format!("{a}.{b}.{}", u32::from(c) << 8 | u32::from(d)),
        format!("{a}.{}", n & 0xff_ffff),
        format!("{v4}."),
    ]
}

proptest! {
    #[test]
    fn link_local_is_refused_in_every_form(c in any::<u8>(), d in any::<u8>()) {
        let v4 = Ipv4Addr::new(169, 254, c, d);
        for e in embeddings(v4) {
            prop_assert!(is_forbidden_ip(IpAddr::V6(e)), "{e}");
            prop_assert!(check_host(&format!("[{e}]"), false).is_err(), "{e}");
        }
        for s in spellings(v4) {
            prop_assert_eq!(host_ip(&s), Some(IpAddr::V4(v4)), "{}", s);
            prop_assert!(check_host(&s, false).is_err(), "{}", s);
        }
    }

    #[test]
    fn ordinary_addresses_pass_in_every_form(a in 1u8..=99, b in any::<u8>(), c in any::<u8>(), d in any::<u8>()) {
        let v4 = Ipv4Addr::new(a, b, c, d);
        for e in embeddings(v4) {
            prop_assert!(!is_forbidden_ip(IpAddr::V6(e)), "{e}");
        }
        for s in spellings(v4) {
            prop_assert_eq!(host_ip(&s), Some(IpAddr::V4(v4)), "{}", s);
            prop_assert!(check_host(&s, false).is_ok(), "{}", s);
        }
    }

    #[test]
    fn link_local_v6_is_refused(low in any::<u128>()) {
        let ip = Ipv6Addr::from((0xfe80u128 << 112) | (low >> 10));
        prop_assert!(is_forbidden_ip(IpAddr::V6(ip)));
    }
}
