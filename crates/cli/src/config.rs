//! The server's settings, from flags, the environment and a TOML file.
//!
//! A flag wins over its environment variable, which wins over the file,
//! which wins over the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use custody_store::{Durability, StoreOptions};
use serde::Deserialize;

/// Flags of `custody serve`; each also reads an environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below.
    #[arg(long, env = "CUSTODY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the store lives [default: ./custody-data].
    #[arg(long, env = "CUSTODY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the API listens on [default: 127.0.0.1:7070].
    #[arg(long, env = "CUSTODY_LISTEN")]
    pub listen: Option<SocketAddr>,
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
    durability: Option<String>,
    queue_capacity: Option<usize>,
    max_body_bytes: Option<usize>,
    public_url: Option<String>,
    graph: Option<bool>,
    sensitive: Option<Vec<String>>,
    pending_postings: Option<usize>,
}

/// The settings `custody serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Address the API listens on.
    pub listen: SocketAddr,
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
            store,
            limits,
            public_url: args.public_url.or(file.public_url),
            graph: !args.no_graph && file.graph.unwrap_or(true),
            sensitive: if args.sensitive.is_empty() {
                file.sensitive.unwrap_or_default()
            } else {
                args.sensitive
            },
        })
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
             pending_postings = 1000\nsensitive = [\"*payroll*\"]\ngraph = false\n",
        )
        .unwrap();

        let defaults = Config::load(ServeArgs::default()).unwrap();
        assert_eq!(defaults.data_dir, PathBuf::from("./custody-data"));
        assert_eq!(defaults.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(defaults.store.durability, Durability::Full);

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
        assert!(!from_file.graph);
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
            ..Default::default()
        })
        .unwrap();
        assert_eq!(flagged.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(flagged.store.max_pending_postings, 50);
        assert_eq!(flagged.sensitive, ["*secret*"]);
        assert_eq!(flagged.data_dir, PathBuf::from("/var/lib/custody"));
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
