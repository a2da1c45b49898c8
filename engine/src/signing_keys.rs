//! Every process follows the deployment's signing keys: it reads them again
//! every [`SIGNING_KEYS_REFRESH`], so a rotation or retirement made through
//! any server reaches every signer within a few seconds. The caller owns the
//! keys (keel-net's `Signer`, which the engine does not know): `offer` gives
//! its newest secret, or `None` once it is gone (the follower then stops);
//! `apply` takes the deployment's keys.

use std::sync::Arc;

use crate::store::{SIGNING_KEYS_REFRESH, Store, StoredSigningKey};

pub fn follow<O, A>(store: Arc<dyn Store>, offer: O, apply: A) -> tokio::task::JoinHandle<()>
where
    O: Fn() -> Option<String> + Send + 'static,
    A: Fn(&[StoredSigningKey]) + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SIGNING_KEYS_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // Gone with its last holder; and a Redis that lost the keys (restarted
            // empty) gets this process's back rather than another new one.
            let Some(current) = offer() else { return };
            match store.signing_keys(Some(&current)).await {
                Ok(keys) => apply(&keys),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the deployment's signing keys; signing with the ones held")
                }
            }
        }
    })
}
