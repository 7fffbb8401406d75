//! The `livy-proxy` binary: parses configuration, maps signals onto
//! [`app::Control`], runs [`app::run`], and turns the outcome into an exit
//! code: 2 for configuration, 1 for a start-up failure or a drain that had
//! to cut requests, 0 after a clean drain. `anyhow` lives only here.

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use livy_proxy::app::{self, Control, Ended, Listeners, Reloader, SetLogLevel};
use livy_proxy::config::{Config, Source};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

/// mimalloc: fewer cycles per allocation than glibc's malloc on the
/// per-request path (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_e` (the
/// version libmimalloc-sys builds by default; its Rust bindings do not
/// name this option). An index into a C enum: check it against
/// `include/mimalloc.h` when Cargo.lock moves libmimalloc-sys.
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;

/// Makes memory the proxy frees leave its RSS. On Linux mimalloc commits
/// its arenas up front and then purges freed pages by resetting them
/// (`MADV_FREE`), which the kernel takes back only under memory pressure:
/// the RSS, and a container's memory graph, keep every past peak. With
/// arenas committed on demand a purge decommits, and the RSS follows what
/// is in use: with 10,000 parked idle connections 90 MiB instead of
/// 137 (docs/benchmarks.md). Run by the loader before any other constructor
/// (the lowest `.init_array` priority), so before mimalloc reserves its
/// first arena: in `main` it would be too late.
#[used]
#[unsafe(link_section = ".init_array.00101")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

extern "C" fn tune_allocator() {
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: mimalloc's documented option call, with a valid option and
    // value, made before any other thread exists.
    unsafe { mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) }
}

/// The command line: the program's name and help around every
/// configuration key ([`Source`], declared in the library).
#[derive(Clone, Debug, Parser)]
#[command(
    name = "livy-proxy",
    version,
    about = "Makes an Apache Livy HA set look like one stable endpoint: follows the \
             active server in ZooKeeper and forwards HTTP and JDBC to it.",
    long_about = None
)]
struct Cli {
    #[command(flatten)]
    source: Source,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("health") {
        return livy_proxy::health::main(&args[2..]);
    }
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
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
    let file = cli.source.config.clone();
    let config = match Config::load(file.as_deref(), &matches) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("livy-proxy: config error: {e}");
            return ExitCode::from(2);
        }
    };
    #[cfg(feature = "kerberos")]
    if let Some(k) = &config.discovery.zk_security.kerberos {
        // SAFETY: no thread has been started yet (the runtime is built in
        // `run`, below), so nothing reads the environment meanwhile.
        if let Err(e) = unsafe { livy_proxy::discovery::zk_kerberos::install(k) } {
            eprintln!("livy-proxy: config error: key `{}`: {e}", e.key);
            return ExitCode::from(2);
        }
    }
    let set_log_level = init_logging(&config);
    let reloader = Reloader {
        load: Box::new(move || Config::load(file.as_deref(), &matches)),
        set_log_level,
    };
    match run(config, reloader) {
        Ok(Ended::Clean) => ExitCode::SUCCESS,
        Ok(Ended::Cut) => ExitCode::from(1),
        Err(e) => {
            // A listener's TLS file is a configuration problem: exit 2, one line.
            if let Some(app::AppError::Tls(tls)) = e.downcast_ref::<app::AppError>() {
                eprintln!("livy-proxy: config error: {tls}");
                return ExitCode::from(2);
            }
            tracing::error!("{e:#}");
            eprintln!("livy-proxy: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Logging to stderr, text or JSON; `RUST_LOG` wins over `log-level` at
/// start. Returns how a reload sets the level.
fn init_logging(config: &Config) -> SetLogLevel {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.as_str()));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    if config.log.json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .init();
    }
    // RUST_LOG, when set, stays in force: a reload applies `log-level`
    // only to a proxy whose level came from it.
    let from_env = std::env::var_os("RUST_LOG").is_some();
    Box::new(move |level: &str| {
        if from_env {
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| format!("key `log-level`: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

fn run(config: Config, reloader: Reloader) -> anyhow::Result<Ended> {
    // The main runtime runs the accept loops, discovery, the admin
    // listener and reloads; connections are served on `worker-threads`
    // threads of their own (`shard`). It has two threads, so that a call
    // that blocks one (zookeeper-client renews Kerberos tickets inline,
    // for as long as the KDC takes) leaves accepting and `/readyz`
    // running. With `worker-threads = 1` everything runs on one thread,
    // as asked.
    let mut runtime = match app::serving_threads(config.runtime.worker_threads) {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2).thread_name("livy-proxy-main");
            b
        }
    };
    runtime.enable_all();
    let runtime = runtime.build().context("starting the async runtime")?;
    let ended = runtime.block_on(async {
        let listeners = Listeners::bind(&config)?;
        // Thousands of JDBC and HTTP connections need file descriptors:
        // raise the soft limit to the hard one, as servers commonly do.
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
        }
        let control = Control::default();
        tokio::spawn(signals(control.clone()));
        Ok(app::run(config, listeners, control, Some(reloader)).await)
    });
    // The drain is over. A blocking task still running (a Kerberos login
    // waiting for an unreachable KDC, a DNS lookup) would otherwise hold
    // the exit, a forced one included, for as long as it takes.
    runtime.shutdown_background();
    ended
}

/// SIGTERM or SIGINT begins the drain, a second one forces the end; SIGHUP
/// reloads.
async fn signals(control: Control) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot install signal handlers; only the process being killed stops it");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                control.reload.notify_one();
                continue;
            }
        }
        if control.drain.is_cancelled() {
            tracing::warn!("second signal: exiting now");
            control.force.cancel();
            return;
        }
        tracing::info!("signal: draining");
        control.drain.cancel();
    }
}
