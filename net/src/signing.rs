//! The ed25519 key that signs webhooks and the agent's calls, per Standard
//! Webhooks (`v1a`): the signature covers `"{webhook-id}.{timestamp}.{body}"`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

/// Signs outgoing requests. Its Debug output never shows the secret.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("public_key", &self.public_key_base64()).finish_non_exhaustive()
    }
}

/// Why a signing key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the signing key is not base64 (or `whsk_<base64>`) of a 32-byte ed25519 secret key")]
    Malformed,
    #[error("no randomness available to generate a key: {0}")]
    Random(String),
}

impl Signer {
    /// From `KEEL_SIGNING_KEY`: base64 of the 32-byte secret, optionally `whsk_`-prefixed.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let text = text.strip_prefix("whsk_").unwrap_or(text);
        let bytes = STANDARD.decode(text).map_err(|_| KeyError::Malformed)?;
        let secret: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
        Ok(Self { key: SigningKey::from_bytes(&secret) })
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { key: SigningKey::from_bytes(&secret) })
    }

    /// The secret as base64, to persist it (`keel dev` keeps it under `.keel/`).
    pub fn secret_base64(&self) -> String {
        STANDARD.encode(self.key.to_bytes())
    }

    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    /// The `webhook-signature` header value for this message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let signature = self.key.sign(&signed_content(id, timestamp, body));
        format!("v1a,{}", STANDARD.encode(signature.to_bytes()))
    }
}

fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    content
}

/// Verify a `webhook-signature` header with a base64 public key: what a receiver
/// does (and what Keel's tests do). Any of its space-separated signatures may match.
pub fn verify(public_key_base64: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Ok(bytes) = STANDARD.decode(public_key_base64.trim_start_matches("whpk_")) else { return false };
    let Ok(bytes): Result<[u8; 32], _> = bytes.try_into() else { return false };
    let Ok(key) = VerifyingKey::from_bytes(&bytes) else { return false };
    let content = signed_content(id, timestamp, body);
    header.split(' ').filter_map(|sig| sig.strip_prefix("v1a,")).any(|sig| {
        STANDARD
            .decode(sig)
            .ok()
            .and_then(|raw| ed25519_dalek::Signature::from_slice(&raw).ok())
            .is_some_and(|signature| key.verify(&content, &signature).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_the_public_key_and_only_for_the_signed_bytes() {
        let signer = Signer::generate().unwrap();
        let header = signer.sign("msg_1", 1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("v1a,"));
        let public = signer.public_key_base64();
        assert!(verify(&public, "msg_1", 1_700_000_000, b"{\"a\":1}", &header));
        assert!(!verify(&public, "msg_1", 1_700_000_001, b"{\"a\":1}", &header), "timestamp is covered");
        assert!(!verify(&public, "msg_2", 1_700_000_000, b"{\"a\":1}", &header), "id is covered");
        assert!(!verify(&public, "msg_1", 1_700_000_000, b"{\"a\":2}", &header), "body is covered");
        let again = Signer::from_base64(&format!("whsk_{}", signer.secret_base64())).unwrap();
        assert_eq!(again.public_key_base64(), public);
        assert!(Signer::from_base64("not base64!").is_err());
        assert!(!format!("{signer:?}").contains(&signer.secret_base64()), "Debug hides the secret");
    }
}
