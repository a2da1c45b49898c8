//! What every view shares: the fragment response, status badges, times,
//! durations and JSON values (large ones collapsed, fetched on demand).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use keel_proto::RunStatus;
use maud::{Markup, html};

/// Values longer than this (as JSON text) are shown collapsed and fetched on demand.
pub(super) const INLINE_VALUE_CHARS: usize = 400;

/// A view, as the shell swaps it in. Never cached: it is live data.
pub(super) fn fragment(markup: Markup) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], markup.into_string())
        .into_response()
}

pub(super) fn status_badge(status: RunStatus) -> Markup {
    html! { span class={ "badge s-" (status) } { (status) } }
}

/// A step's status (`completed`, `retrying`, …) as a badge.
pub(super) fn step_badge(status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } { (status) } }
}

/// Unix ms as UTC `YYYY-MM-DD HH:MM:SS`; the script turns `<time>` into local time.
pub(super) fn time(ms: u64) -> Markup {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let text = format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    html! { time datetime=(ms) { (text) " UTC" } }
}

/// Days since 1970-01-01 as (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A duration for people: `850 ms`, `3.2 s`, `4 min 05 s`, `2 h 10 min`.
pub(super) fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// A JSON value: inline when short, else a collapsed block whose text the
/// script fetches from `fetch_path` when it is opened.
pub(super) fn value(v: &serde_json::Value, fetch_path: &str) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    if text.len() <= INLINE_VALUE_CHARS {
        return html! { pre class="value" { (text) } };
    }
    html! {
        details class="value" data-fetch=(fetch_path) {
            summary { (format!("{} bytes of JSON: show", text.len())) }
            pre { "…" }
        }
    }
}

/// `?a=b&c=d` from pairs, leaving out empty values.
pub(super) fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| format!("{k}={}", encode(v)))).collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

/// Percent-encoding for a query value or a path segment.
pub(super) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A problem shown in place of a view (bad filter, missing run).
pub(super) fn problem(title: &str, detail: &str) -> Markup {
    html! { div class="problem" role="alert" { strong { (title) } " " (detail) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_durations_and_queries_read_as_people_write_them() {
        assert_eq!(time(0).into_string(), r#"<time datetime="0">1970-01-01 00:00:00 UTC</time>"#);
        assert!(time(1_733_140_000_000).into_string().contains("2024-12-02 11:46:40 UTC"));
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(3_200), "3.2 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(duration(7_800_000), "2 h 10 min");
        assert_eq!(
            query(&[("status", Some("failed")), ("label", Some("team=a b")), ("x", None)]),
            "?status=failed&label=team%3Da%20b"
        );
        assert_eq!(query(&[("status", Some(""))]), "");
    }

    #[test]
    fn a_large_value_is_collapsed_and_fetched_on_demand() {
        let small = value(&serde_json::json!({"a": 1}), "/x").into_string();
        assert!(small.starts_with("<pre"), "{small}");
        let big = value(&serde_json::json!("x".repeat(1000)), "/ui/f/runs/r/value?step=a").into_string();
        assert!(big.contains("data-fetch=\"/ui/f/runs/r/value?step=a\""), "{big}");
        assert!(!big.contains(&"x".repeat(1000)), "the value itself is not in the page");
    }
}
