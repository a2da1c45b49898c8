//! One store under test, and the few things a case needs to look at or break
//! below the Store trait.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::testing::{RedisCluster, RedisServer};
use keel_engine::{MemoryStore, RedisStore, Store, StoreConfig};

/// Partitions of the cluster fixture's namespace.
pub const CLUSTER_PARTITIONS: u16 = 8;

pub struct Fixture {
    pub store: Arc<dyn Store>,
    backend: Backend,
}

enum Backend {
    Memory(Arc<MemoryStore>),
    Redis {
        store: Arc<RedisStore>,
        server: RedisServer,
        raw: redis::aio::MultiplexedConnection,
    },
    /// A three-master cluster; `raw` routes by key, `nodes` reach each master.
    Cluster {
        store: Arc<RedisStore>,
        _cluster: RedisCluster,
        raw: redis::cluster_async::ClusterConnection,
        nodes: Vec<redis::aio::MultiplexedConnection>,
    },
}

/// Settings a case may shorten so that expiry happens within the test.
#[derive(Default, Clone)]
pub struct Opts {
    pub retention: Option<Duration>,
    pub lookback: Option<Duration>,
    pub max_deliveries: Option<u32>,
}

impl Opts {
    fn config(&self, namespace: String) -> StoreConfig {
        let mut config = StoreConfig::with_namespace(namespace);
        // Every script checks that it touches only the keys it declared.
        config.check_keys = true;
        if let Some(r) = self.retention {
            config.retention = r;
        }
        if let Some(l) = self.lookback {
            config.event_lookback = l;
        }
        if let Some(m) = self.max_deliveries {
            config.max_deliveries = m;
        }
        config
    }
}

impl Fixture {
    pub fn memory(opts: Opts) -> Self {
        let store = Arc::new(MemoryStore::new(opts.config("mem".into())));
        Self { store: store.clone(), backend: Backend::Memory(store) }
    }

    pub async fn redis(opts: Opts) -> Self {
        let server = RedisServer::start();
        let namespace = RedisServer::unique_namespace("conf");
        let store = Arc::new(RedisStore::connect(&server.url(), opts.config(namespace)).await.expect("connect"));
        let raw = redis::Client::open(server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        Self { store: store.clone(), backend: Backend::Redis { store, server, raw } }
    }

    /// A store on a private three-master Redis Cluster.
    /// The namespace gets 8 partitions: every cross-partition path (events into
    /// every partition, children's outcomes through the relay, merged lists,
    /// claim sweeps) runs in every case.
    pub async fn cluster(opts: Opts) -> Self {
        let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0)).await.expect("cluster");
        let namespace = RedisServer::unique_namespace("conf");
        let config = StoreConfig { partitions: Some(CLUSTER_PARTITIONS), ..opts.config(namespace) };
        let store = Arc::new(RedisStore::connect(&cluster.url(), config).await.expect("connect"));
        assert!(store.is_cluster(), "the store found the cluster");
        let urls: Vec<String> = cluster.nodes.iter().map(RedisServer::url).collect();
        let raw = redis::cluster::ClusterClient::new(urls.clone())
            .expect("urls")
            .get_async_connection()
            .await
            .expect("cluster connection");
        let mut nodes = Vec::new();
        for url in urls {
            nodes.push(redis::Client::open(url).expect("url").get_multiplexed_async_connection().await.expect("node"));
        }
        Self { store: store.clone(), backend: Backend::Cluster { store, _cluster: cluster, raw, nodes } }
    }

    /// Re-create the fixture's store with other options (same backend kind).
    pub async fn with(self, opts: Opts) -> Self {
        match self.backend {
            Backend::Memory(_) => Self::memory(opts),
            Backend::Redis { .. } => Self::redis(opts).await,
            Backend::Cluster { .. } => Self::cluster(opts).await,
        }
    }

    /// Whether tasks are claimed in the order their runs were created: true of
    /// one partition; with several, order holds within each partition only.
    pub fn claims_in_creation_order(&self) -> bool {
        !matches!(self.backend, Backend::Cluster { .. })
    }

    /// How many partitions the store's namespace has.
    pub fn partitions(&self) -> u16 {
        if matches!(self.backend, Backend::Cluster { .. }) { CLUSTER_PARTITIONS } else { 1 }
    }

    pub fn is_redis(&self) -> bool {
        !matches!(self.backend, Backend::Memory(_))
    }

    /// Every Redis key that mentions `needle`, on every node (None for the memory store).
    pub async fn redis_keys_mentioning(&self, needle: &str) -> Option<Vec<String>> {
        let nodes = match &self.backend {
            Backend::Memory(_) => return None,
            Backend::Redis { raw, .. } => vec![raw.clone()],
            Backend::Cluster { nodes, .. } => nodes.clone(),
        };
        let mut keys = Vec::new();
        for mut node in nodes {
            let some: Vec<String> =
                redis::cmd("KEYS").arg(format!("*{needle}*")).query_async(&mut node).await.expect("KEYS");
            keys.extend(some);
        }
        Some(keys)
    }

    /// A command routed by its key (single Redis or cluster); None for memory.
    async fn raw_query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        Some(match &self.backend {
            Backend::Memory(_) => return None,
            Backend::Redis { raw, .. } => cmd.query_async(&mut raw.clone()).await.expect("raw command"),
            Backend::Cluster { raw, .. } => cmd.query_async(&mut raw.clone()).await.expect("raw command"),
        })
    }

    fn redis_store(&self) -> Option<&RedisStore> {
        match &self.backend {
            Backend::Memory(_) => None,
            Backend::Redis { store, .. } | Backend::Cluster { store, .. } => Some(store),
        }
    }

    /// How many tasks of a workflow are delivered and not acked (None for memory).
    pub async fn redis_pending(&self, workflow: &str) -> Option<usize> {
        let store = self.redis_store()?;
        let mut pending = 0;
        for keys in store.partition_keys() {
            let summary: redis::Value =
                self.raw_query(redis::cmd("XPENDING").arg(keys.queue(workflow)).arg(keel_engine::keys::GROUP)).await?;
            if let redis::Value::Array(items) = summary
                && let Some(redis::Value::Int(n)) = items.first()
            {
                pending += *n as usize;
            }
        }
        Some(pending)
    }

    /// The queue and its tasks vanish, as after Redis lost its last writes.
    pub async fn lose_queued_tasks(&self, workflow: &str) {
        match &self.backend {
            Backend::Memory(store) => store.lose_queued_tasks(),
            Backend::Redis { store, .. } | Backend::Cluster { store, .. } => {
                for keys in store.partition_keys() {
                    for priority in keel_engine::proto::PRIORITIES {
                        let queue = keys.queue_at(workflow, priority);
                        let _: Option<()> = self.raw_query(redis::cmd("DEL").arg(queue)).await;
                    }
                }
            }
        }
    }

    /// Everything is gone, as after a Redis restart without persistence.
    pub async fn wipe(&self) {
        match &self.backend {
            Backend::Memory(store) => store.wipe(),
            Backend::Redis { raw, .. } => {
                let mut raw = raw.clone();
                let _: () = redis::cmd("FLUSHALL").query_async(&mut raw).await.expect("FLUSHALL");
            }
            Backend::Cluster { nodes, .. } => {
                for node in nodes {
                    let _: () = redis::cmd("FLUSHALL").query_async(&mut node.clone()).await.expect("FLUSHALL");
                }
            }
        }
    }

    /// The server, for tests that kill it.
    #[allow(dead_code)]
    pub fn redis_server(&self) -> Option<&RedisServer> {
        match &self.backend {
            Backend::Redis { server, .. } => Some(server),
            Backend::Memory(_) | Backend::Cluster { .. } => None,
        }
    }
}
