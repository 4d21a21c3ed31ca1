//! `custody baseline list|show|reset`: what each agent type learned.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::Value;

use crate::ServerArgs;
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Every agent type's baseline, counted.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// The server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One agent type's baseline, in full (`coder`, or `coder@2` for a
    /// versioned type).
    Show {
        /// The agent type.
        agent_type: String,
        #[command(flatten)]
        server: ServerArgs,
        /// The server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Forget an agent type's baseline: it learns again from its next
    /// event.
    Reset {
        /// The agent type.
        agent_type: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run(command: BaselineCommand) -> anyhow::Result<()> {
    match command {
        BaselineCommand::List { server, json } => {
            let answer = Client::new(&server)?.get("/v1/baselines", &[]).await?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            println!(
                "{:<32} {:<9} {:>8} {:>6} {:>7} {:>9} {:>7} {:>11} {:>9}",
                "AGENT TYPE",
                "STATE",
                "EVENTS",
                "TOOLS",
                "SERVERS",
                "RESOURCES",
                "SYSTEMS",
                "TRANSITIONS",
                "PEAK/MIN"
            );
            for b in answer["baselines"]
                .as_array()
                .context("the server's answer has no `baselines` list")?
            {
                println!(
                    "{:<32} {:<9} {:>8} {:>6} {:>7} {:>9} {:>7} {:>11} {:>9}",
                    b["agent_type"].as_str().unwrap_or("-"),
                    b["state"].as_str().unwrap_or("-"),
                    b["events"],
                    b["tools"],
                    b["servers"],
                    b["resources"],
                    b["systems"],
                    b["transitions"],
                    b["peak_calls_per_minute"],
                );
            }
            Ok(())
        }
        BaselineCommand::Show {
            agent_type,
            server,
            json,
        } => {
            let answer = Client::new(&server)?
                .get(&format!("/v1/baselines/{}", path_segment(&agent_type)), &[])
                .await?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            let baseline = &answer["baseline"];
            println!(
                "agent type:      {}",
                answer["agent_type"].as_str().unwrap_or("-")
            );
            println!(
                "state:           {}",
                answer["state"].as_str().unwrap_or("-")
            );
            println!(
                "learning since:  {}",
                answer["learning_since"].as_str().unwrap_or("-")
            );
            if let Some(since) = answer["enforced_since"].as_str() {
                println!("enforced since:  {since}");
            }
            println!("events learned:  {}", answer["events"]);
            println!("peak calls/min:  {}", answer["peak_calls_per_minute"]);
            for dimension in ["tools", "servers", "resources", "systems", "transitions"] {
                let values = list(&baseline[dimension]);
                println!("{dimension} ({}):", values.len());
                for value in values {
                    println!("  {value}");
                }
            }
            let truncated = list(&baseline["truncated"]);
            if !truncated.is_empty() {
                println!(
                    "truncated (full while learning; no first_seen): {}",
                    truncated.join(", ")
                );
            }
            Ok(())
        }
        BaselineCommand::Reset { agent_type, server } => {
            Client::new(&server)?
                .delete(&format!("/v1/baselines/{}", path_segment(&agent_type)))
                .await?;
            println!("reset: {agent_type} learns again from its next event");
            Ok(())
        }
    }
}

fn list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An agent type as one path segment: `/` and the characters URLs reserve
/// are escaped.
fn path_segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
