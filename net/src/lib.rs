//! keel-net: how Keel sends requests out (webhooks, durable calls, the agent's
//! handlers): only to addresses that pass the SSRF rules, over connections
//! pinned to the checked address, never following redirects, and signed per
//! Standard Webhooks with ed25519.

pub mod qstash;
pub mod signing;
pub mod ssrf;

pub use signing::{KEY_IDS_HEADER, KeyError, PublicKey, Signature, Signer, WeakSigner, verify};
pub use ssrf::{CheckedTarget, TargetError, check, is_forbidden, pinned_client, redact_url};
