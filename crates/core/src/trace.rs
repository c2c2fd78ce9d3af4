//! W3C Trace Context (`traceparent`) across agent → sidecar → tool, so one trace shows
//! a whole call: the sidecar continues the caller's trace (or starts one) and sends the
//! tool a child span.

use rand::RngCore;

/// `traceparent` for an outgoing call: a new span in the caller's trace when
/// `incoming` is a valid `traceparent`, else a new sampled trace.
pub fn child(incoming: Option<&str>) -> String {
    let mut rng = rand::rng();
    let mut span = [0u8; 8];
    rng.fill_bytes(&mut span);
    let span = hex::encode(span);
    match incoming.and_then(parse) {
        Some((trace_id, flags)) => format!("00-{trace_id}-{span}-{flags}"),
        None => {
            let mut trace = [0u8; 16];
            rng.fill_bytes(&mut trace);
            format!("00-{}-{span}-01", hex::encode(trace))
        }
    }
}

/// The trace id and flags of a valid version-00 `traceparent`.
pub fn parse(v: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let [version, trace_id, span_id, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = *version == "00"
        && hex(trace_id, 32)
        && hex(span_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && span_id.bytes().any(|b| b != b'0');
    valid.then_some((*trace_id, *flags))
}

/// The trace id of a `traceparent` (for log lines).
pub fn trace_id(v: &str) -> &str {
    parse(v).map_or("", |(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = child(Some(incoming));
        assert!(c.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(c.ends_with("-01"));
        assert_ne!(c, incoming);
        assert!(parse(&c).is_some());
        // Invalid input starts a new trace.
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-0000-00f0-01",
            "garbage",
        ] {
            let c = child(Some(bad));
            assert!(parse(&c).is_some() && !c.contains("4bf92f"), "{bad} -> {c}");
        }
    }
}
