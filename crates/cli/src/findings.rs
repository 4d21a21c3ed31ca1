//! `custody findings`: stored findings, or (with `--follow`) new ones as
//! they are stored, as a table or as JSON lines.

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use crate::ServerArgs;
use crate::client::Client;

#[derive(Debug, Args)]
pub struct FindingsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only findings of this rule (its id).
    #[arg(long)]
    rule: Option<String>,
    /// Only findings whose chain acts in this run.
    #[arg(long)]
    run: Option<String>,
    /// Only findings whose chain has this root (a human or service id).
    #[arg(long)]
    root: Option<String>,
    /// Only findings at least this severe: informational, low, medium,
    /// high, critical.
    #[arg(long)]
    severity: Option<String>,
    /// How many findings to show, newest first, following pages as needed.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Follow new findings as they are stored instead.
    #[arg(long)]
    follow: bool,
    /// One JSON record a line (with `--ocsf`, OCSF Detection Findings)
    /// instead of a table.
    #[arg(long)]
    json: bool,
    /// Write OCSF Detection Findings (implies `--json`).
    #[arg(long)]
    ocsf: bool,
}

pub async fn run(args: FindingsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let mut query: Vec<(&str, String)> = [
        ("rule", &args.rule),
        ("run", &args.run),
        ("root", &args.root),
        ("severity", &args.severity),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
    .collect();
    let json = args.json || args.ocsf;
    if args.ocsf {
        query.push(("format", "ocsf".into()));
    }
    if !json {
        println!("{}", header());
    }
    if args.follow {
        let response = client.stream("/v1/findings/stream", &query).await?;
        return crate::show::follow(response, |name, data| match name {
            "finding" => match serde_json::from_str(data) {
                Ok(record) => print(&record, json),
                Err(error) => eprintln!("warning: unreadable finding from the stream: {error}"),
            },
            "lagged" => eprintln!(
                "warning: this client fell behind and missed {data} batches of findings; list them with `custody findings`"
            ),
            _ => {}
        })
        .await;
    }
    let mut remaining = args.limit;
    let mut cursor: Option<String> = None;
    while remaining > 0 {
        let mut page_query = query.clone();
        page_query.push(("limit", remaining.min(1000).to_string()));
        if let Some(cursor) = &cursor {
            page_query.push(("cursor", cursor.clone()));
        }
        let page = client.get("/v1/findings", &page_query).await?;
        let records = page["findings"]
            .as_array()
            .context("the server's answer has no `findings` list")?;
        for record in records {
            print(record, json);
        }
        remaining = remaining.saturating_sub(records.len());
        match page["next_cursor"].as_str() {
            Some(next) if !records.is_empty() => cursor = Some(next.to_owned()),
            _ => break,
        }
    }
    Ok(())
}

fn header() -> String {
    format!(
        "{:<24} {:<9} {:<12} {:<44} {:<40} {:>7}  {}",
        "LAST SEEN", "SEVERITY", "KIND", "RULE", "CHAIN", "EVENTS", "MESSAGE"
    )
}

fn print(record: &Value, json: bool) {
    if json {
        println!("{record}");
        return;
    }
    let finding = &record["finding"];
    let text = |value: &Value| value.as_str().unwrap_or("-").to_owned();
    let chain = &finding["chain"];
    let who = [
        chain["root"]["id"].as_str(),
        chain["current"]["id"].as_str(),
        chain["current"]["run_id"].as_str(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" > ");
    let events = finding["events"].as_array().map_or(0, Vec::len) as u64
        + record["repeats"].as_u64().unwrap_or(0);
    println!(
        "{:<24} {:<9} {:<12} {:<44} {:<40} {:>7}  {}",
        text(&finding["last_seen"]),
        text(&finding["severity"]),
        text(&finding["kind"]),
        truncate(&text(&finding["analytic"]["title"]), 44),
        truncate(&who, 40),
        events,
        text(&finding["message"]),
    );
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}
