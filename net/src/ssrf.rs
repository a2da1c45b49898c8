//! Outbound requests (webhooks, and later the agent's calls) go only where they
//! may: the host is resolved, every address is checked (no private, loopback,
//! link-local, multicast or reserved addresses, in any IPv4-mapped or embedded
//! form), the connection is pinned to a checked address, and no redirect is
//! followed. Private targets can be allowed by configuration (tests need loopback).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?} is not an http(s) URL")]
    NotHttp(String),
    /// (The address stays out of the message: it would tell a caller what an
    /// internal name resolves to.)
    #[error(
        "{url:?} points to a private, loopback or reserved address; Keel does not send requests there (set KEEL_ALLOW_PRIVATE_TARGETS to allow it)"
    )]
    Private { url: String, addr: IpAddr },
    #[error("{url:?} could not be resolved: {reason}")]
    Unresolvable { url: String, reason: String },
}

/// Whether an address is one Keel must not call unless allowed.
pub fn is_forbidden(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (18..20).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let segments = ip.segments();
    // IPv4-translated (::ffff:0:a.b.c.d, RFC 2765) carries an IPv4 address too.
    if segments[..4] == [0, 0, 0, 0] && segments[4] == 0xffff && segments[5] == 0 {
        let v4 =
            Ipv4Addr::new((segments[6] >> 8) as u8, segments[6] as u8, (segments[7] >> 8) as u8, segments[7] as u8);
        return forbidden_v4(v4);
    }
    // Local-use NAT64 (64:ff9b:1::/48, RFC 8215) translates into the operator's own
    // network; Teredo (2001::/32) tunnels to an obfuscated IPv4 address; the
    // discard prefix (100::/64) goes nowhere: refuse them whole.
    if (segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 1)
        || (segments[0] == 0x2001 && segments[1] == 0)
        || (segments[0] == 0x100 && segments[1..4] == [0, 0, 0])
    {
        return true;
    }
    // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if segments[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return forbidden_v4(embedded(segments[6], segments[7]));
    }
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0, 0, 0, 0] {
        return forbidden_v4(embedded(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return forbidden_v4(embedded(segments[1], segments[2]));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        || (segments[0] == 0x2001 && segments[1] == 0xdb8)
}

/// `url` with any credentials in it (`user:password@`) replaced by `***`, for
/// showing back or logging.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("***");
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Not a URL: show nothing of what could be a secret after a scheme.
        Err(_) => url.split_once('@').map_or_else(|| url.to_owned(), |(_, rest)| format!("***@{rest}")),
    }
}

/// A URL checked for sending: where to connect.
#[derive(Debug, Clone)]
pub struct CheckedTarget {
    pub url: reqwest::Url,
    pub host: String,
    pub addr: SocketAddr,
}

/// Resolve and check `url`; with `allow_private`, any address goes.
pub async fn check(url: &str, allow_private: bool) -> Result<CheckedTarget, TargetError> {
    let shown = redact_url(url);
    let parsed = reqwest::Url::parse(url).map_err(|_| TargetError::NotHttp(shown.clone()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(TargetError::NotHttp(shown));
    }
    let url = shown.as_str();
    let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host.as_str(), port)))
            .await
            .map_err(|_| TargetError::Unresolvable { url: url.to_owned(), reason: "DNS timed out".into() })?
            .map_err(|e| TargetError::Unresolvable { url: url.to_owned(), reason: e.to_string() })?
            .collect(),
    };
    let first =
        *addrs.first().ok_or_else(|| TargetError::Unresolvable { url: url.to_owned(), reason: "no address".into() })?;
    if !allow_private {
        // Every address must pass: a name that resolves to one public and one
        // private address is refused (no DNS-rebinding games).
        if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
            return Err(TargetError::Private { url: url.to_owned(), addr: bad.ip() });
        }
    }
    Ok(CheckedTarget { url: parsed, host, addr: first })
}

/// A client that connects to the checked address only and follows no redirect.
pub fn pinned_client(target: &CheckedTarget, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .resolve(&target.host, target.addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_addresses_are_forbidden_in_every_form() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2001:db8::1",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "64:ff9b:1::7f00:1",
            "64:ff9b:1:ffff::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "feff::1",
            "100::1",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad} must be forbidden");
        }
        for good in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:93.184.216.34"] {
            assert!(!is_forbidden(good.parse().unwrap()), "{good} is public");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_after_resolution() {
        assert!(matches!(check("ftp://example.com/x", false).await, Err(TargetError::NotHttp(_))));
        assert!(matches!(check("not a url", false).await, Err(TargetError::NotHttp(_))));
        assert!(matches!(check("http://169.254.169.254/latest", false).await, Err(TargetError::Private { .. })));
        assert!(matches!(check("http://[::ffff:127.0.0.1]:8080/", false).await, Err(TargetError::Private { .. })));
        assert!(matches!(check("http://localhost:1/", false).await, Err(TargetError::Private { .. })));
        // The refusal does not say what the name resolved to.
        let refused = check("http://localhost:1/", false).await.unwrap_err().to_string();
        assert!(!refused.contains("127.0.0.1") && !refused.contains("::1"), "{refused}");
        let allowed = check("http://127.0.0.1:9/hook", true).await.unwrap();
        let secret = check("http://user:hunter2@localhost:1/", false).await.unwrap_err().to_string();
        assert!(!secret.contains("hunter2") && !secret.contains("user"), "{secret}");
        assert_eq!(redact_url("https://u:p@example.com/x?y=1"), "https://***@example.com/x?y=1");
        assert_eq!(redact_url("https://example.com/x"), "https://example.com/x");
        assert_eq!(allowed.addr, "127.0.0.1:9".parse().unwrap());
    }
}
