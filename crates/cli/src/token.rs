//! `custody token`: create, list and revoke API tokens in the local store.
//!
//! These work on the data directory directly, next to or without a running
//! server: whoever can read the data directory is already its administrator.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use custody_api::Role;
use custody_store::{Store, StoreOptions};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is kept).
    Create {
        /// ingest, viewer, responder or admin.
        #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
        /// The server's data directory.
        #[arg(long, env = "CUSTODY_DATA_DIR", default_value = "./custody-data")]
        data_dir: PathBuf,
    },
    /// List tokens (never their secrets).
    List {
        /// The server's data directory.
        #[arg(long, env = "CUSTODY_DATA_DIR", default_value = "./custody-data")]
        data_dir: PathBuf,
    },
    /// Revoke a token by its id.
    Revoke {
        /// The token's id, as `custody token list` shows it.
        id: String,
        /// The server's data directory.
        #[arg(long, env = "CUSTODY_DATA_DIR", default_value = "./custody-data")]
        data_dir: PathBuf,
    },
}

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            role,
            name,
            data_dir,
        } => {
            let store = open(&data_dir)?;
            let issued = custody_api::issue_token(&store, role, name)?;
            eprintln!("created {} token {} (shown once):", role, issued.record.id);
            println!("{}", issued.secret);
        }
        TokenCommand::List { data_dir } => {
            let store = open(&data_dir)?;
            println!(
                "{:<16} {:<10} {:<25} {:<25} NAME",
                "ID", "ROLE", "CREATED", "REVOKED"
            );
            for token in store.list_tokens()? {
                println!(
                    "{:<16} {:<10} {:<25} {:<25} {}",
                    token.id,
                    token.role,
                    token
                        .created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    token
                        .revoked_at
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                    token.name.unwrap_or_default()
                );
            }
        }
        TokenCommand::Revoke { id, data_dir } => {
            let store = open(&data_dir)?;
            anyhow::ensure!(store.revoke_token(&id)?, "no active token has id \"{id}\"");
            eprintln!("revoked token {id}");
        }
    }
    Ok(())
}

fn open(data_dir: &std::path::Path) -> anyhow::Result<Store> {
    anyhow::ensure!(
        data_dir.join("custody.db").exists(),
        "no store in `{}`: start `custody serve` there first, or pass --data-dir",
        data_dir.display()
    );
    Store::open(data_dir, StoreOptions::default())
        .with_context(|| format!("opening the store in `{}`", data_dir.display()))
}
