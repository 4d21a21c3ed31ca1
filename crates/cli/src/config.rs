//! The server's settings, from flags, the environment and a TOML file.
//!
//! A flag wins over its environment variable, which wins over the file,
//! which wins over the default. Trusted external token issuers are set in
//! the file only (`[[issuers]]`): each has too many settings for a flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use custody_delegation::{ExternalConfig, RootKind};
use custody_store::{Durability, StoreOptions};
use serde::Deserialize;

/// How often a JWKS fetched from a URL is fetched again, unless
/// configured.
const DEFAULT_REFRESH: Duration = Duration::from_secs(10 * 60);

/// Flags of `custody serve`; each also reads an environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below, and the external agent
    /// token issuers to trust (`[[issuers]]` tables, see docs/api.md).
    #[arg(long, env = "CUSTODY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the store lives [default: ./custody-data].
    #[arg(long, env = "CUSTODY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the API listens on [default: 127.0.0.1:7070].
    #[arg(long, env = "CUSTODY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address the OTLP/gRPC trace receiver listens on, or `off`
    /// [default: 127.0.0.1:4317, OTLP's standard port].
    #[arg(long, env = "CUSTODY_OTLP_GRPC_LISTEN", value_parser = parse_listen)]
    pub otlp_grpc_listen: Option<Listen>,
    /// Address the OTLP/HTTP trace receiver (`POST /v1/traces`, also
    /// served on the API's address) listens on, or `off`
    /// [default: 127.0.0.1:4318, OTLP's standard port].
    #[arg(long, env = "CUSTODY_OTLP_HTTP_LISTEN", value_parser = parse_listen)]
    pub otlp_http_listen: Option<Listen>,
    /// `full` syncs every commit to disk, surviving power loss; `normal`
    /// survives a crash of the process but not of the machine [default: full].
    #[arg(long, env = "CUSTODY_DURABILITY", value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// Events the ingest queue holds before answering 429 [default: 200000].
    #[arg(long, env = "CUSTODY_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Largest request body in bytes [default: 16 MiB].
    #[arg(long, env = "CUSTODY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// The URL clients reach this server at: the issuer of the agent tokens
    /// it mints [default: http://LISTEN].
    #[arg(long, env = "CUSTODY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Keep no agent graph: attribution only, no graph, who or blast-radius
    /// queries, less memory and some more ingest throughput (see
    /// BENCHMARKS.md).
    #[arg(long, env = "CUSTODY_NO_GRAPH")]
    pub no_graph: bool,
    /// A pattern of sensitive resource names, `*` standing for any run of
    /// characters (e.g. `arn:aws:s3:::payroll*`); repeatable, or
    /// comma-separated in the environment.
    #[arg(long = "sensitive", env = "CUSTODY_SENSITIVE", value_delimiter = ',')]
    pub sensitive: Vec<String>,
    /// An event attribute that labels the event's resource sensitive,
    /// `KEY` or `KEY=VALUE` (e.g. `data.classification=confidential`);
    /// repeatable, or comma-separated in the environment.
    #[arg(
        long = "sensitive-tag",
        env = "CUSTODY_SENSITIVE_TAGS",
        value_delimiter = ','
    )]
    pub sensitive_tags: Vec<String>,
    /// A Sigma rule file or a directory of them (read recursively), run
    /// beside the built-in rule pack; repeatable, or comma-separated in the
    /// environment.
    #[arg(long = "rules", env = "CUSTODY_RULES", value_delimiter = ',')]
    pub rules: Vec<PathBuf>,
    /// Run only the rules given with `--rules`, not the built-in pack.
    #[arg(long, env = "CUSTODY_NO_BUILTIN_RULES")]
    pub no_builtin_rules: bool,
    /// How long (event time) an agent type learns its baseline before it
    /// is enforced: `30m`, `12h`, `7d` [default: 7d].
    #[arg(long, env = "CUSTODY_BASELINE_LEARNING")]
    pub baseline_learning: Option<String>,
    /// A directory of Cedar policies (`*.cedar`) deciding every call at
    /// the gateway; reloaded on SIGHUP and `POST /v1/policies/reload`.
    /// Without one, calls are decided by containment and each upstream's
    /// tool rules only.
    #[arg(long, env = "CUSTODY_POLICIES")]
    pub policies: Option<PathBuf>,
    /// A playbook file (TOML, `[[playbook]]`); repeatable, or
    /// comma-separated in the environment.
    #[arg(long = "playbooks", env = "CUSTODY_PLAYBOOKS", value_delimiter = ',')]
    pub playbooks: Vec<PathBuf>,
    /// Events an agent type must have learned from before it is enforced
    /// [default: 100].
    #[arg(long, env = "CUSTODY_BASELINE_MIN_EVENTS")]
    pub baseline_min_events: Option<u64>,
    /// Index postings held in memory before they are written out as a
    /// sorted run: more means fewer, better-packed writes and more memory,
    /// about 60-120 bytes each [default: 600000].
    #[arg(long, env = "CUSTODY_PENDING_POSTINGS")]
    pub pending_postings: Option<usize>,
}

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    otlp_grpc_listen: Option<String>,
    otlp_http_listen: Option<String>,
    durability: Option<String>,
    queue_capacity: Option<usize>,
    max_body_bytes: Option<usize>,
    public_url: Option<String>,
    graph: Option<bool>,
    sensitive: Option<Vec<String>>,
    sensitive_tags: Option<Vec<String>>,
    pending_postings: Option<usize>,
    rules: Option<Vec<PathBuf>>,
    builtin_rules: Option<bool>,
    policies: Option<PathBuf>,
    playbooks: Option<Vec<PathBuf>>,
    #[serde(default)]
    placeholders: custody_detect::Placeholders,
    #[serde(default)]
    thresholds: Vec<custody_detect::ThresholdConfig>,
    #[serde(default)]
    teams: std::collections::BTreeMap<String, Vec<String>>,
    baselines: Option<BaselinesTable>,
    #[serde(default)]
    issuers: Vec<IssuerTable>,
    gateway: Option<GatewayTable>,
    #[serde(default)]
    responders: custody_respond::Config,
}

/// The `[baselines]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselinesTable {
    learning: Option<String>,
    min_events: Option<u64>,
    rate_factor: Option<f64>,
    max_values: Option<usize>,
    max_types: Option<usize>,
}

/// The `[gateway]` table: the MCP gateway served at `path`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayTable {
    path: Option<String>,
    #[serde(default)]
    upstreams: Vec<UpstreamTable>,
    separator: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    max_sessions: Option<usize>,
    max_sessions_per_caller: Option<usize>,
    idle_timeout_seconds: Option<u64>,
    call_timeout_seconds: Option<u64>,
    hold_timeout_seconds: Option<u64>,
    approval_ttl_seconds: Option<u64>,
    max_in_flight: Option<usize>,
    max_message_bytes: Option<usize>,
    #[serde(default)]
    fail_open: bool,
    approvals_dir: Option<PathBuf>,
    anonymous: Option<AnonymousTable>,
}

/// One `[[gateway.upstreams]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamTable {
    name: String,
    prefix: Option<String>,
    url: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    bearer_token_env: Option<String>,
    #[serde(default)]
    deny_tools: Vec<String>,
    #[serde(default)]
    hold_tools: Vec<String>,
    #[serde(default)]
    kill_tools: Vec<String>,
    #[serde(default)]
    deny_changed_tools: bool,
}

/// `[gateway.anonymous]`: who an unauthenticated caller is declared to be.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnonymousTable {
    root: Option<String>,
    agent: String,
    run: Option<String>,
}

/// The MCP gateway's settings, as configured.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Everything but the public URL, known once the server listens.
    pub config: custody_gateway::http::GatewayConfig,
    /// Where held calls' approvals are read from, if anywhere; otherwise
    /// they are answered through `POST /v1/approvals/{id}`.
    pub approvals_dir: Option<PathBuf>,
    /// How long an approval may be given before the held call is refused.
    pub approval_ttl: std::time::Duration,
    /// Who unauthenticated callers are, when they are accepted at all.
    pub anonymous: Option<custody_gateway::Identity>,
}

/// One `[[issuers]]` table: an external issuer whose agent tokens are
/// accepted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerTable {
    issuer: String,
    audience: OneOrMany,
    jwks_url: Option<String>,
    jwks_file: Option<PathBuf>,
    algorithms: Option<Vec<String>>,
    leeway_seconds: Option<u32>,
    root_type: Option<String>,
    run_claim: Option<String>,
    agent_claim: Option<String>,
    refresh_seconds: Option<u64>,
}

/// A string, or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A trusted external issuer, as configured.
#[derive(Debug, Clone)]
pub struct Trust {
    /// What its tokens must be.
    pub config: ExternalConfig,
    /// Where its keys come from.
    pub keys: KeysFrom,
}

/// Where an external issuer's JWKS comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeysFrom {
    /// A file, read once at start.
    File(PathBuf),
    /// A URL, fetched at start and every `refresh`.
    Url {
        /// https, or http to a loopback address.
        url: reqwest::Url,
        /// How often it is fetched again.
        refresh: Duration,
    },
}

/// Where a listener listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Not at all.
    Off,
    /// On this address.
    At(SocketAddr),
}

impl Listen {
    /// The address, unless off.
    pub fn address(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::At(address) => Some(address),
        }
    }
}

/// OTLP/gRPC's standard address, on loopback.
pub const DEFAULT_OTLP_GRPC: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    4317,
));

/// OTLP/HTTP's standard address, on loopback.
pub const DEFAULT_OTLP_HTTP: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    4318,
));

/// The settings `custody serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Address the OTLP/gRPC trace receiver listens on, if any.
    pub otlp_grpc_listen: Option<SocketAddr>,
    /// Address the OTLP/HTTP trace receiver listens on, if any.
    pub otlp_http_listen: Option<SocketAddr>,
    /// How the store is opened.
    pub store: StoreOptions,
    /// Request limits.
    pub limits: custody_api::Limits,
    /// The URL clients reach the server at, if set; otherwise derived from
    /// the address it listens on.
    pub public_url: Option<String>,
    /// Whether the agent graph is kept.
    pub graph: bool,
    /// Patterns of sensitive resource names, for the blast radius.
    pub sensitive: Vec<String>,
    /// Event attributes (`KEY` or `KEY=VALUE`) that label a resource
    /// sensitive.
    pub sensitive_tags: Vec<String>,
    /// Sigma rule files and directories run beside the built-in pack.
    pub rules: Vec<PathBuf>,
    /// Whether the built-in rule pack runs.
    pub builtin_rules: bool,
    /// Values of the placeholders rules expand (`[placeholders]`).
    pub placeholders: custody_detect::Placeholders,
    /// The Cedar policy directory, if any.
    pub policies: Option<PathBuf>,
    /// Playbook files.
    pub playbooks: Vec<PathBuf>,
    /// The thresholds (`[[thresholds]]`).
    pub thresholds: Vec<custody_detect::ThresholdConfig>,
    /// Teams of humans thresholds may be kept per (`[teams]`).
    pub teams: std::collections::BTreeMap<String, Vec<String>>,
    /// How baselines learn (`[baselines]`, `--baseline-*`).
    pub baselines: custody_detect::BaselineConfig,
    /// External issuers whose agent tokens are accepted.
    pub issuers: Vec<Trust>,
    /// The MCP gateway, when configured.
    pub gateway: Option<Gateway>,
    /// The responders playbooks call (`[responders]`).
    pub responders: custody_respond::Config,
}

impl Config {
    /// Merges flags (with their environment variables) over the TOML file
    /// over the defaults.
    pub fn load(args: ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let file_durability = file
            .durability
            .as_deref()
            .map(parse_durability)
            .transpose()
            .map_err(|why| {
                anyhow::anyhow!("{}: durability: {why}", display(args.config.as_deref()))
            })?;
        let file_listen = |text: &Option<String>, key: &str| {
            text.as_deref()
                .map(parse_listen)
                .transpose()
                .map_err(|why| anyhow::anyhow!("{}: {key}: {why}", display(args.config.as_deref())))
        };
        let file_otlp_grpc = file_listen(&file.otlp_grpc_listen, "otlp_grpc_listen")?;
        let file_otlp_http = file_listen(&file.otlp_http_listen, "otlp_http_listen")?;
        let baselines = {
            let table = file.baselines.unwrap_or_default();
            let mut baselines = custody_detect::BaselineConfig::default();
            if let Some(learning) = args
                .baseline_learning
                .as_deref()
                .or(table.learning.as_deref())
            {
                let secs = custody_detect::thresholds::parse_window(learning)
                    .map_err(|why| anyhow::anyhow!("baselines: learning: {why}"))?;
                baselines.learning = chrono::Duration::seconds(secs);
            }
            if let Some(min) = args.baseline_min_events.or(table.min_events) {
                baselines.min_events = min;
            }
            if let Some(factor) = table.rate_factor {
                if !(factor.is_finite() && factor >= 1.0) {
                    anyhow::bail!(
                        "{}: baselines: rate_factor: {factor} is not a number of at least 1",
                        display(args.config.as_deref())
                    );
                }
                baselines.rate_factor = factor;
            }
            if let Some(max) = table.max_values {
                baselines.max_values = max.max(1);
            }
            if let Some(max) = table.max_types {
                baselines.max_types = max.max(1);
            }
            baselines
        };
        let issuers = trusted_issuers(file.issuers)
            .map_err(|why| anyhow::anyhow!("{}: {why}", display(args.config.as_deref())))?;
        let gateway = file.gateway.map(gateway).transpose().map_err(|why| {
            anyhow::anyhow!("{}: gateway: {why}", display(args.config.as_deref()))
        })?;
        let mut store = StoreOptions::default();
        if let Some(durability) = args.durability.or(file_durability) {
            store.durability = durability;
        }
        if let Some(capacity) = args.queue_capacity.or(file.queue_capacity) {
            anyhow::ensure!(capacity > 0, "queue capacity must be at least 1");
            store.queue_capacity = capacity;
        }
        if let Some(pending) = args.pending_postings.or(file.pending_postings) {
            anyhow::ensure!(pending > 0, "pending postings must be at least 1");
            store.max_pending_postings = pending;
        }
        let mut limits = custody_api::Limits::default();
        if let Some(max) = args.max_body_bytes.or(file.max_body_bytes) {
            anyhow::ensure!(max > 0, "max body bytes must be at least 1");
            limits.max_body_bytes = max;
            limits.max_decompressed_bytes = limits.max_decompressed_bytes.max(max);
        }
        Ok(Config {
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./custody-data")),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070))),
            otlp_grpc_listen: args
                .otlp_grpc_listen
                .or(file_otlp_grpc)
                .unwrap_or(Listen::At(DEFAULT_OTLP_GRPC))
                .address(),
            otlp_http_listen: args
                .otlp_http_listen
                .or(file_otlp_http)
                .unwrap_or(Listen::At(DEFAULT_OTLP_HTTP))
                .address(),
            store,
            limits,
            public_url: args.public_url.or(file.public_url),
            graph: !args.no_graph && file.graph.unwrap_or(true),
            sensitive: if args.sensitive.is_empty() {
                file.sensitive.unwrap_or_default()
            } else {
                args.sensitive
            },
            sensitive_tags: if args.sensitive_tags.is_empty() {
                file.sensitive_tags.unwrap_or_default()
            } else {
                args.sensitive_tags
            },
            rules: if args.rules.is_empty() {
                file.rules.unwrap_or_default()
            } else {
                args.rules
            },
            builtin_rules: !args.no_builtin_rules && file.builtin_rules.unwrap_or(true),
            policies: args.policies.or(file.policies),
            playbooks: if args.playbooks.is_empty() {
                file.playbooks.unwrap_or_default()
            } else {
                args.playbooks
            },
            placeholders: file.placeholders,
            thresholds: file.thresholds,
            teams: file.teams,
            baselines,
            issuers,
            gateway,
            responders: file.responders,
        })
    }
}

/// The `[gateway]` table, checked.
fn gateway(table: GatewayTable) -> Result<Gateway, String> {
    use custody_gateway::http::{GatewayConfig, Target, UpstreamConfig};
    let several = table.upstreams.len() > 1;
    let mut upstreams = Vec::new();
    for (i, upstream) in table.upstreams.into_iter().enumerate() {
        let at = format!("upstreams[{i}] (`{}`)", upstream.name);
        let target = match (upstream.url, upstream.command) {
            (Some(url), None) => {
                let parsed = reqwest::Url::parse(&url).map_err(|e| format!("{at}: url: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!(
                        "{at}: url: only http and https upstreams are served"
                    ));
                }
                let mut headers: Vec<(String, String)> = upstream.headers.into_iter().collect();
                if let Some(variable) = upstream.bearer_token_env {
                    let token = std::env::var(&variable).map_err(|_| {
                        format!("{at}: bearer_token_env: the variable `{variable}` is not set")
                    })?;
                    headers.push(("authorization".into(), format!("Bearer {token}")));
                }
                Target::Http { url, headers }
            }
            (None, Some(command)) => {
                if command.is_empty() {
                    return Err(format!("{at}: command is empty"));
                }
                Target::Stdio {
                    command,
                    env: upstream.env.into_iter().collect(),
                    cwd: upstream.cwd,
                }
            }
            _ => return Err(format!("{at}: give exactly one of `url` and `command`")),
        };
        let prefix = upstream.prefix.unwrap_or_else(|| {
            if several {
                upstream.name.clone()
            } else {
                String::new()
            }
        });
        upstreams.push(UpstreamConfig {
            name: upstream.name,
            prefix,
            target,
            rules: custody_gateway::ToolRules {
                deny: upstream.deny_tools.into_iter().collect(),
                hold: upstream.hold_tools.into_iter().collect(),
                kill: upstream.kill_tools.into_iter().collect(),
                deny_changed: upstream.deny_changed_tools,
            },
        });
    }
    let mut relay = custody_gateway::Config::new("");
    if let Some(seconds) = table.call_timeout_seconds {
        relay.call_timeout = Duration::from_secs(seconds.max(1));
    }
    if let Some(seconds) = table.hold_timeout_seconds {
        relay.hold_timeout = Duration::from_secs(seconds.max(1));
    }
    if let Some(max) = table.max_in_flight {
        relay.max_in_flight = max.max(1);
    }
    if let Some(max) = table.max_message_bytes {
        relay.max_message = max.max(1024);
    }
    relay.fail_open = table.fail_open;
    let anonymous = table
        .anonymous
        .map(|a| custody_gateway::Identity::declared(a.root.as_deref(), &a.agent, a.run.as_deref()))
        .transpose()
        .map_err(|why| format!("anonymous: {why}"))?;
    let config = GatewayConfig {
        path: table.path.unwrap_or_else(|| "/mcp".into()),
        upstreams,
        relay,
        separator: table.separator.unwrap_or_else(|| "__".into()),
        allowed_origins: table.allowed_origins,
        max_sessions: table.max_sessions.unwrap_or(1024).max(1),
        max_sessions_per_caller: table.max_sessions_per_caller.unwrap_or(16).max(1),
        idle_timeout: Duration::from_secs(table.idle_timeout_seconds.unwrap_or(30 * 60).max(1)),
        resource: String::new(),
        authorization_servers: Vec::new(),
    };
    config.check()?;
    // The relay waits no longer than the hold timeout, so an approval lives
    // at most that long.
    let hold = config.relay.hold_timeout;
    Ok(Gateway {
        config,
        approvals_dir: table.approvals_dir,
        approval_ttl: table
            .approval_ttl_seconds
            .map_or(hold, |s| Duration::from_secs(s.max(1)))
            .min(hold),
        anonymous,
    })
}

/// The `[[issuers]]` tables, checked; an error names the table
/// (`issuers[1]`), its issuer and the key at fault.
fn trusted_issuers(tables: Vec<IssuerTable>) -> Result<Vec<Trust>, String> {
    let mut trusted: Vec<Trust> = Vec::with_capacity(tables.len());
    for (index, table) in tables.into_iter().enumerate() {
        let name = format!("issuers[{index}] (`{}`)", table.issuer);
        let trust = trust(table).map_err(|why| format!("{name}: {why}"))?;
        if let Some(first) = trusted
            .iter()
            .position(|other| other.config.issuer == trust.config.issuer)
        {
            return Err(format!("{name}: the same issuer as issuers[{first}]"));
        }
        trusted.push(trust);
    }
    Ok(trusted)
}

/// One `[[issuers]]` table, checked.
fn trust(table: IssuerTable) -> Result<Trust, String> {
    if table.issuer.trim().is_empty() {
        return Err("`issuer` must not be empty".into());
    }
    let audiences = match table.audience {
        OneOrMany::One(audience) => vec![audience],
        OneOrMany::Many(audiences) => audiences,
    };
    if audiences.is_empty() || audiences.iter().any(|a| a.trim().is_empty()) {
        return Err("`audience` must name at least one audience, none empty".into());
    }
    let keys = match (table.jwks_url, table.jwks_file, table.refresh_seconds) {
        (Some(url), None, refresh) => KeysFrom::Url {
            url: jwks_url(&url)?,
            refresh: match refresh {
                Some(0) => return Err("`refresh_seconds` must be at least 1".into()),
                Some(seconds) => Duration::from_secs(seconds),
                None => DEFAULT_REFRESH,
            },
        },
        (None, Some(path), None) => KeysFrom::File(path),
        (None, Some(_), Some(_)) => {
            return Err("`refresh_seconds` applies to `jwks_url` only".into());
        }
        (Some(_), Some(_), _) => return Err("set `jwks_url` or `jwks_file`, not both".into()),
        (None, None, _) => return Err("set `jwks_url` or `jwks_file`".into()),
    };
    let mut config = ExternalConfig::new(table.issuer, audiences);
    if let Some(names) = table.algorithms {
        if names.is_empty() {
            return Err("`algorithms` must name at least one".into());
        }
        config.algorithms = names
            .iter()
            .map(|name| ExternalConfig::algorithm(name))
            .collect::<Result<_, _>>()
            .map_err(|why| format!("`algorithms`: {why}"))?;
    }
    if let Some(seconds) = table.leeway_seconds {
        config.leeway = chrono::Duration::seconds(seconds.into());
    }
    if let Some(kind) = table.root_type {
        config.root = kind
            .parse::<RootKind>()
            .map_err(|why| format!("`root_type`: {why}"))?;
    }
    for (key, claim) in [
        ("run_claim", &table.run_claim),
        ("agent_claim", &table.agent_claim),
    ] {
        if claim
            .as_deref()
            .is_some_and(|claim| claim.trim().is_empty())
        {
            return Err(format!("`{key}` must not be empty"));
        }
    }
    config.run_claim = table.run_claim.unwrap_or(config.run_claim);
    config.agent_claim = table.agent_claim;
    Ok(Trust { config, keys })
}

/// A JWKS URL: https, or plain http to a loopback address only, since
/// anyone on the path could otherwise swap the keys.
fn jwks_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|why| format!("`jwks_url` `{text}`: {why}"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(format!(
            "`jwks_url` `{text}` is plain http, which is accepted only to a loopback \
             address (127.0.0.1, [::1], localhost): use https"
        )),
        other => Err(format!(
            "`jwks_url` `{text}`: the scheme `{other}` is not https"
        )),
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file `{}`", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file `{}`", path.display()))
}

fn display(path: Option<&Path>) -> String {
    path.map(|p| format!("`{}`", p.display()))
        .unwrap_or_default()
}

/// `off`, or an address to listen on.
fn parse_listen(text: &str) -> Result<Listen, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(Listen::Off);
    }
    text.trim()
        .parse()
        .map(Listen::At)
        .map_err(|why| format!("\"{text}\" is neither \"off\" nor an address: {why}"))
}

fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "full" => Ok(Durability::Full),
        "normal" => Ok(Durability::Normal),
        other => Err(format!("\"{other}\" is neither \"full\" nor \"normal\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custody.toml");
        std::fs::write(
            &file,
            "data_dir = \"/var/lib/custody\"\nlisten = \"0.0.0.0:8080\"\ndurability = \"normal\"\n\
             pending_postings = 1000\nsensitive = [\"*payroll*\"]\ngraph = false\n\
             sensitive_tags = [\"pii\"]\notlp_grpc_listen = \"off\"\n\
             otlp_http_listen = \"0.0.0.0:14318\"\n",
        )
        .unwrap();

        let defaults = Config::load(ServeArgs::default()).unwrap();
        assert_eq!(defaults.data_dir, PathBuf::from("./custody-data"));
        assert_eq!(defaults.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(defaults.store.durability, Durability::Full);
        assert_eq!(defaults.otlp_grpc_listen, Some(DEFAULT_OTLP_GRPC));
        assert_eq!(defaults.otlp_http_listen, Some(DEFAULT_OTLP_HTTP));
        assert_eq!(DEFAULT_OTLP_GRPC.to_string(), "127.0.0.1:4317");
        assert_eq!(DEFAULT_OTLP_HTTP.to_string(), "127.0.0.1:4318");

        let from_file = Config::load(ServeArgs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_file.data_dir, PathBuf::from("/var/lib/custody"));
        assert_eq!(from_file.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(from_file.store.durability, Durability::Normal);
        assert_eq!(from_file.store.max_pending_postings, 1000);
        assert_eq!(from_file.sensitive, ["*payroll*"]);
        assert_eq!(from_file.sensitive_tags, ["pii"]);
        assert!(!from_file.graph);
        assert_eq!(from_file.otlp_grpc_listen, None);
        assert_eq!(
            from_file.otlp_http_listen.unwrap().to_string(),
            "0.0.0.0:14318"
        );
        assert!(defaults.graph);
        assert_eq!(
            defaults.store.max_pending_postings,
            StoreOptions::default().max_pending_postings
        );

        let flagged = Config::load(ServeArgs {
            config: Some(file),
            listen: Some("127.0.0.1:9000".parse().unwrap()),
            pending_postings: Some(50),
            sensitive: vec!["*secret*".into()],
            otlp_grpc_listen: Some(parse_listen("127.0.0.1:14317").unwrap()),
            otlp_http_listen: Some(parse_listen("OFF").unwrap()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(flagged.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(flagged.store.max_pending_postings, 50);
        assert_eq!(flagged.sensitive, ["*secret*"]);
        assert_eq!(
            flagged.otlp_grpc_listen.unwrap().to_string(),
            "127.0.0.1:14317"
        );
        assert_eq!(flagged.otlp_http_listen, None);
        assert!(
            parse_listen("4317")
                .unwrap_err()
                .contains("neither \"off\"")
        );
        assert_eq!(flagged.data_dir, PathBuf::from("/var/lib/custody"));
    }

    /// The settings of a config file holding `text`, or the error.
    fn load(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custody.toml");
        std::fs::write(&file, text).unwrap();
        Config::load(ServeArgs {
            config: Some(file),
            ..Default::default()
        })
    }

    #[test]
    fn trusted_issuers_are_read_from_the_file() {
        let config = load(
            r#"
            [[issuers]]
            issuer = "https://idp.example.com"
            audience = "custody"
            jwks_file = "/etc/custody/idp.json"

            [[issuers]]
            issuer = "https://login.example.org"
            audience = ["custody", "api://custody"]
            jwks_url = "https://login.example.org/keys"
            algorithms = ["ES256", "PS256"]
            leeway_seconds = 5
            root_type = "service"
            run_claim = "run"
            agent_claim = "client_id"
            refresh_seconds = 60
            "#,
        )
        .unwrap();
        let [file, url] = config.issuers.as_slice() else {
            panic!("two issuers: {:?}", config.issuers);
        };
        assert_eq!(file.keys, KeysFrom::File("/etc/custody/idp.json".into()));
        assert_eq!(
            file.config,
            ExternalConfig::new("https://idp.example.com", vec!["custody".into()])
        );
        assert_eq!(
            url.keys,
            KeysFrom::Url {
                url: "https://login.example.org/keys".parse().unwrap(),
                refresh: Duration::from_secs(60)
            }
        );
        let mut expected = ExternalConfig::new(
            "https://login.example.org",
            vec!["custody".into(), "api://custody".into()],
        );
        expected.algorithms = vec![
            custody_delegation::Algorithm::ES256,
            custody_delegation::Algorithm::PS256,
        ];
        expected.leeway = chrono::Duration::seconds(5);
        expected.root = RootKind::Service;
        expected.run_claim = "run".into();
        expected.agent_claim = Some("client_id".into());
        assert_eq!(url.config, expected);
        let loopback = load(
            "[[issuers]]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"http://[::1]:8080/jwks\"\n",
        )
        .unwrap();
        assert!(
            matches!(&loopback.issuers[0].keys, KeysFrom::Url { refresh, .. } if *refresh == DEFAULT_REFRESH)
        );
    }

    #[test]
    fn bad_issuers_stop_serve_naming_the_table_and_the_key() {
        let table = |rest: &str| {
            format!(
                "[[issuers]]\nissuer = \"https://idp.example.com\"\naudience = \"custody\"\n{rest}"
            )
        };
        let url = "jwks_url = \"https://idp.example.com/jwks\"\n";
        for (text, expected) in [
            (table(""), "set `jwks_url` or `jwks_file`"),
            (
                table("jwks_file = \"k.json\"\njwks_url = \"https://x/\"\n"),
                "not both",
            ),
            (
                table("jwks_url = \"http://idp.example.com/jwks\"\n"),
                "is plain http, which is accepted only to a loopback address",
            ),
            (
                table("jwks_url = \"ftp://x/\"\n"),
                "the scheme `ftp` is not https",
            ),
            (
                table("jwks_url = \"not a url\"\n"),
                "`jwks_url` `not a url`",
            ),
            (
                table("jwks_file = \"k.json\"\nrefresh_seconds = 5\n"),
                "`refresh_seconds` applies to `jwks_url` only",
            ),
            (
                table(&format!("{url}algorithms = [\"HS256\"]\n")),
                "`algorithms`: algorithm `HS256` is not accepted",
            ),
            (
                table(&format!("{url}algorithms = [\"none\"]\n")),
                "algorithm `none` is not accepted",
            ),
            (
                table(&format!("{url}root_type = \"agent\"\n")),
                "`root_type`: `agent` is neither `human` nor `service`",
            ),
            (
                table(&format!("{url}audience = []\n")).replacen("audience = \"custody\"\n", "", 1),
                "`audience` must name at least one",
            ),
            (table(&format!("{url}lewey = 3\n")), "unknown field `lewey`"),
            (
                format!("{}{}", table(url), table(url)),
                "issuers[1] (`https://idp.example.com`): the same issuer as issuers[0]",
            ),
        ] {
            let error = format!("{:#}", load(&text).unwrap_err());
            assert!(error.contains("custody.toml"), "{error}");
            assert!(error.contains(expected), "{text}\n{error}");
        }
    }

    #[test]
    fn bad_files_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custody.toml");
        std::fs::write(&file, "listen = \"nowhere\"\n").unwrap();
        let error = Config::load(ServeArgs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains("custody.toml") && text.contains("listen"),
            "{text}"
        );

        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let error = Config::load(ServeArgs {
            config: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `lisen`"),
            "{error:#}"
        );
    }
}
