//! What the MCP gateway needs of the server: agent tokens verified like
//! every other caller's (Custody's keys, trusted issuers, revocations),
//! and its calls recorded through the server's own engine, so that they
//! are attributed and added to the graph like any event.

use std::sync::Arc;

use chrono::Utc;
use custody_engine::{Decision, Engine, Provenance, Verdict};
use custody_event::NewEvent;
use custody_gateway::http::{Authenticate, Authenticating, Caller, Unauthenticated};
use custody_gateway::{Identity, RecordFailure, Recorder, Recording};

use crate::auth::{TOKEN_PREFIX, bearer};
use crate::{AppState, delegate};

/// Authenticates the gateway's callers against the server's delegation
/// service; `anonymous`, when set, is who an unauthenticated caller is
/// (off by default: the gateway then answers 401).
#[derive(Debug, Clone)]
pub struct GatewayAuth {
    state: AppState,
    anonymous: Option<Identity>,
}

impl GatewayAuth {
    /// Callers authenticated by `state`'s delegation service.
    pub fn new(state: AppState, anonymous: Option<Identity>) -> GatewayAuth {
        GatewayAuth { state, anonymous }
    }

    fn recorder(&self, provenance: Provenance) -> Arc<dyn Recorder> {
        Arc::new(EngineRecorder {
            engine: self.state.engine.clone(),
            provenance,
        })
    }
}

impl Authenticate for GatewayAuth {
    fn authenticate<'a>(&'a self, authorization: Option<&'a str>) -> Authenticating<'a> {
        Box::pin(async move {
            let Some(authorization) = authorization else {
                let Some(identity) = self.anonymous.clone() else {
                    return Err(Unauthenticated::Missing);
                };
                let chain = identity.chain();
                let owner = format!(
                    "declared:{}/{}",
                    chain.current.id,
                    chain.run_id().unwrap_or_default()
                );
                return Ok(Caller {
                    owner,
                    recorder: self.recorder(identity.provenance()),
                    identity,
                });
            };
            let secret =
                bearer(Some(authorization)).map_err(|e| Unauthenticated::Refused(e.to_string()))?;
            if secret.starts_with(TOKEN_PREFIX) {
                return Err(Unauthenticated::Refused(
                    "the gateway takes agent tokens, not API tokens".into(),
                ));
            }
            let Some(delegation) = &self.state.delegation else {
                return Err(Unauthenticated::Refused(
                    "this server verifies no agent tokens".into(),
                ));
            };
            match delegation.accept(secret).await {
                Ok(accepted) => {
                    let crate::Caller {
                        token_id, agent, ..
                    } = crate::Caller::agent(accepted);
                    let Some(chain) = agent else {
                        return Err(Unauthenticated::Refused(
                            "the token carries no chain".into(),
                        ));
                    };
                    let owner = format!("token:{token_id}");
                    let identity = Identity::Token { token_id, chain };
                    Ok(Caller {
                        owner,
                        recorder: self.recorder(identity.provenance()),
                        identity,
                    })
                }
                Err(error) => {
                    let why = error.to_string();
                    delegate::record_refusal(&self.state, "mcp gateway", secret, &why).await;
                    Err(Unauthenticated::Refused(why))
                }
            }
        })
    }
}

/// The decision the gateway enforced on `event`, from the attributes it
/// wrote (`custody.verdict`, `custody.reasons`); events it decided nothing
/// about (a tool list that changed) are allowed.
fn enforced(event: &NewEvent) -> Decision {
    let verdict = event
        .attributes
        .get("custody.verdict")
        .and_then(|v| serde_json::from_value::<Verdict>(v.clone()).ok());
    let reasons = event
        .attributes
        .get("custody.reasons")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default();
    match verdict {
        Some(verdict) => Decision { verdict, reasons },
        None => Decision::allow(),
    }
}

/// Records the gateway's events through the server's engine, vouched for
/// as the session's identity is.
struct EngineRecorder {
    engine: Arc<Engine>,
    provenance: Provenance,
}

impl Recorder for EngineRecorder {
    fn record<'a>(&'a self, events: &'a [NewEvent]) -> Recording<'a> {
        Box::pin(async move {
            let unavailable =
                |e: custody_engine::RecordError| RecordFailure::Unavailable(e.to_string());
            // The decision stored is the one the gateway enforced.
            let decided = events
                .iter()
                .map(|event| (event.clone(), enforced(event)))
                .collect();
            let ingested = self
                .engine
                .ingest_decided_as(decided, Utc::now(), &self.provenance)
                .map_err(unavailable)?;
            ingested.receipt.durable().await.map_err(unavailable)
        })
    }
}
