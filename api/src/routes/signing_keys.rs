//! The deployment's signing keys: what receivers verify with, and rotation.
//! The secrets stay in the store; only public keys are answered.

use axum::Json as Reply;
use axum::extract::State;
use keel_net::Signer;
use keel_proto::http::{ActiveSigningKey, SigningKey};
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;

/// The keys as receivers see them.
pub(crate) fn public(signer: &Signer) -> SigningKey {
    let keys: Vec<ActiveSigningKey> = signer
        .public_keys()
        .into_iter()
        .map(|k| ActiveSigningKey {
            standard_webhooks: format!("whpk_{}", k.public_key),
            id: k.id,
            public_key: k.public_key,
            since_ms: k.since_ms,
        })
        .collect();
    let public_key = signer.public_key_base64();
    SigningKey { algorithm: "ed25519".into(), standard_webhooks: format!("whpk_{public_key}"), public_key, keys }
}

/// What this server signs with, read fresh from the store when it follows the
/// deployment's keys: a receiver that met an unknown key id must find it here
/// even if this server has not refreshed yet.
pub(crate) async fn current(state: &AppState) -> ApiResult<SigningKey> {
    if state.follows_deployment_keys() {
        let keys = state.store().signing_keys(None).await?;
        adopt(state, &keys)?;
    }
    Ok(public(state.signer()))
}

/// Sign with `keys` from now on (this server's signer, shared with its dispatcher).
fn adopt(state: &AppState, keys: &[keel_engine::StoredSigningKey]) -> ApiResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let ring = Signer::ring(keys.iter().map(|k| (k.id.as_str(), k.since_ms, k.secret.as_str())))
        .map_err(|e| ApiError::Internal(format!("the deployment's signing keys: {e}")))?;
    state.signer().replace(&ring);
    Ok(())
}

fn follows(state: &AppState) -> ApiResult<()> {
    if state.follows_deployment_keys() {
        Ok(())
    } else {
        Err(ApiError::SigningKeys(
            "this server signs with its own KEEL_SIGNING_KEY, not the deployment's keys: rotate through a server \
             started without it (or with one of the deployment's keys)"
                .into(),
        ))
    }
}

/// Add a new signing key. Until the old one is retired, every webhook and
/// signed call carries a signature by each, so receivers verify throughout.
#[utoipa::path(post, path = "/v1/signing-keys/rotate", operation_id = "rotateSigningKey", tag = "webhooks",
    responses((status = 200, body = SigningKey),
        (status = 409, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn rotate(State(state): State<AppState>) -> ApiResult<Reply<SigningKey>> {
    follows(&state)?;
    let fresh = Signer::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
    let keys = state.store().add_signing_key(&fresh.secret_base64()).await?;
    adopt(&state, &keys)?;
    tracing::info!(keys = keys.len(), "signing key added");
    Ok(Reply(public(state.signer())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetireQuery {
    /// The key to retire (default: the oldest).
    id: Option<String>,
}

/// Retire a signing key (by default the oldest): refused for the last key, and
/// until the newest has been out long enough for every process to sign with it.
#[utoipa::path(post, path = "/v1/signing-keys/retire", operation_id = "retireSigningKey", tag = "webhooks",
    params(RetireQuery),
    responses((status = 200, body = SigningKey),
        (status = 409, body = keel_proto::http::Problem, content_type = "application/problem+json"),
        (status = 422, body = keel_proto::http::Problem, content_type = "application/problem+json")))]
pub async fn retire(State(state): State<AppState>, Query(q): Query<RetireQuery>) -> ApiResult<Reply<SigningKey>> {
    follows(&state)?;
    let keys = state.store().retire_signing_key(q.id.as_deref(), keel_engine::SIGNING_KEY_SETTLE).await?;
    adopt(&state, &keys)?;
    tracing::info!(keys = keys.len(), "signing key retired");
    Ok(Reply(public(state.signer())))
}
