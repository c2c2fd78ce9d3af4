//! A tool's own credential, scrubbed from whatever the tool answered: an upstream that
//! echoes what it was sent (a 401 body quoting the `Authorization` header, a proxy's
//! error page with the request URL) must not carry the secret into our errors, logs or
//! audit trail. The secret is known exactly here, so it is matched exactly, in the
//! forms it is commonly echoed in, rather than guessed at by shape.

use super::REDACTED;

/// `text` with `secret` replaced by `[REDACTED]`, as given and in its obvious
/// encodings: URL (percent, upper- or lower-case hex, and form `+`), base64 (standard
/// and URL-safe, padded or not: how Basic auth carries it), and JSON string escaping.
/// A secret that is itself an `Authorization` value (`Bearer x`, `Basic b64`) is also
/// scrubbed as its token, and a Basic one as its decoded `user:pass` and password.
pub fn scrub_credential(text: &str, secret: &str) -> String {
    if secret.is_empty() || text.is_empty() {
        return text.to_owned();
    }
    let mut forms = Vec::new();
    add_forms(&mut forms, secret);
    let lower = secret.to_ascii_lowercase();
    if lower.starts_with("bearer ") || lower.starts_with("basic ") {
        let token = secret[secret.find(' ').map_or(0, |i| i + 1)..].trim();
        add_forms(&mut forms, token);
        if lower.starts_with("basic ")
            && let Some(decoded) = base64_decode(token).and_then(|d| String::from_utf8(d).ok())
        {
            if let Some((_, password)) = decoded.split_once(':') {
                add_forms(&mut forms, password);
            }
            add_forms(&mut forms, &decoded);
        }
    }
    forms.retain(|f| !f.is_empty());
    // Longest first, so a form that contains another is replaced whole.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    let mut out = text.to_owned();
    for form in &forms {
        if out.contains(form.as_str()) {
            out = out.replace(form.as_str(), REDACTED);
        }
    }
    out
}

fn add_forms(forms: &mut Vec<String>, secret: &str) {
    forms.push(secret.to_owned());
    let upper = percent_encode(secret, false);
    forms.push(upper.replace("%20", "+"));
    forms.push(percent_encode(secret, true));
    forms.push(upper);
    let standard = base64_encode(secret.as_bytes(), STANDARD);
    let url_safe = base64_encode(secret.as_bytes(), URL_SAFE);
    forms.push(standard.trim_end_matches('=').to_owned());
    forms.push(url_safe.trim_end_matches('=').to_owned());
    forms.push(standard);
    forms.push(url_safe);
    if let Ok(json) = serde_json::to_string(secret) {
        forms.push(json[1..json.len() - 1].to_owned());
    }
}

fn percent_encode(s: &str, lower_hex: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else if lower_hex {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Padded base64 of `bytes` in `alphabet`.
pub(super) fn base64_encode(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (padding optional); `None` when `s` is not base64.
pub(super) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = STANDARD.iter().position(|a| *a == c)?;
        acc = (acc << 6) | u32::try_from(v).ok()?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}
