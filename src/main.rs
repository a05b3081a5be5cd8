use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

/// lpworker: GPU transcoding and AI inference worker for the Livepeer network.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "LPWORKER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join a go-livepeer orchestrator as a remote transcoder.
    Attach(cli::attach::AttachArgs),
    /// Benchmark this machine: concurrent real-time streams and AI requests.
    Bench(cli::bench::BenchArgs),
    /// Check that a worker serves (grpc.health.v1); exit 0 if it does.
    Health(cli::health::HealthArgs),
    /// Run the orchestrator shim gateways talk to (ticket payments, rounds,
    /// rewards), routing work to `serve` workers; `register`, `bond`, `status`.
    Orchestrator(Box<cli::orchestrator::OrchestratorCmd>),
    /// Redeem an orchestrator's winning tickets from its ticket store with
    /// an account of its own (the orchestrator runs --external-redeemer).
    Redeemer(Box<cli::redeemer::RedeemerArgs>),
    /// Run the stateless gRPC worker (transcoding; AI inference later).
    Serve(cli::serve::ServeArgs),
    /// Transcode one segment or clip into a ladder of renditions.
    Transcode(cli::transcode::TranscodeArgs),
}

fn main() -> Result<()> {
    // Both rustls providers are compiled in (alloy's WebSocket transport
    // brings aws-lc-rs): ring is the one this binary uses everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse_from(cli::normalize_go_flags(std::env::args()));
    match cli.command {
        Command::Attach(args) => {
            cli::init_logging(cli.log_json, "info");
            cli::attach::run(args)
        }
        Command::Bench(args) => {
            cli::init_logging(cli.log_json, "warn");
            cli::bench::run(args)
        }
        Command::Health(args) => {
            cli::init_logging(cli.log_json, "warn");
            cli::health::run(args)
        }
        Command::Orchestrator(args) => {
            cli::init_logging(cli.log_json, "info");
            cli::orchestrator::run(*args)
        }
        Command::Redeemer(args) => {
            cli::init_logging(cli.log_json, "info");
            cli::redeemer::run(*args)
        }
        Command::Serve(args) => {
            cli::init_logging(cli.log_json, "info");
            cli::serve::run(args)
        }
        Command::Transcode(args) => {
            cli::init_logging(cli.log_json, "warn");
            cli::transcode::run(args)
        }
    }
}
