//! Small helpers shared by the handlers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::ApiError;

/// Parse `250ms`, `30s`, `5m`, `2h`, `1d` (or a bare number of seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, ApiError> {
    let text = text.trim();
    let bad = || ApiError::InvalidRequest(format!("{text:?} is not a duration: use e.g. 250ms, 30s, 5m, 2h or 1d"));
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.checked_mul(1000).ok_or_else(bad)?,
        "m" => n.checked_mul(60_000).ok_or_else(bad)?,
        "h" => n.checked_mul(3_600_000).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400_000).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if ms > 365 * 86_400_000 {
        return Err(ApiError::InvalidRequest(format!("{text:?} is longer than a year")));
    }
    Ok(Duration::from_millis(ms))
}

/// The `Idempotency-Key` header, checked (a start's, an event's).
pub(crate) fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().map_err(|_| ApiError::InvalidRequest("the Idempotency-Key is not text".into()))?;
    keel_proto::validate_idempotency_key(key).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    Ok(Some(key.to_owned()))
}

/// Compiled input schemas, by their JSON text.
#[derive(Default)]
pub(crate) struct SchemaCache {
    compiled: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for SchemaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchemaCache")
    }
}

impl SchemaCache {
    /// Check `input` against `schema`; a schema that does not compile lets everything through.
    pub(crate) fn check(&self, schema: &serde_json::Value, input: &serde_json::Value) -> Result<(), ApiError> {
        let key = schema.to_string();
        let validator = {
            let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
            match compiled.get(&key) {
                Some(v) => v.clone(),
                None => match jsonschema::options().with_keyword("format", number_format).build(schema) {
                    Ok(v) => {
                        let v = Arc::new(v);
                        if compiled.len() > 1000 {
                            compiled.clear();
                        }
                        compiled.insert(key, v.clone());
                        v
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a workflow's input schema does not compile; not checking inputs");
                        return Ok(());
                    }
                },
            }
        };
        let problems: Vec<String> = validator
            .iter_errors(input)
            .take(5)
            .map(|e| {
                let path = e.instance_path().to_string();
                format!("{}: {e}", if path.is_empty() { "input".to_owned() } else { format!("input{path}") })
            })
            .collect();
        if problems.is_empty() { Ok(()) } else { Err(ApiError::InvalidInput(problems.join("; "))) }
    }
}

/// The integer formats schemars writes for Rust's integer types, with their ranges.
fn integer_range(format: &str) -> Option<(i128, i128)> {
    Some(match format {
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" | "uint" => (0, u32::MAX.into()),
        "uint64" => (0, u64::MAX.into()),
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" | "int" => (i32::MIN.into(), i32::MAX.into()),
        "int64" => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

/// `format` on numbers, as the worker's types read them: `"format": "uint32"`
/// accepts an integer written as one (not `1e2`, which serde reads as a float)
/// within the type's range. Other formats (on strings) are annotations.
struct NumberFormat {
    range: (i128, i128),
    format: String,
}

impl<'i> jsonschema::Keyword<'i> for NumberFormat {
    fn validate(&self, instance: &'i serde_json::Value) -> Result<(), jsonschema::ValidationError<'i>> {
        if self.is_valid(instance) {
            return Ok(());
        }
        Err(jsonschema::ValidationError::custom(format!(
            "{instance} is not a {} (an integer from {} to {}, written without a fraction or exponent)",
            self.format, self.range.0, self.range.1
        )))
    }

    fn is_valid(&self, instance: &'i serde_json::Value) -> bool {
        let serde_json::Value::Number(n) = instance else { return true };
        let value = n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
        value.is_some_and(|v| v >= self.range.0 && v <= self.range.1)
    }
}

struct Annotation;

impl<'i> jsonschema::Keyword<'i> for Annotation {
    fn validate(&self, _: &'i serde_json::Value) -> Result<(), jsonschema::ValidationError<'i>> {
        Ok(())
    }

    fn is_valid(&self, _: &'i serde_json::Value) -> bool {
        true
    }
}

fn number_format<'a>(
    _parent: &'a serde_json::Map<String, serde_json::Value>,
    value: &'a serde_json::Value,
    _path: jsonschema::paths::Location,
) -> Result<Box<dyn for<'i> jsonschema::Keyword<'i>>, jsonschema::ValidationError<'a>> {
    match value.as_str().and_then(|format| Some((format, integer_range(format)?))) {
        Some((format, range)) => Ok(Box::new(NumberFormat { range, format: format.to_owned() })),
        None => Ok(Box::new(Annotation)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_formats_are_checked_as_the_worker_reads_them() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"steps": {"type": "integer", "format": "uint32", "minimum": 0}, "name": {"type": "string", "format": "email"}}
        });
        let cache = SchemaCache::default();
        assert!(cache.check(&schema, &serde_json::json!({"steps": 3, "name": "x"})).is_ok());
        assert!(cache.check(&schema, &serde_json::json!({"steps": 4294967295u64})).is_ok());
        for bad in [
            serde_json::json!({"steps": 1e2}),
            serde_json::json!({"steps": 4294967296u64}),
            serde_json::json!({"steps": 1.5}),
        ] {
            let err = cache.check(&schema, &bad).expect_err("refused");
            assert!(err.to_string().contains("uint32"), "{err}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        for bad in ["", "s", "1.5s", "-1s", "10w", "99999999999999999999s", "400d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
