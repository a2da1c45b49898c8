//! keel-api: the HTTP API (axum), live progress over SSE and the webhook
//! dispatcher, on a [`keel_engine::Store`].
//!
//! Not built yet: see the HTTP API issue.

pub use keel_engine as engine;
