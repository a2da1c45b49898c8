//! QStash's request signature, for apps written with the Upstash SDKs:
//! `Upstash-Signature` is an HS256 JWT whose secret is a signing key's text,
//! issued by `Upstash`, whose subject is the URL called and whose `body` claim
//! is the base64url SHA-256 of the raw body (what `@upstash/qstash`'s
//! `Receiver` checks, trying the current key, then the next).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{digest, hmac};

/// How long a signature stays valid after it is made.
pub const VALID_FOR_S: u64 = 300;

/// A new signing key: `sig_` and 32 random bytes, base64url (a key's text is
/// the HMAC secret, as QStash's are).
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("sig_{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The `Upstash-Signature` of a request to `url` with `body`, by `key`, made
/// at `now_s` (Unix seconds); `jti` makes each signature unique.
pub fn sign(key: &str, url: &str, body: &[u8], now_s: u64, jti: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = format!(
        r#"{{"iss":"Upstash","sub":{},"exp":{},"nbf":{now_s},"iat":{now_s},"jti":{},"body":"{}"}}"#,
        json_string(url),
        now_s + VALID_FOR_S,
        json_string(jti),
        body_hash(body)
    );
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()), signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// [`sign`] now, with a random `jti`.
pub fn sign_now(key: &str, url: &str, body: &[u8]) -> String {
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut nonce = [0u8; 12];
    // Without randomness the jti is still unique enough with the time in it.
    let _ = getrandom::fill(&mut nonce);
    let jti = format!("jwt_{}{}", now_s, URL_SAFE_NO_PAD.encode(nonce));
    sign(key, url, body, now_s, &jti)
}

/// base64url (no padding) of the body's SHA-256: the `body` claim.
pub fn body_hash(body: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, body).as_ref())
}

/// A JSON string literal (URLs and ids hold no control characters, but quotes
/// and backslashes are escaped all the same).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_an_hs256_jwt_over_the_body_hash() {
        let token = sign("sig_k", "https://app.example.com/api/workflow", b"{\"a\":1}", 1_700_000_000, "j-1");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert!(claims.contains(r#""iss":"Upstash""#), "{claims}");
        assert!(claims.contains(r#""sub":"https://app.example.com/api/workflow""#), "{claims}");
        assert!(claims.contains(&format!(r#""body":"{}""#, body_hash(b"{\"a\":1}"))), "{claims}");
        // The tag is HMAC-SHA256 of header.claims with the key's text.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"sig_k");
        let tag = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert!(hmac::verify(&key, format!("{}.{}", parts[0], parts[1]).as_bytes(), &tag).is_ok());
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
        let key = generate_key().unwrap();
        assert!(key.starts_with("sig_") && key.len() == 4 + 43, "{key}");
    }
}
