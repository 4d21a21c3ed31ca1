//! The gateway's setup the benchmarks share: agent tokens for alice's
//! bench agent, and a gateway in front of one echo upstream.

use std::time::Duration;

use custody_event::{Principal, PrincipalKind};
use custody_gateway::http::{GatewayConfig, Target, UpstreamConfig};

/// How long the benchmarks' agent tokens live.
pub const LIFETIME_HOURS: i64 = 1;

/// An agent token of alice's `bench-agent` in `run`.
pub fn mint(issuer: &custody_delegation::Issuer, run: &str) -> String {
    let principal = |kind, id: &str, run: Option<&str>| Principal {
        kind,
        id: id.into(),
        name: None,
        version: None,
        run_id: run.map(str::to_owned),
    };
    issuer
        .mint(
            &principal(PrincipalKind::Human, "alice@example.com", None),
            &principal(PrincipalKind::Agent, "bench-agent", Some(run)),
            &[],
            chrono::Duration::hours(LIFETIME_HOURS),
            chrono::Utc::now(),
        )
        .expect("minting")
        .token
}

/// The gateway at `public`/mcp in front of the echo `upstream`, with
/// `relay`'s limits and at most `max_sessions` sessions, `per_caller` each.
pub fn config(
    public: &str,
    upstream: &str,
    relay: custody_gateway::Config,
    max_sessions: usize,
    per_caller: usize,
) -> GatewayConfig {
    GatewayConfig {
        path: "/mcp".into(),
        upstreams: vec![UpstreamConfig {
            name: "echo".into(),
            prefix: String::new(),
            target: Target::Http {
                url: upstream.to_owned(),
                headers: Vec::new(),
            },
            rules: custody_gateway::ToolRules::default(),
        }],
        relay,
        separator: "__".into(),
        allowed_origins: Vec::new(),
        max_sessions,
        max_sessions_per_caller: per_caller,
        idle_timeout: Duration::from_secs(3600),
        resource: format!("{public}/mcp"),
        authorization_servers: vec![public.to_owned()],
    }
}
