//! The `livy-proxy` binary: parses configuration, starts discovery and the
//! listeners, and turns any start-up error into one line and an exit code
//! (2 for configuration, 1 for anything else). `anyhow` lives only here.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use livy_proxy::config::{Cli, Config};
use livy_proxy::discovery;
use livy_proxy::http_proxy::{HttpProxy, HttpSettings};
use livy_proxy::tcp_proxy::{TcpProxy, TcpSettings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// mimalloc: fewer cycles per allocation than glibc's malloc on the
/// per-request path (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap's message names the flag; keep it to one line, like
            // every other configuration error.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "livy-proxy: config error: {}",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("livy-proxy: config error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("livy-proxy: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log_level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    // One worker: a current-thread runtime (no work-stealing, no cross-
    // thread wake-ups), the shape of HAProxy's single-threaded event loop.
    let mut runtime = match config.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all();
    let runtime = runtime.build().context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "binding the HTTP listener on {} (key `listen`)",
            config.listen
        )
    })?;
    tracing::info!(
        listen = %listener.local_addr().unwrap_or(config.listen),
        zookeeper = config.zookeeper.as_deref().unwrap_or("(none: probing the node list)"),
        leader_path = %config.leader_path,
        nodes = config.nodes.len(),
        "livy-proxy {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let thrift_listener = match config.thrift_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("binding the JDBC listener on {addr} (key `thrift-listen`)")
        })?),
        None => None,
    };
    // Thousands of JDBC and HTTP connections need file descriptors: raise
    // the soft limit to the hard one, as servers commonly do.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    let discovery = discovery::start(config.discovery(), shutdown.child_token());
    let leader = discovery.leader.clone();
    let proxy = HttpProxy::with_hints(
        HttpSettings::from(&config),
        config.nodes.clone(),
        leader.clone(),
        discovery.hints,
    );
    let http = tokio::spawn(proxy.serve(listener, shutdown.child_token()));
    let jdbc = thrift_listener.map(|l| {
        tracing::info!(listen = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), thrift_port = config.thrift_port, "JDBC listener ready");
        let tcp = TcpProxy::new(TcpSettings::from(&config), config.nodes.clone(), leader);
        tokio::spawn(tcp.serve(l, shutdown.child_token()))
    });

    wait_for_signal().await;
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    shutdown.cancel();
    let drained = async {
        let _ = http.await;
        if let Some(jdbc) = jdbc {
            let _ = jdbc.await;
        }
    };
    tokio::select! {
        _ = drained => {}
        _ = wait_for_signal() => tracing::warn!("second signal: exiting now"),
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; only the process being killed stops it");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
