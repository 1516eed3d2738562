//! A throwaway `redis-server` of a test's own, on a free port, for fault tests that kill or
//! restart Redis without disturbing the shared one.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// A `redis-server` child process; killed when dropped.
pub struct ThrowawayRedis {
    port: u16,
    child: Option<Child>,
    /// More `redis-server` arguments (cluster mode, persistence).
    extra: Vec<String>,
    /// Where a durable one keeps its append-only file across restarts, and a TLS one its
    /// certificates.
    dir: Option<tempfile::TempDir>,
    /// `rediss` when it speaks TLS only.
    scheme: &'static str,
}

/// Returns a port that is free, and whose cluster bus port (port + 10,000) is free too, both
/// below Linux's ephemeral range (32768 and up). A port the kernel hands out for port 0 lies in
/// that range, where the test's own client sockets can take it before `redis-server` binds it,
/// and its bus port can fall past 65535.
fn free_port() -> u16 {
    let bindable = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..1000 {
        let port = 12_000 + (uuid::Uuid::new_v4().as_u128() % 10_000) as u16;
        if bindable(port) && bindable(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair below the ephemeral range")
}

impl ThrowawayRedis {
    /// Starts one without persistence on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// Starts one that loses no acknowledged write: an append-only file synced on every write
    /// (`appendfsync always`), kept in a directory of its own across [`ThrowawayRedis::restart`].
    pub fn start_durable() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let extra = ["--appendonly", "yes", "--appendfsync", "always", "--dir"]
            .into_iter()
            .map(String::from)
            .chain([dir.path().to_string_lossy().into_owned()])
            .collect();
        let mut redis = Self { port: free_port(), child: None, extra, dir: Some(dir), scheme: "redis" };
        redis.restart();
        redis
    }

    /// Starts one that speaks TLS only, with a certificate for `localhost` and `127.0.0.1`
    /// signed by a certificate authority of its own (see [`ThrowawayRedis::ca_file`]), made
    /// with `openssl` (installed by `scripts/test`).
    pub fn start_tls() -> Self {
        let certs = crate::tls::TestCertificates::generate();
        let (ca, cert, key) = (certs.ca_path(), certs.cert_path(), certs.key_path());
        let port = free_port();
        let extra = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ]
        .map(String::from)
        .to_vec();
        let mut redis = Self { port, child: None, extra, dir: Some(certs.into_dir()), scheme: "rediss" };
        redis.restart();
        redis
    }

    fn start_with(extra: Vec<String>) -> Self {
        let mut redis = Self { port: free_port(), child: None, extra, dir: None, scheme: "redis" };
        redis.restart();
        redis
    }

    /// Returns its URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// Returns the certificate (PEM) of the authority that signed a TLS one's certificate.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        let dir = self.dir.as_ref().filter(|_| self.scheme == "rediss")?;
        Some(dir.path().join("ca.crt"))
    }

    /// Kills it (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port: empty, or from its append-only file when durable.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command (RESP written by hand) and returns the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).expect("send");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut reply = [0u8; 4096];
        let n = stream.read(&mut reply).unwrap_or(0);
        String::from_utf8_lossy(&reply[..n]).into_owned()
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of throwaway primaries (no replicas), the slots split evenly between them;
/// every node is killed when dropped.
pub struct ThrowawayCluster {
    nodes: Vec<ThrowawayRedis>,
    _dir: tempfile::TempDir,
}

impl ThrowawayCluster {
    /// Starts `n` cluster-enabled servers, gives each its share of the 16384 slots, introduces
    /// them to each other and waits until the cluster reports `ok` everywhere.
    pub fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let nodes: Vec<ThrowawayRedis> = (0..n)
            .map(|i| {
                let conf = dir.path().join(format!("nodes-{i}.conf"));
                ThrowawayRedis::start_with(vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    conf.to_string_lossy().into_owned(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ])
            })
            .collect();
        let share = 16384 / n;
        for (i, node) in nodes.iter().enumerate() {
            let first = i * share;
            let last = if i + 1 == n { 16383 } else { first + share - 1 };
            let reply = node.command(&["CLUSTER", "ADDSLOTSRANGE", &first.to_string(), &last.to_string()]);
            assert!(reply.starts_with("+OK"), "CLUSTER ADDSLOTSRANGE: {reply}");
        }
        for node in &nodes[1..] {
            let reply = nodes[0].command(&["CLUSTER", "MEET", "127.0.0.1", &node.port.to_string()]);
            assert!(reply.starts_with("+OK"), "CLUSTER MEET: {reply}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = nodes.iter().all(|node| {
                let info = node.command(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains(&format!("cluster_known_nodes:{n}"))
            });
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster did not form");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes, _dir: dir }
    }

    /// Returns the `redis+cluster://` URL listing every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Returns the nodes, in slot order (node `i` owns the `i`-th share of the slots).
    pub fn nodes(&self) -> &[ThrowawayRedis] {
        &self.nodes
    }

    /// Returns the hash slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        let reply = self.nodes[0].command(&["CLUSTER", "KEYSLOT", key]);
        reply.trim().trim_start_matches(':').parse().expect("CLUSTER KEYSLOT answers a number")
    }

    /// Returns which node owns `slot`.
    pub fn owner_of(&self, slot: u16) -> usize {
        (usize::from(slot) / (16384 / self.nodes.len())).min(self.nodes.len() - 1)
    }

    /// Moves `slot` with its keys from its owner to node `to`, as `redis-cli --cluster reshard`
    /// does: importing and migrating states, `MIGRATE` of every key, then the new owner
    /// announced to every node.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.owner_of(slot);
        let id = |node: &ThrowawayRedis| bulk_strings(&node.command(&["CLUSTER", "MYID"])).remove(0);
        let (from_id, to_id) = (id(&self.nodes[from]), id(&self.nodes[to]));
        let slot = slot.to_string();
        let ok = |reply: String| assert!(reply.starts_with("+OK"), "{reply}");
        ok(self.nodes[to].command(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]));
        ok(self.nodes[from].command(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]));
        loop {
            let keys = bulk_strings(&self.nodes[from].command(&["CLUSTER", "GETKEYSINSLOT", &slot, "20"]));
            if keys.is_empty() {
                break;
            }
            let port = self.nodes[to].port.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            ok(self.nodes[from].command(&migrate));
        }
        for node in &self.nodes {
            ok(node.command(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]));
        }
    }
}

/// The bulk strings of a RESP reply (an array of them, or one).
fn bulk_strings(reply: &str) -> Vec<String> {
    let mut lines = reply.split("\r\n");
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with('$') && line != "$-1" {
            out.extend(lines.next().map(str::to_owned));
        }
    }
    out
}
