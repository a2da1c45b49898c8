//! Where the store's connections come from: one Redis or a Redis Cluster, over
//! TCP or TLS.
//!
//! [`RedisTarget`] is what a deployment says (seed URLs, cluster or not, TLS
//! files); [`Endpoint`] opens connections to it; [`Conn`] is one connection of
//! either kind behind the `redis` crate's `ConnectionLike`, so the store's
//! commands and scripts do not care which. On a cluster the `redis` crate's
//! cluster client routes each command and script by its first key (every
//! script's KEYS[1] is its partition prefix), follows MOVED/ASK and reconnects.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::{Error, Result};

/// How long an ordinary command or script may take before the call fails.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Blocking reads on a cluster connection: the store's watchdog bounds them.
const BLOCKING_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The Redis a store connects to.
#[derive(Clone, Default)]
pub struct RedisTarget {
    /// `redis://` or `rediss://` URLs: one node, or seed nodes of a cluster.
    pub urls: Vec<String>,
    /// Cluster mode: `Some` says so; `None` asks the first node (`INFO cluster`),
    /// and several URLs mean a cluster.
    pub cluster: Option<bool>,
    /// PEM file of the CA that signed the server's certificate (else the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for servers that ask for one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may carry passwords: show hosts only.
        let hosts: Vec<String> = self.urls.iter().map(|url| redact(url)).collect();
        f.debug_struct("RedisTarget")
            .field("urls", &hosts)
            .field("cluster", &self.cluster)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

impl RedisTarget {
    /// One URL, or seed URLs separated by commas (`redis://a:7000,redis://b:7001`).
    pub fn parse(urls: &str) -> Result<Self> {
        let urls: Vec<String> =
            urls.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect();
        if urls.is_empty() {
            return Err(Error::Invalid("no Redis URL given (KEEL_REDIS_URL)".into()));
        }
        Ok(Self { urls, ..Self::default() })
    }

    fn tls(&self) -> bool {
        self.urls.iter().any(|url| url.starts_with("rediss://"))
    }

    /// The certificates to use, when any file is given.
    fn certificates(&self) -> Result<Option<redis::TlsCertificates>> {
        if self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none() {
            return Ok(None);
        }
        if !self.tls() {
            return Err(Error::Invalid(
                "KEEL_REDIS_CA_FILE / KEEL_REDIS_CERT_FILE / KEEL_REDIS_KEY_FILE need a rediss:// URL".into(),
            ));
        }
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| Error::Invalid(format!("cannot read the {what} {}: {e}", path.display())))
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert, "client certificate")?,
                client_key: read(key, "client key")?,
            }),
            (None, None) => None,
            _ => {
                return Err(Error::Invalid(
                    "a client certificate needs both KEEL_REDIS_CERT_FILE and KEEL_REDIS_KEY_FILE".into(),
                ));
            }
        };
        let root_cert = self.ca_file.as_ref().map(|ca| read(ca, "CA certificate")).transpose()?;
        Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
    }

    fn single_client(&self, url: &str) -> Result<Client> {
        Ok(match self.certificates()? {
            Some(certs) => Client::build_with_tls(url, certs)?,
            None => Client::open(url)?,
        })
    }
}

/// Opens connections to one Redis or to a cluster.
#[derive(Clone)]
#[allow(clippy::large_enum_variant, reason = "one per store, cloned rarely")]
pub(super) enum Endpoint {
    Single(Client),
    Cluster(Box<ClusterClients>),
}

#[derive(Clone)]
pub(super) struct ClusterClients {
    /// Commands and scripts: a short response timeout.
    shared: ClusterClient,
    /// Blocking reads, each on a connection of its own.
    blocking: ClusterClient,
    /// One client per seed node, for the pub/sub subscriber (a PUBLISH
    /// reaches every node of a cluster, so any node will do).
    seeds: Vec<Client>,
}

impl Endpoint {
    pub async fn open(target: &RedisTarget) -> Result<Self> {
        let cluster = match target.cluster {
            Some(cluster) => cluster,
            None if target.urls.len() > 1 => true,
            None => cluster_enabled(&target.single_client(&target.urls[0])?).await?,
        };
        if !cluster {
            if target.urls.len() > 1 {
                return Err(Error::Invalid(
                    "several Redis URLs are seeds of a cluster; KEEL_REDIS_CLUSTER=false takes one URL".into(),
                ));
            }
            return Ok(Self::Single(target.single_client(&target.urls[0])?));
        }
        let infos: Vec<ConnectionInfo> =
            target.urls.iter().map(|url| url.as_str().into_connection_info()).collect::<redis::RedisResult<_>>()?;
        let builder = |response_timeout: Duration| {
            let mut builder = ClusterClient::builder(infos.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(response_timeout)
                .retries(6);
            if let Some(certs) = target.certificates()? {
                builder = builder.certs(certs);
            }
            Ok::<_, Error>(builder.build()?)
        };
        Ok(Self::Cluster(Box::new(ClusterClients {
            shared: builder(RESPONSE_TIMEOUT)?,
            blocking: builder(BLOCKING_RESPONSE_TIMEOUT)?,
            seeds: target.urls.iter().map(|url| target.single_client(url)).collect::<Result<_>>()?,
        })))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The connection commands and scripts share: reconnects by itself.
    pub async fn shared(&self) -> Result<Conn> {
        Ok(match self {
            Self::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(6);
                Conn::Managed(client.get_connection_manager_with_config(config).await?)
            }
            Self::Cluster(clients) => Conn::Cluster(clients.shared.get_async_connection().await?),
        })
    }

    /// A connection of its own, for one blocking read at a time.
    pub async fn dedicated(&self, response_timeout: Duration) -> Result<Conn> {
        Ok(match self {
            Self::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                Conn::Direct(client.get_multiplexed_async_connection_with_config(&config).await?)
            }
            Self::Cluster(clients) => Conn::Cluster(clients.blocking.get_async_connection().await?),
        })
    }

    /// Clients to subscribe through, tried in turn.
    pub fn subscribers(&self) -> Vec<Client> {
        match self {
            Self::Single(client) => vec![client.clone()],
            Self::Cluster(clients) => clients.seeds.clone(),
        }
    }
}

/// Whether the node says it is part of a cluster.
async fn cluster_enabled(client: &Client) -> Result<bool> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut conn).await?;
    Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
}

/// One connection to a single Redis or to a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Managed(ConnectionManager),
    Direct(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// For a pooled blocking connection: this call's timeout. (A cluster
    /// connection keeps its long one; the store's watchdog bounds the call.)
    pub fn set_response_timeout(&mut self, timeout: Duration) {
        if let Self::Direct(conn) = self {
            conn.set_response_timeout(timeout);
        }
    }
}

/// Requests this process sent to Redis (commands, script calls, pipelines:
/// one each), for `keel_redis_round_trips_total` (see counters.rs).
pub(super) static ROUND_TRIPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self {
            Self::Managed(conn) => conn.req_packed_command(cmd),
            Self::Direct(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self {
            Self::Managed(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Direct(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(conn) => conn.get_db(),
            Self::Direct(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
