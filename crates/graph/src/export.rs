//! Exports of the graph for other tools: BloodHound OpenGraph JSON.

use crate::graph::{EdgeKind, NodeKind, Subgraph};

/// The OpenGraph `source_kind` of everything Custody exports.
pub const SOURCE_KIND: &str = "Custody";

/// A subgraph as a BloodHound OpenGraph document: nodes with Custody kinds
/// (`CustodyHuman`, `CustodyRun`, ...) and properties, edges with Custody
/// kinds (`CustodyDeployed`, ...) and their sightings, matched by id.
pub fn opengraph(subgraph: &Subgraph) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = subgraph
        .nodes
        .iter()
        .map(|node| {
            let radius = &node.blast_radius;
            let mut properties = serde_json::Map::new();
            let mut set = |name: &str, value: serde_json::Value| {
                properties.insert(name.to_owned(), value);
            };
            set("objectid", node.key.to_string().into());
            set(
                "name",
                node.name
                    .clone()
                    .unwrap_or_else(|| node.key.id.clone())
                    .into(),
            );
            set("custody_id", node.key.id.clone().into());
            set("first_seen", node.first_seen.to_rfc3339().into());
            set("last_seen", node.last_seen.to_rfc3339().into());
            if *radius != crate::BlastRadius::default() {
                set("blast_systems", radius.systems.into());
                set("blast_resources", radius.resources.into());
                set(
                    "blast_sensitive_resources",
                    radius.sensitive_resources.into(),
                );
                set("blast_identities_created", radius.identities_created.into());
                set(
                    "blast_credentials_created",
                    radius.credentials_created.into(),
                );
                set("blast_privileged_actions", radius.privileged_actions.into());
                set("blast_depth", radius.depth.into());
                set("blast_fan_out", radius.fan_out.into());
            }
            serde_json::json!({
                "id": node.key.to_string(),
                "kinds": [node_kind(node.key.kind), SOURCE_KIND],
                "properties": properties,
            })
        })
        .collect();
    let edges: Vec<serde_json::Value> = subgraph
        .edges
        .iter()
        .map(|edge| {
            serde_json::json!({
                "kind": edge_kind(edge.kind),
                "start": {"value": edge.from.to_string(), "match_by": "id"},
                "end": {"value": edge.to.to_string(), "match_by": "id"},
                "properties": {
                    "first_seen": edge.seen.first_seen.to_rfc3339(),
                    "last_seen": edge.seen.last_seen.to_rfc3339(),
                    "count": edge.seen.count,
                    "first_event": edge.seen.first_event.to_string(),
                    "last_event": edge.seen.last_event.to_string(),
                },
            })
        })
        .collect();
    serde_json::json!({
        "metadata": {"source_kind": SOURCE_KIND},
        "graph": {"nodes": nodes, "edges": edges},
    })
}

fn node_kind(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Human => "CustodyHuman",
        NodeKind::Service => "CustodyService",
        NodeKind::Agent => "CustodyAgent",
        NodeKind::SubAgent => "CustodySubAgent",
        NodeKind::Run => "CustodyRun",
        NodeKind::Credential => "CustodyCredential",
        NodeKind::Role => "CustodyRole",
        NodeKind::Tool => "CustodyTool",
        NodeKind::Server => "CustodyServer",
        NodeKind::Resource => "CustodyResource",
        NodeKind::System => "CustodySystem",
    }
}

fn edge_kind(kind: EdgeKind) -> &'static str {
    match kind {
        EdgeKind::Deployed => "CustodyDeployed",
        EdgeKind::Delegated => "CustodyDelegated",
        EdgeKind::Spawned => "CustodySpawned",
        EdgeKind::Holds => "CustodyHolds",
        EdgeKind::Used => "CustodyUsed",
        EdgeKind::Assumed => "CustodyAssumed",
        EdgeKind::Called => "CustodyCalled",
        EdgeKind::Read => "CustodyRead",
        EdgeKind::Wrote => "CustodyWrote",
        EdgeKind::Created => "CustodyCreated",
    }
}
