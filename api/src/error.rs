//! One error type for every handler, answered as RFC 9457 problem details with
//! a stable `type` per kind of problem.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_proto::http::Problem;

/// What can go wrong in a request, each with its status and stable problem type.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("the query string does not parse: {0}")]
    BadQuery(String),
    #[error("the path does not parse: {0}")]
    BadPath(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("this resource does not support that method")]
    MethodNotAllowed,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    IdempotencyConflict(String),
    #[error("{0}")]
    UnknownWorkflow(String),
    #[error("{0}")]
    RunNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A signing-key rotation or retirement that would break verification.
    #[error("{0}")]
    SigningKeys(String),
    #[error("{0}")]
    TargetRefused(String),
    #[error("a bearer token is required: send `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("invalid token: it is not one of this server's tokens")]
    InvalidToken,
    #[error("this token may only read (GET); use a full token to change things")]
    Forbidden,
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json", "The body is not valid JSON"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "The body must be JSON")
            }
            Self::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "The body is too large"),
            Self::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "A value is larger than the store keeps")
            }
            Self::BadQuery(_) => (StatusCode::BAD_REQUEST, "invalid-query", "The query string is not valid"),
            Self::BadPath(_) => (StatusCode::BAD_REQUEST, "invalid-path", "The path is not valid"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "The request is not valid"),
            Self::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "The method is not allowed here")
            }
            Self::InvalidRequest(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", "The request is not valid")
            }
            Self::InvalidInput(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid-input", "The input does not fit the workflow's schema")
            }
            Self::IdempotencyConflict(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-conflict",
                "The idempotency key or run id was used with another request",
            ),
            Self::UnknownWorkflow(_) => {
                (StatusCode::NOT_FOUND, "unknown-workflow", "No live worker runs this workflow")
            }
            Self::RunNotFound(_) => (StatusCode::NOT_FOUND, "run-not-found", "No such run"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::Conflict(_) => {
                (StatusCode::CONFLICT, "invalid-transition", "The run is not in a state that allows this")
            }
            Self::SigningKeys(_) => {
                (StatusCode::CONFLICT, "signing-keys", "The deployment's signing keys cannot change that way now")
            }
            Self::TargetRefused(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "target-refused", "The URL points where Keel may not send requests")
            }
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required"),
            Self::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid-token", "The token is not valid"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Not allowed with this token"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "The store is unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The stable problem type URI.
    pub fn problem_type(&self) -> String {
        format!("urn:keel:problem:{}", self.parts().1)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, title) = self.parts();
        let detail = match &self {
            Self::Internal(context) => {
                // Logged with context, answered without details.
                tracing::error!(error = %context, "internal error");
                "something went wrong on our side; the server log has the details".to_owned()
            }
            Self::Unavailable(context) => {
                tracing::warn!(error = %context, "store unavailable");
                format!("{self}; retry shortly, and check that Redis is reachable")
            }
            other => other.to_string(),
        };
        let problem =
            Problem { problem_type: self.problem_type(), title: title.to_owned(), status: status.as_u16(), detail };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        match self {
            Self::Unauthorized => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::InvalidToken => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            }
            // Refused before the body was read whole: the rest of it is still on
            // the wire, so the connection ends here. Saying so keeps a client's
            // pool from sending its next request on it (and losing it to the close).
            Self::BodyTooLarge(_) => {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<keel_engine::Error> for ApiError {
    fn from(err: keel_engine::Error) -> Self {
        use keel_engine::Error as E;
        match err {
            E::RunNotFound(id) => Self::RunNotFound(format!("run {id} does not exist (or has expired)")),
            E::RunFinal { run_id, status } => Self::Conflict(format!("run {run_id} is already {status}")),
            E::NotFailed { run_id, status } => {
                Self::Conflict(format!("run {run_id} is {status}: only a failed run can be retried"))
            }
            E::IdempotencyConflict { run_id, what } => Self::IdempotencyConflict(format!(
                "this {what} already started run {run_id} with a different request (workflow, input, labels, delay or callback URL); send the same request or use another key"
            )),
            E::Id(e) => Self::InvalidRequest(e.to_string()),
            E::SigningKeys(e) => Self::SigningKeys(e),
            E::Invalid(e) => Self::InvalidRequest(e),
            e @ E::PayloadTooLarge { .. } => Self::PayloadTooLarge(e.to_string()),
            E::BadCursor(c) => Self::InvalidRequest(format!("cursor {c:?} is not one this API issued")),
            E::Timeout(d) => Self::Unavailable(format!("redis did not answer within {d:?}")),
            e if e.is_transient() => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
