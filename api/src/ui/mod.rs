//! The operators' dashboard at `/ui`: server-rendered HTML (maud), a little of
//! our own JavaScript, all embedded in the binary; no JavaScript toolchain.
//!
//! The shell (`/ui`, its CSS and script) is public: it holds no data. The
//! script keeps the operator's token in the tab's `sessionStorage` and fetches
//! each view as an HTML fragment from `/ui/f/...` with the bearer header, so
//! the fragments sit behind the same auth as the API (a read token may GET
//! them; its action buttons are rendered disabled). Actions and live updates
//! go to the JSON API itself (`POST /v1/runs/{id}/cancel`, the run's SSE
//! stream), which enforces the token again. The module reads only what the
//! API's handlers read: the store through `AppState`, and the API's types.

mod overview;
mod page;
mod runs;
mod system;
mod timeline;

pub use overview::{SAMPLE_EVERY, Samples, sample};

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;

const SHELL: &str = include_str!("assets/shell.html");
const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// What the request's token may do (set by `auth::require_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A full token, or auth is off.
    Full,
    /// A read token: GET only.
    Read,
}

impl Access {
    pub(crate) fn of(req: &Request) -> Self {
        req.extensions().get::<Access>().copied().unwrap_or(Access::Full)
    }

    fn can_act(self) -> bool {
        self == Access::Full
    }
}

/// Whether a path is the dashboard's public shell (no data in it).
pub(crate) fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/ui" | "/ui/" | "/ui/assets/ui.css" | "/ui/assets/ui.js")
}

/// The dashboard's routes, merged into the API's router (inside its auth).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(shell))
        .route("/ui/assets/ui.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/ui/assets/ui.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/ui/f/runs", get(runs::list))
        .route("/ui/f/runs/{id}", get(runs::detail))
        .route("/ui/f/runs/{id}/value", get(runs::value))
        .route("/ui/f/overview", get(overview::page))
        .route("/ui/f/system", get(system::page))
        .route("/ui/f/whoami", get(whoami))
}

async fn shell() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Only our own script and style; no framing by other sites.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            ),
        ],
        SHELL,
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// What this token may do, for the shell (`full` or `read`).
async fn whoami(req: Request) -> Response {
    let access = if Access::of(&req).can_act() { "full" } else { "read" };
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], access).into_response()
}
