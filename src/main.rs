//! `keel`: the command line of the Keel durable workflow engine.
//!
//! For now it prints its version and help; `dev`, `server`, `worker` and the run
//! commands arrive with the HTTP API and the worker runtime (see the issues).

use clap::Parser;

/// Keel: a self-hosted durable workflow engine on Redis.
///
/// Services start workflows over HTTP; workers written in Rust run their steps
/// with retries and timeouts; every step's result is persisted in Redis before
/// the next step starts.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!("keel {}: run `keel --help` for the commands", env!("CARGO_PKG_VERSION"));
}
