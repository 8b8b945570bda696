//! `chorus-node`: see `chorus-node --help`.

use chorus_node::config::{Cli, CliCommand};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
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
            let out = serde_json::json!({ "digest": store.digest()?, "applied_index": store.applied_index()? });
            println!("{out}");
            Ok(())
        }
        CliCommand::Run(config) => {
            // Blocking threads serve RocksDB reads and argon2; a small pool bounds memory (each
            // thread brings its own malloc arena) without starving the 2-core machines we target.
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(16).build()?;
            rt.block_on(chorus_node::run(config, shutdown_signal()))?;
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
