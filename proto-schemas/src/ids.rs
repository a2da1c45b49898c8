//! Identifiers chosen by clients, and the rules they must follow.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a name or id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be 1 to {max} characters long, got {len}")]
    Length { what: &'static str, max: usize, len: usize },
    #[error("{what} may only contain A-Z a-z 0-9 _ . - (found {found:?})")]
    Charset { what: &'static str, found: char },
    #[error("{what} may not contain whitespace or control characters (found {found:?})")]
    Printable { what: &'static str, found: char },
}

const RUN_ID_MAX: usize = 128;
const WORKFLOW_MAX: usize = 128;
const EVENT_KEY_MAX: usize = 256;

fn check_length(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() || s.len() > max {
        return Err(IdError::Length { what, max, len: s.len() });
    }
    Ok(())
}

/// `A-Za-z0-9_.-`: safe inside Redis key names, URLs and log lines without escaping.
fn check_charset(what: &'static str, s: &str) -> Result<(), IdError> {
    match s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        Some(found) => Err(IdError::Charset { what, found }),
        None => Ok(()),
    }
}

/// A name of 1 to `max` characters of `A-Za-z0-9_.-`.
pub(crate) fn check_name(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    check_length(what, s, max)?;
    check_charset(what, s)
}

/// A run's id: chosen by the client (1–128 characters of `A-Za-z0-9_.-`) or a UUIDv7.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
#[schema(value_type = String, example = "01a20084-13a6-761b-a014-2e0009a7fa38")]
pub struct RunId(String);

impl RunId {
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        check_length("run_id", &id, RUN_ID_MAX)?;
        check_charset("run_id", &id)?;
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<RunId> for String {
    fn from(value: RunId) -> Self {
        value.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Workflow names follow the run id rules: they become part of queue key names.
pub fn validate_workflow_name(name: &str) -> Result<(), IdError> {
    check_length("workflow name", name, WORKFLOW_MAX)?;
    check_charset("workflow name", name)
}

/// Event keys are chosen by the services that send events (`order-42:paid`), so they
/// may hold any printable character except whitespace.
pub fn validate_event_key(key: &str) -> Result<(), IdError> {
    check_printable("event key", key, EVENT_KEY_MAX)
}

/// Idempotency keys follow the event key rules.
pub fn validate_idempotency_key(key: &str) -> Result<(), IdError> {
    check_printable("idempotency key", key, EVENT_KEY_MAX)
}

fn check_printable(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    check_length(what, s, max)?;
    match s.chars().find(|c| c.is_control() || c.is_whitespace()) {
        Some(found) => Err(IdError::Printable { what, found }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_follow_the_documented_rules() {
        assert!(RunId::new("order-42_v1.retry").is_ok());
        assert!(RunId::new("a".repeat(128)).is_ok());
        assert_eq!(RunId::new(""), Err(IdError::Length { what: "run_id", max: 128, len: 0 }));
        assert!(matches!(RunId::new("a".repeat(129)), Err(IdError::Length { .. })));
        assert_eq!(RunId::new("a{b}"), Err(IdError::Charset { what: "run_id", found: '{' }));
        assert!(serde_json::from_str::<RunId>("\"bad id\"").is_err());
    }

    #[test]
    fn event_keys_refuse_whitespace_and_control_characters() {
        assert!(validate_event_key("order-42:paid/eu").is_ok());
        assert!(validate_event_key("a b").is_err());
        assert!(validate_event_key("a\nb").is_err());
        assert!(validate_event_key("").is_err());
    }
}
