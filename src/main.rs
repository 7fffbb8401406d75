//! The `livy-proxy` binary: parses configuration, starts discovery and the
//! listeners, and turns any start-up error into one line and an exit code.

use std::process::ExitCode;

use clap::Parser;
use livy_proxy::config::{Cli, Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("livy-proxy: config error: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{config:?}");
    ExitCode::SUCCESS
}
