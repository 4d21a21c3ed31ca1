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

use chrono::{DateTime, Utc};
use custody_event::{
    AttributionMethod, EventId, EventKind, Principal, PrincipalKind, RuntimeEvent,
};

type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
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

/// Which resource names are sensitive: patterns where `*` matches any run of
/// characters, e.g. `arn:aws:s3:::payroll*` or `*customer*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sensitivity {
    patterns: Vec<String>,
}

impl Sensitivity {
    /// Labels resources matching any of `patterns` sensitive.
    pub fn new(patterns: impl IntoIterator<Item = impl Into<String>>) -> Sensitivity {
        Sensitivity {
            patterns: patterns.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `resource` matches a pattern.
    pub fn is_sensitive(&self, resource: &str) -> bool {
        self.patterns
            .iter()
            .any(|pattern| glob_matches(pattern, resource))
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

/// One node of the graph.
#[derive(Debug, Clone)]
struct Node {
    key: NodeKey,
    name: Option<String>,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    /// Kept only by nodes that are hops of some chain (identities); boxed,
    /// as most nodes (resources, tools, credentials) never need one.
    radius: Option<Box<Radius>>,
    /// Edges from this node, by kind and far end.
    out: Vec<(EdgeKind, u32)>,
    /// Edges into this node, by kind and near end.
    incoming: Vec<(EdgeKind, u32)>,
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

/// An edge's endpoints and kind.
type EdgeKey = (u32, EdgeKind, u32);

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

/// The agent graph, in memory.
#[derive(Debug, Default)]
pub struct Graph {
    /// Node indices by kind (as `usize`) and id, so lookups need no
    /// allocation.
    index: Vec<Map<Box<str>, u32>>,
    nodes: Vec<Node>,
    edges: Map<EdgeKey, EdgeSeen>,
    sensitivity: Sensitivity,
}

impl Graph {
    /// An empty graph labelling resources with `sensitivity`.
    pub fn new(sensitivity: Sensitivity) -> Graph {
        Graph {
            sensitivity,
            ..Graph::default()
        }
    }

    /// The index of the node `key`, if any.
    fn lookup(&self, key: &NodeKey) -> Option<u32> {
        self.index
            .get(key.kind as usize)?
            .get(key.id.as_str())
            .copied()
    }

    /// Adds what `event` says to the graph and to the blast radius of every
    /// hop of its chain.
    pub fn apply(&mut self, event: &RuntimeEvent) {
        let at = event.observed_at;
        let id = event.id;
        // An unattributed event's chain is only what its source claimed: the
        // graph takes its current actor alone, never a lineage on its word.
        let unverified;
        let actor = if event.attribution.method == AttributionMethod::Unattributed
            && (event.actor.root.is_some() || !event.actor.agents.is_empty())
        {
            unverified = custody_event::Actor {
                root: None,
                agents: Vec::new(),
                current: event.actor.current.clone(),
                credential: event.actor.credential.clone(),
            };
            &unverified
        } else {
            &event.actor
        };
        // The chain's hops, root first.
        let mut path: Vec<u32> = Vec::with_capacity(actor.agents.len() + 2);
        if let Some(root) = &actor.root {
            let kind = match root.kind {
                PrincipalKind::Service => NodeKind::Service,
                _ => NodeKind::Human,
            };
            path.push(self.node(kind, &root.id, root.name.as_deref(), at));
        }
        let hops = actor.agents.iter().chain(std::iter::once(&actor.current));
        for (depth, principal) in hops.enumerate() {
            // Every hop after the first has an agent above it.
            let below_agent = depth > 0;
            let hop = self.hop(principal, below_agent, at);
            if !path.is_empty() {
                let kind = if parent_is_root(actor.root.is_some(), path.len()) {
                    EdgeKind::Deployed
                } else {
                    EdgeKind::Delegated
                };
                self.link(&path, kind, hop, at, id);
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
            let node = self.node(kind, resource, None, at);
            let edge = match verb {
                Verb::Create => EdgeKind::Created,
                Verb::Write => EdgeKind::Wrote,
                Verb::Read if !credential => EdgeKind::Read,
                // Nothing says whether it was read or written.
                _ => EdgeKind::Used,
            };
            self.edge(current, edge, node, at, id);
            let sensitive = !credential && self.sensitivity.is_sensitive(resource);
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
        let node = self.nodes.get(self.lookup(key)? as usize)?;
        let Some(radius) = &node.radius else {
            return Some(BlastRadius::default());
        };
        Some(BlastRadius {
            systems: radius.systems.len(),
            resources: radius.resources.len(),
            sensitive_resources: radius.sensitive,
            identities_created: radius.identities_created.len(),
            credentials_created: radius.credentials_created.len(),
            privileged_actions: radius.privileged_actions,
            depth: radius.depth,
            fan_out: radius.fan_out,
        })
    }

    /// What the graph knows of a node.
    pub fn node_view(&self, key: &NodeKey) -> Option<NodeView> {
        self.view(self.lookup(key)?)
    }

    /// The nodes and edges reachable from `root` along outgoing edges, at
    /// most `depth` edges away, and at most `limit` nodes (breadth first, so
    /// the nearest are kept).
    pub fn subgraph(&self, root: &NodeKey, depth: usize, limit: usize) -> Option<Subgraph> {
        let start = self.lookup(root)?;
        let mut seen: Set<u32> = Set::default();
        seen.insert(start);
        let mut order = vec![start];
        let mut frontier = vec![start];
        let mut edges = Vec::new();
        for _ in 0..depth {
            let mut next = Vec::new();
            for &node in &frontier {
                let Some(out) = self.nodes.get(node as usize).map(|n| &n.out) else {
                    continue;
                };
                for &(kind, to) in out {
                    if !seen.contains(&to) {
                        if seen.len() >= limit {
                            continue;
                        }
                        seen.insert(to);
                        order.push(to);
                        next.push(to);
                    }
                    edges.extend(self.edge_view(node, kind, to));
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
    /// edges. At most `limit` chains; a chain is root first and ends with
    /// the edge into the resource.
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
        .filter_map(|kind| self.lookup(&NodeKey::new(kind, id)));
        let mut chains = Vec::new();
        for target in targets {
            let Some(node) = self.nodes.get(target as usize) else {
                continue;
            };
            for &(kind, actor) in &node.incoming {
                let Some(last) = self.edge_view(actor, kind, target) else {
                    continue;
                };
                for mut path in self.paths_up(actor, limit.saturating_sub(chains.len())) {
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

    /// The lineage edges from the roots down to `node`: every path of
    /// `deployed`, `delegated` and `spawned` edges, each root first, at most
    /// `limit` of them. A node no lineage edge reaches has one empty path.
    fn paths_up(&self, node: u32, limit: usize) -> Vec<Vec<EdgeView>> {
        let mut done: Vec<Vec<EdgeView>> = Vec::new();
        // Partial paths from `node` up: the node reached, the nodes on the
        // way (to never loop), the edges so far, nearest first.
        let mut open: Vec<(u32, Vec<u32>, Vec<EdgeView>)> = vec![(node, vec![node], Vec::new())];
        while let Some((at, visited, path)) = open.pop() {
            if done.len() >= limit {
                break;
            }
            let parents = self.lineage_parents(at, &visited);
            if parents.is_empty() || path.len() >= MAX_LINEAGE {
                let mut path = path;
                path.reverse();
                done.push(path);
                continue;
            }
            for (kind, parent) in parents {
                if let Some(edge) = self.edge_view(parent, kind, at) {
                    let (mut visited, mut path) = (visited.clone(), path.clone());
                    visited.push(parent);
                    path.push(edge);
                    open.push((parent, visited, path));
                }
            }
        }
        done
    }

    /// The lineage edges into `node` from nodes not in `visited`. Where a
    /// parent both delegated to (or deployed) and spawned the node, the
    /// authority edge stands for both.
    fn lineage_parents(&self, node: u32, visited: &[u32]) -> Vec<(EdgeKind, u32)> {
        let Some(n) = self.nodes.get(node as usize) else {
            return Vec::new();
        };
        n.incoming
            .iter()
            .copied()
            .filter(|&(kind, from)| match kind {
                EdgeKind::Deployed | EdgeKind::Delegated => true,
                EdgeKind::Spawned => {
                    !n.incoming.contains(&(EdgeKind::Delegated, from))
                        && !n.incoming.contains(&(EdgeKind::Deployed, from))
                }
                _ => false,
            })
            .filter(|(_, from)| !visited.contains(from))
            .collect()
    }

    fn key_of(&self, node: u32) -> NodeKey {
        self.nodes
            .get(node as usize)
            .map(|n| n.key.clone())
            .unwrap_or_else(|| NodeKey::new(NodeKind::Resource, ""))
    }

    fn view(&self, node: u32) -> Option<NodeView> {
        let n = self.nodes.get(node as usize)?;
        Some(NodeView {
            key: n.key.clone(),
            name: n.name.clone(),
            first_seen: n.first_seen,
            last_seen: n.last_seen,
            blast_radius: self.blast_radius(&n.key).unwrap_or_default(),
        })
    }

    fn edge_view(&self, from: u32, kind: EdgeKind, to: u32) -> Option<EdgeView> {
        let seen = self.edges.get(&(from, kind, to))?;
        Some(EdgeView {
            from: self.key_of(from),
            kind,
            to: self.key_of(to),
            seen: seen.clone(),
        })
    }

    /// How many nodes and edges the graph holds.
    pub fn size(&self) -> (usize, usize) {
        (self.nodes.len(), self.edges.len())
    }

    /// The edge from `from` to `to` of `kind`, if seen.
    pub fn edge_seen(&self, from: &NodeKey, kind: EdgeKind, to: &NodeKey) -> Option<&EdgeSeen> {
        let (from, to) = (self.lookup(from)?, self.lookup(to)?);
        self.edges.get(&(from, kind, to))
    }

    /// The whole graph as sorted text, one node or edge a line, with every
    /// node's blast radius: for snapshot tests and debugging.
    pub fn dump(&self) -> String {
        let mut nodes: Vec<&Node> = self.nodes.iter().collect();
        nodes.sort_by(|a, b| a.key.cmp(&b.key));
        let mut out = String::new();
        for node in nodes {
            let _ = write!(out, "{}", node.key);
            if let Some(name) = &node.name {
                let _ = write!(out, " ({name})");
            }
            let radius = self.blast_radius(&node.key).unwrap_or_default();
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
        let key = |index: u32| {
            self.nodes
                .get(index as usize)
                .map(|node| node.key.to_string())
                .unwrap_or_default()
        };
        let mut edges: Vec<(String, &str, String, u64)> = self
            .edges
            .iter()
            .map(|(&(from, kind, to), seen)| (key(from), kind.as_str(), key(to), seen.count))
            .collect();
        edges.sort();
        for (from, kind, to, count) in edges {
            let _ = writeln!(out, "{from} -{kind}-> {to} x{count}");
        }
        out
    }

    /// The node of `kind` and `id`, added when new; its sightings widen to
    /// `at`.
    fn node(&mut self, kind: NodeKind, id: &str, name: Option<&str>, at: DateTime<Utc>) -> u32 {
        let slot = kind as usize;
        if self.index.len() <= slot {
            self.index.resize_with(slot + 1, Map::default);
        }
        if let Some(&index) = self.index.get(slot).and_then(|ids| ids.get(id)) {
            if let Some(node) = self.nodes.get_mut(index as usize) {
                node.first_seen = node.first_seen.min(at);
                node.last_seen = node.last_seen.max(at);
                if node.name.is_none() {
                    node.name = name.map(str::to_owned);
                }
            }
            return index;
        }
        let index = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        self.nodes.push(Node {
            key: NodeKey::new(kind, id),
            name: name.map(str::to_owned),
            first_seen: at,
            last_seen: at,
            radius: None,
            out: Vec::new(),
            incoming: Vec::new(),
        });
        if let Some(ids) = self.index.get_mut(slot) {
            ids.insert(id.into(), index);
        }
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
            self.link(path, EdgeKind::Spawned, child, at, id);
            self.each_hop(path, |radius| {
                radius.identities_created.insert(child);
            });
            return;
        }
        let node = self.hop(principal, false, at);
        match verb {
            Verb::Assume => self.edge(current, EdgeKind::Assumed, node, at, id),
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
    /// hop below it, and carries depth and fan-out up `path`.
    fn link(&mut self, path: &[u32], kind: EdgeKind, child: u32, at: DateTime<Utc>, id: EventId) {
        let Some(&parent) = path.last() else { return };
        self.edge(parent, kind, child, at, id);
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
    }

    /// Applies `f` to the blast radius of every hop of `path`.
    fn each_hop(&mut self, path: &[u32], mut f: impl FnMut(&mut Radius)) {
        for &hop in path {
            if let Some(radius) = self.radius(hop) {
                f(radius);
            }
        }
    }

    fn edge(&mut self, from: u32, kind: EdgeKind, to: u32, at: DateTime<Utc>, id: EventId) {
        let mut new = false;
        self.edges
            .entry((from, kind, to))
            .and_modify(|seen| {
                seen.count += 1;
                if at < seen.first_seen {
                    seen.first_seen = at;
                    seen.first_event = id;
                }
                if at >= seen.last_seen {
                    seen.last_seen = at;
                    seen.last_event = id;
                }
            })
            .or_insert_with(|| {
                new = true;
                EdgeSeen {
                    first_seen: at,
                    last_seen: at,
                    count: 1,
                    first_event: id,
                    last_event: id,
                }
            });
        if new {
            if let Some(node) = self.nodes.get_mut(from as usize) {
                node.out.push((kind, to));
            }
            if let Some(node) = self.nodes.get_mut(to as usize) {
                node.incoming.push((kind, from));
            }
        }
    }

    fn radius(&mut self, node: u32) -> Option<&mut Radius> {
        let node = self.nodes.get_mut(node as usize)?;
        Some(&mut **node.radius.get_or_insert_with(Box::default))
    }
}

/// Whether the hop at `path_len - 1` is the root, so its edge to the next
/// hop is `deployed`.
fn parent_is_root(has_root: bool, path_len: usize) -> bool {
    has_root && path_len == 1
}

/// Whether a resource type names a credential.
fn is_credential(resource_type: Option<&str>) -> bool {
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
