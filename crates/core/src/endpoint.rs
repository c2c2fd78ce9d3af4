//! Which tool endpoints may be called. Link-local and cloud-metadata addresses are
//! refused unless explicitly allowed: a tool endpoint pointing there is a classic way
//! to steal instance credentials (SSRF).
//!
//! One policy, applied everywhere an address is decided: to endpoints at registration
//! and import ([`check_endpoint`]), to URL hosts just before connecting ([`check_host`])
//! and to every address a host name resolves to, at connect time ([`refusal`]). An
//! address is judged after unwrapping the IPv6 forms that carry an IPv4 address a
//! translator or relay would deliver to (mapped, compatible, NAT64, 6to4, Teredo), and
//! a host is read the way URL parsers and resolvers read it (`2852039166`,
//! `0xa9fea9fe`, `0251.0376.0251.0376` and `169.254.43518` are all 169.254.169.254).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::Uri;

use crate::error::Violations;

/// Host names that resolve to metadata services on common clouds. Names are also
/// checked at connect time by what they resolve to; this list only makes the obvious
/// ones fail at registration, where the caller sees why.
const METADATA_HOSTS: &[&str] = &[
    "metadata.google.internal",
    "metadata",
    "metadata.azure.com",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
];

/// Metadata and host-agent addresses outside link-local: Alibaba Cloud
/// (100.100.100.200), Azure's WireServer (168.63.129.16, which hands out
/// certificates and extension settings), Oracle Cloud's legacy metadata (192.0.0.192).
const METADATA_V4: &[Ipv4Addr] = &[
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(192, 0, 0, 192),
];

/// AWS's IPv6 instance metadata service.
const METADATA_V6: &[Ipv6Addr] = &[Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)];

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 169.254.0.0/16 or fe80::/10 (the AWS/GCP/Azure/OpenStack metadata address
    /// 169.254.169.254 is one).
    LinkLocal,
    /// A cloud metadata or host-agent address outside link-local.
    Metadata,
    /// 0.0.0.0/8 or `::`: connecting there reaches this host's own services.
    Unspecified,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::LinkLocal => "a link-local address",
            Self::Metadata => "a cloud metadata address",
            Self::Unspecified => "an unspecified (this-host) address",
        })
    }
}

/// Why `ip` must not be connected to, if it must not: its own class, or the class of
/// any IPv4 address embedded in it.
pub fn refusal(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6).or_else(|| embedded_ipv4(v6).into_iter().find_map(refusal_v4)),
    }
}

/// True for addresses no tool endpoint should reach unless configured (see [`refusal`]).
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    refusal(ip).is_some()
}

fn refusal_v4(v4: Ipv4Addr) -> Option<Refusal> {
    if v4.is_link_local() {
        Some(Refusal::LinkLocal)
    } else if METADATA_V4.contains(&v4) {
        Some(Refusal::Metadata)
    } else if v4.octets()[0] == 0 {
        Some(Refusal::Unspecified)
    } else {
        None
    }
}

fn refusal_v6(v6: Ipv6Addr) -> Option<Refusal> {
    if (v6.segments()[0] & 0xffc0) == 0xfe80 {
        Some(Refusal::LinkLocal)
    } else if METADATA_V6.contains(&v6) {
        Some(Refusal::Metadata)
    } else if v6.is_unspecified() {
        Some(Refusal::Unspecified)
    } else {
        None
    }
}

fn v4_at(bits: u128, shift: u32) -> Ipv4Addr {
    // The 32 bits at `shift` (masked, so the cast keeps them all).
    Ipv4Addr::from(((bits >> shift) & 0xffff_ffff) as u32)
}

/// The IPv4 addresses an IPv6 address carries, where a host, translator or relay
/// would deliver to them: IPv4-mapped `::ffff:0:0/96`, IPv4-translated
/// `::ffff:0:0:0/96`, IPv4-compatible `::/96` (deprecated, still routed by some
/// stacks), NAT64 `64:ff9b::/96` and the local-use `64:ff9b:1::/48` (every RFC 6052
/// prefix length that fits in it), 6to4 `2002::/16`, and Teredo `2001::/32` (its
/// server and its obfuscated client address).
pub fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(v6);
    let seg = v6.segments();
    let low32 = v4_at(bits, 0);
    let mut out = Vec::new();
    let top96 = bits >> 32;
    // Mapped, translated, compatible (not `::` or `::1`), NAT64 well-known prefix.
    if top96 == 0xffff || top96 == 0xffff_0000 || (top96 == 0 && bits > 1) || top96 == 0x0064_ff9b_0000_0000_0000_0000 {
        out.push(low32);
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        // RFC 6052 §2.2, for each prefix length from /48 up: the address is cut around
        // bits 64..72 (the `u` octet), which it skips.
        let field = |from_top: u32, len: u32| (bits >> (128 - from_top - len)) & ((1u128 << len) - 1);
        let candidates = [
            v4_at((field(48, 16) << 16) | field(72, 16), 0), // /48
            v4_at((field(56, 8) << 24) | field(72, 24), 0),  // /56
            v4_at(field(72, 32), 0),                         // /64
            low32,                                           // /96
        ];
        // Only one reading is the real one; the others see zero padding, which a
        // translator never delivers to (0.0.0.0/8), so those are not counted.
        out.extend(candidates.into_iter().filter(|a| a.octets()[0] != 0));
    }
    if seg[0] == 0x2002 {
        out.push(v4_at(bits, 80));
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        let candidates = [v4_at(bits, 64), Ipv4Addr::from(!u32::from(low32))];
        out.extend(candidates.into_iter().filter(|a| a.octets()[0] != 0));
    }
    out
}

/// The address a URL host stands for, read as URL parsers and resolvers read it:
/// bracketed IPv6, and IPv4 in any of the forms `inet_aton` accepts (decimal, octal,
/// hex, one to four parts, a trailing dot). `None` for a host name.
pub fn host_ip(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Some(ip);
    }
    match url::Host::parse(host).ok()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Checks a URL host against the policy before anything is sent to it: a literal
/// address in any form, or a well-known metadata host name. Names are checked again
/// by what they resolve to, when connecting.
pub fn check_host(host: &str, allow_link_local: bool) -> Result<(), String> {
    if allow_link_local {
        return Ok(());
    }
    if let Some(ip) = host_ip(host) {
        return match refusal(ip) {
            Some(why) => Err(format!("{host} is {why} ({ip}); refused")),
            None => Ok(()),
        };
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if METADATA_HOSTS.contains(&name.as_str()) {
        return Err(format!("{host} is a cloud metadata host name; refused"));
    }
    Ok(())
}

/// Checks an endpoint URL at registration: http(s), a host, and (unless
/// `allow_link_local`) no link-local or metadata address in any spelling.
pub fn check_endpoint(field: &str, endpoint: &str, allow_link_local: bool) -> Result<Uri, Violations> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|_| Violations::single(field, format!("{endpoint:?} is not a URL")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(Violations::single(field, "must be an http:// or https:// URL"));
        }
    }
    let host = uri
        .host()
        .ok_or_else(|| Violations::single(field, "must name a host"))?;
    // What the MCP client (the url crate) will connect to must be what was checked.
    let parsed =
        url::Url::parse(endpoint).map_err(|e| Violations::single(field, format!("{endpoint:?} is not a URL: {e}")))?;
    for h in [Some(host.to_owned()), parsed.host_str().map(str::to_owned)]
        .into_iter()
        .flatten()
    {
        check_host(&h, allow_link_local)
            .map_err(|e| Violations::single(field, format!("{e} (see TOOLPLANE_ALLOW_LINK_LOCAL_ENDPOINTS)")))?;
    }
    Ok(uri)
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
