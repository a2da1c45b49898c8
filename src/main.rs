//! `keel`: the command line of the Keel durable workflow engine.
//!
//! `keel dev` (server + worker in one process), `keel server`, `keel worker`, and
//! the client commands that talk to a running server over HTTP.

mod cli;
mod config;

/// mimalloc instead of glibc's malloc: the server and worker allocate and free many small
/// buffers per request and per step, and glibc's malloc spent a quarter of the process's
/// CPU on them under `keel bench` (perf); mimalloc's thread-local free lists do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Keel: a self-hosted durable workflow engine on Redis.
///
/// Services start workflows over HTTP; workers written in Rust run their steps
/// with retries and timeouts; every step's result is persisted in Redis before
/// the next step starts, so a run survives crashed workers and restarts.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    settings: config::Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an API server and a worker in one process (Redis if configured or
    /// installed, else in memory).
    Dev,
    /// Run the HTTP API, the timer scheduler and the webhook dispatcher.
    Server,
    /// Run a worker with the built-in workflows.
    Worker,
    /// Start a run (and, with --wait, follow it to its end).
    Run(cli::client::RunArgs),
    /// List runs, newest first.
    Runs(cli::client::RunsArgs),
    /// Show a run: status, progress, steps.
    Status(cli::client::IdArgs),
    /// Cancel a run.
    Cancel(cli::client::IdArgs),
    /// Hold a run between steps.
    Pause(cli::client::IdArgs),
    /// Let a paused run go on.
    Resume(cli::client::IdArgs),
    /// Re-run a failed run from its failed step.
    Retry(cli::client::IdArgs),
    /// Send an event to the runs waiting for it.
    Notify(cli::client::NotifyArgs),
    /// The deployment's webhook and call signing keys: list, rotate, retire.
    Keys(cli::client::KeysArgs),
    /// Schedules: list, show, set, pause, resume, trigger, delete.
    Schedules(cli::client::SchedulesArgs),
    /// Flow-control keys: list, show, set, clear, pause, resume.
    Flow(cli::client::FlowArgs),
    /// Measure throughput, latency and cost per step.
    Bench(cli::bench::BenchArgs),
    /// Run a mixed workload under injected faults and check that nothing acknowledged was lost.
    Chaos(cli::chaos::ChaosArgs),
}

/// Settings only a worker reads: `keel server` (which runs only the runs of
/// Upstash SDK apps, the `upstash` workflow, under its lease and concurrency)
/// refuses them as flags and says so when they come from the environment.
const WORKER_ONLY: [(&str, &str); 1] = [("chaos_workflow", "KEEL_CHAOS_WORKFLOW")];

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if matches!(cli.command, Command::Server) {
        for (id, env) in WORKER_ONLY {
            match matches.value_source(id) {
                Some(ValueSource::CommandLine) => {
                    eprintln!(
                        "keel: keel server runs no workflows of its own and would ignore --{}; give it to keel worker (or keel dev)",
                        id.replace('_', "-")
                    );
                    return std::process::ExitCode::from(2);
                }
                Some(ValueSource::EnvVariable) => {
                    eprintln!(
                        "keel: note: keel server ignores {env} (it runs no workflows of its own; workers read it)"
                    );
                }
                _ => {}
            }
        }
    }
    let settings = match cli.settings.layered() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("keel: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("keel: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev => cli::serve::dev(settings).await.map(|()| 0),
            Command::Server => cli::serve::server(settings).await.map(|()| 0),
            Command::Worker => cli::serve::worker(settings).await.map(|()| 0),
            Command::Run(args) => cli::client::run(args).await,
            Command::Runs(args) => cli::client::runs(args).await.map(|()| 0),
            Command::Status(args) => cli::client::status(args).await.map(|()| 0),
            Command::Cancel(args) => cli::client::action(args, "cancel").await.map(|()| 0),
            Command::Pause(args) => cli::client::action(args, "pause").await.map(|()| 0),
            Command::Resume(args) => cli::client::action(args, "resume").await.map(|()| 0),
            Command::Retry(args) => cli::client::action(args, "retry").await.map(|()| 0),
            Command::Notify(args) => cli::client::notify(args).await.map(|()| 0),
            Command::Keys(args) => cli::client::keys(args).await.map(|()| 0),
            Command::Schedules(args) => cli::client::schedules(args).await.map(|()| 0),
            Command::Flow(args) => cli::client::flow(args).await.map(|()| 0),
            Command::Bench(args) => cli::bench::bench(args).await,
            Command::Chaos(args) => cli::chaos::chaos(args).await,
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("keel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
