//! LAN demo: a Chorus cluster that finds itself with mDNS, no addresses configured.
//!
//! On this machine it builds a private LAN of network namespaces (root and iproute2 needed;
//! nothing touches the real interfaces), starts one `chorus-node --mdns` per namespace, waits
//! until they agree on a coordinator, prints the cluster, and tears everything down.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! sudo target/release/examples/lan_demo [NODES]
//! ```
//!
//! On a real LAN, run on each machine (no bootstrap address needed):
//!
//! ```text
//! chorus-node run --mdns --listen /ip4/0.0.0.0/tcp/7000 --http 0.0.0.0:8080 --advertise-http <its IP>:8080
//! ```

use chorus_node::testkit::{workspace_bin, Lan, NodeProc};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Parser)]
#[command(about = "mDNS LAN demo: a cluster in network namespaces that finds itself (needs root)")]
struct Args {
    /// Nodes, one per namespace.
    #[arg(default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=32))]
    nodes: u8,
}

fn main() {
    let n = usize::from(<Args as clap::Parser>::parse().nodes);
    let lan = match Lan::new(n) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot build the namespace LAN ({e}); run as root with iproute2 installed");
            std::process::exit(1);
        }
    };
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let nodes: Vec<NodeProc> = (0..n)
        .map(|i| {
            NodeProc::start_in(
                Some(&lan.hosts[i]),
                dirs[i].path(),
                &["--mdns", "--listen", &format!("/ip4/{}/tcp/7000", lan.addrs[i])],
            )
        })
        .collect();
    println!("started {n} nodes with --mdns on 10.213.0.0/24; waiting for them to find each other...");
    let started = Instant::now();
    let cluster = |i: usize, json: bool| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lan.hosts[i]]).arg(workspace_bin("chorus")).args(["--server", &nodes[i].url]);
        if json {
            cmd.arg("--json");
        }
        cmd.arg("cluster").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    loop {
        let views: Vec<serde_json::Value> =
            (0..n).filter_map(|i| serde_json::from_str(&cluster(i, true)).ok()).collect();
        let agreed = views.len() == n
            && views
                .iter()
                .all(|v| v["members"].as_array().is_some_and(|m| m.len() == n) && v["epoch"] == views[0]["epoch"]);
        if agreed {
            println!("cluster formed in {:?}:\n{}", started.elapsed(), cluster(0, false));
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            eprintln!("the nodes did not find each other within 60 s");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "On a real LAN, run on each machine:\n  chorus-node run --mdns --listen /ip4/0.0.0.0/tcp/7000 \\\n    \
         --http 0.0.0.0:8080 --advertise-http <its IP>:8080"
    );
}
