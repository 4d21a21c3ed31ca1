//! An event as a Cedar request: the entities of its chain and target, its
//! scope (each entity with its ancestors, for the index) and its context.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
    Schema,
};
use custody_engine::Signal;
use custody_event::{AttributionMethod, PrincipalKind, RuntimeEvent};

use crate::{Blast, RunFacts};

/// What the index needs of a request: each scope entity with every entity
/// it is `in`, itself excluded.
#[derive(Debug)]
pub(crate) struct Scope {
    pub principal: EntityUid,
    pub principal_ancestors: Vec<EntityUid>,
    pub action: EntityUid,
    pub resource: EntityUid,
    pub resource_ancestors: Vec<EntityUid>,
}

/// An event put to the policies.
#[derive(Debug)]
pub(crate) struct Built {
    pub scope: Scope,
    pub request: Request,
    pub entities: Entities,
}

/// The request for `event`. With `schema`, Cedar checks the request and
/// entities against it; the context's shape is fixed here, so the decide
/// path skips that check and a test makes sure it would pass.
pub(crate) fn build(
    event: &RuntimeEvent,
    signals: &[Signal],
    facts: &RunFacts,
    schema: Option<&Schema>,
) -> Result<Built, String> {
    let chain = &event.actor;
    let mut entities: Vec<Entity> = Vec::new();
    // The root: a user or a service.
    let root = match &chain.root {
        Some(root) => Some(uid(principal_type(root.kind), &root.id)?),
        None => None,
    };
    let mut principal_ancestors: Vec<EntityUid> = Vec::new();
    // Entities without parents (the root, agent types, servers) are left
    // out of the store: one absent is in nothing and has no attributes,
    // as one present without parents, and the transitive closure Cedar
    // computes on each request is most of its cost.
    //
    // Each agent of the chain, root first, is a run in its agent type and
    // in the run above it.
    let mut above = root.clone();
    let agents = chain
        .agents
        .iter()
        .chain(std::iter::once(&chain.current).filter(|c| c.kind == PrincipalKind::Agent));
    let mut principal = None;
    for agent in agents {
        let agent_type = uid("Agent", &agent.id)?;
        let run = uid("Run", agent.run_id.as_deref().unwrap_or(&agent.id))?;
        let mut parents: HashSet<EntityUid> = [agent_type.clone()].into_iter().collect();
        parents.extend(above.clone());
        entities.push(Entity::new_no_attrs(run.clone(), parents));
        // Everything above this run is an ancestor of the acting one.
        principal_ancestors.extend(above.take());
        principal_ancestors.push(agent_type);
        above = Some(run.clone());
        principal = Some(run);
    }
    let principal = match principal {
        Some(run) => run,
        None => uid(principal_type(chain.current.kind), &chain.current.id)?,
    };
    if !entities.iter().any(|e| e.uid() == principal) {
        entities.push(Entity::new_no_attrs(principal.clone(), HashSet::new()));
    }
    principal_ancestors.retain(|ancestor| ancestor != &principal);
    let action = uid("Action", action_name(event))?;
    let target = &event.target;
    let mut resource_ancestors = Vec::new();
    let resource = match (&target.tool, &target.server) {
        (Some(tool), server) => {
            let mut parents = HashSet::new();
            if let Some(server) = server {
                let server = uid("Server", server)?;
                resource_ancestors.push(server.clone());
                parents.insert(server);
            }
            let tool = uid("Tool", tool)?;
            entities.push(Entity::new_no_attrs(tool.clone(), parents));
            tool
        }
        (None, Some(server)) => uid("Server", server)?,
        (None, None) => match (&target.resource, &target.system) {
            (Some(resource), _) => uid("Resource", resource)?,
            (None, Some(system)) => uid("System", system)?,
            (None, None) => uid("Resource", "")?,
        },
    };
    if !entities.iter().any(|e| e.uid() == resource) {
        entities.push(Entity::new_no_attrs(resource.clone(), HashSet::new()));
    }
    let context = context(event, signals, facts)?;
    let request = Request::new(
        principal.clone(),
        action.clone(),
        resource.clone(),
        context,
        schema,
    )
    .map_err(|e| e.to_string())?;
    let entities = Entities::from_entities(entities, schema).map_err(|e| e.to_string())?;
    Ok(Built {
        scope: Scope {
            principal,
            principal_ancestors,
            action,
            resource,
            resource_ancestors,
        },
        request,
        entities,
    })
}

/// The context, in the shape of the schema's `CallContext`.
fn context(event: &RuntimeEvent, signals: &[Signal], facts: &RunFacts) -> Result<Context, String> {
    // The gateway records a call's arguments, secrets redacted, as
    // `custody.arguments`; other sources may report `mcp.arguments`.
    let arguments = ["custody.arguments", "mcp.arguments"]
        .iter()
        .find_map(|key| event.attributes.get(*key))
        .map(ToString::to_string)
        .unwrap_or_default();
    let strings = |values: &mut dyn Iterator<Item = &str>| {
        RestrictedExpression::new_set(values.map(|v| RestrictedExpression::new_string(v.into())))
    };
    // Baseline deviations raised on this event count as the run's too.
    let baseline = strings(
        &mut facts.baseline.iter().map(String::as_str).chain(
            signals
                .iter()
                .map(|s| s.id.as_str())
                .filter(|id| id.starts_with("baseline.")),
        ),
    );
    let pairs = [
        ("depth", long(chain_depth(event))),
        (
            "kind",
            RestrictedExpression::new_string(event.kind.as_str().into()),
        ),
        (
            "authenticated",
            RestrictedExpression::new_bool(
                event.attribution.method == AttributionMethod::Authenticated,
            ),
        ),
        (
            "signals",
            strings(&mut signals.iter().map(|s| s.id.as_str())),
        ),
        ("arguments", RestrictedExpression::new_string(arguments)),
        ("blast", blast(&facts.blast)?),
        (
            "run_age",
            RestrictedExpression::new_long(facts.run_age_secs),
        ),
        (
            "findings",
            strings(&mut facts.findings.iter().map(String::as_str)),
        ),
        ("baseline", baseline),
    ];
    Context::from_pairs(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)))
        .map_err(|e| e.to_string())
}

fn blast(blast: &Blast) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record([
        ("systems".to_owned(), long(blast.systems)),
        ("resources".to_owned(), long(blast.resources)),
        ("sensitive".to_owned(), long(blast.sensitive)),
        ("credentials".to_owned(), long(blast.credentials)),
        ("privileged".to_owned(), long(blast.privileged)),
        ("fan_out".to_owned(), long(blast.fan_out)),
    ])
    .map_err(|e| e.to_string())
}

/// A count as a Cedar `Long`, which is signed: beyond it, the largest.
fn long(count: impl TryInto<i64>) -> RestrictedExpression {
    RestrictedExpression::new_long(count.try_into().unwrap_or(i64::MAX))
}

fn chain_depth(event: &RuntimeEvent) -> usize {
    event.actor.depth()
}

fn principal_type(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::Service => "Service",
        _ => "User",
    }
}

/// The action a call is: its MCP method, or `call` for anything else.
fn action_name(event: &RuntimeEvent) -> &str {
    match event.action.as_str() {
        action @ ("tools/call" | "resources/read" | "prompts/get") => action,
        _ => "call",
    }
}

/// An entity of one of Custody's types. Type names are parsed once: the
/// parse is a good part of building a request otherwise.
fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    static TYPES: OnceLock<Vec<(&'static str, EntityTypeName)>> = OnceLock::new();
    let types = TYPES.get_or_init(|| {
        [
            "User", "Service", "Agent", "Run", "Server", "Tool", "Resource", "System", "Action",
        ]
        .into_iter()
        .filter_map(|name| Some((name, EntityTypeName::from_str(name).ok()?)))
        .collect()
    });
    let kind = match types.iter().find(|(name, _)| *name == kind) {
        Some((_, parsed)) => parsed.clone(),
        None => EntityTypeName::from_str(kind).map_err(|e| e.to_string())?,
    };
    Ok(EntityUid::from_type_name_and_id(kind, EntityId::new(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decide path builds requests without the schema's check; this
    /// is the check, on calls of every shape the builder takes.
    #[test]
    fn requests_conform_to_the_schema() {
        let schema = crate::schema().unwrap();
        let chains = [
            serde_json::json!({"root": {"type": "human", "id": "alice"},
                "agents": [{"type": "agent", "id": "planner", "run_id": "r1"}],
                "current": {"type": "agent", "id": "coder", "run_id": "r2"}}),
            serde_json::json!({"current": {"type": "service", "id": "ci"}}),
            serde_json::json!({"current": {"type": "human", "id": "bob"}}),
        ];
        let targets = [
            serde_json::json!({"tool": "read_file", "server": "fs"}),
            serde_json::json!({"tool": "read_file"}),
            serde_json::json!({"server": "fs"}),
            serde_json::json!({"resource": "s3://b/k", "system": "aws"}),
            serde_json::json!({"system": "aws"}),
            serde_json::json!({}),
        ];
        let facts = RunFacts {
            blast: Blast {
                systems: u64::MAX,
                ..Blast::default()
            },
            run_age_secs: 5,
            findings: vec!["rule".into()],
            baseline: vec!["baseline.rate".into()],
        };
        for chain in &chains {
            for target in &targets {
                for action in ["tools/call", "resources/read", "s3:GetObject"] {
                    let event = custody_event::decode_value(serde_json::json!({
                        "kind": "tool_call", "action": action, "observed_at": "2026-11-26T10:00:00Z",
                        "source": {"type": "gateway"}, "actor": chain, "target": target,
                        "outcome": {"status": "success"},
                        "attributes": {"mcp.arguments": {"a": 1}},
                    }))
                    .unwrap()
                    .into_event(chrono::Utc::now(), custody_event::EventId::new_v7);
                    let signals = [Signal::new("baseline.first_seen", "new")];
                    build(&event, &signals, &facts, Some(&schema))
                        .unwrap_or_else(|e| panic!("{chain} {target} {action}: {e}"));
                }
            }
        }
    }
}
