//! The ed25519 keys that sign webhooks and the agent's calls, per Standard
//! Webhooks (`v1a`): the signature covers `"{webhook-id}.{timestamp}.{body}"`.
//! A deployment has one key, or during a rotation a few: every message then
//! carries one signature per key (space-separated, as Standard Webhooks
//! allows), and the key ids in [`KEY_IDS_HEADER`], so a receiver that meets an
//! id it does not know fetches the key list again.

use std::fmt;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

/// The header that lists the ids of the keys a message is signed with, in the
/// order of its signatures.
pub const KEY_IDS_HEADER: &str = "keel-signing-key-ids";

/// The id of a key made or given to one process, before it joins a deployment's ring.
pub const LOCAL_KEY_ID: &str = "local";

/// Signs outgoing requests with every active key. Clones share the keys: a
/// [`Signer::replace`] is seen by all of them. Its Debug output never shows a secret.
#[derive(Clone)]
pub struct Signer {
    keys: Arc<RwLock<Arc<[ActiveKey]>>>,
}

#[derive(Clone)]
struct ActiveKey {
    id: String,
    since_ms: u64,
    key: SigningKey,
}

impl fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveKey").field("id", &self.id).field("since_ms", &self.since_ms).finish_non_exhaustive()
    }
}

/// A [`Signer`] that may be gone (see [`Signer::downgrade`]).
#[derive(Clone, Debug)]
pub struct WeakSigner(std::sync::Weak<RwLock<Arc<[ActiveKey]>>>);

impl WeakSigner {
    pub fn upgrade(&self) -> Option<Signer> {
        self.0.upgrade().map(|keys| Signer { keys })
    }
}

/// One active key as receivers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub id: String,
    pub since_ms: u64,
    /// base64 of the 32-byte ed25519 public key.
    pub public_key: String,
}

/// A message's signatures and the ids of the keys that made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The `webhook-signature` header: `v1a,<base64>` per key, space-separated.
    pub header: String,
    /// The [`KEY_IDS_HEADER`] header: the key ids, space-separated, in the same order.
    pub key_ids: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("public_keys", &self.public_keys()).finish_non_exhaustive()
    }
}

/// Why a signing key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the signing key is not base64 (or `whsk_<base64>`) of a 32-byte ed25519 secret key")]
    Malformed,
    #[error("no randomness available to generate a key: {0}")]
    Random(String),
    #[error("a signer needs at least one key")]
    Empty,
}

fn secret_key(text: &str) -> Result<SigningKey, KeyError> {
    let text = text.trim();
    let text = text.strip_prefix("whsk_").unwrap_or(text);
    let bytes = STANDARD.decode(text).map_err(|_| KeyError::Malformed)?;
    let secret: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
    Ok(SigningKey::from_bytes(&secret))
}

impl Signer {
    /// From `KEEL_SIGNING_KEY`: base64 of the 32-byte secret, optionally `whsk_`-prefixed.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(Self::of(vec![ActiveKey { id: LOCAL_KEY_ID.into(), since_ms: 0, key: secret_key(text)? }]))
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::of(vec![ActiveKey { id: LOCAL_KEY_ID.into(), since_ms: 0, key: SigningKey::from_bytes(&secret) }]))
    }

    /// A deployment's keys: (id, since ms, base64 secret) each, in any order.
    pub fn ring<'a>(keys: impl IntoIterator<Item = (&'a str, u64, &'a str)>) -> Result<Self, KeyError> {
        let mut active = Vec::new();
        for (id, since_ms, secret) in keys {
            active.push(ActiveKey { id: id.to_owned(), since_ms, key: secret_key(secret)? });
        }
        if active.is_empty() {
            return Err(KeyError::Empty);
        }
        active.sort_by(|a, b| (a.since_ms, &a.id).cmp(&(b.since_ms, &b.id)));
        Ok(Self::of(active))
    }

    fn of(keys: Vec<ActiveKey>) -> Self {
        Self { keys: Arc::new(RwLock::new(keys.into())) }
    }

    fn active(&self) -> Arc<[ActiveKey]> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn newest(&self) -> ActiveKey {
        // Never empty: every constructor refuses an empty list.
        self.active().last().cloned().unwrap_or_else(|| unreachable!("a signer has at least one key"))
    }

    /// A handle that does not keep the keys alive (for a task that follows them).
    pub fn downgrade(&self) -> WeakSigner {
        WeakSigner(Arc::downgrade(&self.keys))
    }

    /// Sign with `other`'s keys from now on, here and in every clone.
    pub fn replace(&self, other: &Signer) {
        let keys = other.active();
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
    }

    /// The newest key's secret as base64, to persist or offer it (`keel dev`
    /// keeps its key under `.keel/`).
    pub fn secret_base64(&self) -> String {
        STANDARD.encode(self.newest().key.to_bytes())
    }

    /// The newest key's public key, base64.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.newest().key.verifying_key().to_bytes())
    }

    /// Every active key, oldest first.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.active()
            .iter()
            .map(|k| PublicKey {
                id: k.id.clone(),
                since_ms: k.since_ms,
                public_key: STANDARD.encode(k.key.verifying_key().to_bytes()),
            })
            .collect()
    }

    /// Whether `public_key_base64` is one of the active keys.
    pub fn has_public_key(&self, public_key_base64: &str) -> bool {
        self.public_keys().iter().any(|k| k.public_key == public_key_base64)
    }

    /// Sign this message with every active key.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Signature {
        let content = signed_content(id, timestamp, body);
        let keys = self.active();
        let header = keys
            .iter()
            .map(|k| format!("v1a,{}", STANDARD.encode(k.key.sign(&content).to_bytes())))
            .collect::<Vec<_>>()
            .join(" ");
        let key_ids = keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(" ");
        Signature { header, key_ids }
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
        let header = signer.sign("msg_1", 1_700_000_000, b"{\"a\":1}").header;
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

    #[test]
    fn a_ring_signs_with_every_key_and_a_replace_reaches_every_clone() {
        let (a, b) = (Signer::generate().unwrap(), Signer::generate().unwrap());
        let ring =
            Signer::ring([("k2", 20, b.secret_base64().as_str()), ("k1", 10, a.secret_base64().as_str())]).unwrap();
        let signature = ring.sign("msg_1", 1, b"x");
        assert_eq!(signature.key_ids, "k1 k2", "oldest first");
        assert_eq!(signature.header.split(' ').count(), 2);
        assert!(verify(&a.public_key_base64(), "msg_1", 1, b"x", &signature.header));
        assert!(verify(&b.public_key_base64(), "msg_1", 1, b"x", &signature.header));
        assert_eq!(ring.public_key_base64(), b.public_key_base64(), "the newest is the published one");
        assert!(!format!("{ring:?}").contains(&a.secret_base64()));

        let follower = a.clone();
        a.replace(&ring);
        assert_eq!(follower.public_keys(), ring.public_keys(), "clones share the keys");
        assert!(follower.has_public_key(&b.public_key_base64()));
        assert!(matches!(Signer::ring(std::iter::empty()), Err(KeyError::Empty)));
    }
}
