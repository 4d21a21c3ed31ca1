//! The agent graph: typed nodes and edges built from attributed events, with
//! every node's blast radius kept up to date as events arrive.
//!
//! How an event becomes nodes and edges (its chain is root -> agents ->
//! current actor -> credential):
//!
//! | from | edge | to | when |
//! | --- | --- | --- | --- |
//! | root (human or service) | `deployed` | first hop | the chain has a root |
//! | a hop | `delegated` | the next hop | always: the chain is authority lineage |
//! | current actor | `spawned` | target principal's hop | `agent_spawn` events |
//! | current actor | `holds`, `used` | credential | the event names one |
//! | current actor | `called` | tool, server | the target names them |
//! | current actor | `read` or `wrote` | resource | by the action's verb (see [`Verb`]) |
//! | current actor | `used` | system | the target names one |
//! | current actor | `created` | credential or identity | a creating action on one |
//! | current actor | `assumed` | role | an assuming action on a role |
//!
//! A *hop* is an agent's run when the principal names its run, else the
//! principal itself: blast radius and lineage are about runs, one execution
//! each. An agent below another agent in a chain is a `sub_agent` node.
//!
//! An `unattributed` event adds its current actor and what it did, but no
//! lineage: the root and agents its source reported are not taken on trust.
//!
//! *Invariant:* applying an event costs O(chain depth + targets): the blast
//! radius of every hop of the event's chain is updated along that chain,
//! never by walking the graph.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::hash::BuildHasher as _;

use chrono::{DateTime, Utc};
use custody_event::{
    AttributionMethod, EventId, EventKind, Principal, PrincipalKind, RuntimeEvent,
};

use crate::arena::{Chunked, Index, NONE, Name, Names};

type Set<T> = HashSet<T, foldhash::fast::RandomState>;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    /// A person.
    Human,
    /// A non-human workload that is not an agent.
    Service,
    /// An agent at the top of a chain.
    Agent,
    /// An agent acting under another agent.
    SubAgent,
    /// One execution of an agent.
    Run,
    /// An access key, token, session or other credential.
    Credential,
    /// A role or service account.
    Role,
    /// A tool.
    Tool,
    /// An MCP server or other tool host.
    Server,
    /// A data object: a file, an S3 object, a table, a repository.
    Resource,
    /// An AWS account, an Okta org, a GitHub org.
    System,
}

impl NodeKind {
    /// Every kind.
    pub const ALL: [NodeKind; 11] = [
        NodeKind::Human,
        NodeKind::Service,
        NodeKind::Agent,
        NodeKind::SubAgent,
        NodeKind::Run,
        NodeKind::Credential,
        NodeKind::Role,
        NodeKind::Tool,
        NodeKind::Server,
        NodeKind::Resource,
        NodeKind::System,
    ];

    /// The kind named `name`, as [`NodeKind::as_str`] names it.
    pub fn parse(name: &str) -> Option<NodeKind> {
        NodeKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The name used in dumps and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Human => "human",
            NodeKind::Service => "service",
            NodeKind::Agent => "agent",
            NodeKind::SubAgent => "sub_agent",
            NodeKind::Run => "run",
            NodeKind::Credential => "credential",
            NodeKind::Role => "role",
            NodeKind::Tool => "tool",
            NodeKind::Server => "server",
            NodeKind::Resource => "resource",
            NodeKind::System => "system",
        }
    }
}

/// What an edge says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeKind {
    /// A human or service started an agent.
    Deployed,
    /// An identity passed its authority on to the next in the chain.
    Delegated,
    /// An agent started a sub-agent.
    Spawned,
    /// An identity holds a credential.
    Holds,
    /// An identity used a credential or a system.
    Used,
    /// An identity assumed a role.
    Assumed,
    /// An identity called a tool or a server.
    Called,
    /// An identity read a resource.
    Read,
    /// An identity wrote a resource.
    Wrote,
    /// An identity created a credential or an identity.
    Created,
}

impl EdgeKind {
    /// The name used in dumps and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Deployed => "deployed",
            EdgeKind::Delegated => "delegated",
            EdgeKind::Spawned => "spawned",
            EdgeKind::Holds => "holds",
            EdgeKind::Used => "used",
            EdgeKind::Assumed => "assumed",
            EdgeKind::Called => "called",
            EdgeKind::Read => "read",
            EdgeKind::Wrote => "wrote",
            EdgeKind::Created => "created",
        }
    }
}

/// A node's identity: its kind and its id at the source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    /// What it is.
    pub kind: NodeKind,
    /// Its stable id: an email, an agent id, a run id, an ARN, a URI.
    pub id: String,
}

impl NodeKey {
    /// The key written `kind:id` (as [`std::fmt::Display`] writes it), e.g.
    /// `run:run-0` or `resource:arn:aws:s3:::payroll/q3.csv`.
    pub fn parse(text: &str) -> Option<NodeKey> {
        let (kind, id) = text.split_once(':')?;
        let kind = NodeKind::parse(kind)?;
        (!id.is_empty()).then(|| NodeKey::new(kind, id))
    }

    /// A key of `kind` for `id`.
    pub fn new(kind: NodeKind, id: impl Into<String>) -> NodeKey {
        NodeKey {
            kind,
            id: id.into(),
        }
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// When an edge was seen, how often, and the events that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSeen {
    /// The first observation.
    pub first_seen: DateTime<Utc>,
    /// The latest observation.
    pub last_seen: DateTime<Utc>,
    /// How many events made it.
    pub count: u64,
    /// The event that first made it.
    pub first_event: EventId,
    /// The event that last made it.
    pub last_event: EventId,
}

/// What a node's subtree has touched: everything the chains through it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlastRadius {
    /// Distinct systems.
    pub systems: usize,
    /// Distinct resources.
    pub resources: usize,
    /// Distinct resources labelled sensitive.
    pub sensitive_resources: usize,
    /// Distinct identities created (sub-agents spawned, users or roles made).
    pub identities_created: usize,
    /// Distinct credentials created.
    pub credentials_created: usize,
    /// Privileged actions (`privilege_change` events).
    pub privileged_actions: u64,
    /// The most hops below this node in any chain through it.
    pub depth: usize,
    /// The most direct children of any hop in its subtree.
    pub fan_out: usize,
}

/// Which resources are sensitive: those whose names match a pattern, where
/// `*` matches any run of characters (`arn:aws:s3:::payroll*`,
/// `*customer*`), and those an event tags: an attribute `KEY` of the event,
/// with the value `VALUE` if the tag names one (`data.classification=
/// confidential`), labels the event's resource. A label, once seen, stays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sensitivity {
    patterns: Vec<String>,
    tags: Vec<(String, Option<TagValue>)>,
}

/// A tag's value: as text, and as the JSON value it reads as, if any
/// (`true`, `3`), so attributes of either form match.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TagValue {
    text: String,
    json: Option<serde_json::Value>,
}

impl TagValue {
    fn matches(&self, found: &serde_json::Value) -> bool {
        found.as_str() == Some(self.text.as_str()) || self.json.as_ref() == Some(found)
    }
}

impl Sensitivity {
    /// Labels resources matching any of `patterns` sensitive.
    pub fn new(patterns: impl IntoIterator<Item = impl Into<String>>) -> Sensitivity {
        Sensitivity {
            patterns: patterns.into_iter().map(Into::into).collect(),
            tags: Vec::new(),
        }
    }

    /// The same, also labelling the resource of any event carrying one of
    /// `tags`, each written `KEY` or `KEY=VALUE`.
    pub fn with_tags(mut self, tags: impl IntoIterator<Item = impl AsRef<str>>) -> Sensitivity {
        self.tags = tags
            .into_iter()
            .map(|tag| match tag.as_ref().split_once('=') {
                Some((key, value)) => (
                    key.to_owned(),
                    Some(TagValue {
                        text: value.to_owned(),
                        json: serde_json::from_str(value).ok(),
                    }),
                ),
                None => (tag.as_ref().to_owned(), None),
            })
            .collect();
        self
    }

    /// Whether `resource` matches a pattern.
    pub fn is_sensitive(&self, resource: &str) -> bool {
        self.patterns
            .iter()
            .any(|pattern| glob_matches(pattern, resource))
    }

    /// Whether `event` carries a sensitivity tag for its resource.
    pub fn tags(&self, event: &RuntimeEvent) -> bool {
        self.tags.iter().any(|(key, value)| {
            event
                .attributes
                .get(key)
                .is_some_and(|found| value.as_ref().is_none_or(|value| value.matches(found)))
        })
    }
}

/// Whether `text` matches `pattern`, in which `*` stands for any run of
/// characters (none included) and everything else for itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the prefix had to be the whole text.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = rest.get(at + part.len()..).unwrap_or_default(),
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// What kind of access an action is, judged from its name: the last
/// segment after `:`, `/` or `.` (`s3:GetObject` -> `GetObject`,
/// `resources/read` -> `read`), by its leading verb, or else by the first of
/// its `_`-separated words that is one (`git_commit` -> `commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Reads, lists, describes, gets, fetches, searches.
    Read,
    /// Writes, puts, updates, deletes, commits, sends.
    Write,
    /// Creates or adds something new.
    Create,
    /// Assumes a role or impersonates.
    Assume,
    /// Anything else.
    Other,
}

impl Verb {
    /// The verb of an action name.
    pub fn of(action: &str) -> Verb {
        let last = action
            .rsplit([':', '/', '.'])
            .next()
            .unwrap_or(action)
            .to_ascii_lowercase();
        std::iter::once(last.as_str())
            .chain(last.split(['_', '-']))
            .map(Verb::of_word)
            .find(|verb| *verb != Verb::Other)
            .unwrap_or(Verb::Other)
    }

    fn of_word(word: &str) -> Verb {
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| word.starts_with(p));
        if starts(&["assume", "impersonate"]) {
            Verb::Assume
        } else if starts(&["create", "add", "generate", "issue", "mint", "register"]) {
            Verb::Create
        } else if starts(&[
            "get", "read", "list", "describe", "search", "fetch", "head", "query", "select",
            "download", "view", "lookup",
        ]) {
            Verb::Read
        } else if starts(&[
            "put", "write", "update", "delete", "remove", "commit", "push", "send", "post",
            "upload", "modify", "set", "attach", "detach", "copy", "insert", "drop",
        ]) {
            Verb::Write
        } else {
            Verb::Other
        }
    }
}

/// One node of the graph. Times are nanoseconds since the epoch; links are
/// indices, [`NONE`] for none.
#[derive(Debug)]
struct Node {
    first_seen: i64,
    last_seen: i64,
    id: Name,
    name: Option<Name>,
    /// Its blast radius in `Graph::radii`: kept only by nodes that are hops
    /// of some chain (identities), as most nodes never need one.
    radius: u32,
    /// The newest edge from this node; the rest follow `Edge::next_out`.
    first_out: u32,
    /// The newest edge into this node; the rest follow `Edge::next_in`.
    first_in: u32,
    kind: NodeKind,
    /// A resource whose name matches a sensitivity pattern.
    sensitive: bool,
}

/// One edge, linked into its two ends' lists.
#[derive(Debug)]
struct Edge {
    first_seen: i64,
    last_seen: i64,
    count: u64,
    first_event: EventId,
    last_event: EventId,
    from: u32,
    to: u32,
    next_out: u32,
    next_in: u32,
    kind: EdgeKind,
}

/// The blast radius state a node keeps for its subtree.
#[derive(Debug, Clone, Default)]
struct Radius {
    systems: Set<u32>,
    resources: Set<u32>,
    sensitive: usize,
    identities_created: Set<u32>,
    credentials_created: Set<u32>,
    privileged_actions: u64,
    depth: usize,
    children: Set<u32>,
    fan_out: usize,
}

/// Edges a subgraph looks at per node it may return.
const SCAN_PER_NODE: usize = 20;

/// The longest lineage path followed, in edges.
const MAX_LINEAGE: usize = 64;

/// A node as the graph reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Its kind and id.
    pub key: NodeKey,
    /// Its display name, if any source gave one.
    pub name: Option<String>,
    /// The first event naming it.
    pub first_seen: DateTime<Utc>,
    /// The latest event naming it.
    pub last_seen: DateTime<Utc>,
    /// What its subtree touched (empty for non-identities).
    pub blast_radius: BlastRadius,
}

/// An edge as the graph reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeView {
    /// Where it starts.
    pub from: NodeKey,
    /// What it says.
    pub kind: EdgeKind,
    /// Where it ends.
    pub to: NodeKey,
    /// When it was seen, and by which events.
    pub seen: EdgeSeen,
}

/// Part of the graph: nodes, and the edges among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subgraph {
    /// The nodes, the starting one first.
    pub nodes: Vec<NodeView>,
    /// The edges between them.
    pub edges: Vec<EdgeView>,
}

/// The agent graph, in memory. Nodes, edges and names live in chunks that
/// never move and are found through sharded hash indexes (see `arena.rs`),
/// so a growing graph never stalls the event that grows it.
#[derive(Default)]
pub struct Graph {
    nodes: Chunked<Node>,
    edges: Chunked<Edge>,
    radii: Chunked<Radius>,
    names: Names,
    /// Nodes by the hash of their kind and id.
    node_index: Index,
    /// Edges by the hash of their ends and kind.
    edge_index: Index,
    /// Seeded per graph: ids come from untrusted sources.
    hasher: foldhash::fast::RandomState,
    sensitivity: Sensitivity,
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.nodes.len())
            .field("edges", &self.edges.len())
            .field("sensitivity", &self.sensitivity)
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// An empty graph labelling resources with `sensitivity`.
    pub fn new(sensitivity: Sensitivity) -> Graph {
        Graph {
            sensitivity,
            ..Graph::default()
        }
    }

    /// Adds what `event` says to the graph and to the blast radius of every
    /// hop of its chain.
    pub fn apply(&mut self, event: &RuntimeEvent) {
        let at = event.observed_at;
        let id = event.id;
        let actor = &event.actor;
        // An unattributed event's chain is only what its source claimed: the
        // graph takes its current actor alone, never a lineage on its word.
        let (root, agents) = if event.attribution.method == AttributionMethod::Unattributed {
            (None, &[][..])
        } else {
            (actor.root.as_ref(), &actor.agents[..])
        };
        // The chain's hops, root first.
        let mut path: Vec<u32> = Vec::with_capacity(agents.len() + 2);
        if let Some(root) = root {
            let kind = match root.kind {
                PrincipalKind::Service => NodeKind::Service,
                _ => NodeKind::Human,
            };
            path.push(self.node(kind, &root.id, root.name.as_deref(), at));
        }
        let hops = agents.iter().chain(std::iter::once(&actor.current));
        // Whether every link so far was seen before: their children, depth
        // and fan-out are then counted already.
        let mut seen_before = true;
        for (depth, principal) in hops.enumerate() {
            // Every hop after the first has an agent above it.
            let below_agent = depth > 0;
            let hop = self.hop(principal, below_agent, at);
            if !path.is_empty() {
                let kind = if parent_is_root(root.is_some(), path.len()) {
                    EdgeKind::Deployed
                } else {
                    EdgeKind::Delegated
                };
                seen_before = self.link(&path, kind, hop, at, id, seen_before);
            }
            path.push(hop);
        }
        let Some(&current) = path.last() else {
            return;
        };

        if let Some(credential) = &actor.credential {
            let node = self.node(NodeKind::Credential, &credential.id, None, at);
            self.edge(current, EdgeKind::Holds, node, at, id);
            self.edge(current, EdgeKind::Used, node, at, id);
        }

        // A generic action (`tools/call`) says less than the tool's name.
        let verb = match (Verb::of(&event.action), &event.target.tool) {
            (Verb::Other, Some(tool)) => Verb::of(tool),
            (verb, _) => verb,
        };
        let target = &event.target;
        for (tool_or_server, kind) in [
            (target.tool.as_deref(), NodeKind::Tool),
            (target.server.as_deref(), NodeKind::Server),
        ] {
            if let Some(name) = tool_or_server {
                let node = self.node(kind, name, None, at);
                self.edge(current, EdgeKind::Called, node, at, id);
            }
        }
        if let Some(system) = &target.system {
            let node = self.node(NodeKind::System, system, None, at);
            self.edge(current, EdgeKind::Used, node, at, id);
            self.each_hop(&path, |radius| {
                radius.systems.insert(node);
            });
        }
        if let Some(resource) = &target.resource {
            let credential = is_credential(target.resource_type.as_deref());
            let kind = if credential {
                NodeKind::Credential
            } else {
                NodeKind::Resource
            };
            let tagged = !credential && self.sensitivity.tags(event);
            let known = self.nodes.len();
            let node = self.node(kind, resource, None, at);
            if tagged {
                if self.nodes.len() > known {
                    // New: no hop has counted it yet.
                    if let Some(n) = self.nodes.get_mut(node) {
                        n.sensitive = true;
                    }
                } else {
                    self.label_sensitive(node);
                }
            }
            let edge = match verb {
                Verb::Create => EdgeKind::Created,
                Verb::Write => EdgeKind::Wrote,
                Verb::Read if !credential => EdgeKind::Read,
                // Nothing says whether it was read or written.
                _ => EdgeKind::Used,
            };
            self.edge(current, edge, node, at, id);
            let sensitive = self.nodes.get(node).is_some_and(|n| n.sensitive);
            self.each_hop(&path, |radius| {
                if credential {
                    if edge == EdgeKind::Created {
                        radius.credentials_created.insert(node);
                    }
                } else if radius.resources.insert(node) && sensitive {
                    radius.sensitive += 1;
                }
            });
        }
        if let Some(principal) = &target.principal {
            self.target_principal(event, &path, principal, verb);
        }
        if event.kind == EventKind::PrivilegeChange {
            self.each_hop(&path, |radius| radius.privileged_actions += 1);
        }
    }

    /// The blast radius of a node, if the graph has it.
    pub fn blast_radius(&self, key: &NodeKey) -> Option<BlastRadius> {
        let node = self.lookup(key.kind, &key.id)?;
        Some(self.radius_of(node))
    }

    /// What the graph knows of a node.
    pub fn node_view(&self, key: &NodeKey) -> Option<NodeView> {
        self.view(self.lookup(key.kind, &key.id)?)
    }

    /// The nodes and edges reachable from `root` along outgoing edges last
    /// seen at `since` or later, at most `depth` edges away, and at most
    /// `limit` nodes: breadth first, each node's newest edges first, so the
    /// nearest and the latest are kept. At most 20 edges per node allowed
    /// are looked at.
    pub fn subgraph(
        &self,
        root: &NodeKey,
        depth: usize,
        limit: usize,
        since: Option<DateTime<Utc>>,
    ) -> Option<Subgraph> {
        let start = self.lookup(root.kind, &root.id)?;
        let since = since.map_or(i64::MIN, nanos);
        let mut seen: Set<u32> = Set::default();
        seen.insert(start);
        let mut order = vec![start];
        let mut frontier = vec![start];
        let mut edges = Vec::new();
        // Edges looked at, at most: a node with millions of edges (a shared
        // service account) must not make one request walk them all.
        let mut budget = limit.saturating_mul(SCAN_PER_NODE);
        for _ in 0..depth {
            let mut next = Vec::new();
            for &node in &frontier {
                for edge in self.out_edges(node) {
                    if budget == 0 {
                        break;
                    }
                    budget -= 1;
                    let Some(e) = self.edges.get(edge) else {
                        continue;
                    };
                    if e.last_seen < since {
                        continue;
                    }
                    if !seen.contains(&e.to) {
                        if seen.len() >= limit {
                            continue;
                        }
                        seen.insert(e.to);
                        order.push(e.to);
                        next.push(e.to);
                    }
                    edges.extend(self.edge_view(edge));
                }
            }
            frontier = next;
        }
        Some(Subgraph {
            nodes: order.into_iter().filter_map(|n| self.view(n)).collect(),
            edges,
        })
    }

    /// Every chain that touched `resource` (or a tool, server, system or
    /// credential with that id): from each identity with an edge into it up
    /// to the roots above, along `deployed`, `delegated` and `spawned`
    /// edges. At most `limit` chains, the latest identities first; a chain
    /// is root first and ends with the edge into the resource.
    pub fn who(&self, id: &str, limit: usize) -> Vec<Vec<EdgeView>> {
        let targets = [
            NodeKind::Resource,
            NodeKind::Credential,
            NodeKind::Tool,
            NodeKind::Server,
            NodeKind::System,
            NodeKind::Role,
        ]
        .into_iter()
        .filter_map(|kind| self.lookup(kind, id));
        let mut chains = Vec::new();
        for target in targets {
            for edge in self.in_edges(target) {
                let (Some(last), Some(e)) = (self.edge_view(edge), self.edges.get(edge)) else {
                    continue;
                };
                for mut path in self.paths_up(e.from, limit.saturating_sub(chains.len())) {
                    path.push(last.clone());
                    chains.push(path);
                }
                if chains.len() >= limit {
                    return chains;
                }
            }
        }
        chains
    }

    /// How many nodes and edges the graph holds.
    pub fn size(&self) -> (usize, usize) {
        (self.nodes.len(), self.edges.len())
    }

    /// About how many bytes the graph holds: its nodes, edges, names,
    /// indexes and blast radius sets.
    pub fn memory(&self) -> usize {
        let set = |set: &Set<u32>| set.capacity() * (std::mem::size_of::<u32>() + 1);
        let radii: usize = self
            .radii
            .iter()
            .map(|(_, r)| {
                std::mem::size_of::<Radius>()
                    + set(&r.systems)
                    + set(&r.resources)
                    + set(&r.identities_created)
                    + set(&r.credentials_created)
                    + set(&r.children)
            })
            .sum();
        self.nodes.len() * std::mem::size_of::<Node>()
            + self.edges.len() * std::mem::size_of::<Edge>()
            + radii
            + self.names.capacity()
            + self.node_index.capacity()
            + self.edge_index.capacity()
    }

    /// The edge from `from` to `to` of `kind`, if seen.
    pub fn edge_seen(&self, from: &NodeKey, kind: EdgeKind, to: &NodeKey) -> Option<EdgeSeen> {
        let from = self.lookup(from.kind, &from.id)?;
        let to = self.lookup(to.kind, &to.id)?;
        let edge = self.find_edge(self.edge_hash(from, kind, to), from, kind, to)?;
        self.edges.get(edge).map(seen)
    }

    /// The whole graph as sorted text, one node or edge a line, with every
    /// node's blast radius: for snapshot tests and debugging.
    pub fn dump(&self) -> String {
        let mut nodes: Vec<(NodeKey, u32)> = self
            .nodes
            .iter()
            .map(|(index, _)| (self.key_of(index), index))
            .collect();
        nodes.sort();
        let mut out = String::new();
        for (key, index) in nodes {
            let _ = write!(out, "{key}");
            if let Some(name) = self.nodes.get(index).and_then(|n| n.name) {
                let _ = write!(out, " ({})", self.names.get(name));
            }
            let radius = self.radius_of(index);
            if radius != BlastRadius::default() {
                let _ = write!(
                    out,
                    " radius: systems {} resources {} sensitive {} identities_created {} \
                     credentials_created {} privileged {} depth {} fan_out {}",
                    radius.systems,
                    radius.resources,
                    radius.sensitive_resources,
                    radius.identities_created,
                    radius.credentials_created,
                    radius.privileged_actions,
                    radius.depth,
                    radius.fan_out
                );
            }
            out.push('\n');
        }
        let mut edges: Vec<(String, &str, String, u64)> = self
            .edges
            .iter()
            .map(|(_, e)| {
                let (from, to) = (self.key_of(e.from), self.key_of(e.to));
                (from.to_string(), e.kind.as_str(), to.to_string(), e.count)
            })
            .collect();
        edges.sort();
        for (from, kind, to, count) in edges {
            let _ = writeln!(out, "{from} -{kind}-> {to} x{count}");
        }
        out
    }

    /// The lineage edges from the roots down to `node`: every path of
    /// `deployed`, `delegated` and `spawned` edges, each root first, at most
    /// `limit` of them. A node no lineage edge reaches has one empty path.
    ///
    /// Every partial path opened ends as at least one path, so no more are
    /// opened than `limit` allows: a node delegated to by thousands (a
    /// shared service account) costs `limit` steps, not thousands.
    fn paths_up(&self, node: u32, limit: usize) -> Vec<Vec<EdgeView>> {
        let mut done: Vec<Vec<EdgeView>> = Vec::new();
        // Partial paths from `node` up: the node reached, the nodes on the
        // way (to never loop), the edges so far, nearest first.
        let mut open: Vec<(u32, Vec<u32>, Vec<EdgeView>)> = vec![(node, vec![node], Vec::new())];
        while let Some((at, visited, path)) = open.pop() {
            if done.len() >= limit {
                break;
            }
            let room = limit.saturating_sub(done.len() + open.len());
            let parents: Vec<(u32, u32)> = if path.len() >= MAX_LINEAGE {
                Vec::new()
            } else {
                self.lineage_parents(at)
                    .filter(|(parent, _)| !visited.contains(parent))
                    .take(room.max(1))
                    .collect()
            };
            if parents.is_empty() {
                let mut path = path;
                path.reverse();
                done.push(path);
                continue;
            }
            for (parent, edge) in parents {
                if let Some(edge) = self.edge_view(edge) {
                    let (mut visited, mut path) = (visited.clone(), path.clone());
                    visited.push(parent);
                    path.push(edge);
                    open.push((parent, visited, path));
                }
            }
        }
        done
    }

    /// The lineage edges into `node`, newest first, as (parent, edge). Where
    /// a parent both delegated to (or deployed) and spawned the node, the
    /// authority edge stands for both.
    fn lineage_parents(&self, node: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.in_edges(node).filter_map(move |edge| {
            let e = self.edges.get(edge)?;
            let lineage = match e.kind {
                EdgeKind::Deployed | EdgeKind::Delegated => true,
                EdgeKind::Spawned => {
                    [EdgeKind::Delegated, EdgeKind::Deployed]
                        .into_iter()
                        .all(|kind| {
                            self.find_edge(self.edge_hash(e.from, kind, node), e.from, kind, node)
                                .is_none()
                        })
                }
                _ => false,
            };
            lineage.then_some((e.from, edge))
        })
    }

    /// The edges leaving `node`, newest first.
    fn out_edges(&self, node: u32) -> impl Iterator<Item = u32> + '_ {
        let first = self.nodes.get(node).map_or(NONE, |n| n.first_out);
        std::iter::successors(Some(first), |&edge| {
            self.edges.get(edge).map(|e| e.next_out)
        })
        .take_while(|&edge| edge != NONE)
    }

    /// The edges entering `node`, newest first.
    fn in_edges(&self, node: u32) -> impl Iterator<Item = u32> + '_ {
        let first = self.nodes.get(node).map_or(NONE, |n| n.first_in);
        std::iter::successors(Some(first), |&edge| self.edges.get(edge).map(|e| e.next_in))
            .take_while(|&edge| edge != NONE)
    }

    fn key_of(&self, node: u32) -> NodeKey {
        self.nodes.get(node).map_or_else(
            || NodeKey::new(NodeKind::Resource, ""),
            |n| NodeKey::new(n.kind, self.names.get(n.id)),
        )
    }

    fn view(&self, node: u32) -> Option<NodeView> {
        let n = self.nodes.get(node)?;
        Some(NodeView {
            key: self.key_of(node),
            name: n.name.map(|name| self.names.get(name).to_owned()),
            first_seen: time(n.first_seen),
            last_seen: time(n.last_seen),
            blast_radius: self.radius_of(node),
        })
    }

    fn edge_view(&self, edge: u32) -> Option<EdgeView> {
        let e = self.edges.get(edge)?;
        Some(EdgeView {
            from: self.key_of(e.from),
            kind: e.kind,
            to: self.key_of(e.to),
            seen: seen(e),
        })
    }

    fn radius_of(&self, node: u32) -> BlastRadius {
        let Some(radius) = self.nodes.get(node).and_then(|n| self.radii.get(n.radius)) else {
            return BlastRadius::default();
        };
        BlastRadius {
            systems: radius.systems.len(),
            resources: radius.resources.len(),
            sensitive_resources: radius.sensitive,
            identities_created: radius.identities_created.len(),
            credentials_created: radius.credentials_created.len(),
            privileged_actions: radius.privileged_actions,
            depth: radius.depth,
            fan_out: radius.fan_out,
        }
    }

    fn node_hash(&self, kind: NodeKind, id: &str) -> u64 {
        self.hasher.hash_one((kind as u8, id))
    }

    /// The index of the node of `kind` and `id`, if any.
    fn lookup(&self, kind: NodeKind, id: &str) -> Option<u32> {
        self.lookup_hashed(self.node_hash(kind, id), kind, id)
    }

    fn lookup_hashed(&self, hash: u64, kind: NodeKind, id: &str) -> Option<u32> {
        self.node_index.find(hash, |node| {
            self.nodes
                .get(node)
                .is_some_and(|n| n.kind == kind && self.names.get(n.id) == id)
        })
    }

    /// The node of `kind` and `id`, added when new; its sightings widen to
    /// `at`. [`NONE`] only if the graph holds `u32::MAX` nodes.
    fn node(&mut self, kind: NodeKind, id: &str, name: Option<&str>, at: DateTime<Utc>) -> u32 {
        let at = nanos(at);
        let hash = self.node_hash(kind, id);
        if let Some(index) = self.lookup_hashed(hash, kind, id) {
            if let Some(node) = self.nodes.get_mut(index) {
                node.first_seen = node.first_seen.min(at);
                node.last_seen = node.last_seen.max(at);
                if let (None, Some(name)) = (node.name, name) {
                    node.name = Some(self.names.add(name));
                }
            }
            return index;
        }
        let node = Node {
            first_seen: at,
            last_seen: at,
            id: self.names.add(id),
            name: name.map(|name| self.names.add(name)),
            radius: NONE,
            first_out: NONE,
            first_in: NONE,
            kind,
            sensitive: kind == NodeKind::Resource && self.sensitivity.is_sensitive(id),
        };
        let Some(index) = self.nodes.push(node) else {
            return NONE;
        };
        self.node_index.insert(hash, index);
        index
    }

    /// The hop node of a principal in a chain: its run, or itself.
    fn hop(&mut self, principal: &Principal, below_agent: bool, at: DateTime<Utc>) -> u32 {
        let name = principal.name.as_deref();
        match (&principal.run_id, principal.kind) {
            // A run is named after its agent.
            (Some(run), _) => {
                let agent = name.or(Some(principal.id.as_str()));
                self.node(NodeKind::Run, run, agent, at)
            }
            (None, PrincipalKind::Agent) if below_agent => {
                self.node(NodeKind::SubAgent, &principal.id, name, at)
            }
            (None, PrincipalKind::Agent) => self.node(NodeKind::Agent, &principal.id, name, at),
            (None, PrincipalKind::Role) => self.node(NodeKind::Role, &principal.id, name, at),
            (None, PrincipalKind::Service) => self.node(NodeKind::Service, &principal.id, name, at),
            (None, PrincipalKind::Human | PrincipalKind::Unknown) => {
                self.node(NodeKind::Human, &principal.id, name, at)
            }
        }
    }

    /// What an event does to the identity it targets: spawns it, creates it
    /// or assumes it.
    fn target_principal(
        &mut self,
        event: &RuntimeEvent,
        path: &[u32],
        principal: &Principal,
        verb: Verb,
    ) {
        let (at, id) = (event.observed_at, event.id);
        let Some(&current) = path.last() else { return };
        if event.kind == EventKind::AgentSpawn {
            let child = self.hop(principal, true, at);
            let path_seen_before = false;
            self.link(path, EdgeKind::Spawned, child, at, id, path_seen_before);
            self.each_hop(path, |radius| {
                radius.identities_created.insert(child);
            });
            return;
        }
        let node = self.hop(principal, false, at);
        match verb {
            Verb::Assume => {
                self.edge(current, EdgeKind::Assumed, node, at, id);
            }
            Verb::Create => {
                self.edge(current, EdgeKind::Created, node, at, id);
                self.each_hop(path, |radius| {
                    radius.identities_created.insert(node);
                });
            }
            _ => {}
        }
    }

    /// Adds an edge of `kind` from the last hop of `path` to `child`, one
    /// hop below it, and carries depth and fan-out up `path`, unless the
    /// path (`path_seen_before`) and the edge were both seen before, which
    /// carried them already. Returns whether they were.
    fn link(
        &mut self,
        path: &[u32],
        kind: EdgeKind,
        child: u32,
        at: DateTime<Utc>,
        id: EventId,
        path_seen_before: bool,
    ) -> bool {
        let Some(&parent) = path.last() else {
            return false;
        };
        let sighting = self.edge(parent, kind, child, at, id);
        if path_seen_before && sighting == Sighting::Again {
            return true;
        }
        let children = self
            .radius(parent)
            .map(|radius| {
                radius.children.insert(child);
                radius.children.len()
            })
            .unwrap_or_default();
        for (position, &hop) in path.iter().enumerate() {
            if let Some(radius) = self.radius(hop) {
                radius.fan_out = radius.fan_out.max(children);
                // The child is `path.len() - position` hops below this one.
                radius.depth = radius.depth.max(path.len() - position);
            }
        }
        false
    }

    /// Applies `f` to the blast radius of every hop of `path`.
    fn each_hop(&mut self, path: &[u32], mut f: impl FnMut(&mut Radius)) {
        for &hop in path {
            if let Some(radius) = self.radius(hop) {
                f(radius);
            }
        }
    }

    fn edge_hash(&self, from: u32, kind: EdgeKind, to: u32) -> u64 {
        self.hasher.hash_one((from, kind as u8, to))
    }

    fn find_edge(&self, hash: u64, from: u32, kind: EdgeKind, to: u32) -> Option<u32> {
        self.edge_index.find(hash, |edge| {
            self.edges
                .get(edge)
                .is_some_and(|e| e.from == from && e.kind == kind && e.to == to)
        })
    }

    fn edge(
        &mut self,
        from: u32,
        kind: EdgeKind,
        to: u32,
        at: DateTime<Utc>,
        id: EventId,
    ) -> Sighting {
        if from == NONE || to == NONE {
            return Sighting::New;
        }
        let when = nanos(at);
        let hash = self.edge_hash(from, kind, to);
        if let Some(edge) = self.find_edge(hash, from, kind, to) {
            if let Some(seen) = self.edges.get_mut(edge) {
                seen.count += 1;
                if when < seen.first_seen {
                    seen.first_seen = when;
                    seen.first_event = id;
                }
                if when >= seen.last_seen {
                    seen.last_seen = when;
                    seen.last_event = id;
                }
            }
            return Sighting::Again;
        }
        let next_out = self.nodes.get(from).map_or(NONE, |n| n.first_out);
        let next_in = self.nodes.get(to).map_or(NONE, |n| n.first_in);
        let Some(edge) = self.edges.push(Edge {
            first_seen: when,
            last_seen: when,
            count: 1,
            first_event: id,
            last_event: id,
            from,
            to,
            next_out,
            next_in,
            kind,
        }) else {
            return Sighting::New;
        };
        self.edge_index.insert(hash, edge);
        if let Some(node) = self.nodes.get_mut(from) {
            node.first_out = edge;
        }
        if let Some(node) = self.nodes.get_mut(to) {
            node.first_in = edge;
        }
        Sighting::New
    }

    /// Labels a resource sensitive. The hops that counted it before it was
    /// (a tag arriving after the resource was first touched) count it now:
    /// a scan of every hop's radius, paid once per resource at most.
    fn label_sensitive(&mut self, resource: u32) {
        let Some(node) = self.nodes.get_mut(resource) else {
            return;
        };
        if std::mem::replace(&mut node.sensitive, true) {
            return;
        }
        for slot in 0..self.radii.len() {
            let slot = u32::try_from(slot).unwrap_or(NONE);
            if let Some(radius) = self.radii.get_mut(slot)
                && radius.resources.contains(&resource)
            {
                radius.sensitive += 1;
            }
        }
    }

    fn radius(&mut self, node: u32) -> Option<&mut Radius> {
        let slot = self.nodes.get(node)?.radius;
        let slot = if slot == NONE {
            let slot = self.radii.push(Radius::default())?;
            if let Some(n) = self.nodes.get_mut(node) {
                n.radius = slot;
            }
            slot
        } else {
            slot
        };
        self.radii.get_mut(slot)
    }
}

/// Whether an edge sighted was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sighting {
    New,
    Again,
}

/// An edge's sightings as the graph reports them.
fn seen(edge: &Edge) -> EdgeSeen {
    EdgeSeen {
        first_seen: time(edge.first_seen),
        last_seen: time(edge.last_seen),
        count: edge.count,
        first_event: edge.first_event,
        last_event: edge.last_event,
    }
}

/// A time as nanoseconds since the epoch, clamped to what that can hold
/// (the years 1677 to 2262).
fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt().unwrap_or(if at.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn time(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

/// Whether the hop at `path_len - 1` is the root, so its edge to the next
/// hop is `deployed`.
fn parent_is_root(has_root: bool, path_len: usize) -> bool {
    has_root && path_len == 1
}

/// Whether a resource type names a credential.
pub fn is_credential(resource_type: Option<&str>) -> bool {
    resource_type.is_some_and(|kind| {
        let kind = kind.to_ascii_lowercase();
        [
            "access_key",
            "token",
            "credential",
            "secret",
            "api_key",
            "certificate",
        ]
        .iter()
        .any(|word| kind.contains(word))
    })
}
