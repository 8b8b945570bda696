//! Helpers for multi-process tests and benches: start real `chorus-node` processes on free
//! ports in temp dirs, wait for them on conditions with deadlines, and kill only the
//! processes we started.

mod snapshot;

pub use snapshot::{incompressible, InstallStall};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the `chorus-node` binary: `CHORUS_NODE_BIN`, else found like [`workspace_bin`].
pub fn node_bin() -> PathBuf {
    match std::env::var_os("CHORUS_NODE_BIN") {
        Some(p) => PathBuf::from(p),
        None => workspace_bin("chorus-node"),
    }
}

/// A binary of this workspace, next to (or one level above) the running executable, as cargo
/// lays out tests, examples and binaries.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..2 {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
        dir.pop();
    }
    PathBuf::from(name)
}

/// A running `chorus-node` process, killed (SIGKILL) and reaped on drop.
pub struct NodeProc {
    child: Child,
    /// Its HTTP base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    log: mpsc::Receiver<String>,
}

impl NodeProc {
    /// Starts `chorus-node run` on `data_dir` with HTTP on a free port (the node binds port 0
    /// and reports the address it got, so there is no port race), plus `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> NodeProc {
        Self::start_in(None, data_dir, extra)
    }

    /// Like [`NodeProc::start`], inside network namespace `netns` (`ip netns exec`), with
    /// HTTP on that namespace's loopback.
    pub fn start_in(netns: Option<&str>, data_dir: &Path, extra: &[&str]) -> NodeProc {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(node_bin());
                c
            }
            None => Command::new(node_bin()),
        };
        cmd.args(["run", "--data-dir"]).arg(data_dir).args(["--http", "127.0.0.1:0"]).args(extra);
        Self::spawn(cmd, data_dir)
    }

    /// Starts `chorus-node gateway` in front of the nodes at `nodes` (HTTP base URLs), on a
    /// free port. `data_dir` is only reported back (a gateway keeps no data).
    pub fn gateway(nodes: &[&str], data_dir: &Path) -> NodeProc {
        let nodes: Vec<&str> = nodes.iter().map(|u| u.trim_start_matches("http://")).collect();
        let mut cmd = Command::new(node_bin());
        cmd.args(["gateway", "--listen", "127.0.0.1:0", "--node", &nodes.join(",")]);
        Self::spawn(cmd, data_dir)
    }

    /// Spawns `cmd` (a `chorus-node` subcommand that logs "chorus-node serving ... http=ADDR")
    /// and waits for that line.
    fn spawn(mut cmd: Command, data_dir: &Path) -> NodeProc {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chorus-node");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.split("http=").nth(1).filter(|_| line.contains("chorus-node serving")) {
                        let addr = addr.split_whitespace().next().unwrap_or_default();
                        break format!("http://{addr}");
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("chorus-node did not start in time; its log:\n{}", seen.join("\n"));
                }
            }
        };
        NodeProc { child, url, data_dir: data_dir.to_path_buf(), log: rx }
    }

    /// The node's overlay listen address, once it listens (panics after 30 s).
    pub fn p2p_addr(&self) -> String {
        let url = format!("{}/api/v1/cluster", self.url);
        wait_for("the node's listen address", Duration::from_secs(30), || {
            get_json::<chorus_protocol::api::ClusterView>(&url)?.this.addrs.into_iter().next()
        })
    }

    /// The process id (to read its resource use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (with a deadline) for a clean exit; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "node did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines the node logged so far (after start-up).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A private LAN on this machine: `n` network namespaces, each with one veth into a bridge that
/// lives in a namespace of its own. Nothing touches the machine's real interfaces; multicast
/// (mDNS) crosses the bridge. Needs root and `ip` (iproute2). Everything is deleted on drop.
pub struct Lan {
    /// Namespace names of the hosts.
    pub hosts: Vec<String>,
    /// Each host's address (10.213.0.x).
    pub addrs: Vec<String>,
    bridge_ns: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Lan {
    /// Creates the namespaces (names carry this process id, so runs never collide).
    pub fn new(n: usize) -> Result<Lan, String> {
        let tag = std::process::id();
        let bridge_ns = format!("chorus-br-{tag}");
        let mut lan = Lan { hosts: Vec::new(), addrs: Vec::new(), bridge_ns: bridge_ns.clone() };
        ip(&["netns", "add", &bridge_ns])?;
        let in_br = |args: &[&str]| {
            let mut all = vec!["netns", "exec", bridge_ns.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        in_br(&["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        in_br(&["link", "set", "br0", "up"])?;
        for i in 0..n {
            let host = format!("chorus-h{i}-{tag}");
            let addr = format!("10.213.0.{}", i + 10);
            ip(&["netns", "add", &host])?;
            lan.hosts.push(host.clone());
            lan.addrs.push(addr.clone());
            let (v, b) = (format!("ch{i}v{tag}"), format!("ch{i}b{tag}"));
            // Interface names are at most 15 bytes.
            let (v, b) = (v[..v.len().min(15)].to_owned(), b[..b.len().min(15)].to_owned());
            ip(&["link", "add", &v, "netns", &host, "type", "veth", "peer", "name", &b, "netns", &bridge_ns])?;
            in_br(&["link", "set", &b, "master", "br0"])?;
            in_br(&["link", "set", &b, "up"])?;
            let in_host = |args: &[&str]| {
                let mut all = vec!["netns", "exec", host.as_str(), "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            in_host(&["link", "set", "lo", "up"])?;
            in_host(&["addr", "add", &format!("{addr}/24"), "dev", &v])?;
            in_host(&["link", "set", &v, "multicast", "on"])?;
            in_host(&["link", "set", &v, "up"])?;
            in_host(&["route", "add", "224.0.0.0/4", "dev", &v])?;
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", h]);
        }
        let _ = ip(&["netns", "del", &self.bridge_ns]);
    }
}

/// Sends signal `sig` (`-STOP`, `-CONT`, ...) to process `pid`; panics if `kill` fails.
pub fn signal(sig: &str, pid: u32) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// `GET url` (plain HTTP/1.1 on 127.0.0.1), parsed as JSON. `None` on any failure.
pub fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Option<T> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// A local cluster of `chorus-node` processes: the first listens on a known port, the others
/// bootstrap from it.
pub struct LocalCluster {
    /// Running nodes (`None`: killed). Declared before `dirs`: fields drop in order, so the
    /// nodes are killed before their data dirs are deleted under them.
    pub nodes: Vec<Option<NodeProc>>,
    /// Data dirs (kept across restarts: same dir, same PeerId).
    pub dirs: Vec<tempfile::TempDir>,
    /// The first node's listen address.
    pub seed: String,
    /// Each node's own flags (kept for restarts).
    flags: Vec<Vec<String>>,
}

impl LocalCluster {
    /// Starts `n` nodes, each with `extra` flags.
    pub fn start(n: usize, extra: &[&str]) -> LocalCluster {
        Self::start_each(&vec![&[][..]; n], extra)
    }

    /// Starts one node per entry of `each` with those flags plus `common`. The first node
    /// listens on a port the kernel picks (a port chosen here and passed on could be taken by
    /// another socket before the node binds it); the others bootstrap from its address.
    pub fn start_each(each: &[&[&str]], common: &[&str]) -> LocalCluster {
        // The nodes share this machine's cores, as `chorus-node cluster`'s do.
        let workers = crate::config::shared_worker_threads(each.len()).to_string();
        let shared = ["--worker-threads", workers.as_str()];
        let flags: Vec<Vec<String>> =
            each.iter().map(|f| f.iter().chain(common).chain(&shared).map(|s| s.to_string()).collect()).collect();
        let dirs: Vec<_> = (0..each.len()).map(|_| tempfile::tempdir().expect("temp dir")).collect();
        let mut nodes = Vec::new();
        let mut seed = String::new();
        for (d, f) in dirs.iter().zip(&flags) {
            let mut args = Vec::new();
            if !nodes.is_empty() {
                args.extend(["--bootstrap", seed.as_str()]);
            }
            args.extend(f.iter().map(String::as_str));
            let node = NodeProc::start(d.path(), &args);
            if nodes.is_empty() {
                seed = node.p2p_addr();
            }
            nodes.push(Some(node));
        }
        LocalCluster { dirs, nodes, seed, flags }
    }

    /// Each live node's `/api/v1/cluster`.
    pub fn views(&self) -> Vec<(usize, chorus_protocol::api::ClusterView)> {
        let urls: Vec<(usize, String)> =
            self.nodes.iter().enumerate().filter_map(|(i, n)| Some((i, n.as_ref()?.url.clone()))).collect();
        urls.into_iter().filter_map(|(i, url)| Some((i, get_json(&format!("{url}/api/v1/cluster"))?))).collect()
    }

    /// Node `i`'s `/api/v1/cluster`, if it is up and answers.
    pub fn view(&self, i: usize) -> Option<chorus_protocol::api::ClusterView> {
        get_json(&format!("{}/api/v1/cluster", self.nodes.get(i)?.as_ref()?.url))
    }

    /// Node `i`'s Raft view, if it is up and answers.
    pub fn raft_view(&self, i: usize) -> Option<chorus_protocol::api::RaftView> {
        self.view(i)?.raft
    }

    /// Live node count.
    pub fn live(&self) -> usize {
        self.nodes.iter().flatten().count()
    }

    /// `(coordinator, epoch)` once every live node follows one coordinator at one epoch with
    /// an assignment listing exactly the live nodes.
    pub fn settled(&self) -> Option<(String, u64)> {
        let views = self.views();
        if views.len() != self.live() {
            return None;
        }
        let coordinator = views.first()?.1.coordinator.clone()?;
        let epoch = views[0].1.epoch;
        views
            .iter()
            .all(|(_, v)| {
                v.coordinator.as_deref() == Some(coordinator.as_str())
                    && v.epoch == epoch
                    && v.members.len() == self.live()
                    && v.assignment.as_ref().is_some_and(|a| a.assignment.coordinator == coordinator)
            })
            .then_some((coordinator, epoch))
    }

    /// The Raft leader's node index once every live node names it and it reports `voters`
    /// voters, all holding its whole log.
    pub fn raft_ready(&self, voters: usize) -> Option<usize> {
        let views = self.views();
        let leader = views.first()?.1.raft.as_ref()?.leader.clone()?;
        let all_agree = views.len() == self.live()
            && views.iter().all(|(_, v)| v.raft.as_ref().is_some_and(|r| r.leader.as_ref() == Some(&leader)));
        let (i, lv) = views.iter().find(|(_, v)| v.this.peer_id == leader)?;
        let peers = &lv.raft.as_ref()?.peers;
        (all_agree && peers.iter().filter(|p| p.voter && p.lag == Some(0)).count() == voters).then_some(*i)
    }

    /// Waits for [`LocalCluster::settled`]; panics with every node's log after `timeout`.
    pub fn wait_settled(&self, timeout: Duration) -> (String, u64) {
        self.wait_until("the cluster to settle", timeout, LocalCluster::settled)
    }

    /// Polls `f` until it gives a value; after `timeout` prints every node's log and panics.
    pub fn wait_until<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if Instant::now() > deadline {
                for (i, n) in self.nodes.iter().enumerate() {
                    if let Some(n) = n {
                        eprintln!("--- node {i} log:\n{}", n.log_lines().join("\n"));
                    }
                }
                panic!("timed out waiting for {what}: {:#?}", self.views());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Index of the node with this PeerId.
    pub fn index_of(&self, peer: &str) -> Option<usize> {
        self.dirs.iter().position(|d| crate::overlay::identity::peer_id(d.path()).is_ok_and(|p| p.to_base58() == peer))
    }

    /// `kill -9` node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.kill9();
        }
    }

    /// Restarts node `i` on its data dir, joining through a live node.
    pub fn restart(&mut self, i: usize) {
        let via = self
            .views()
            .into_iter()
            .find_map(|(_, v)| v.this.addrs.first().cloned())
            .unwrap_or_else(|| self.seed.clone());
        let mut args = vec!["--bootstrap", via.as_str()];
        args.extend(self.flags[i].iter().map(String::as_str));
        self.nodes[i] = Some(NodeProc::start(self.dirs[i].path(), &args));
    }
}

mod raft_peer {
    use crate::election::driver::ClusterState;
    use crate::overlay::{self, OverlayConfig};
    use crate::replication::raft_net::node_id;
    use crate::replication::{Replica, ReplicaConfig};
    use crate::storage::raft::RaftNode;
    use crate::storage::Store;
    use libp2p::identity::Keypair;
    use std::sync::Arc;
    use std::time::Duration;

    /// A Raft storage peer in this process: RocksDB in a temp dir, a real libp2p overlay on
    /// 127.0.0.1, `Raft` serving `/chorus/raft/1`. For replication tests and benches.
    pub struct RaftPeer {
        /// The Raft handle.
        pub raft: openraft::Raft<crate::storage::raft::TypeConfig>,
        /// The replica around it (routing, forwarding, reads).
        pub replica: Replica,
        /// Its store.
        pub store: std::sync::Arc<crate::storage::Store>,
        /// Raft node id.
        pub id: u64,
        /// Raft node record.
        pub node: crate::storage::raft::RaftNode,
        /// Overlay listen address.
        pub addr: libp2p::Multiaddr,
        _dir: tempfile::TempDir,
    }

    impl RaftPeer {
        /// Starts one, joining the overlay through `bootstrap`.
        pub async fn start(bootstrap: Vec<libp2p::Multiaddr>) -> RaftPeer {
            Self::start_with(bootstrap, Arc::new(|_| {})).await
        }

        /// A one-voter group (the single-node case), leader already elected.
        pub async fn solo(on_apply: crate::storage::raft::OnApply) -> RaftPeer {
            let p = Self::start_with(vec![], on_apply).await;
            p.raft.initialize(std::collections::BTreeMap::from([(p.id, p.node.clone())])).await.unwrap();
            p.raft.wait(Some(Duration::from_secs(10))).current_leader(p.id, "solo leader").await.unwrap();
            p
        }

        /// Starts one whose applied batches go to `on_apply`.
        pub async fn start_with(
            bootstrap: Vec<libp2p::Multiaddr>,
            on_apply: crate::storage::raft::OnApply,
        ) -> RaftPeer {
            Self::start_configured(bootstrap, on_apply, Self::config()).await
        }

        /// The replication settings [`RaftPeer::start`] uses.
        pub fn config() -> ReplicaConfig {
            ReplicaConfig {
                timeout: Duration::from_secs(3),
                snapshot_every: None,
                snapshot_log_bytes: 256 << 20,
                retain_log_bytes: 256 << 20,
                snapshot_chunk: crate::replication::DEFAULT_SNAPSHOT_CHUNK,
                timings: Default::default(),
            }
        }

        /// Starts one with the replication settings `replication`.
        pub async fn start_configured(
            bootstrap: Vec<libp2p::Multiaddr>,
            on_apply: crate::storage::raft::OnApply,
            replication: ReplicaConfig,
        ) -> RaftPeer {
            let key = Keypair::generate_ed25519();
            let me = key.public().to_peer_id();
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let cfg = OverlayConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                bootstrap,
                mdns: false,
                election_timeout: Duration::from_secs(2),
            };
            let (client, mut events, raft_rx, event_loop) = overlay::new(key, cfg).unwrap();
            tokio::spawn(event_loop.run());
            let c2 = client.clone();
            let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let mut addr_tx = Some(addr_tx);
                while let Some(ev) = events.recv().await {
                    match ev {
                        overlay::Event::Listening(a) => {
                            if let Some(tx) = addr_tx.take() {
                                let _ = tx.send(a);
                            }
                        }
                        overlay::Event::Gossip { id, propagation, .. } => {
                            c2.validate(id, propagation, libp2p::gossipsub::MessageAcceptance::Accept).await
                        }
                        _ => {}
                    }
                }
            });
            let id = node_id(&me);
            let cluster = Arc::new(ClusterState::default());
            let replica =
                Replica::start(me, store.clone(), client, raft_rx, cluster, on_apply, replication).await.unwrap();
            let raft = replica.raft();
            let addr = addr_rx.await.unwrap();
            RaftPeer {
                raft,
                replica,
                store,
                id,
                node: RaftNode { peer_id: me.to_base58(), addrs: vec![addr.to_string()] },
                addr,
                _dir: dir,
            }
        }
    }
}
pub use raft_peer::RaftPeer;
