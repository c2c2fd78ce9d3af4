//! Which tool endpoints may be called. Link-local and cloud-metadata addresses are
//! refused unless explicitly allowed: a tool endpoint pointing there is a classic way
//! to steal instance credentials (SSRF).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::Uri;

use crate::error::Violations;

/// Host names that resolve to metadata services on common clouds.
const METADATA_HOSTS: &[&str] = &["metadata.google.internal", "metadata", "metadata.azure.com"];

/// True for addresses no tool endpoint should reach unless configured: link-local
/// (169.254/16, fe80::/10, which include the AWS/GCP/Azure metadata address), the
/// Alibaba and AWS IPv6 metadata addresses, and the unspecified address.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden_v4(v4);
            }
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.is_unspecified()
        }
    }
}

fn is_forbidden_v4(v4: Ipv4Addr) -> bool {
    v4.is_link_local() || v4 == Ipv4Addr::new(100, 100, 100, 200) || v4.is_unspecified()
}

/// Checks an endpoint URL at registration: http(s), a host, and (unless
/// `allow_link_local`) no literal link-local or metadata address.
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
        .ok_or_else(|| Violations::single(field, "must name a host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if !allow_link_local {
        let forbidden = METADATA_HOSTS.contains(&host.as_str()) || host.parse::<IpAddr>().is_ok_and(is_forbidden_ip);
        if forbidden {
            return Err(Violations::single(
                field,
                format!("{host} is a link-local or metadata address; refused (see allow_link_local_endpoints)"),
            ));
        }
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_are_refused() {
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/x",
            "http://[::ffff:169.254.169.254]/",
            "http://metadata.google.internal/computeMetadata",
            "http://100.100.100.200/",
        ] {
            assert!(check_endpoint("e", bad, false).is_err(), "{bad}");
            assert!(check_endpoint("e", bad, true).is_ok(), "{bad}");
        }
        assert!(check_endpoint("e", "http://127.0.0.1:8080/t", false).is_ok());
        assert!(check_endpoint("e", "https://api.example.com/x", false).is_ok());
        assert!(check_endpoint("e", "ftp://x/", false).is_err());
        assert!(check_endpoint("e", "not a url", false).is_err());
    }
}
