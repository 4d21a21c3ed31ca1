//! `custody graph ROOT` and `custody who RESOURCE`: the agent graph's
//! queries, from a server that keeps the graph (not `--no-graph`).

use clap::Args;

use crate::ServerArgs;
use crate::client::Client;

/// Arguments of `custody graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The node to start from, written `kind:id` (e.g. `human:alice@example.com`,
    /// `run:run-0`).
    root: String,
    /// How many edges away.
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// Only edges seen since this time: RFC 3339, or an age such as `2h`.
    #[arg(long)]
    since: Option<String>,
    /// The answer as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// A BloodHound OpenGraph document instead of text.
    #[arg(long, conflicts_with = "json")]
    opengraph: bool,
}

/// Arguments of `custody who`.
#[derive(Debug, Args)]
pub struct WhoArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// A resource (or tool, server, system, credential, role) id.
    resource: String,
    /// The answer as JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints a subgraph: each node with its blast radius, then the edges.
pub async fn graph(args: GraphArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let mut query = vec![
        ("root", args.root.clone()),
        ("depth", args.depth.to_string()),
    ];
    if let Some(since) = &args.since {
        query.push(("since", since.clone()));
    }
    if args.opengraph {
        query.push(("format", "opengraph".into()));
    }
    let answer = client.get("/v1/graph", &query).await?;
    if args.json || args.opengraph {
        println!("{answer}");
        return Ok(());
    }
    let text = |value: &serde_json::Value, key: &str| value[key].as_str().unwrap_or("").to_owned();
    for node in answer["nodes"].as_array().into_iter().flatten() {
        let radius = &node["blast_radius"];
        let counts: Vec<String> = [
            "resources",
            "sensitive_resources",
            "systems",
            "identities_created",
            "credentials_created",
            "privileged_actions",
            "depth",
            "fan_out",
        ]
        .iter()
        .filter_map(|key| {
            let n = radius[*key].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{key} {n}"))
        })
        .collect();
        let name = text(node, "name");
        let name = if name.is_empty() {
            String::new()
        } else {
            format!(" ({name})")
        };
        if counts.is_empty() {
            println!("{}{name}", text(node, "node"));
        } else {
            println!(
                "{}{name}  blast radius: {}",
                text(node, "node"),
                counts.join(", ")
            );
        }
    }
    for edge in answer["edges"].as_array().into_iter().flatten() {
        println!(
            "  {} -{}-> {}  x{}",
            text(edge, "from"),
            text(edge, "kind"),
            text(edge, "to"),
            edge["count"]
        );
    }
    Ok(())
}

/// Prints every chain that touched a resource, one a line.
pub async fn who(args: WhoArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let answer = client
        .get("/v1/who", &[("resource", args.resource.clone())])
        .await?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    for chain in answer["chains"].as_array().into_iter().flatten() {
        let mut line = String::new();
        for (position, edge) in chain.as_array().into_iter().flatten().enumerate() {
            if position == 0 {
                line.push_str(edge["from"].as_str().unwrap_or(""));
            }
            line.push_str(&format!(
                " -{}-> {}",
                edge["kind"].as_str().unwrap_or(""),
                edge["to"].as_str().unwrap_or("")
            ));
        }
        println!("{line}");
    }
    Ok(())
}
