//! Test support: a private `redis-server` on a free port, killed when dropped;
//! a private Redis Cluster of such servers; a server that speaks only TLS.
//!
//! Used by Keel's own tests and available to workflow authors who want to test
//! against a real Redis. Never touches the shared 6379 and never skips: a missing
//! `redis-server` is a loud failure.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private Redis of either kind, as end-to-end tests see it.
pub trait TestRedis: Send + Sync {
    /// What `KEEL_REDIS_URL` takes (seed URLs, comma-separated, for a cluster).
    fn url(&self) -> String;
    /// Every node's URL, to look at keys node by node.
    fn node_urls(&self) -> Vec<String>;
    fn is_cluster(&self) -> bool;
}

impl TestRedis for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn node_urls(&self) -> Vec<String> {
        vec![RedisServer::url(self)]
    }
    fn is_cluster(&self) -> bool {
        false
    }
}

impl TestRedis for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }
    fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
    fn is_cluster(&self) -> bool {
        true
    }
}

/// A `redis-server` child process on 127.0.0.1 and a free port.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    /// Listens with TLS only: readiness is an open port, not a plain PING.
    tls: bool,
}

impl RedisServer {
    /// Start one with no persistence. Panics (on purpose: tests must not skip)
    /// when `redis-server` is not on PATH or does not come up within 10 s.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start one with extra `redis-server` arguments (`["--appendonly", "yes"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_inner(extra, None)
    }

    /// Start one that speaks only TLS (`--port 0 --tls-port <free>`), with this
    /// certificate, key and CA (PEM files); `clients` is `--tls-auth-clients`
    /// (`yes`, `no` or `optional`).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path, clients: &str) -> Self {
        let tls = [
            "--tls-cert-file".to_owned(),
            cert.display().to_string(),
            "--tls-key-file".to_owned(),
            key.display().to_string(),
            "--tls-ca-cert-file".to_owned(),
            ca.display().to_string(),
            "--tls-auth-clients".to_owned(),
            clients.to_owned(),
        ];
        Self::start_inner(&[], Some(&tls))
    }

    fn start_inner(extra: &[&str], tls: Option<&[String]>) -> Self {
        let mut last_error = String::new();
        for _ in 0..5 {
            match Self::try_start(extra, tls) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn try_start(extra: &[&str], tls: Option<&[String]>) -> Result<Self, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let dir = std::env::temp_dir().join(format!("keel-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let listen: Vec<String> = match tls {
            None => vec!["--port".into(), port.to_string()],
            Some(tls) => ["--port".into(), "0".into(), "--tls-port".into(), port.to_string()]
                .into_iter()
                .chain(tls.iter().cloned())
                .collect(),
        };
        let mut args: Vec<String> = listen
            .into_iter()
            .chain(
                ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                    .into_iter()
                    .chain(["--maxmemory-policy", "noeviction", "--dir", &dir.to_string_lossy()])
                    .map(str::to_owned),
            )
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = spawn(&args)?;
        let mut server = Self { child, port, dir, args, tls: tls.is_some() };
        server.wait_ready(Duration::from_secs(10))?;
        Ok(server)
    }

    /// SIGKILL the server: no shutdown save, no goodbye to clients.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same port and data directory (after [`kill`](Self::kill)),
    /// so it reloads whatever it persisted.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may linger for a moment after the kill.
            let started = spawn(&self.args).and_then(|child| {
                self.child = child;
                self.wait_ready(Duration::from_secs(5))
            });
            match started {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis-server did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("redis-server exited at start with {status} (port {} taken?)", self.port));
            }
            if (self.tls && accepts(self.port)) || ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server on port {} did not answer PING within {within:?}", self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        if self.tls { format!("rediss://127.0.0.1:{}", self.port) } else { format!("redis://127.0.0.1:{}", self.port) }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A unique key namespace, so tests sharing a server never see each other's keys.
    pub fn unique_namespace(label: &str) -> String {
        format!("t-{label}-{}", uuid::Uuid::now_v7().simple())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(args: &[String]) -> Result<Child, String> {
    Command::new("redis-server").args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            panic!("redis-server is not on PATH: the Redis tests need it (apt-get install redis-server)")
        }
        format!("spawning redis-server: {e}")
    })
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A private Redis Cluster on 127.0.0.1: `masters` masters splitting the 16,384
/// slots, each with `replicas` replicas; every node killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    /// Every node, masters first (in slot order), then replicas.
    pub nodes: Vec<RedisServer>,
    masters: usize,
}

impl RedisCluster {
    /// Start the nodes and join them with `redis-cli --cluster create`; returns
    /// once every node reports `cluster_state:ok`. Panics (tests must not skip)
    /// when `redis-server` or `redis-cli` is missing or the cluster does not form.
    pub fn start(masters: usize, replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                // The bus port on a free port of its own: the default (port +
                // 10,000) is out of range for ports above 55,535, or taken.
                let bus = free_port().expect("a free port").to_string();
                let args = ["--cluster-enabled", "yes", "--cluster-port", &bus, "--cluster-node-timeout", "1000"];
                RedisServer::start_with(&args)
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("redis-cli is needed for the cluster tests (apt-get install redis-tools): {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes, masters };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Every node's URL, comma-separated: what `KEEL_REDIS_URL` takes.
    pub fn url(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }

    /// How many masters it was started with.
    pub fn masters(&self) -> usize {
        self.masters
    }

    /// A node's `redis-cli` answer (`CLUSTER INFO`, `INFO replication`...).
    pub fn cli(&self, node: usize, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.nodes[node].port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until every running node says `cluster_state:ok` and agrees on
    /// who serves every slot.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = (0..self.nodes.len())
                .filter(|&i| ping(self.nodes[i].port()))
                .all(|i| self.cli(i, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not reach cluster_state:ok within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The indexes of the nodes that are masters now (after failovers too).
    pub fn current_masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| ping(self.nodes[i].port()))
            .filter(|&i| self.cli(i, &["ROLE"]).starts_with("master"))
            .collect()
    }
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate
/// it signed, as PEM files in a directory removed when dropped.
#[derive(Debug)]
pub struct TestCertificates {
    pub dir: PathBuf,
}

impl TestCertificates {
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let dir = std::env::temp_dir().join(format!("keel-certs-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).expect("write PEM");

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca.distinguished_name.push(rcgen::DnType::CommonName, "Keel test CA");
        write("ca.pem", ca.self_signed(&ca_key).expect("CA certificate").pem());
        let issuer = Issuer::new(ca, ca_key);

        for (name, names) in [("server", vec!["127.0.0.1".to_owned(), "localhost".to_owned()]), ("client", vec![])] {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name.push(rcgen::DnType::CommonName, format!("keel test {name}"));
            write(&format!("{name}.pem"), params.signed_by(&key, &issuer).expect("certificate").pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Self { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// A TLS-only redis-server with these certificates; `clients` is
    /// `--tls-auth-clients` (`yes`: a client certificate is required).
    pub fn server(&self, clients: &str) -> RedisServer {
        RedisServer::start_tls(&self.server_cert(), &self.server_key(), &self.ca(), clients)
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
