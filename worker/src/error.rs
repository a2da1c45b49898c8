//! The two error types a workflow author meets.

use std::fmt;
use std::time::Duration;

use keel_proto::ErrorInfo;

/// Why a workflow (or one of its primitives) failed. `?` on any std error turns
/// it into one; a step that failed for good returns one with kind `step_failed`.
///
/// ```
/// use keel_worker::Error;
/// let err = Error::new("invalid_goal", "the goal is empty");
/// assert_eq!(err.kind(), "invalid_goal");
/// let from_io: Error = std::io::Error::other("disk full").into();
/// assert_eq!(from_io.kind(), "workflow_error");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    info: ErrorInfo,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of a given kind (a stable, machine-readable class) and message.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self { info: ErrorInfo::new(kind, message) }
    }

    /// The kind: `step_failed`, `child_failed`, `workflow_error`, or one of yours.
    pub fn kind(&self) -> &str {
        &self.info.kind
    }

    pub fn message(&self) -> &str {
        &self.info.message
    }

    /// The step this error came from, if it came from one.
    pub fn step_id(&self) -> Option<&str> {
        self.info.step_id.as_deref()
    }

    /// The error as journaled.
    pub fn info(&self) -> &ErrorInfo {
        &self.info
    }

    pub(crate) fn from_info(info: ErrorInfo) -> Self {
        Self { info }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.info.step_id {
            Some(step) => write!(f, "{} in step {step:?}: {}", self.info.kind, self.info.message),
            None => write!(f, "{}: {}", self.info.kind, self.info.message),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(err: E) -> Self {
        Self::new("workflow_error", err.to_string())
    }
}

/// How a step's attempt failed, and what to do about it. Retryable by default
/// (`?` on any std error gives a retryable one).
///
/// ```
/// use std::time::Duration;
/// use keel_worker::StepError;
/// let busy = StepError::retry_after("rate limited", Duration::from_secs(20));
/// let bad = StepError::terminal("the order does not exist");
/// assert!(!bad.is_retryable());
/// assert_eq!(busy.retry_delay(), Some(Duration::from_secs(20)));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct StepError {
    message: String,
    kind: StepErrorKind,
    /// The journaled error kind, when Keel itself names it (`payload_too_large`).
    named: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepErrorKind {
    Retryable,
    Terminal,
    RetryAfter(Duration),
}

impl StepError {
    /// Try again, after the step's back-off.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), kind: StepErrorKind::Retryable, named: None }
    }

    /// Do not try again: the step fails for good now.
    pub fn terminal(message: impl Into<String>) -> Self {
        Self { message: message.into(), kind: StepErrorKind::Terminal, named: None }
    }

    /// Try again after `delay` (a rate limit's Retry-After) instead of the back-off.
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> Self {
        Self { message: message.into(), kind: StepErrorKind::RetryAfter(delay), named: None }
    }

    /// A terminal error journaled as `kind` (instead of `step_failed`): the
    /// run's error then says which failure it was (`payload_too_large`,
    /// `delivery_failed`).
    pub fn terminal_kind(kind: &'static str, message: impl Into<String>) -> Self {
        Self { message: message.into(), kind: StepErrorKind::Terminal, named: Some(kind) }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_retryable(&self) -> bool {
        self.kind != StepErrorKind::Terminal
    }

    /// The delay the error asks for, if it asks for one.
    pub fn retry_delay(&self) -> Option<Duration> {
        match self.kind {
            StepErrorKind::RetryAfter(d) => Some(d),
            _ => None,
        }
    }

    pub(crate) fn kind_name(&self) -> &'static str {
        if let Some(named) = self.named {
            return named;
        }
        match self.kind {
            StepErrorKind::Terminal => "terminal",
            _ => "step_failed",
        }
    }
}

impl fmt::Debug for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StepError {
    fn from(err: E) -> Self {
        Self::retryable(err.to_string())
    }
}
