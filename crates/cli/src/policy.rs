//! `custody policy validate` and `custody policy test`: a directory of Cedar
//! policies checked, and put to a recorded event, before it is deployed.
//!
//! `test` exits 0 whatever the verdict, so that it can be used to look;
//! with `--expect VERDICT` it is a check, exiting 1 when the verdict is
//! another. Both exit 1 when the policies do not load, each error printed
//! as `file:line: reason`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use custody_engine::{Signal, Verdict};
use custody_event::RuntimeEvent;
use custody_policy::{Policies, PolicyError, RunFacts};

use crate::ServerArgs;
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and validate every `*.cedar` file under a directory against
    /// Custody's schema; every error is listed as `file:line: reason`.
    Validate {
        /// The policy directory.
        dir: PathBuf,
    },
    /// Decide a recorded event by the policies of a directory: the
    /// verdict, each deciding policy with its reason, and the policies'
    /// version. The run's facts are what the flags give (its blast radius
    /// is taken as none). Exits 0 whatever the verdict unless `--expect`
    /// is given.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The policy directory.
    #[arg(long)]
    policies: PathBuf,
    /// A file holding the event: a record as `GET /v1/events/{id}` or
    /// `custody events --json` gives it (`{"seq", "event", "decision"}`),
    /// or the event alone.
    #[arg(
        long,
        conflicts_with = "event_id",
        required_unless_present = "event_id"
    )]
    event: Option<PathBuf>,
    /// The id of a stored event, fetched from the server.
    #[arg(long)]
    event_id: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
    /// A signal raised on the event (`context.signals`; those starting
    /// with `baseline.` are in `context.baseline` too). Repeatable.
    #[arg(long = "signal", value_name = "ID")]
    signals: Vec<String>,
    /// The rule id of an open finding on the run (`context.findings`).
    /// Repeatable.
    #[arg(long = "finding", value_name = "RULE")]
    findings: Vec<String>,
    /// The run's age in seconds (`context.run_age`).
    #[arg(long, default_value_t = 0)]
    run_age: i64,
    /// Exit 1 unless the verdict is this one.
    #[arg(long, value_enum)]
    expect: Option<Expected>,
}

/// The verdicts policies give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Expected {
    Allow,
    Deny,
    /// As the verdict is printed.
    #[value(name = "require_approval", alias = "require-approval")]
    RequireApproval,
}

impl Expected {
    fn verdict(self) -> Verdict {
        match self {
            Expected::Allow => Verdict::Allow,
            Expected::Deny => Verdict::Deny,
            Expected::RequireApproval => Verdict::RequireApproval,
        }
    }
}

pub async fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Validate { dir } => Ok(match load(&dir)? {
            Ok((policies, files)) => {
                println!(
                    "ok: {} policies in {files} file(s), version {}",
                    policies.len(),
                    policies.version()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => report(&dir, &errors),
        }),
        PolicyCommand::Test(args) => test(args).await,
    }
}

async fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let policies = match load(&args.policies)? {
        Ok((policies, _)) => policies,
        Err(errors) => return Ok(report(&args.policies, &errors)),
    };
    let record = match (&args.event, &args.event_id) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading `{}`", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("`{}` is not JSON", path.display()))?
        }
        (None, Some(id)) => {
            Client::new(&args.server)?
                .get(&format!("/v1/events/{id}"), &[])
                .await?
        }
        (None, None) => anyhow::bail!("give --event FILE or --event-id ID"),
    };
    let event = event(record)?;
    let signals: Vec<Signal> = args
        .signals
        .iter()
        .map(|id| Signal::new(id.clone(), "given on the command line"))
        .collect();
    let facts = RunFacts {
        run_age_secs: args.run_age,
        findings: args.findings.clone(),
        ..RunFacts::default()
    };
    let decision = policies.decide_with(&event, &signals, &facts);
    println!("verdict: {}", decision.verdict.as_str());
    for reason in &decision.reasons {
        println!("  {}: {}", reason.id, reason.message);
    }
    println!("policy version: {}", policies.version());
    Ok(match args.expect {
        Some(expected) if expected.verdict() != decision.verdict => {
            eprintln!(
                "expected {}, the policies decided {}",
                expected.verdict().as_str(),
                decision.verdict.as_str()
            );
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    })
}

/// The event of a record, or the event itself.
fn event(mut record: serde_json::Value) -> anyhow::Result<RuntimeEvent> {
    let value = match record.get_mut("event") {
        Some(event) if event.is_object() => event.take(),
        _ => record,
    };
    serde_json::from_value(value).context("the event is not a stored event")
}

/// The policies in `dir`, or an error listing every problem as
/// `file:line: reason` (for `serve --policies` and `wrap --policies`,
/// which stop on it).
pub(crate) fn load_or_explain(dir: &Path) -> anyhow::Result<Policies> {
    load(dir)?.map(|(policies, _)| policies).map_err(|errors| {
        anyhow::anyhow!(
            "{} error(s) in the policies (--policies {}):\n  {}",
            errors.len(),
            dir.display(),
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    })
}

/// The policies of `dir` and how many files hold them, or what is wrong
/// with them. A directory that cannot be read, or holds no policy file, is
/// an error.
fn load(dir: &Path) -> anyhow::Result<Result<(Policies, usize), Vec<PolicyError>>> {
    let files = match custody_policy::read_dir(dir) {
        Ok(files) => files,
        Err(error) => return Ok(Err(vec![error])),
    };
    if files.is_empty() {
        anyhow::bail!("no policy files (`*.cedar`) under `{}`", dir.display());
    }
    Ok(Policies::load(&files).map(|policies| (policies, files.len())))
}

/// Prints each error as `file:line: reason`, the file's path as given.
fn report(dir: &Path, errors: &[PolicyError]) -> ExitCode {
    for error in errors {
        let file = dir.join(&error.file);
        // An error on the directory itself already names it.
        let file =
            if Path::new(&error.file).is_absolute() || error.file == dir.display().to_string() {
                PathBuf::from(&error.file)
            } else {
                file
            };
        let located = PolicyError {
            file: file.display().to_string(),
            ..error.clone()
        };
        eprintln!("{located}");
    }
    eprintln!("{} error(s)", errors.len());
    ExitCode::FAILURE
}
