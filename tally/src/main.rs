//! The `tally` binary: parses flags, sets up logging, runs the command, and
//! maps the result to an exit code (0 success, 1 runtime failure, 2 invalid
//! flags, configuration or input).
//!
//! - `cli`: the flags; `settings`: configuration layered from file,
//!   environment and `--set`; `error`: the one error type and its exit code.
//! - `cmd`: one module per command (`cmd::worker`, `cmd::backfill`, …).
//! - `render`: how commands print jobs, progress and differing totals.
//! - `http`: `/metrics` and `/readyz` for the services; `signals`: SIGTERM.
//! - `build`: version, revision and `tally_build_info`; `progress`: progress
//!   bars on a terminal, plain lines otherwise; `reference`: the book's
//!   generated reference pages.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod build;
mod cli;
mod cmd;
mod error;
mod http;
mod progress;
mod reference;
mod render;
mod settings;
mod signals;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_level.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Colour only for a person at a terminal, never into log files.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object per line, the event's fields beside `message`.
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).init(),
    }
    cli.log_format.install();
    build::register();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}
