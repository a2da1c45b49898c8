//! Configuration, layered: built-in defaults < `keel.toml` < `KEEL_*` environment
//! < command-line flags. Clap reads flags and environment (flags win); the file
//! fills in what neither gave.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;

/// Settings shared by `dev`, `server` and `worker`. Each is also a `keel.toml` key
/// (the flag's name with `_` for `-`).
#[derive(Debug, Clone, Default, Args)]
pub struct Settings {
    /// The configuration file [default: ./keel.toml when it exists].
    #[arg(long, env = "KEEL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where the API listens [default: 127.0.0.1:7400].
    #[arg(long, env = "KEEL_ADDR", global = true)]
    pub addr: Option<String>,
    /// The Redis to use (redis:// or rediss://); seed nodes of a cluster separated
    /// by commas; REDIS_URL works too.
    #[arg(long, env = "KEEL_REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// Redis Cluster mode (1/0, true/false) [default: asked of the first node; several URLs mean a cluster].
    #[arg(long, env = "KEEL_REDIS_CLUSTER", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: Option<bool>,
    /// PEM file of the CA that signed the Redis server's certificate (rediss://) [default: the system's roots].
    #[arg(long, env = "KEEL_REDIS_CA_FILE", global = true)]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM file of a client certificate for Redis over TLS (with --redis-key-file).
    #[arg(long, env = "KEEL_REDIS_CERT_FILE", global = true)]
    pub redis_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    #[arg(long, env = "KEEL_REDIS_KEY_FILE", global = true)]
    pub redis_key_file: Option<PathBuf>,
    /// Partitions of a new namespace (1 on a single Redis; e.g. 16 or more on a
    /// cluster); later processes adopt the recorded count [default: 1].
    #[arg(long, env = "KEEL_PARTITIONS", global = true)]
    pub partitions: Option<u16>,
    /// Replicas that must acknowledge each write (WAIT) before it counts; 1 on a
    /// cluster with replicas keeps acknowledged results through a failover [default: 0].
    #[arg(long, env = "KEEL_REDIS_WAIT_REPLICAS", global = true)]
    pub redis_wait_replicas: Option<u32>,
    /// Key prefix, so several deployments can share one Redis [default: keel].
    #[arg(long, env = "KEEL_NAMESPACE", global = true)]
    pub namespace: Option<String>,
    /// Comma-separated full-access bearer tokens (none: auth off).
    #[arg(long, env = "KEEL_API_TOKENS", global = true, hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// Comma-separated read-only bearer tokens.
    #[arg(long, env = "KEEL_READ_TOKENS", global = true, hide_env_values = true)]
    pub read_tokens: Option<String>,
    /// Base64 ed25519 secret key for webhook and call signatures [default: the
    /// deployment's key in Redis, made by its first process].
    #[arg(long, env = "KEEL_SIGNING_KEY", global = true, hide_env_values = true)]
    pub signing_key: Option<String>,
    /// The signing key QStash-protocol deliveries (to Upstash SDK apps) are
    /// signed with: the app's QSTASH_CURRENT_SIGNING_KEY [default: the
    /// deployment's pair in Redis, made by its first process; `GET /v2/keys`].
    #[arg(long, env = "KEEL_QSTASH_CURRENT_SIGNING_KEY", global = true, hide_env_values = true)]
    pub qstash_current_signing_key: Option<String>,
    /// The app's QSTASH_NEXT_SIGNING_KEY (set with the current one).
    #[arg(long, env = "KEEL_QSTASH_NEXT_SIGNING_KEY", global = true, hide_env_values = true)]
    pub qstash_next_signing_key: Option<String>,
    /// How long an Upstash SDK app has to answer a delivery [default: 5m].
    #[arg(long, env = "KEEL_QSTASH_DELIVERY_TIMEOUT", global = true)]
    pub qstash_delivery_timeout: Option<String>,
    /// Refuse to start where Keel would only warn: a KEEL_SIGNING_KEY that
    /// differs from the deployment's key stored in Redis (1/0, true/false, yes/no).
    #[arg(long, env = "KEEL_STRICT", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub strict: Option<bool>,
    /// Allow webhooks and calls to private and loopback addresses (1/0, true/false, yes/no).
    #[arg(long, env = "KEEL_ALLOW_PRIVATE_TARGETS", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_private_targets: Option<bool>,
    /// Register the `chaos` workflow (what `keel chaos` runs) on this worker.
    #[arg(long, env = "KEEL_CHAOS_WORKFLOW", global = true, hide = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub chaos_workflow: Option<bool>,
    /// Request body limit in bytes [default: 1048576].
    #[arg(long, env = "KEEL_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<usize>,
    /// HTTP connections a server keeps open at once; more are closed [default: 16384].
    #[arg(long, env = "KEEL_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,
    /// A client must send a request's head within this, its body within 3x this [default: 10s].
    #[arg(long, env = "KEEL_HEADER_TIMEOUT", global = true)]
    pub header_timeout: Option<String>,
    /// The largest value stored (input, step output, event data, run output), in bytes [default: 1048576].
    #[arg(long, env = "KEEL_MAX_VALUE_BYTES", global = true)]
    pub max_value_bytes: Option<usize>,
    /// How long finished runs are kept [default: 7d].
    #[arg(long, env = "KEEL_RETENTION", global = true)]
    pub retention: Option<String>,
    /// A worker's lease: its runs are taken over this long after it dies [default: 30s].
    #[arg(long, env = "KEEL_LEASE", global = true)]
    pub lease: Option<String>,
    /// Runs a worker executes at once [default: 32].
    #[arg(long, env = "KEEL_CONCURRENCY", global = true)]
    pub concurrency: Option<usize>,
    /// The first webhook retry's delay; later ones double [default: 5s].
    #[arg(long, env = "KEEL_WEBHOOK_RETRY_BASE", global = true)]
    pub webhook_retry_base: Option<String>,
    /// A webhook job a dead dispatcher took comes due again after this [default: 60s].
    #[arg(long, env = "KEEL_WEBHOOK_VISIBILITY", global = true)]
    pub webhook_visibility: Option<String>,
    /// How often a server re-queues runs that lost their task [default: 30s].
    #[arg(long, env = "KEEL_RECONCILE_EVERY", global = true)]
    pub reconcile_every: Option<String>,
    /// Log filter (tracing syntax) [default: info].
    #[arg(long, env = "KEEL_LOG", global = true)]
    pub log: Option<String>,
    /// `pretty` or `json` [default: pretty].
    #[arg(long, env = "KEEL_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
}

/// What `keel.toml` may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    addr: Option<String>,
    redis_url: Option<String>,
    redis_cluster: Option<bool>,
    redis_ca_file: Option<PathBuf>,
    redis_cert_file: Option<PathBuf>,
    redis_key_file: Option<PathBuf>,
    partitions: Option<u16>,
    redis_wait_replicas: Option<u32>,
    namespace: Option<String>,
    api_tokens: Option<String>,
    read_tokens: Option<String>,
    signing_key: Option<String>,
    qstash_current_signing_key: Option<String>,
    qstash_next_signing_key: Option<String>,
    qstash_delivery_timeout: Option<String>,
    allow_private_targets: Option<bool>,
    max_body_bytes: Option<usize>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    max_value_bytes: Option<usize>,
    retention: Option<String>,
    lease: Option<String>,
    concurrency: Option<usize>,
    webhook_retry_base: Option<String>,
    webhook_visibility: Option<String>,
    reconcile_every: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
}

impl Settings {
    /// Fill what flags and environment left unset from the file.
    pub fn layered(mut self) -> anyhow::Result<Self> {
        let path = match &self.config {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from("keel.toml")).filter(|p| p.exists()),
        };
        if let Some(path) = path {
            let file = read_file(&path)?;
            macro_rules! fill {
                ($($field:ident),*) => { $( if self.$field.is_none() { self.$field = file.$field; } )* };
            }
            fill!(
                addr,
                redis_url,
                redis_cluster,
                redis_ca_file,
                redis_cert_file,
                redis_key_file,
                partitions,
                redis_wait_replicas,
                namespace,
                api_tokens,
                read_tokens,
                signing_key,
                qstash_current_signing_key,
                qstash_next_signing_key,
                qstash_delivery_timeout,
                allow_private_targets,
                max_body_bytes,
                max_connections,
                header_timeout,
                max_value_bytes,
                retention,
                lease,
                concurrency,
                webhook_retry_base,
                webhook_visibility,
                reconcile_every,
                log,
                log_format
            );
        }
        if self.redis_url.is_none() {
            self.redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
        }
        Ok(self)
    }

    pub fn addr(&self) -> &str {
        self.addr.as_deref().unwrap_or("127.0.0.1:7400")
    }

    /// The Redis (or cluster) at `urls`, with these settings' cluster mode and TLS files.
    pub fn redis_target(&self, urls: &str) -> anyhow::Result<keel_engine::RedisTarget> {
        let mut target = keel_engine::RedisTarget::parse(urls)?;
        target.cluster = self.redis_cluster;
        target.ca_file.clone_from(&self.redis_ca_file);
        target.cert_file.clone_from(&self.redis_cert_file);
        target.key_file.clone_from(&self.redis_key_file);
        Ok(target)
    }

    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("keel")
    }

    pub fn store_config(&self) -> anyhow::Result<keel_engine::StoreConfig> {
        let mut config = keel_engine::StoreConfig::with_namespace(self.namespace());
        if let Some(retention) = &self.retention {
            config.retention = duration(retention).context("--retention")?;
        }
        if let Some(max) = self.max_value_bytes {
            config.max_value_bytes = max.max(1);
        }
        config.partitions = self.partitions;
        config.wait_replicas = self.redis_wait_replicas.unwrap_or(0);
        Ok(config)
    }

    pub fn lease(&self) -> anyhow::Result<Duration> {
        self.lease.as_deref().map_or(Ok(Duration::from_secs(30)), |l| duration(l).context("--lease"))
    }

    pub fn qstash_delivery_timeout(&self) -> anyhow::Result<Duration> {
        self.qstash_delivery_timeout
            .as_deref()
            .map_or(Ok(Duration::from_secs(300)), |d| duration(d).context("--qstash-delivery-timeout"))
    }

    pub fn webhook_retry_base(&self) -> anyhow::Result<Duration> {
        self.webhook_retry_base
            .as_deref()
            .map_or(Ok(Duration::from_secs(5)), |d| duration(d).context("--webhook-retry-base"))
    }

    pub fn webhook_visibility(&self) -> anyhow::Result<Duration> {
        self.webhook_visibility
            .as_deref()
            .map_or(Ok(Duration::from_secs(60)), |d| duration(d).context("--webhook-visibility"))
    }

    pub fn duties(&self) -> anyhow::Result<keel_engine::Duties> {
        let mut duties = keel_engine::Duties::default();
        if let Some(every) = &self.reconcile_every {
            duties.reconcile_every = duration(every).context("--reconcile-every")?;
        }
        Ok(duties)
    }

    pub fn serve_limits(&self) -> anyhow::Result<keel_api::ServeLimits> {
        let mut limits = keel_api::ServeLimits::default();
        if let Some(max) = self.max_connections {
            limits.max_connections = max.max(1);
        }
        if let Some(timeout) = &self.header_timeout {
            limits.header_timeout = duration(timeout).context("--header-timeout")?.max(Duration::from_millis(100));
            limits.body_timeout = limits.header_timeout * 3;
        }
        Ok(limits)
    }

    pub fn api_config(&self) -> keel_api::ApiConfig {
        let tokens = |list: &Option<String>| -> Vec<keel_api::Secret> {
            list.iter()
                .flat_map(|l| l.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(keel_api::Secret::new)
                .collect()
        };
        keel_api::ApiConfig {
            api_tokens: tokens(&self.api_tokens),
            read_tokens: tokens(&self.read_tokens),
            max_body_bytes: self.max_body_bytes.unwrap_or(1024 * 1024),
            allow_private_targets: self.allow_private_targets.unwrap_or(false),
            ..Default::default()
        }
    }
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid keel.toml", path.display()))
}

/// `250ms`, `30s`, `5m`, `2h`, `7d`.
pub fn duration(text: &str) -> anyhow::Result<Duration> {
    keel_engine::parse_duration(text).map_err(anyhow::Error::msg)
}

/// Logs with tracing: pretty by default, JSON with `--log-format json`.
pub fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(settings.log.as_deref().unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if settings.log_format.as_deref() == Some("json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
