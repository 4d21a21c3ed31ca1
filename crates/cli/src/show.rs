//! `custody events` and `custody tail`: stored and live events as a table or
//! as JSON lines.

use anyhow::Context as _;
use clap::Args;
use futures_util::StreamExt as _;

use crate::ServerArgs;
use crate::client::Client;

/// Filters shared by `events` and `tail`.
#[derive(Debug, Clone, Args)]
pub struct Filters {
    /// Only these kinds (comma-separated): tool_call, mcp_request,
    /// data_access, agent_spawn, credential_use, authentication,
    /// privilege_change, other.
    #[arg(long)]
    kind: Option<String>,
    /// Only actions attributed so (comma-separated): authenticated, bound,
    /// correlated, unattributed (what nothing explains).
    #[arg(long)]
    attribution: Option<String>,
    /// Only actions by this actor id.
    #[arg(long)]
    actor: Option<String>,
    /// Only actions whose chain has this root (a human or service id).
    #[arg(long)]
    root: Option<String>,
    /// Only actions in this run.
    #[arg(long)]
    run: Option<String>,
    /// Only actions on this target (resource, tool, server, system or
    /// identity).
    #[arg(long)]
    target: Option<String>,
}

impl Filters {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("kind", &self.kind),
            ("attribution", &self.attribution),
            ("actor", &self.actor),
            ("root", &self.root),
            ("run", &self.run),
            ("target", &self.target),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect()
    }
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    filters: Filters,
    /// Observed at or after: RFC 3339 or an age (30s, 15m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Observed before: RFC 3339 or an age.
    #[arg(long)]
    until: Option<String>,
    /// How many events to show, following pages as needed.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Oldest first rather than newest first.
    #[arg(long)]
    oldest_first: bool,
    /// One JSON record a line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    filters: Filters,
    /// One JSON record a line instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let mut query = args.filters.query();
    query.extend(
        [("since", args.since.clone()), ("until", args.until.clone())]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v))),
    );
    if args.oldest_first {
        query.push(("order", "oldest".into()));
    }
    let mut remaining = args.limit;
    let mut cursor: Option<String> = None;
    if !args.json {
        println!("{}", header());
    }
    while remaining > 0 {
        let mut page_query = query.clone();
        page_query.push(("limit", remaining.min(1000).to_string()));
        if let Some(cursor) = &cursor {
            page_query.push(("cursor", cursor.clone()));
        }
        let page = client.get("/v1/events", &page_query).await?;
        let records = page["events"]
            .as_array()
            .context("the server's answer has no `events` list")?;
        for record in records {
            print_record(record, args.json);
        }
        remaining = remaining.saturating_sub(records.len());
        match page["next_cursor"].as_str() {
            Some(next) if !records.is_empty() => cursor = Some(next.to_owned()),
            _ => break,
        }
    }
    Ok(())
}

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let response = client
        .stream("/v1/events/stream", &args.filters.query())
        .await?;
    if !args.json {
        println!("{}", header());
    }
    follow(response, |name, data| dispatch(name, data, args.json)).await
}

/// Reads a server-sent event stream, handing each event's name and data to
/// `on`, until the server closes it (an error: live streams do not end).
pub(crate) async fn follow(
    response: reqwest::Response,
    mut on: impl FnMut(&str, &str),
) -> anyhow::Result<()> {
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut event_name = String::new();
    let mut data = String::new();
    while let Some(chunk) = body.next().await {
        buffer.extend_from_slice(&chunk.context("reading the live stream")?);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                on(&event_name, &data);
                event_name.clear();
                data.clear();
            } else if let Some(name) = line.strip_prefix("event:") {
                event_name = name.trim().to_owned();
            } else if let Some(part) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(part.strip_prefix(' ').unwrap_or(part));
            }
        }
    }
    anyhow::bail!("the server closed the live stream")
}

/// Handles one server-sent event.
fn dispatch(name: &str, data: &str, json: bool) {
    match name {
        "event" => match serde_json::from_str(data) {
            Ok(record) => print_record(&record, json),
            Err(error) => eprintln!("warning: unreadable event from the stream: {error}"),
        },
        "lagged" => eprintln!(
            "warning: this client fell behind and missed {data} events; query them with `custody events`"
        ),
        _ => {}
    }
}

fn header() -> String {
    format!(
        "{:<24} {:<16} {:<22} {:<48} {:<13} {:<32} {:<8} {:<8}",
        "OBSERVED", "KIND", "ACTION", "CHAIN", "ATTRIBUTION", "TARGET", "OUTCOME", "VERDICT"
    )
}

fn print_record(record: &serde_json::Value, json: bool) {
    if json {
        println!("{record}");
        return;
    }
    let event = &record["event"];
    let text = |pointer: &str| {
        event
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    // Each link by its display name when it has one; the chain is clipped
    // in the middle so both the root and the actor that acted stay visible.
    let link = |principal: &serde_json::Value| {
        principal["name"]
            .as_str()
            .or_else(|| principal["id"].as_str())
            .unwrap_or("?")
            .to_owned()
    };
    let actor = &event["actor"];
    let chain: Vec<String> = [&actor["root"]]
        .into_iter()
        .filter(|root| root.is_object())
        .chain(actor["agents"].as_array().into_iter().flatten())
        .chain([&actor["current"]])
        .map(link)
        .collect();
    let target = [
        "/target/resource",
        "/target/tool",
        "/target/principal/id",
        "/target/server",
        "/target/system",
    ]
    .iter()
    .map(|p| text(p))
    .find(|t| !t.is_empty())
    .unwrap_or_default();
    let observed = text("/observed_at");
    println!(
        "{:<24} {:<16} {:<22} {:<48} {:<13} {:<32} {:<8} {:<8}",
        clip(&observed, 24),
        text("/kind"),
        clip(&text("/action"), 22),
        clip_middle(&chain.join(" > "), 48),
        // How the chain is known: a reported one says `unattributed`.
        text("/attribution/method"),
        clip(&target, 32),
        text("/outcome/status"),
        record
            .pointer("/decision/verdict")
            .and_then(|v| v.as_str())
            .unwrap_or("")
    );
}

/// Shortens `text` to `width` characters by cutting out its middle.
fn clip_middle(text: &str, width: usize) -> String {
    let length = text.chars().count();
    if length <= width {
        return text.to_owned();
    }
    let head = width.saturating_sub(1) / 2;
    let tail = width.saturating_sub(1) - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(length - tail).collect();
    format!("{start}…{end}")
}

/// Shortens `text` to `width` characters, marking the cut.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_clipped_keeping_both_ends() {
        assert_eq!(clip_middle("alice > bot", 20), "alice > bot");
        assert_eq!(
            clip_middle("alice@example.com > release-bot > dependency-auditor", 21),
            "alice@exam…cy-auditor"
        );
        assert_eq!(clip("arn:aws:s3:::bucket/key", 10), "arn:aws:s…");
        assert_eq!(clip_middle("", 5), "");
    }
}
