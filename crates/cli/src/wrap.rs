//! `custody wrap`: the stdio gateway. An MCP host starts `custody wrap ...
//! -- <server command>` in place of the server; this starts the server as
//! its child and relays between them through the gateway's layer stack,
//! deciding in-process and recording through a running `custody serve`.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use custody_event::{Actor, NewEvent};
use custody_gateway::{Approvals, Config, Ended, Gateway, Identity, RecordFailure, ToolRules};
use reqwest::StatusCode;

use crate::ServerArgs;
use crate::client::Client;

/// How long the end of a session may take: the server finishing after its
/// input closed, the last events reaching the recorder.
const DRAIN: Duration = Duration::from_secs(5);

/// How often a held call looks for its answer in `--approvals`.
const APPROVAL_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Args)]
pub struct WrapArgs {
    /// The agent token the calls are made with; the server verifies it and
    /// the calls are recorded `authenticated`.
    #[arg(long, env = "CUSTODY_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Without a token, the declared root of the chain: `human:ID` or
    /// `service:ID` (recorded as reported, never authenticated).
    #[arg(long, conflicts_with = "token", requires = "agent")]
    root: Option<String>,
    /// Without a token, the declared agent making the calls.
    #[arg(long, conflicts_with = "token")]
    agent: Option<String>,
    /// Without a token, the declared agent's run.
    #[arg(long, conflicts_with = "token", requires = "agent")]
    run: Option<String>,
    /// The Custody server's base URL.
    #[arg(long, env = "CUSTODY_SERVER", default_value = "http://127.0.0.1:7070")]
    server: String,
    /// The API token (role ingest) recording a declared identity's calls;
    /// by default, the admin token in the data directory when readable.
    #[arg(long, env = "CUSTODY_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// The data directory holding `admin.token`, when no API token is given.
    #[arg(long, env = "CUSTODY_DATA_DIR", default_value = "./custody-data")]
    data_dir: PathBuf,
    /// The wrapped server's name in events; by default, taken from the
    /// command.
    #[arg(long)]
    name: Option<String>,
    /// The largest message the client may send, in bytes.
    #[arg(long, default_value_t = custody_gateway::decode::DEFAULT_MAX_MESSAGE)]
    max_message_bytes: usize,
    /// How long a call held for approval waits before it is refused, in
    /// seconds.
    #[arg(long, default_value_t = 300)]
    hold_timeout: u64,
    /// A directory where held calls wait: `EVENT_ID.held` appears, and
    /// `EVENT_ID.approve` or `EVENT_ID.refuse` answers. Without it, nobody
    /// can approve, and held calls are refused at once.
    #[arg(long)]
    approvals: Option<PathBuf>,
    /// A directory of Cedar policies (`*.cedar`) deciding each call, as
    /// `custody serve --policies` does at its gateway (without the
    /// server's knowledge of the run: blast radius and findings are empty
    /// here); the strictest of the policies and the tool flags stands.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// How often the server's containment in force over this session's
    /// chain (a killed run, a quarantined identity, a held run) is fetched
    /// and enforced, in milliseconds; 0 turns it off. It is fetched once
    /// before the session starts.
    #[arg(long, default_value_t = 1000)]
    containment_poll_ms: u64,
    /// A tool whose calls are refused (repeatable).
    #[arg(long, value_name = "TOOL")]
    deny_tool: Vec<String>,
    /// A tool whose calls are held for approval (repeatable).
    #[arg(long, value_name = "TOOL")]
    hold_tool: Vec<String>,
    /// A tool whose call ends the session (repeatable).
    #[arg(long, value_name = "TOOL")]
    kill_tool: Vec<String>,
    /// Refuse calls to a tool whose definition (description, schemas,
    /// annotations) changed since it was first listed in the session.
    #[arg(long)]
    deny_changed_tools: bool,
    /// How long a request forwarded to the server waits for its answer
    /// before the client is told it timed out, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    call_timeout: u64,
    /// The client's requests in flight beyond which new ones are refused.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    max_in_flight: u64,
    /// Forward calls Custody cannot decide or record instead of refusing
    /// them.
    #[arg(long)]
    fail_open: bool,
    /// The MCP server's command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Runs the gateway until the host or the server ends the session, or a
/// decision does. The exit code is the server's when it ended the session.
pub async fn run(args: WrapArgs) -> anyhow::Result<ExitCode> {
    // Policies that do not load stop wrap before anything starts.
    let policies = args
        .policies
        .as_deref()
        .map(crate::policy::load_or_explain)
        .transpose()?;
    let (identity, client) = identify(&args).await?;
    let Some((program, program_args)) = args.command.split_first() else {
        anyhow::bail!("no server command given after `--`");
    };
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| server_name(&args.command));
    let mut child = tokio::process::Command::new(program)
        .args(program_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting `{program}`"))?;
    let (Some(server_in), Some(server_out)) = (child.stdin.take(), child.stdout.take()) else {
        anyhow::bail!("the server's standard input and output were not piped");
    };

    let approvals: Arc<dyn Approvals> = match &args.approvals {
        Some(dir) => Arc::new(custody_gateway::approval::Directory::new(
            dir,
            APPROVAL_POLL,
        )),
        None => Arc::new(custody_gateway::approval::Nobody),
    };
    let rules = ToolRules {
        deny: args.deny_tool.iter().cloned().collect(),
        hold: args.hold_tool.iter().cloned().collect(),
        kill: args.kill_tool.iter().cloned().collect(),
        deny_changed: args.deny_changed_tools,
    };
    let mut config = Config::new(name);
    config.max_message = args.max_message_bytes;
    config.hold_timeout = Duration::from_secs(args.hold_timeout);
    config.fail_open = args.fail_open;
    config.call_timeout = Duration::from_secs(args.call_timeout);
    config.max_in_flight = usize::try_from(args.max_in_flight).unwrap_or(usize::MAX);
    // The server's containment over this chain, kept fresh, decides
    // first; then the policies and the tool flags: the strictest stands.
    let containment = Arc::new(custody_contain::Containment::new());
    let mut stages: Vec<Arc<dyn custody_engine::Decide>> =
        vec![Arc::new(custody_contain::Contained(containment.clone()))];
    if let Some(policies) = policies {
        stages.push(Arc::new(custody_policy::Cedar::new(policies)));
    }
    stages.push(Arc::new(rules));
    let decide: Arc<dyn custody_engine::Decide> = Arc::new(custody_engine::Strictest(stages));
    let polling = if args.containment_poll_ms > 0 {
        // An agent token reads the measures over its own chain; an API
        // token (a declared identity) reads them all, if its role may.
        let path = if args.token.is_some() {
            "/v1/containment/mine"
        } else {
            "/v1/containment"
        };
        let chain = identity.chain().clone();
        let every = Duration::from_millis(args.containment_poll_ms);
        let mut failing = fetch_containment(&client, path, &chain, &containment)
            .await
            .err();
        if let Some(error) = &failing {
            tracing::warn!(%error, "the server's containment could not be fetched");
        }
        let (client, containment) = (client.clone(), containment.clone());
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // Said once when fetching starts failing, and once when it
                // works again; what was fetched last stays in force.
                match fetch_containment(&client, path, &chain, &containment).await {
                    Ok(()) if failing.take().is_some() => {
                        tracing::info!("the server's containment is fetched again");
                    }
                    Ok(()) => {}
                    Err(error) if failing.is_none() => {
                        tracing::warn!(%error, "the server's containment could not be fetched; what was fetched before stays in force");
                        failing = Some(error);
                    }
                    Err(_) => {}
                }
            }
        }))
    } else {
        None
    };
    let gateway = Gateway::new(
        decide,
        identity,
        approvals,
        Arc::new(ServerRecorder(client)),
        config,
    );
    let ended = gateway
        .relay(
            tokio::io::stdin(),
            tokio::io::stdout(),
            server_in,
            server_out,
            DRAIN,
        )
        .await;
    if let Some(polling) = polling {
        polling.abort();
    }
    match ended {
        Ended::Killed(why) => {
            tracing::warn!(%why, "custody ended the session");
            let _ = child.kill().await;
            Ok(ExitCode::FAILURE)
        }
        Ended::ClientClosed | Ended::ServerClosed => {
            let status = match tokio::time::timeout(DRAIN, child.wait()).await {
                Ok(status) => status?,
                Err(_) => {
                    child.kill().await?;
                    child.wait().await?
                }
            };
            let code = status.code().and_then(|c| u8::try_from(c).ok());
            Ok(code.map_or(ExitCode::FAILURE, ExitCode::from))
        }
    }
}

/// The session's identity, and the client that records its calls: the
/// agent token, verified by the server, or a declared chain recorded with
/// an API token.
async fn identify(args: &WrapArgs) -> anyhow::Result<(Identity, Client)> {
    let bearer = args.token.clone().or_else(|| args.api_token.clone());
    let client = Client::new(&ServerArgs {
        server: args.server.clone(),
        token: bearer,
        data_dir: args.data_dir.clone(),
    })?;
    let whoami = client
        .get("/v1/whoami", &[])
        .await
        .context("asking the Custody server who this session is")?;
    match (&args.token, &args.agent) {
        (Some(_), _) => {
            let chain: Actor = serde_json::from_value(whoami["chain"].clone())
                .context("the server did not answer the agent token's chain")?;
            let token_id = whoami["token_id"].as_str().unwrap_or_default().to_owned();
            Ok((Identity::Token { token_id, chain }, client))
        }
        (None, Some(agent)) => {
            let role = whoami["role"].as_str().unwrap_or_default();
            anyhow::ensure!(
                matches!(role, "ingest" | "admin"),
                "the API token's role is `{role}`: recording calls needs `ingest`"
            );
            let identity = Identity::declared(args.root.as_deref(), agent, args.run.as_deref())
                .map_err(anyhow::Error::msg)?;
            Ok((identity, client))
        }
        (None, None) => anyhow::bail!(
            "say who the calls are made by: an agent token (--token or CUSTODY_AGENT_TOKEN) \
             or a declared identity (--agent NAME [--root human:ID] [--run RUN])"
        ),
    }
}

/// Fetches the server's measures over `chain` into `containment`. A
/// failure keeps what was fetched before (a revoked token's calls are
/// refused anyway: the server no longer records them) and says why.
async fn fetch_containment(
    client: &Client,
    path: &str,
    chain: &Actor,
    containment: &custody_contain::Containment,
) -> Result<(), String> {
    let answer = client.get(path, &[]).await.map_err(|e| e.to_string())?;
    let measures: Vec<custody_contain::Measure> =
        serde_json::from_value(answer["measures"].clone()).map_err(|e| e.to_string())?;
    containment.replace_all(
        measures
            .into_iter()
            .filter(|measure| measure.scope.covers(chain)),
    );
    Ok(())
}

/// The wrapped server's name from its command: the program, or for a
/// launcher (`npx`, `node`, `uvx`, ...) the first argument that is not an
/// option; its last path segment either way.
fn server_name(command: &[String]) -> String {
    const LAUNCHERS: [&str; 11] = [
        "npx", "node", "uvx", "uv", "python", "python3", "deno", "bun", "bunx", "pnpm", "docker",
    ];
    let base = |word: &str| {
        word.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(word)
            .to_owned()
    };
    let mut words = command.iter();
    let program = words.next().map(|p| base(p)).unwrap_or_default();
    if LAUNCHERS.contains(&program.as_str())
        && let Some(first) = words.find(|w| !w.starts_with('-') && w.as_str() != "run")
    {
        return base(first);
    }
    program
}

/// Records through the server's collector.
struct ServerRecorder(Client);

impl custody_gateway::Recorder for ServerRecorder {
    fn record<'a>(&'a self, events: &'a [NewEvent]) -> custody_gateway::Recording<'a> {
        Box::pin(async move {
            let mut ndjson = Vec::new();
            for event in events {
                serde_json::to_writer(&mut ndjson, event)
                    .map_err(|e| RecordFailure::Unavailable(e.to_string()))?;
                ndjson.push(b'\n');
            }
            let answer = self
                .0
                .post_events(ndjson)
                .await
                .map_err(|e| RecordFailure::Unavailable(format!("{e:#}")))?;
            match answer {
                Ok(body) => {
                    // An event the server refuses as invalid would be
                    // refused again: said, and not retried.
                    if let Some(errors) = body.get("errors") {
                        tracing::error!(%errors, "the server refused events of this session");
                    }
                    Ok(())
                }
                Err(refusal)
                    if matches!(
                        refusal.status,
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                    ) =>
                {
                    Err(RecordFailure::Refused(refusal.to_string()))
                }
                Err(refusal) if refusal.status == StatusCode::BAD_REQUEST => {
                    tracing::error!(%refusal, "the server refused every event of a batch");
                    Ok(())
                }
                Err(refusal) => Err(RecordFailure::Unavailable(refusal.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_named_after_their_command() {
        let cases = [
            (
                &["npx", "-y", "@modelcontextprotocol/server-everything"][..],
                "server-everything",
            ),
            (&["/usr/local/bin/github-mcp", "stdio"][..], "github-mcp"),
            (&["uvx", "mcp-server-fetch"][..], "mcp-server-fetch"),
            (&["docker", "run", "-i", "ghcr.io/x/mcp"][..], "mcp"),
        ];
        for (command, name) in cases {
            let command: Vec<String> = command.iter().map(|w| (*w).to_owned()).collect();
            assert_eq!(server_name(&command), name, "{command:?}");
        }
    }
}
