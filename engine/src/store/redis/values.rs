//! Decoding the nested replies of scripts and stream commands.

use std::collections::HashMap;

use redis::Value;

use crate::{Error, Result};

pub(super) fn array(value: &Value) -> Result<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(&[]),
        other => Err(Error::corrupt("redis reply", format!("expected an array, got {other:?}"))),
    }
}

pub(super) fn opt_text(value: &Value) -> Result<Option<String>> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => {
            String::from_utf8(bytes.clone()).map(Some).map_err(|e| Error::corrupt("redis reply", e))
        }
        Value::SimpleString(s) => Ok(Some(s.clone())),
        Value::Okay => Ok(Some("OK".into())),
        Value::Int(n) => Ok(Some(n.to_string())),
        other => Err(Error::corrupt("redis reply", format!("expected text, got {other:?}"))),
    }
}

pub(super) fn text(value: &Value) -> Result<String> {
    opt_text(value)?.ok_or_else(|| Error::corrupt("redis reply", "expected text, got nil"))
}

pub(super) fn int(value: &Value) -> Result<i64> {
    match value {
        Value::Int(n) => Ok(*n),
        other => text(other)?.parse().map_err(|e| Error::corrupt("redis reply", e)),
    }
}

/// A flat `[field, value, field, value…]` array (HGETALL, stream entry fields).
pub(super) fn pairs(value: &Value) -> Result<HashMap<String, String>> {
    if let Value::Map(items) = value {
        return items.iter().map(|(k, v)| Ok((text(k)?, text(v)?))).collect();
    }
    let items = array(value)?;
    items.chunks(2).map(|pair| Ok((text(&pair[0])?, text(pair.get(1).unwrap_or(&Value::Nil))?))).collect()
}
