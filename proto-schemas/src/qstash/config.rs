//! What an `upstash` run keeps from its Init message for every later delivery
//! (the SDK's `WF_TriggerOnConfig`): retries and their delay, the failure
//! callback, flow control, labels and the app's forwarded headers.

use std::collections::BTreeMap;

use super::{RetryDelay, parse_flow_control_value, retry_delay};
use crate::FlowControl;

/// QStash's default number of retries (the SDK omits `Upstash-Retries: 3`).
pub const DEFAULT_RETRIES: u32 = 3;
/// The most retries a run may ask for.
pub const MAX_RETRIES: u32 = 100;

/// Headers never forwarded to the app: hop-by-hop ones, ones that describe a
/// body or connection the app's first request had (the SDK forwards every
/// header of that request), and the ones Keel sets itself on a delivery.
const NOT_FORWARDED: [&str; 16] = [
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "accept-encoding",
    "upstash-signature",
    "upstash-message-id",
    "upstash-retried",
    "upstash-workflow-runid",
    "content-encoding",
];

/// A run's settings, read from its Init headers (lower-case names).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub retries: u32,
    pub retry_delay: Option<RetryDelay>,
    pub failure_url: Option<String>,
    pub failure_retries: u32,
    /// Unprefixed `upstash-failure-callback-forward-*`.
    pub failure_headers: BTreeMap<String, String>,
    pub flow_control: Option<FlowControl>,
    pub label: Option<String>,
    /// Unprefixed `upstash-forward-*` of the Init message, filtered.
    pub forwarded: BTreeMap<String, String>,
}

impl RunConfig {
    /// Read from the Init message's headers. Errors name the header at fault
    /// (the API checks them before a run is made).
    pub fn of(headers: &BTreeMap<String, String>) -> Result<Self, String> {
        let retries = count(headers, "upstash-retries")?.unwrap_or(DEFAULT_RETRIES);
        let retry_delay = match headers.get("upstash-retry-delay") {
            Some(text) => Some(RetryDelay::parse(text).map_err(|e| format!("upstash-retry-delay: {e}"))?),
            None => None,
        };
        let flow_control = match headers.get("upstash-flow-control-key") {
            Some(key) => {
                let value = headers.get("upstash-flow-control-value").map_or("", String::as_str);
                let limits = parse_flow_control_value(value).ok_or_else(|| {
                    format!("upstash-flow-control-value: {value:?} is not `parallelism=N, rate=R, period=P`")
                })?;
                crate::validate_flow_key(key).map_err(|e| format!("upstash-flow-control-key: {e}"))?;
                Some(FlowControl { key: key.clone(), limits })
            }
            None => None,
        };
        Ok(Self {
            retries,
            retry_delay,
            failure_url: headers.get("upstash-failure-callback").cloned(),
            failure_retries: count(headers, "upstash-failure-callback-retries")?.unwrap_or(DEFAULT_RETRIES),
            failure_headers: prefixed(headers, "upstash-failure-callback-forward-"),
            flow_control,
            label: headers.get("upstash-label").cloned(),
            forwarded: prefixed(headers, "upstash-forward-"),
        })
    }

    /// How long to wait before the next attempt after `retried` retries.
    pub fn delay(&self, retried: u32) -> std::time::Duration {
        retry_delay(self.retry_delay.as_ref(), retried)
    }

    /// The app's own forwarded headers, without the SDK's protocol ones (which
    /// each kind of delivery sets for itself).
    pub fn user_headers(&self) -> impl Iterator<Item = (&String, &String)> {
        self.forwarded.iter().filter(|(name, _)| !name.starts_with("upstash-workflow-"))
    }
}

fn count(headers: &BTreeMap<String, String>, name: &str) -> Result<Option<u32>, String> {
    match headers.get(name) {
        None => Ok(None),
        Some(text) => match text.trim().parse::<u32>() {
            Ok(n) if n <= MAX_RETRIES => Ok(Some(n)),
            _ => Err(format!("{name}: {text:?} is not a number of retries from 0 to {MAX_RETRIES}")),
        },
    }
}

/// The headers under `prefix`, the prefix taken off, those never forwarded left out.
pub fn prefixed(headers: &BTreeMap<String, String>, prefix: &str) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(name, value)| name.strip_prefix(prefix).map(|n| (n.to_owned(), value.clone())))
        .filter(|(name, _)| forwardable(name))
        .collect()
}

/// Whether a header may be forwarded to the app.
pub fn forwardable(name: &str) -> bool {
    !name.is_empty() && !NOT_FORWARDED.contains(&name) && !name.starts_with("proxy-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_init_message_gives_the_runs_settings() {
        let config = RunConfig::of(&headers(&[
            ("upstash-retries", "1"),
            ("upstash-retry-delay", "1000 * (1 + retried)"),
            ("upstash-failure-callback", "http://app/fail"),
            ("upstash-failure-callback-forward-upstash-workflow-is-failure", "true"),
            ("upstash-flow-control-key", "openai"),
            ("upstash-flow-control-value", "parallelism=2, rate=10, period=1m"),
            ("upstash-forward-x-tenant", "acme"),
            ("upstash-forward-content-length", "12"),
            ("upstash-forward-upstash-workflow-sdk-version", "1"),
            ("upstash-label", "nightly"),
        ]))
        .unwrap();
        assert_eq!(config.retries, 1);
        assert_eq!(config.delay(1).as_millis(), 2000);
        assert_eq!(config.failure_url.as_deref(), Some("http://app/fail"));
        assert_eq!(config.failure_retries, DEFAULT_RETRIES);
        assert_eq!(config.failure_headers.get("upstash-workflow-is-failure").map(String::as_str), Some("true"));
        let fc = config.flow_control.clone().unwrap();
        assert_eq!((fc.key.as_str(), fc.limits.parallelism, fc.limits.rate), ("openai", Some(2), Some(10)));
        assert_eq!(fc.limits.period.as_deref(), Some("60000ms"));
        assert_eq!(config.forwarded.len(), 2, "content-length is never forwarded: {:?}", config.forwarded);
        assert_eq!(config.user_headers().collect::<Vec<_>>().len(), 1);
        assert_eq!(config.label.as_deref(), Some("nightly"));
        assert_eq!(RunConfig::of(&BTreeMap::new()).unwrap().retries, DEFAULT_RETRIES);
        for bad in [("upstash-retries", "lots"), ("upstash-retry-delay", "pow(")] {
            assert!(RunConfig::of(&headers(&[bad])).is_err(), "{bad:?}");
        }
    }
}
