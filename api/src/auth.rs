//! Bearer-token authentication: full tokens may do anything, read tokens only
//! GET. Tokens are compared in constant time and never logged.

use std::fmt;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;
use crate::ui::Access;

/// A secret whose Debug output is redacted, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Paths anyone may read: probes and the API description.
fn is_public(path: &str) -> bool {
    // A webhook `context.createWebhook` made is called by third parties: its
    // URL (a live run's id and a random event id) is the credential.
    // The dashboard's shell holds no data: its views are fetched with a token.
    matches!(path, "/healthz" | "/readyz" | "/openapi.json")
        || path.starts_with("/v2/workflows/hooks/")
        || crate::ui::is_public(path)
}

pub(crate) async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let config = state.config();
    if (config.api_tokens.is_empty() && config.read_tokens.is_empty()) || is_public(req.uri().path()) {
        return Ok(next.run(req).await);
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(|t| t.as_bytes().to_vec())
        .ok_or(ApiError::Unauthorized)?;
    // Check every token (no early exit), so timing says nothing about which matched.
    let full = config.api_tokens.iter().fold(false, |hit, t| hit | t.matches(&presented));
    let read = config.read_tokens.iter().fold(false, |hit, t| hit | t.matches(&presented));
    if full {
        return Ok(next.run(req).await);
    }
    if read {
        return if req.method() == Method::GET || req.method() == Method::HEAD {
            req.extensions_mut().insert(Access::Read);
            Ok(next.run(req).await)
        } else {
            Err(ApiError::Forbidden)
        };
    }
    Err(ApiError::InvalidToken)
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer t0k", "bearer t0k", "BEARER t0k", "  bEaReR   t0k  "] {
            assert_eq!(bearer_token(header), Some("t0k"), "{header:?}");
        }
        for header in ["Basic t0k", "Bearer", "Bearer ", "Bearert0k", ""] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }
}
