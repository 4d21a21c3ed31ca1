//! Inline authorization with Cedar policies.
//!
//! Each call is a Cedar request: the principal is the acting **run**
//! (`Run::"run-2"`), whose entity parents are its agent type, the run
//! that spawned it and, at the top, the human or service at the root of
//! the chain, so `principal in User::"alice@example.com"` covers every
//! agent alice deployed and their sub-agents, and
//! `principal in Agent::"coder"` every run of that agent type. The action
//! is the MCP method (`Action::"tools/call"`); the resource is the tool
//! (`Tool::"read_file"`, in its `Server`), else the resource, server or
//! system named. The context holds the chain's depth, the event's kind,
//! whether it is authenticated, the ids of the signals detection raised on
//! it (open findings, threshold crossings, baseline deviations), and the
//! call's arguments as JSON text.
//!
//! Forbid overrides permit, as in Cedar; a call no policy permits is
//! refused. A forbid annotated `@hold` holds the call for approval instead
//! of refusing it, unless a forbid without it also applies. Every decision
//! names the policies that decided it. Policies are read from files, each
//! policy's id its `@id` annotation or `FILE#N`; they are validated against
//! [`SCHEMA`], and an error names its file and line. [`Cedar`] is the
//! engine's decide stage, whose policies can be replaced while it runs: a
//! set that does not load is refused and the running one stays.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, Request, Schema, ValidationMode, Validator,
};
use custody_engine::{Decide, Decision, Reason, ReasonSource, Signal, Verdict};
use custody_event::{PrincipalKind, RuntimeEvent};

/// The schema Custody's policies are validated against.
pub const SCHEMA: &str = r#"
entity User;
entity Service;
entity Agent;
entity Run in [Run, Agent, User, Service];
entity Server;
entity Tool in [Server];
entity Resource;
entity System;

type CallContext = {
    "depth": Long,
    "kind": String,
    "authenticated": Bool,
    "signals": Set<String>,
    "arguments": String,
};

action "tools/call", "resources/read", "prompts/get", "call" appliesTo {
    principal: [Run, Agent, User, Service],
    resource: [Tool, Server, Resource, System],
    context: CallContext,
};
"#;

/// What is wrong with a policy file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file.
    pub file: String,
    /// The line, 1-based, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

/// A set of policies, loaded and validated.
#[derive(Debug)]
pub struct Policies {
    set: PolicySet,
    schema: Schema,
    authorizer: Authorizer,
}

/// The line of byte `offset` in `text`, 1-based.
fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |before| before.matches('\n').count() + 1)
}

fn schema() -> Result<Schema, String> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| format!("Custody's policy schema does not load: {e}"))
}

impl Policies {
    /// Parses and validates `files` (name, text). Every error of every file
    /// is reported.
    pub fn load(files: &[(String, String)]) -> Result<Policies, Vec<PolicyError>> {
        let schema = schema().map_err(|message| {
            vec![PolicyError {
                file: "(schema)".into(),
                line: None,
                message,
            }]
        })?;
        let mut set = PolicySet::new();
        let mut errors = Vec::new();
        // Where each policy came from, for validation errors.
        let mut origins: Vec<(PolicyId, String, String)> = Vec::new();
        for (name, text) in files {
            let parsed = match PolicySet::from_str(text) {
                Ok(parsed) => parsed,
                Err(parse) => {
                    for error in parse.iter() {
                        let line = miette::Diagnostic::labels(error)
                            .and_then(|mut labels| labels.next())
                            .map(|label| line_at(text, label.offset()));
                        errors.push(PolicyError {
                            file: name.clone(),
                            line,
                            message: error.to_string(),
                        });
                    }
                    continue;
                }
            };
            let mut policies: Vec<&Policy> = parsed.policies().collect();
            // Parsed ids follow the file's order: policy0, policy1, ...
            policies.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(usize::MAX)
            });
            for (index, policy) in policies.into_iter().enumerate() {
                let id = policy
                    .annotation("id")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{name}#{index}"));
                let id = PolicyId::new(id);
                if let Err(error) = set.add(policy.new_id(id.clone())) {
                    // The id clashed: it is an `@id` written in the file.
                    let line = text
                        .find(&format!("\"{id}\""))
                        .map(|offset| line_at(text, offset));
                    errors.push(PolicyError {
                        file: name.clone(),
                        line,
                        message: format!("policy `{id}`: {error}"),
                    });
                    continue;
                }
                origins.push((id, name.clone(), text.clone()));
            }
        }
        if errors.is_empty() {
            let validator = Validator::new(schema.clone());
            let result = validator.validate(&set, ValidationMode::Strict);
            for error in result.validation_errors() {
                let id = error.policy_id();
                let (file, line) = origins
                    .iter()
                    .find(|(known, _, _)| known == id)
                    .map(|(_, file, text)| {
                        // The error's span is in the file's text.
                        let line = miette::Diagnostic::labels(error)
                            .and_then(|mut labels| labels.next())
                            .map(|label| line_at(text, label.offset()));
                        (file.clone(), line)
                    })
                    .unwrap_or_else(|| ("(policies)".into(), None));
                errors.push(PolicyError {
                    file,
                    line,
                    message: format!("policy `{id}`: {error}"),
                });
            }
        }
        if errors.is_empty() {
            Ok(Policies {
                set,
                schema,
                authorizer: Authorizer::new(),
            })
        } else {
            Err(errors)
        }
    }

    /// How many policies are loaded.
    pub fn len(&self) -> usize {
        self.set.policies().count()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decision on `event`, given the signals detection raised on it.
    pub fn decide(&self, event: &RuntimeEvent, signals: &[Signal]) -> Decision {
        match self.request(event, signals) {
            Ok((request, entities)) => {
                let response = self
                    .authorizer
                    .is_authorized(&request, &self.set, &entities);
                let deciding: Vec<&PolicyId> = response.diagnostics().reason().collect();
                let errors: Vec<String> = response
                    .diagnostics()
                    .errors()
                    .map(ToString::to_string)
                    .collect();
                let reason = |id: &PolicyId, message: String| Reason {
                    source: ReasonSource::Policy,
                    id: id.to_string(),
                    message,
                };
                match response.decision() {
                    CedarDecision::Allow => Decision {
                        verdict: Verdict::Allow,
                        reasons: deciding
                            .iter()
                            .map(|id| reason(id, "permitted".into()))
                            .collect(),
                    },
                    CedarDecision::Deny if deciding.is_empty() => Decision {
                        verdict: Verdict::Deny,
                        reasons: vec![Reason {
                            source: ReasonSource::Policy,
                            id: "policy.not_permitted".into(),
                            message: if errors.is_empty() {
                                "no policy permits this call".into()
                            } else {
                                format!("no policy permits this call ({})", errors.join("; "))
                            },
                        }],
                    },
                    CedarDecision::Deny => {
                        // A forbid annotated `@hold` holds the call, unless
                        // a forbid without it also applies.
                        let hold = deciding
                            .iter()
                            .all(|id| self.set.annotation(id, "hold").is_some());
                        let verdict = if hold {
                            Verdict::RequireApproval
                        } else {
                            Verdict::Deny
                        };
                        Decision {
                            verdict,
                            reasons: deciding
                                .iter()
                                .map(|id| {
                                    let why = self
                                        .set
                                        .annotation(id, "reason")
                                        .or_else(|| self.set.annotation(id, "hold"))
                                        .filter(|why| !why.is_empty())
                                        .map_or_else(
                                            || "forbidden by policy".to_owned(),
                                            str::to_owned,
                                        );
                                    reason(id, why)
                                })
                                .collect(),
                        }
                    }
                }
            }
            Err(why) => {
                Decision::fail_closed(format!("the call could not be put to the policies: {why}"))
            }
        }
    }

    /// The Cedar request for `event`, and the entities of its chain.
    fn request(
        &self,
        event: &RuntimeEvent,
        signals: &[Signal],
    ) -> Result<(Request, Entities), String> {
        let chain = &event.actor;
        let mut entities: Vec<Entity> = Vec::new();
        // The root: a user or a service.
        let root = match &chain.root {
            Some(root) => {
                let kind = match root.kind {
                    PrincipalKind::Service => "Service",
                    _ => "User",
                };
                Some(uid(kind, &root.id)?)
            }
            None => None,
        };
        if let Some(root) = &root {
            entities.push(Entity::new_no_attrs(root.clone(), HashSet::new()));
        }
        // Each agent of the chain, root first, is a run in its agent type
        // and in the run above it.
        let mut above = root.clone();
        let agents = chain
            .agents
            .iter()
            .chain(std::iter::once(&chain.current).filter(|c| c.kind == PrincipalKind::Agent));
        let mut principal = None;
        for agent in agents {
            let agent_type = uid("Agent", &agent.id)?;
            entities.push(Entity::new_no_attrs(agent_type.clone(), HashSet::new()));
            let run = uid("Run", agent.run_id.as_deref().unwrap_or(&agent.id))?;
            let mut parents: HashSet<EntityUid> = [agent_type].into_iter().collect();
            parents.extend(above.clone());
            entities.push(Entity::new_no_attrs(run.clone(), parents));
            above = Some(run.clone());
            principal = Some(run);
        }
        let principal = match principal {
            Some(run) => run,
            None => match chain.current.kind {
                PrincipalKind::Service => uid("Service", &chain.current.id)?,
                _ => uid("User", &chain.current.id)?,
            },
        };
        if !entities.iter().any(|e| e.uid() == principal) {
            entities.push(Entity::new_no_attrs(principal.clone(), HashSet::new()));
        }
        let action = uid("Action", &action_name(event))?;
        let target = &event.target;
        let resource = match (&target.tool, &target.server) {
            (Some(tool), server) => {
                let mut parents = HashSet::new();
                if let Some(server) = server {
                    let server = uid("Server", server)?;
                    entities.push(Entity::new_no_attrs(server.clone(), HashSet::new()));
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
        let arguments = event
            .attributes
            .get("mcp.arguments")
            .map(ToString::to_string)
            .unwrap_or_default();
        let context = serde_json::json!({
            "depth": chain.depth(),
            "kind": event.kind.as_str(),
            "authenticated": event.attribution.method == custody_event::AttributionMethod::Authenticated,
            "signals": signals.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            "arguments": arguments,
        });
        let context = Context::from_json_value(context, Some((&self.schema, &action)))
            .map_err(|e| e.to_string())?;
        let request = Request::new(principal, action, resource, context, Some(&self.schema))
            .map_err(|e| e.to_string())?;
        let entities =
            Entities::from_entities(entities, Some(&self.schema)).map_err(|e| e.to_string())?;
        Ok((request, entities))
    }
}

/// The action a call is: its MCP method, or `call` for anything else.
fn action_name(event: &RuntimeEvent) -> String {
    match event.action.as_str() {
        "tools/call" | "resources/read" | "prompts/get" => event.action.clone(),
        _ => "call".into(),
    }
}

/// An entity of one of Custody's types.
fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let kind = EntityTypeName::from_str(kind).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(kind, EntityId::new(id)))
}

/// The decide stage: the policies in force, replaceable while it runs.
#[derive(Debug)]
pub struct Cedar {
    current: RwLock<Arc<Policies>>,
}

impl Cedar {
    /// The stage deciding by `policies`.
    pub fn new(policies: Policies) -> Cedar {
        Cedar {
            current: RwLock::new(Arc::new(policies)),
        }
    }

    /// Replaces the policies with `files`, if they load; otherwise the
    /// running policies stay and the errors are returned.
    pub fn reload(&self, files: &[(String, String)]) -> Result<usize, Vec<PolicyError>> {
        let policies = Policies::load(files)?;
        let count = policies.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policies);
        Ok(count)
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<Policies> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Decide for Cedar {
    fn decide(&self, event: &RuntimeEvent, signals: &[Signal]) -> Decision {
        self.policies().decide(event, signals)
    }
}
