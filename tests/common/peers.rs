//! The real MCP peers the end-to-end tests run against, installed by
//! `tests/peers/install.sh` into `target/mcp-peers` (once per test run).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where `tests/peers/install.sh` puts the peers: `target/mcp-peers`.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("mcp-peers")
}

/// The installed peers.
pub struct Peers {
    /// The Python of the virtual environment holding the `mcp` SDK.
    pub python: PathBuf,
    /// `@modelcontextprotocol/server-everything`'s entry point.
    pub everything: PathBuf,
    /// The npm packages' directory.
    pub node_modules: PathBuf,
}

/// The installed peers, installed first if need be (once per test run),
/// `None` when skipping was asked for; fails the test when they cannot be
/// installed.
pub fn peers() -> Option<Peers> {
    let dir = peers_dir();
    let node_modules = dir.join("node/node_modules");
    let peers = Peers {
        python: dir.join("venv/bin/python"),
        everything: node_modules.join("@modelcontextprotocol/server-everything/dist/index.js"),
        node_modules,
    };
    if std::env::var_os("CUSTODY_SKIP_MCP_PEERS").is_some_and(|v| v == "1") {
        eprintln!("skipping: CUSTODY_SKIP_MCP_PEERS=1 asks to skip the tests of real MCP peers");
        return None;
    }
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| install(&dir));
    if let Err(why) = installed {
        panic!(
            "the MCP peers are not installed in {} and installing them failed ({why}): \
             `tests/peers/install.sh` needs npm and python3 with network access to npmjs.org \
             and PyPI; CUSTODY_SKIP_MCP_PEERS=1 skips the tests that need them",
            dir.display()
        );
    }
    Some(peers)
}

/// Runs `tests/peers/install.sh` into `dir`; it leaves what is installed at
/// the pinned versions alone.
fn install(dir: &Path) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/install.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir)
        .output()
        .map_err(|error| format!("running {}: {error}", script.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} exited with {}: {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
