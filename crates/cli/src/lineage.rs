//! `custody lineage ID`: the chain of custody of one action, as a tree.

use clap::Args;

use crate::ServerArgs;
use crate::client::Client;

/// Arguments of `custody lineage`.
#[derive(Debug, Args)]
pub struct LineageArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The event's id.
    id: String,
    /// The answer as JSON instead of a tree.
    #[arg(long)]
    json: bool,
}

/// Prints the lineage of one event.
pub async fn run(args: LineageArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let lineage = client.get(&format!("/v1/lineage/{}", args.id), &[]).await?;
    if args.json {
        println!("{lineage}");
    } else {
        print!("{}", tree(&lineage));
    }
    Ok(())
}

/// The lineage as an indented tree, root first, each link with how it is
/// known, then the action and its attribution.
pub fn tree(lineage: &serde_json::Value) -> String {
    let text = |value: &serde_json::Value, pointer: &str| {
        value
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let mut out = String::new();
    for (depth, link) in lineage["chain"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let indent = "   ".repeat(depth);
        let branch = if depth == 0 { "" } else { "└─ " };
        match text(link, "/role").as_str() {
            "credential" => {
                out.push_str(&format!(
                    "{indent}{branch}credential {} {}\n",
                    text(link, "/credential/type"),
                    text(link, "/credential/id")
                ));
            }
            role => {
                let run = text(link, "/principal/run_id");
                let run = if run.is_empty() {
                    String::new()
                } else {
                    format!(" [run {run}]")
                };
                out.push_str(&format!(
                    "{indent}{branch}{} {}{run}  ({role})\n",
                    text(link, "/principal/type"),
                    text(link, "/principal/id"),
                ));
                if link["spawned"].is_object() {
                    out.push_str(&format!(
                        "{indent}   spawned by {} at {} with token {} ({})\n",
                        text(link, "/spawned/by/id"),
                        text(link, "/spawned/observed_at"),
                        text(link, "/spawned/token"),
                        text(link, "/spawned/action"),
                    ));
                } else if role != "root" {
                    out.push_str(&format!("{indent}   not spawned through Custody\n"));
                }
            }
        }
    }
    out.push_str(&format!(
        "{} {} at {}\n",
        text(lineage, "/event/kind"),
        text(lineage, "/event/action"),
        text(lineage, "/event/observed_at"),
    ));
    out.push_str(&format!(
        "attribution: {}\n",
        text(lineage, "/attribution/method")
    ));
    for evidence in lineage["attribution"]["evidence"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "  {}: {}\n",
            text(evidence, "/type"),
            text(evidence, "/detail")
        ));
    }
    out
}
