//! Registering a workflow: a name, a version, typed input and output, the
//! input's JSON Schema, and optionally a failure handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use keel_proto::ErrorInfo;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Context, Error, Result};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(Context, Value) -> BoxFuture<Result<Value>> + Send + Sync>;
pub(crate) type FailureHandler = Arc<dyn Fn(Context, Value, ErrorInfo) -> BoxFuture<Result<()>> + Send + Sync>;

/// A workflow definition, ready to register with a [`Worker`](crate::Worker).
///
/// ```
/// use keel_worker::{Context, Result, StepError, Workflow};
///
/// async fn double(ctx: Context, n: i64) -> Result<i64> {
///     ctx.step("double").run(|| async move { Ok::<_, StepError>(n * 2) }).await
/// }
///
/// let workflow = Workflow::new("double", double)
///     .version(2)
///     .on_failure(|_ctx, input, error| async move {
///         eprintln!("doubling {input} failed for good: {}", error.message);
///         Ok(())
///     });
/// assert_eq!(workflow.name(), "double");
/// assert_eq!(workflow.version_number(), 2);
/// ```
#[derive(Clone)]
pub struct Workflow {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) input_schema: schemars::Schema,
    pub(crate) handler: Handler,
    pub(crate) on_failure: Option<FailureHandler>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow").field("name", &self.name).field("version", &self.version).finish_non_exhaustive()
    }
}

impl Workflow {
    /// A workflow named `name` (version 1) running `handler`.
    pub fn new<I, O, F, Fut>(name: impl Into<String>, handler: F) -> Self
    where
        I: DeserializeOwned + JsonSchema + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(Context, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Handler = Arc::new(move |ctx: Context, input: Value| {
            let handler = handler.clone();
            Box::pin(async move {
                let input: I = serde_json::from_value(input).map_err(|e| {
                    Error::new("invalid_input", format!("the run's input does not fit the workflow: {e}"))
                })?;
                let output = handler(ctx, input).await?;
                serde_json::to_value(output)
                    .map_err(|e| Error::new("encode_failed", format!("the workflow's output is not JSON: {e}")))
            })
        });
        Self {
            name: name.into(),
            version: 1,
            input_schema: schemars::schema_for!(I),
            handler: erased,
            on_failure: None,
        }
    }

    /// Runs are pinned to the version that started them.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Run `handler` once when a run fails for good (its effects are journaled as
    /// the step `keel.on_failure`), with the run's input and the error.
    pub fn on_failure<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Context, Value, ErrorInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.on_failure = Some(Arc::new(move |ctx, input, error| Box::pin(handler(ctx, input, error))));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version_number(&self) -> u32 {
        self.version
    }

    /// The JSON Schema of the input.
    pub fn input_schema(&self) -> &schemars::Schema {
        &self.input_schema
    }
}
