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
//! it (open findings, threshold crossings, baseline deviations), the
//! call's arguments as JSON text, and what is known of the acting run
//! beyond the event ([`Facts`]): its blast radius so far, its age, the
//! rules of the open findings on it or a run above it, and the baseline
//! deviations raised on it.
//!
//! The arguments are text because the schema is fixed and arguments are
//! whatever a tool takes: match them with `like`, whose `*` is any run of
//! characters, on the compact JSON text of the event's `custody.arguments`
//! attribute, as the gateway records them with secrets redacted (else
//! `mcp.arguments`), keys in their recorded order and no spaces:
//! `context.arguments like "*\"repo\":\"acme/payments\"*"`.
//!
//! Forbid overrides permit, as in Cedar; a call no policy permits is
//! refused. A forbid annotated `@hold` holds the call for approval instead
//! of refusing it, unless a forbid without it also applies. Every decision
//! names the policies that decided it. Policies are read from files, each
//! policy's id its `@id` annotation or `FILE#N`; they are validated against
//! [`SCHEMA`], and an error names its file and line. A set has a
//! [`version`](Policies::version), a digest of its files, that approvals
//! bind to. [`Cedar`] is the engine's decide stage, whose policies can be
//! replaced while it runs: a set that does not load is refused and the
//! running one stays.
//!
//! Each request is authorized only against the policies whose scope it
//! could be in (`index.rs`), which gives the same decisions as the whole
//! set at a cost that grows with the policies in scope, not all of them.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod dir;
mod index;
mod request;

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Decision as CedarDecision, Policy, PolicyId, PolicySet, Schema, ValidationMode,
    Validator,
};
use custody_engine::{Decide, Decision, Reason, ReasonSource, Signal, Verdict};
use custody_event::RuntimeEvent;
use sha2::{Digest, Sha256};

pub use dir::read_dir;

use index::Index;

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

type Blast = {
    "systems": Long,
    "resources": Long,
    "sensitive": Long,
    "credentials": Long,
    "privileged": Long,
    "fan_out": Long,
};

type CallContext = {
    "depth": Long,
    "kind": String,
    "authenticated": Bool,
    "signals": Set<String>,
    "arguments": String,
    "blast": Blast,
    "run_age": Long,
    "findings": Set<String>,
    "baseline": Set<String>,
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

/// What is known of the acting run beyond the event, for the context.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    /// The run's blast radius so far.
    pub blast: Blast,
    /// Seconds since the run was first seen.
    pub run_age_secs: i64,
    /// The rule ids of the open findings on the run or a run above it.
    pub findings: Vec<String>,
    /// The baseline signals raised on the run (`baseline.first_seen`, ...).
    pub baseline: Vec<String>,
}

/// A run's blast radius: what it reached, counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Blast {
    /// Systems touched.
    pub systems: u64,
    /// Resources touched.
    pub resources: u64,
    /// Sensitive resources touched.
    pub sensitive: u64,
    /// Identities and credentials created.
    pub credentials: u64,
    /// Privileged actions taken.
    pub privileged: u64,
    /// Sub-agents spawned.
    pub fan_out: u64,
}

/// Where the decide stage learns the acting run's facts (the graph, the
/// open findings, the baselines).
pub trait Facts: Send + Sync {
    /// The facts of the run acting in `event`.
    fn facts(&self, event: &RuntimeEvent) -> RunFacts;
}

impl<F> Facts for F
where
    F: Fn(&RuntimeEvent) -> RunFacts + Send + Sync,
{
    fn facts(&self, event: &RuntimeEvent) -> RunFacts {
        self(event)
    }
}

/// A set of policies, loaded and validated.
#[derive(Debug)]
pub struct Policies {
    set: PolicySet,
    index: Index,
    version: String,
    authorizer: Authorizer,
}

/// The line of byte `offset` in `text`, 1-based.
fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |before| before.matches('\n').count() + 1)
}

/// The first 16 hex digits of the SHA-256 of the files, in name order,
/// each as its name's and text's lengths and bytes.
fn version(files: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = files.iter().collect();
    sorted.sort();
    let mut digest = Sha256::new();
    for (name, text) in sorted {
        for part in [name, text] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part.as_bytes());
        }
    }
    digest
        .finalize()
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
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
        // The policies in the order of the files, for the index.
        let mut ordered: Vec<Policy> = Vec::new();
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
                let policy = policy.new_id(id.clone());
                if let Err(error) = set.add(policy.clone()) {
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
                ordered.push(policy);
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
                index: Index::new(ordered),
                version: version(files),
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

    /// The set's version: the first 16 hex digits of a SHA-256 over its
    /// files' names and texts, whatever order they were given in.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The decision on `event`, given the signals detection raised on it,
    /// knowing nothing of its run (zeros and empty sets).
    pub fn decide(&self, event: &RuntimeEvent, signals: &[Signal]) -> Decision {
        self.decide_with(event, signals, &RunFacts::default())
    }

    /// The decision on `event`, given the signals detection raised on it
    /// and the facts of its run.
    pub fn decide_with(
        &self,
        event: &RuntimeEvent,
        signals: &[Signal],
        facts: &RunFacts,
    ) -> Decision {
        match request::build(event, signals, facts, None) {
            Ok(built) => {
                let candidates = self.index.candidates(&built.scope);
                self.answer(&built, &candidates)
            }
            Err(why) => {
                Decision::fail_closed(format!("the call could not be put to the policies: {why}"))
            }
        }
    }

    /// [`Policies::decide_with`] against the whole set, without the index:
    /// what the index must agree with, and the benchmark's comparison.
    #[doc(hidden)]
    pub fn decide_unindexed(
        &self,
        event: &RuntimeEvent,
        signals: &[Signal],
        facts: &RunFacts,
    ) -> Decision {
        match request::build(event, signals, facts, None) {
            Ok(built) => self.answer(&built, &self.set),
            Err(why) => {
                Decision::fail_closed(format!("the call could not be put to the policies: {why}"))
            }
        }
    }

    /// The decision on `built` by the policies of `set`, all of which are
    /// this set's.
    fn answer(&self, built: &request::Built, set: &PolicySet) -> Decision {
        let response = self
            .authorizer
            .is_authorized(&built.request, set, &built.entities);
        let mut deciding: Vec<&PolicyId> = response.diagnostics().reason().collect();
        // Cedar reports them in no particular order.
        deciding.sort_unstable();
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
                                .map_or_else(|| "forbidden by policy".to_owned(), str::to_owned);
                            reason(id, why)
                        })
                        .collect(),
                }
            }
        }
    }
}

/// The decide stage: the policies in force, replaceable while it runs,
/// and where the facts of each call's run come from.
pub struct Cedar {
    current: RwLock<Arc<Policies>>,
    facts: Option<Arc<dyn Facts>>,
}

impl fmt::Debug for Cedar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cedar")
            .field("current", &self.current)
            .field("facts", &self.facts.is_some())
            .finish()
    }
}

impl Cedar {
    /// The stage deciding by `policies`, knowing nothing of runs.
    pub fn new(policies: Policies) -> Cedar {
        Cedar {
            current: RwLock::new(Arc::new(policies)),
            facts: None,
        }
    }

    /// The stage, asking `facts` for each call's run.
    pub fn with_facts(self, facts: Arc<dyn Facts>) -> Cedar {
        Cedar {
            facts: Some(facts),
            ..self
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

    /// Replaces the policies with the `*.cedar` files under `path`
    /// ([`read_dir`]), if they are read and load; otherwise the running
    /// policies stay and the errors are returned.
    pub fn reload_dir(&self, path: impl AsRef<std::path::Path>) -> Result<usize, Vec<PolicyError>> {
        let files = read_dir(path).map_err(|error| vec![error])?;
        self.reload(&files)
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
        let facts = self
            .facts
            .as_ref()
            .map(|facts| facts.facts(event))
            .unwrap_or_default();
        self.policies().decide_with(event, signals, &facts)
    }
}
