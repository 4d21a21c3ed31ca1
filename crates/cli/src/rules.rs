//! `custody rules validate` and `custody rules test`: users' own Sigma rules
//! checked before they are deployed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use custody_detect::rules::{self, TESTS_SUFFIX};
use custody_detect::{RuleFile, RuleSet, testing};

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Parse and compile every rule under the paths (files or directories,
    /// read recursively); every error is listed with its file, line and
    /// field.
    Validate {
        /// Rule files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Load the built-in pack too, as `custody serve` does, so that ids
        /// clashing with it are caught.
        #[arg(long)]
        with_builtin: bool,
    },
    /// Run each rule's examples (`<rule>.tests.yml` beside the rule) and
    /// report every case that does not hold.
    Test {
        /// Rule files or directories; examples are found beside the rules.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

pub fn run(command: RulesCommand) -> anyhow::Result<ExitCode> {
    match command {
        RulesCommand::Validate {
            paths,
            with_builtin,
        } => {
            let mut files = if with_builtin {
                custody_detect::builtin::files()
            } else {
                Vec::new()
            };
            files.extend(read(&paths)?);
            Ok(match RuleSet::load(&files) {
                Ok(set) => {
                    println!(
                        "ok: {} detection rule(s) and {} correlation(s) in {} file(s)",
                        set.rules.len(),
                        set.correlations.len(),
                        files.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => report(&errors),
            })
        }
        RulesCommand::Test { paths } => {
            let files = read(&paths)?;
            let set = match RuleSet::load(&files) {
                Ok(set) => set,
                Err(errors) => return Ok(report(&errors)),
            };
            let mut cases = 0;
            let mut failed = 0;
            let mut examples_files = 0;
            for path in examples(&paths)? {
                examples_files += 1;
                let name = path.display().to_string();
                let text =
                    std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                let examples = match testing::parse(&name, &text) {
                    Ok(examples) => examples,
                    Err(error) => {
                        eprintln!("{error}");
                        failed += 1;
                        continue;
                    }
                };
                for outcome in testing::run(&set, &name, &examples) {
                    cases += 1;
                    match outcome.failure {
                        None => println!("ok    {} :: {}", outcome.rule, outcome.case),
                        Some(why) => {
                            failed += 1;
                            println!("FAIL  {} :: {}: {why} ({name})", outcome.rule, outcome.case);
                        }
                    }
                }
            }
            if examples_files == 0 {
                anyhow::bail!("no examples (`*{TESTS_SUFFIX}`) found under the paths given");
            }
            println!("{cases} case(s), {failed} failure(s)");
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<RuleFile>> {
    let mut files = Vec::new();
    for path in paths {
        files.extend(rules::read(path)?);
    }
    if files.is_empty() {
        anyhow::bail!("no rule files (`*.yml`, `*.yaml`) found under the paths given");
    }
    Ok(files)
}

/// Every examples file under `paths`, in name order.
fn examples(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(path: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        if path.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path(), out)?;
            }
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(TESTS_SUFFIX))
        {
            out.push(path.to_owned());
        }
        Ok(())
    }
    let mut out = Vec::new();
    for path in paths {
        // A rule file given alone brings its examples beside it.
        let beside = path
            .to_str()
            .and_then(|p| p.strip_suffix(".yml").or_else(|| p.strip_suffix(".yaml")))
            .map(|stem| PathBuf::from(format!("{stem}{TESTS_SUFFIX}")));
        match beside {
            Some(beside) if path.is_file() => {
                if beside.is_file() {
                    out.push(beside);
                }
            }
            _ => walk(path, &mut out)?,
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn report(errors: &[custody_detect::RuleError]) -> ExitCode {
    for error in errors {
        eprintln!("{error}");
    }
    eprintln!("{} error(s)", errors.len());
    ExitCode::FAILURE
}
