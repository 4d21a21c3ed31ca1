//! Custody's command line.
//!
//! `custody serve` runs the collector and API on the embedded store; the
//! other commands are clients of a running server (`ingest`, `events`,
//! `tail`, `findings`, `baseline`, `lineage`, `graph`, `who`, `wrap`),
//! check rule and policy files on their own (`rules`, `policy`), or manage the local store
//! directly (`token`, which needs access to the data directory, as an
//! administrator of the machine has).

mod baseline;
mod client;
mod config;
mod contain;
mod findings;
mod graph;
mod ingest;
mod lineage;
mod policy;
mod replay;
mod respond;
mod rules;
mod serve;
mod show;
mod token;
mod wrap;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use config::{Config, Listen, ServeArgs};
pub use replay::{Replayed, replay};

/// Identity runtime attribution and containment for AI agents.
#[derive(Debug, Parser)]
#[command(name = "custody", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the collector and API on the embedded store.
    Serve(ServeArgs),
    /// Send events from JSON or NDJSON files (optionally gzipped) to a server.
    Ingest(ingest::IngestArgs),
    /// Query stored events.
    Events(show::EventsArgs),
    /// Follow events live as they are stored.
    Tail(show::TailArgs),
    /// Show the chain of custody of one event: who, through whom, and how
    /// each link is known.
    Lineage(lineage::LineageArgs),
    /// Show a part of the agent graph, with blast radius.
    Graph(graph::GraphArgs),
    /// Show every chain that touched a resource.
    Who(graph::WhoArgs),
    /// List findings (rule hits, correlations), or follow new ones.
    Findings(findings::FindingsArgs),
    /// Show or reset the baselines agent types learned.
    #[command(subcommand)]
    Baseline(baseline::BaselineCommand),
    /// Check Sigma rules and their examples.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// List the calls held for approval, and approve or refuse them.
    #[command(subcommand)]
    Approvals(contain::ApprovalsCommand),
    /// Kill a run, quarantine an identity, hold a run's calls; list and
    /// lift the measures in force.
    #[command(subcommand)]
    Contain(contain::ContainCommand),
    /// What playbooks did, or would have done in monitor mode.
    Actions(contain::ActionsArgs),
    /// Check playbook files, or list the server's playbooks with their
    /// counts.
    #[command(subcommand)]
    Playbook(contain::PlaybookCommand),
    /// Check Cedar policies, and decide recorded events by them.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Manage API tokens in the local store.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run an MCP server over stdio behind the gateway: every call is
    /// decided before the server sees it, and recorded.
    Wrap(wrap::WrapArgs),
    /// Print the JSON Schema of events as stored (or, with --new, as submitted).
    Schema {
        /// The schema of a submitted event, whose receipt fields are optional.
        #[arg(long)]
        new: bool,
    },
}

/// Where a client command finds the server and its token.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "CUSTODY_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    /// The API token; by default, the admin token in the data directory when
    /// it is readable.
    #[arg(long, env = "CUSTODY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The data directory holding `admin.token`, when no token is given.
    #[arg(long, env = "CUSTODY_DATA_DIR", default_value = "./custody-data")]
    pub data_dir: PathBuf,
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one parsed command line, as `custody` does (benchmarks run the
/// client commands in-process through it).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            runtime.block_on(serve::run(Config::load(args)?))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest(args) => runtime.block_on(ingest::run(args)),
        Command::Events(args) => runtime
            .block_on(show::events(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Tail(args) => runtime
            .block_on(show::tail(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Lineage(args) => runtime
            .block_on(lineage::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Graph(args) => runtime
            .block_on(graph::graph(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Who(args) => runtime
            .block_on(graph::who(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Wrap(args) => {
            init_logging();
            let code = runtime.block_on(wrap::run(args));
            // Standard input is read on a blocking thread that cannot be
            // interrupted; the runtime must not wait for it to end.
            runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            code
        }
        Command::Findings(args) => runtime
            .block_on(findings::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Rules(command) => rules::run(command),
        Command::Approvals(command) => runtime
            .block_on(contain::approvals(command))
            .map(|()| ExitCode::SUCCESS),
        Command::Contain(command) => runtime
            .block_on(contain::contain(command))
            .map(|()| ExitCode::SUCCESS),
        Command::Actions(args) => runtime
            .block_on(contain::actions(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Playbook(command) => runtime.block_on(contain::playbook(command)),
        Command::Policy(command) => runtime.block_on(policy::run(command)),
        Command::Baseline(command) => runtime
            .block_on(baseline::run(command))
            .map(|()| ExitCode::SUCCESS),
        Command::Token(command) => token::run(command).map(|()| ExitCode::SUCCESS),
        Command::Schema { new } => {
            let schema = if new {
                custody_event::schema::new_event()
            } else {
                custody_event::schema::runtime_event()
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUSTODY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
