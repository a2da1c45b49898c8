//! One HTTP request of an `upstash` run: a delivery to the app, a call to a
//! third party, a failure callback. Only to targets the SSRF rules allow, on a
//! connection pinned to the checked address, never following redirects; the
//! app's requests signed with `Upstash-Signature`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How `upstash` runs send their requests.
#[derive(Debug, Clone)]
pub struct Deliverer {
    /// The QStash signing keys (current, next): requests are signed with the current one.
    keys: Arc<RwLock<(String, String)>>,
    pub allow_private_targets: bool,
    /// How long the app (or a called service) has to answer.
    pub timeout: Duration,
    /// The largest response body read (a larger one is cut there).
    pub max_response_bytes: usize,
}

/// A request to make.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Sign it (requests to the app; not calls to third parties).
    pub sign: bool,
    /// How long it may take (None: the deliverer's timeout).
    pub timeout: Option<Duration>,
}

/// A response.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub status: u16,
    /// Lower-case names, every value.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Vec<u8>,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a request got no response.
#[derive(Debug, Clone)]
pub struct NoResponse {
    pub message: String,
    /// Trying again cannot help (the target is forbidden, the method invalid).
    pub terminal: bool,
}

impl Deliverer {
    pub fn new(keys: (String, String), allow_private_targets: bool) -> Self {
        Self {
            keys: Arc::new(RwLock::new(keys)),
            allow_private_targets,
            timeout: Duration::from_secs(300),
            max_response_bytes: 1 << 20,
        }
    }

    /// The signing keys (current, next).
    pub fn keys(&self) -> (String, String) {
        self.keys.read().map(|k| k.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    pub async fn send(&self, request: &Outgoing) -> Result<Incoming, NoResponse> {
        let fail = |message: String, terminal: bool| NoResponse { message, terminal };
        let target = keel_worker::net::check(&request.url, self.allow_private_targets).await.map_err(|e| {
            let terminal = !matches!(e, keel_worker::net::TargetError::Unresolvable { .. });
            fail(e.to_string(), terminal)
        })?;
        let client = keel_worker::net::pinned_client(&target, request.timeout.unwrap_or(self.timeout))
            .map_err(|e| fail(e.to_string(), false))?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| fail(format!("{:?} is not an HTTP method", request.method), true))?;
        let mut builder = client.request(method, target.url.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if request.sign {
            let key = self.keys().0;
            builder = builder
                .header("upstash-signature", keel_worker::net::qstash::sign_now(&key, &request.url, &request.body));
        }
        let mut response = builder.body(request.body.clone()).send().await.map_err(|e| {
            fail(format!("{} {} failed: {e}", request.method, keel_worker::net::redact_url(&request.url)), false)
        })?;
        let status = response.status().as_u16();
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers.entry(name.as_str().to_owned()).or_default().push(value);
        }
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| fail(format!("reading the answer failed: {e}"), false))?
        {
            let room = self.max_response_bytes.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
        Ok(Incoming { status, headers, body })
    }
}
