//! `GET /v1/lineage/{event_id}`: the chain of custody of one action, from the
//! root to the actor that acted, with how each link is known.
//!
//! The event carries its chain and the evidence of its attribution. Each
//! agent of the chain whose run was started through Custody's delegation
//! service also has the `agent_spawn` event that minted its token: who
//! spawned it, when, with which token and scopes. An agent with none was not
//! spawned through Custody, and says so.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use custody_event::{EventId, EventKind, Principal, RuntimeEvent};
use custody_store::{EventQuery, Store, StoreError};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::ApiError;

/// `GET /v1/lineage/{event_id}` (viewer).
pub(crate) async fn lineage(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let id = crate::query::event_id(&id)?;
    let body = crate::query::read(&state, move |store| Ok(build(store, id))).await??;
    Ok(axum::Json(body).into_response())
}

fn build(store: &Store, id: EventId) -> Result<serde_json::Value, ApiError> {
    let stored = store
        .get(id)?
        .ok_or_else(|| ApiError::NotFound(format!("no event has id {id}")))?;
    let event = stored.event()?;
    let actor = &event.actor;
    let mut links = Vec::new();
    if let Some(root) = &actor.root {
        links.push(serde_json::json!({"role": "root", "principal": root}));
    }
    for agent in &actor.agents {
        links.push(link("agent", agent, spawn_of(store, agent)?));
    }
    links.push(link(
        "actor",
        &actor.current,
        spawn_of(store, &actor.current)?,
    ));
    if let Some(credential) = &actor.credential {
        links.push(serde_json::json!({"role": "credential", "credential": credential}));
    }
    Ok(serde_json::json!({
        "event": {
            "id": event.id,
            "kind": event.kind,
            "action": event.action,
            "observed_at": event.observed_at,
            "target": event.target,
            "outcome": event.outcome,
        },
        "attribution": event.attribution,
        "chain": links,
    }))
}

/// A link of the chain with the event that spawned it, if any.
fn link(role: &str, principal: &Principal, spawn: Option<RuntimeEvent>) -> serde_json::Value {
    let spawned = spawn.map_or(serde_json::Value::Null, |spawn| {
        serde_json::json!({
            "event": spawn.id,
            "observed_at": spawn.observed_at,
            "action": spawn.action,
            "by": spawn.actor.current,
            "token": spawn.attributes.get("custody.minted_token"),
            "scope": spawn.attributes.get("custody.scope"),
            "attribution": spawn.attribution.method,
        })
    });
    serde_json::json!({"role": role, "principal": principal, "spawned": spawned})
}

/// The `agent_spawn` event, by Custody, that started `principal`'s run: the
/// newest spawn, recorded by Custody, whose target is that agent in that
/// run. Found through the postings of the run's id, which only the run's own
/// events and its spawn name as a target.
fn spawn_of(store: &Store, principal: &Principal) -> Result<Option<RuntimeEvent>, StoreError> {
    let Some(run) = &principal.run_id else {
        return Ok(None);
    };
    let mut query = EventQuery {
        target: Some(run.clone()),
        kinds: vec![EventKind::AgentSpawn],
        limit: 100,
        ..EventQuery::default()
    };
    // Bounded: a run id reused by hundreds of spawns is looked up over its
    // latest pages only.
    for _ in 0..5 {
        let page = store.query(&query)?;
        for stored in &page.events {
            let spawn = stored.event()?;
            let by_custody = spawn
                .attribution
                .evidence
                .iter()
                .any(|e| e.kind == custody_engine::CUSTODY_EVIDENCE);
            let names_run = spawn
                .target
                .principal
                .as_ref()
                .is_some_and(|p| p.id == principal.id && p.run_id.as_deref() == Some(run));
            if by_custody && names_run {
                return Ok(Some(spawn));
            }
        }
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => break,
        }
    }
    Ok(None)
}
