//! Who the calls of a session are made by: an agent token Custody verified,
//! or a chain the host declared.

use custody_engine::Provenance;
use custody_event::{Actor, Principal, PrincipalKind};

/// The identity a session's calls are attributed to.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    /// An agent token Custody verified: its calls are `authenticated`.
    Token {
        /// The token's id, the evidence.
        token_id: String,
        /// The chain it carries.
        chain: Actor,
    },
    /// A chain the host declared on the command line: reported, never
    /// `authenticated`.
    Declared(Actor),
}

impl Identity {
    /// A declared chain: `root` (`human:ID` or `service:ID`), the agent,
    /// and its run.
    pub fn declared(
        root: Option<&str>,
        agent: &str,
        run: Option<&str>,
    ) -> Result<Identity, String> {
        let root = root
            .map(|root| {
                let (kind, id) = root
                    .split_once(':')
                    .ok_or_else(|| format!("`{root}` is not KIND:ID (human:alice@example.com)"))?;
                let kind = match kind {
                    "human" => PrincipalKind::Human,
                    "service" => PrincipalKind::Service,
                    other => return Err(format!("a root is `human` or `service`, not `{other}`")),
                };
                if id.is_empty() {
                    return Err(format!("`{root}` names no one"));
                }
                Ok(principal(kind, id, None))
            })
            .transpose()?;
        if agent.is_empty() {
            return Err("the agent's name is empty".into());
        }
        Ok(Identity::Declared(Actor {
            root,
            agents: Vec::new(),
            current: principal(PrincipalKind::Agent, agent, run),
            credential: None,
        }))
    }

    /// The chain the calls are made by.
    pub fn chain(&self) -> &Actor {
        match self {
            Identity::Token { chain, .. } | Identity::Declared(chain) => chain,
        }
    }

    /// Who vouches for the calls, for the engine.
    pub fn provenance(&self) -> Provenance {
        match self {
            Identity::Token { token_id, chain } => Provenance::Authenticated {
                token: token_id.clone(),
                chain: chain.clone(),
            },
            Identity::Declared(_) => Provenance::Reported,
        }
    }
}

fn principal(kind: PrincipalKind, id: &str, run: Option<&str>) -> Principal {
    Principal {
        kind,
        id: id.to_owned(),
        name: None,
        version: None,
        run_id: run.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_chains_are_reported() {
        let identity =
            Identity::declared(Some("human:alice@example.com"), "coder", Some("run-7")).unwrap();
        assert_eq!(identity.provenance(), Provenance::Reported);
        let chain = identity.chain();
        assert_eq!(chain.root_id(), Some("alice@example.com"));
        assert_eq!(chain.run_id(), Some("run-7"));
        for bad in ["alice", "agent:x", "human:"] {
            assert!(
                Identity::declared(Some(bad), "coder", None).is_err(),
                "{bad}"
            );
        }
    }
}
