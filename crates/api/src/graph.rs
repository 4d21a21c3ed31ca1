//! The agent graph's queries, when the server keeps the graph
//! (`custody serve` keeps it unless `--no-graph`): a subgraph (JSON or BloodHound OpenGraph),
//! every chain that touched a resource, and a node's blast radius.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use custody_graph::{BlastRadius, EdgeView, Graph, NodeKey, NodeView};
use serde::Deserialize;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::{AppState, Params};

/// Nodes a subgraph returns at most.
const MAX_NODES: usize = 5000;

/// `GET /v1/graph` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GraphParams {
    /// The starting node, `kind:id`.
    root: String,
    /// How many edges away, 1 to 10 (default 2).
    #[serde(default)]
    depth: Option<usize>,
    /// The most nodes (default and at most 5000).
    #[serde(default)]
    limit: Option<usize>,
    /// Only edges last seen at or after this time: RFC 3339, or an age
    /// such as `2h`.
    #[serde(default)]
    since: Option<String>,
    /// `json` (default) or `opengraph`.
    #[serde(default)]
    format: Option<String>,
}

/// `GET /v1/graph` (viewer).
pub(crate) async fn subgraph(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<GraphParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let root = node_key(&params.root, "root")?;
    let depth = params.depth.unwrap_or(2);
    if !(1..=10).contains(&depth) {
        return Err(ApiError::BadRequest("depth: must be 1 to 10".into()));
    }
    let limit = params.limit.unwrap_or(MAX_NODES).clamp(1, MAX_NODES);
    let opengraph = match params.format.as_deref() {
        None | Some("json") => false,
        Some("opengraph") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format: `{other}` is not `json` or `opengraph`"
            )));
        }
    };
    let since = params
        .since
        .as_deref()
        .map(|since| crate::query::parse_time("since", since, chrono::Utc::now()))
        .transpose()?;
    let found = read(&state, |graph| graph.subgraph(&root, depth, limit, since))?
        .ok_or_else(|| ApiError::NotFound(format!("no node {root} in the graph")))?;
    let body = if opengraph {
        custody_graph::opengraph(&found)
    } else {
        serde_json::json!({
            "nodes": found.nodes.iter().map(node).collect::<Vec<_>>(),
            "edges": found.edges.iter().map(edge).collect::<Vec<_>>(),
        })
    };
    Ok(axum::Json(body).into_response())
}

/// `GET /v1/who` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WhoParams {
    /// A resource (or tool, server, system, credential, role) id.
    resource: String,
    /// The most chains (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/who` (viewer): every chain that touched a resource.
pub(crate) async fn who(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<WhoParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let chains = read(&state, |graph| graph.who(&params.resource, limit))?;
    let chains: Vec<Vec<serde_json::Value>> = chains
        .iter()
        .map(|chain| chain.iter().map(edge).collect())
        .collect();
    Ok(
        axum::Json(serde_json::json!({"resource": params.resource, "chains": chains}))
            .into_response(),
    )
}

/// `GET /v1/blast-radius/{node}` (viewer), the node written `kind:id`.
pub(crate) async fn blast_radius(
    State(state): State<AppState>,
    caller: Caller,
    Path(written): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let key = node_key(&written, "node")?;
    let view = read(&state, |graph| graph.node_view(&key))?
        .ok_or_else(|| ApiError::NotFound(format!("no node {key} in the graph")))?;
    Ok(axum::Json(node(&view)).into_response())
}

fn node_key(text: &str, name: &str) -> Result<NodeKey, ApiError> {
    NodeKey::parse(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{name}: `{text}` is not `kind:id` with kind one of human, service, agent, \
             sub_agent, run, credential, role, tool, server, resource, system"
        ))
    })
}

fn read<R>(state: &AppState, f: impl FnOnce(&Graph) -> R) -> Result<R, ApiError> {
    state
        .graph
        .as_ref()
        .and_then(|live| live.read(f))
        .ok_or_else(|| {
            ApiError::NotFound(
                "this server keeps no agent graph (it was started with --no-graph)".into(),
            )
        })
}

fn node(view: &NodeView) -> serde_json::Value {
    serde_json::json!({
        "node": view.key.to_string(),
        "kind": view.key.kind.as_str(),
        "id": view.key.id,
        "name": view.name,
        "first_seen": view.first_seen,
        "last_seen": view.last_seen,
        "blast_radius": radius(&view.blast_radius),
    })
}

fn radius(radius: &BlastRadius) -> serde_json::Value {
    serde_json::json!({
        "systems": radius.systems,
        "resources": radius.resources,
        "sensitive_resources": radius.sensitive_resources,
        "identities_created": radius.identities_created,
        "credentials_created": radius.credentials_created,
        "privileged_actions": radius.privileged_actions,
        "depth": radius.depth,
        "fan_out": radius.fan_out,
    })
}

fn edge(edge: &EdgeView) -> serde_json::Value {
    serde_json::json!({
        "from": edge.from.to_string(),
        "kind": edge.kind.as_str(),
        "to": edge.to.to_string(),
        "first_seen": edge.seen.first_seen,
        "last_seen": edge.seen.last_seen,
        "count": edge.seen.count,
        "first_event": edge.seen.first_event,
        "last_event": edge.seen.last_event,
    })
}
