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
                None => match jsonschema::validator_for(schema) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
