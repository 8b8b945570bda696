//! mDNS discovery: three nodes in three network namespaces on a private bridge find each other
//! with `--mdns` and no `--bootstrap`, and settle on one coordinator and one assignment.
//! (mDNS skips loopback, and test traffic may not leave this machine, hence the namespaces.)
//! Needs root, as CI has.

use chorus_node::testkit::{workspace_bin, Lan, NodeProc};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// `GET /api/v1/cluster` of a node inside `netns`, through the `chorus` CLI run in there.
fn cluster(netns: &str, url: &str) -> Option<Value> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(workspace_bin("chorus"))
        .args(["--server", url, "--json", "cluster"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn three_namespaces_discover_each_other_with_mdns() {
    let lan = Lan::new(3).expect("network namespaces (run as root with iproute2)");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<NodeProc> = lan
        .hosts
        .iter()
        .zip(&lan.addrs)
        .zip(&dirs)
        .map(|((ns, addr), d)| {
            NodeProc::start_in(Some(ns), d.path(), &["--mdns", "--listen", &format!("/ip4/{addr}/tcp/0")])
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<Value> = lan.hosts.iter().zip(&nodes).filter_map(|(ns, n)| cluster(ns, &n.url)).collect();
        let settled = views.len() == 3
            && views.iter().all(|v| v["members"].as_array().is_some_and(|m| m.len() == 3))
            && views.iter().all(|v| v["coordinator"] == views[0]["coordinator"] && v["epoch"] == views[0]["epoch"])
            && !views[0]["coordinator"].is_null();
        if settled {
            let addrs: Vec<&str> = views.iter().filter_map(|v| v["self"]["addrs"][0].as_str()).collect();
            assert!(addrs.iter().all(|a| a.starts_with("/ip4/10.213.0.")), "{addrs:?}");
            break;
        }
        if Instant::now() > deadline {
            for n in &nodes {
                eprintln!("--- {}\n{}", n.url, n.log_lines().join("\n"));
            }
            panic!("no mDNS cluster: {views:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
