//! `custody approvals`, `custody contain` and `custody actions`: held
//! calls answered, measures applied and lifted, and what playbooks did.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::ServerArgs;
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// The calls held for approval now.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// The server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held call: the gateway forwards it and its caller gets
    /// the real result.
    Approve {
        /// The approval's id (from `list`).
        id: String,
        /// The argument digest you reviewed; the approval is refused if the
        /// held call's differs.
        #[arg(long)]
        digest: Option<String>,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Refuse a held call: its caller gets the refusal.
    Deny {
        /// The approval's id (from `list`).
        id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn approvals(command: ApprovalsCommand) -> anyhow::Result<()> {
    match command {
        ApprovalsCommand::List { server, json } => {
            let answer = Client::new(&server)?.get("/v1/approvals", &[]).await?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            println!(
                "{:<32} {:<20} {:<24} {:<40} {:<20} REASON",
                "ID", "EXPIRES", "CALL", "CHAIN", "DIGEST"
            );
            for held in answer["approvals"]
                .as_array()
                .context("the server's answer has no `approvals` list")?
            {
                println!(
                    "{:<32} {:<20} {:<24} {:<40} {:<20} {}",
                    text(&held["id"]),
                    text(&held["expires_at"]).get(..19).unwrap_or("-"),
                    format!("{} {}", text(&held["server"]), text(&held["target"])),
                    chain(&held["chain"]),
                    text(&held["digest"]).get(..16).unwrap_or("-"),
                    text(&held["reason"]),
                );
            }
            Ok(())
        }
        ApprovalsCommand::Approve {
            id,
            digest,
            reason,
            server,
        } => {
            let mut body = json!({"decision": "approve"});
            if let Some(digest) = digest {
                body["digest"] = Value::from(digest);
            }
            if let Some(reason) = reason {
                body["reason"] = Value::from(reason);
            }
            let answer = Client::new(&server)?
                .post_json(&format!("/v1/approvals/{}", segment(&id)), &body)
                .await?;
            println!("approved: event {}", text(&answer["event"]));
            Ok(())
        }
        ApprovalsCommand::Deny { id, reason, server } => {
            let mut body = json!({"decision": "deny"});
            if let Some(reason) = reason {
                body["reason"] = Value::from(reason);
            }
            let answer = Client::new(&server)?
                .post_json(&format!("/v1/approvals/{}", segment(&id)), &body)
                .await?;
            println!("refused: event {}", text(&answer["event"]));
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ContainCommand {
    /// The measures in force.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// The server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Kill a run and every run beneath it (`run:ID`), or everything an
    /// identity does (`agent:ID`, `principal:ID`, `credential:ID`).
    Kill(Apply),
    /// Refuse every call of an identity or run.
    Quarantine(Apply),
    /// Hold every call of an identity or run for approval.
    Hold(Apply),
    /// Lift a measure by its id.
    Lift {
        /// The measure's id (from `list`).
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// A measure to apply.
#[derive(Debug, clap::Args)]
pub struct Apply {
    /// `run:ID`, `agent:ID`, `principal:ID` or `credential:ID`.
    scope: String,
    /// Why: the refused caller and the record see it.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn contain(command: ContainCommand) -> anyhow::Result<()> {
    let (kind, apply) = match command {
        ContainCommand::List { server, json } => {
            let answer = Client::new(&server)?.get("/v1/containment", &[]).await?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            println!(
                "{:<36} {:<10} {:<40} {:<28} REASON",
                "ID", "KIND", "SCOPE", "BY"
            );
            for measure in answer["measures"]
                .as_array()
                .context("the server's answer has no `measures` list")?
            {
                println!(
                    "{:<36} {:<10} {:<40} {:<28} {}",
                    text(&measure["id"]),
                    text(&measure["kind"]),
                    text(&measure["scope"]),
                    text(&measure["by"]),
                    text(&measure["reason"]),
                );
            }
            return Ok(());
        }
        ContainCommand::Lift { id, server } => {
            let answer = Client::new(&server)?
                .delete(&format!("/v1/containment/{}", segment(&id)))
                .await?;
            println!(
                "lifted: {} on {}",
                text(&answer["lifted"]["kind"]),
                text(&answer["lifted"]["scope"])
            );
            return Ok(());
        }
        ContainCommand::Kill(apply) => ("kill", apply),
        ContainCommand::Quarantine(apply) => ("quarantine", apply),
        ContainCommand::Hold(apply) => ("hold", apply),
    };
    let answer = Client::new(&apply.server)?
        .post_json(
            "/v1/containment",
            &json!({"kind": kind, "scope": apply.scope, "reason": apply.reason}),
        )
        .await?;
    let measure = &answer["measure"];
    let already = if answer["applied"] == true {
        ""
    } else {
        " (already in force)"
    };
    println!(
        "{kind}: {} as measure {}{already}",
        text(&measure["scope"]),
        text(&measure["id"])
    );
    Ok(())
}

/// `custody actions`.
#[derive(Debug, clap::Args)]
pub struct ActionsArgs {
    /// Only this playbook's actions.
    #[arg(long)]
    playbook: Option<String>,
    /// Only monitor mode's "would have" actions.
    #[arg(long)]
    monitor: bool,
    /// The most to list.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// The server's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn actions(args: ActionsArgs) -> anyhow::Result<()> {
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(playbook) = args.playbook {
        query.push(("playbook", playbook));
    }
    if args.monitor {
        query.push(("monitor", "true".into()));
    }
    let answer = Client::new(&args.server)?
        .get("/v1/actions", &query)
        .await?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    println!(
        "{:<20} {:<24} {:<28} {:<32} {:<9} DETAIL",
        "AT", "PLAYBOOK", "ACTION", "TARGET", "OUTCOME"
    );
    for action in answer["actions"]
        .as_array()
        .context("the server's answer has no `actions` list")?
    {
        let outcome = if action["monitor"] == true {
            format!("{} (monitor)", text(&action["outcome"]))
        } else {
            text(&action["outcome"]).to_owned()
        };
        println!(
            "{:<20} {:<24} {:<28} {:<32} {:<9} {}",
            text(&action["at"]).get(..19).unwrap_or("-"),
            text(&action["playbook"]),
            text(&action["action"]),
            text(&action["target"]),
            outcome,
            text(&action["detail"]),
        );
    }
    Ok(())
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

/// A chain as `root > agent/run > ...`.
fn chain(actor: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(root) = actor["root"]["id"].as_str() {
        parts.push(root.to_owned());
    }
    let agents = actor["agents"].as_array().cloned().unwrap_or_default();
    for agent in agents.iter().chain(std::iter::once(&actor["current"])) {
        match (agent["id"].as_str(), agent["run_id"].as_str()) {
            (Some(id), Some(run)) => parts.push(format!("{id}/{run}")),
            (Some(id), None) => parts.push(id.to_owned()),
            _ => {}
        }
    }
    parts.join(" > ")
}

/// An id as one path segment.
fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Debug, Subcommand)]
pub enum PlaybookCommand {
    /// Check playbook files as `custody serve --playbooks` reads them:
    /// every error with its file and line.
    Validate {
        /// The playbook files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// The server's playbooks, with what each did since it started (and
    /// would have done, in monitor mode).
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// The server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn playbook(command: PlaybookCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        PlaybookCommand::Validate { files } => {
            let mut all = Vec::new();
            let mut failed = false;
            for file in &files {
                let name = file.display().to_string();
                let loaded = std::fs::read_to_string(file)
                    .map_err(|error| format!("{name}: {error}"))
                    .and_then(|text| custody_contain::playbook::parse(&name, &text));
                match loaded {
                    Ok(playbooks) => all.extend(playbooks),
                    Err(error) => {
                        eprintln!("{error}");
                        failed = true;
                    }
                }
            }
            if let Err(error) = custody_contain::playbook::check_unique(&all) {
                eprintln!("{error}");
                failed = true;
            }
            if failed {
                return Ok(std::process::ExitCode::FAILURE);
            }
            let monitor = all
                .iter()
                .filter(|p| p.mode == custody_contain::playbook::Mode::Monitor)
                .count();
            println!(
                "ok: {} playbook(s) in {} file(s), {monitor} in monitor mode",
                all.len(),
                files.len()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        PlaybookCommand::List { server, json } => {
            let answer = Client::new(&server)?.get("/v1/playbooks", &[]).await?;
            if json {
                println!("{answer}");
                return Ok(std::process::ExitCode::SUCCESS);
            }
            println!(
                "{:<32} {:<8} {:>6} {:>6} {:>6} {:>6} {:>7}  DESCRIPTION",
                "PLAYBOOK", "MODE", "FIRED", "DEDUP", "DONE", "WOULD", "FAILED"
            );
            for p in answer["playbooks"]
                .as_array()
                .context("the server's answer has no `playbooks` list")?
            {
                let counts = &p["counts"];
                println!(
                    "{:<32} {:<8} {:>6} {:>6} {:>6} {:>6} {:>7}  {}",
                    text(&p["id"]),
                    text(&p["mode"]),
                    counts["fired"],
                    counts["deduplicated"],
                    counts["done"],
                    counts["would"],
                    counts["failed"],
                    text(&p["description"]),
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}
