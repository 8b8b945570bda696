//! `chorus-node`: see `chorus-node --help`.

use chorus_node::config::{Cli, CliCommand};
use clap::Parser;

// mimalloc instead of glibc malloc: in the five-node bench glibc's allocator was 13% of the
// profile and its per-thread arenas let a node's peak RSS reach ~400 MiB. With mimalloc every
// node peaked under 100 MiB, and the closed loop ran ~5% faster (nine interleaved pairs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        CliCommand::Id { data_dir } => {
            println!("{}", chorus_node::overlay::identity::peer_id(&data_dir)?);
            Ok(())
        }
        CliCommand::Inspect { data_dir } => {
            let store = chorus_node::storage::Store::open(&data_dir.join("db"))?;
            let out = serde_json::json!({
                "digest": store.digest()?,
                "applied_index": store.applied_index()?,
                "chats": store.chat_digests()?,
                "rows": store.row_counts()?,
                "raft_meta_keys": store.raft_meta_keys()?,
            });
            println!("{out}");
            Ok(())
        }
        CliCommand::Cluster { nodes, data_dir, http_port, p2p_port, gateway_port } => {
            local_cluster(nodes, &data_dir, http_port, p2p_port, gateway_port)
        }
        CliCommand::Gateway { listen, nodes } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                chorus_node::gateway::serve(listener, nodes, shutdown_signal()).await
            })?;
            Ok(())
        }
        CliCommand::Run(config) => {
            // Blocking threads serve RocksDB reads and argon2; a small pool bounds memory (each
            // thread brings its own malloc arena) without starving the 2-core machines we target.
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = config.worker_threads {
                rt.worker_threads(n.into());
            }
            let rt = rt.enable_all().max_blocking_threads(16).build()?;
            rt.block_on(chorus_node::run(*config, shutdown_signal()))?;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `chorus-node cluster`: spawns `nodes` copies of this binary (and a gateway in front of them)
/// and stops them on Ctrl-C.
fn local_cluster(
    nodes: u16,
    data_dir: &std::path::Path,
    http_port: u16,
    p2p_port: u16,
    gateway_port: u16,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let exe = std::env::current_exe().context("locate chorus-node")?;
    let seed = format!("/ip4/127.0.0.1/tcp/{p2p_port}");
    let mut children = Vec::new();
    for i in 0..nodes {
        let dir = data_dir.join(format!("node-{i}"));
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("run").arg("--data-dir").arg(&dir);
        cmd.args(["--worker-threads", &chorus_node::config::shared_worker_threads(nodes.into()).to_string()]);
        cmd.args(["--http", &format!("127.0.0.1:{}", http_port + i)]);
        cmd.args(["--listen", &format!("/ip4/127.0.0.1/tcp/{}", p2p_port + i)]);
        if i > 0 {
            cmd.args(["--bootstrap", &seed]);
        }
        if gateway_port != 0 {
            cmd.args(["--trusted-proxy", "127.0.0.1"]);
        }
        children.push(cmd.spawn().with_context(|| format!("start node {i}"))?);
        eprintln!("node {i}: http://127.0.0.1:{}  data {}", http_port + i, dir.display());
    }
    if gateway_port != 0 {
        let all: Vec<String> = (0..nodes).map(|i| format!("127.0.0.1:{}", http_port + i)).collect();
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["gateway", "--listen", &format!("127.0.0.1:{gateway_port}"), "--node", &all.join(",")]);
        children.push(cmd.spawn().context("start the gateway")?);
        eprintln!("gateway: http://127.0.0.1:{gateway_port}  (one address for the whole cluster)");
    }
    eprintln!("cluster of {nodes} running; Ctrl-C stops it");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(shutdown_signal());
    for child in &children {
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    }
    for mut child in children {
        let _ = child.wait();
    }
    Ok(())
}
