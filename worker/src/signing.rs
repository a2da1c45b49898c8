//! A process's signing keys: the deployment's (kept in the store, followed as
//! they rotate), or a `KEEL_SIGNING_KEY` of its own that is not among them.
//! Servers and workers both decide here, so they sign alike.

use std::sync::Arc;

use keel_engine::{Store, StoredSigningKey};
use keel_net::{KeyError, Signer};

/// What a process signs with.
#[derive(Debug)]
pub enum SigningKeys {
    /// The deployment's keys, followed (a rotation reaches this signer within
    /// a few seconds).
    Deployment(Signer),
    /// A key of the process's own that the deployment does not have: signed
    /// with alone; receivers that fetched the deployment's keys refuse it.
    Own { signer: Signer, deployment_public_key: String },
}

/// The deployment's keys as a signer.
pub fn ring(keys: &[StoredSigningKey]) -> Result<Signer, KeyError> {
    Signer::ring(keys.iter().map(|k| (k.id.as_str(), k.since_ms, k.secret.as_str())))
}

/// Offer `offer` as the deployment's first key (taken only if it has none)
/// and decide what to sign with. `own`: the offer is the process's explicit
/// KEEL_SIGNING_KEY, which wins when the deployment has other keys.
pub async fn signing_keys(store: &Arc<dyn Store>, offer: Signer, own: bool) -> Result<SigningKeys, keel_engine::Error> {
    let keys = store.signing_keys(Some(&offer.secret_base64())).await?;
    let deployment = ring(&keys).map_err(|e| keel_engine::Error::Corrupt {
        what: "the deployment's signing keys".into(),
        detail: e.to_string(),
    })?;
    if own && !deployment.has_public_key(&offer.public_key_base64()) {
        return Ok(SigningKeys::Own { signer: offer, deployment_public_key: deployment.public_key_base64() });
    }
    follow(store.clone(), &deployment);
    Ok(SigningKeys::Deployment(deployment))
}

/// Keep `signer` in step with the deployment's keys for as long as it lives.
fn follow(store: Arc<dyn Store>, signer: &Signer) {
    let (offer, apply) = (signer.downgrade(), signer.downgrade());
    keel_engine::signing_keys::follow(
        store,
        move || offer.upgrade().map(|s| s.secret_base64()),
        move |keys| match (apply.upgrade(), ring(keys)) {
            (Some(signer), Ok(keys)) => signer.replace(&keys),
            (_, Err(e)) => {
                tracing::warn!(error = %e, "the deployment's signing keys do not decode; keeping the ones held")
            }
            (None, _) => {}
        },
    );
}
