//! Attribution: resolving an event's actor to the chain of identities behind
//! it, and saying how that is known.
//!
//! In order, for each event:
//!
//! 1. **authenticated**: the caller presented a token Custody validated (the
//!    gateway, the delegation service); its chain stands, with the token as
//!    evidence.
//! 2. **bound**: the event carries a credential key (see [`BindingKey`]) held
//!    by exactly one chain at the event's time. The holder's chain becomes the
//!    event's, the actor the source reported hanging below it. Bindings are
//!    declared ([`Origin::Declared`]), come with tokens Custody mints
//!    ([`Origin::Minted`]), or are learned from attributed events: a chain
//!    that creates an access key or assumes a role holds the result
//!    ([`Origin::Learned`]).
//! 3. **correlated**: the event shares its session id with events of exactly
//!    one attributed chain within the correlation window.
//! 4. **unattributed**: nothing above explains it, or more than one chain
//!    could (a credential held by two runs): the candidates are listed as
//!    evidence, never picked between.
//!
//! Where the keys come from: the actor's credential (`aws_access_key`,
//! `aws_role_session`, `oauth_token`, `custody_token`), and the attributes
//! named by the `ATTR_*` constants, which importers fill from their records.

use chrono::{DateTime, Duration, Utc};
use custody_event::{
    Actor, AttributionMethod, CredentialKind, EventId, Evidence, Principal, RuntimeEvent,
};

use hashlink::LinkedHashMap;

use crate::graph::Verb;

type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Attribute naming an AWS access key id the record was made with.
pub const ATTR_AWS_ACCESS_KEY: &str = "aws.access_key_id";
/// Attribute naming an AWS STS role session name.
pub const ATTR_AWS_ROLE_SESSION: &str = "aws.role_session_name";
/// Attribute naming an AWS STS `sourceIdentity`.
pub const ATTR_AWS_SOURCE_IDENTITY: &str = "aws.source_identity";
/// Attribute of an `sts:AssumeRole*` event naming the temporary access key
/// the call issued (`responseElements.credentials.accessKeyId`): records
/// made with it name it as their access key.
pub const ATTR_AWS_ISSUED_ACCESS_KEY: &str = "aws.issued_access_key_id";
/// Attribute naming when an AWS STS session ends (RFC 3339).
pub const ATTR_AWS_SESSION_EXPIRES: &str = "aws.session_expires";
/// Attribute naming an OAuth client id.
pub const ATTR_OAUTH_CLIENT: &str = "oauth.client_id";
/// Attribute naming an OAuth token id.
pub const ATTR_OAUTH_TOKEN: &str = "oauth.token_id";
/// The action of the event Custody records when a binding is declared.
pub const DECLARE_BINDING: &str = "custody/declare-binding";
/// Attribute of a declaration: the key's type (`aws_access_key`,
/// `aws_role_session`, `aws_source_identity`, `oauth_client`,
/// `oauth_token`).
pub const ATTR_BINDING_KEY_TYPE: &str = "custody.binding_key_type";
/// Attribute of a declaration: the key's value.
pub const ATTR_BINDING_KEY: &str = "custody.binding_key";
/// Attribute of a declaration: from when it holds (RFC 3339).
pub const ATTR_BINDING_FROM: &str = "custody.binding_from";
/// Attribute of a declaration: until when it holds (RFC 3339), if it ends.
pub const ATTR_BINDING_UNTIL: &str = "custody.binding_until";

/// Attribute of an `agent_spawn` event naming the id of the token Custody
/// minted for the spawned agent.
pub const ATTR_MINTED_TOKEN: &str = "custody.minted_token";
/// Attribute of an `agent_spawn` event naming when that token expires
/// (RFC 3339).
pub const ATTR_MINTED_EXPIRES: &str = "custody.token_expires";

/// How long an AWS role session lasts when its record does not say: the
/// longest STS allows.
const DEFAULT_ROLE_SESSION: i64 = 12;

/// A credential key a chain can hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BindingKey {
    /// An AWS access key id (`AKIA...` or `ASIA...`).
    AwsAccessKey(String),
    /// An AWS STS role session name.
    AwsRoleSession(String),
    /// An AWS STS `sourceIdentity`.
    AwsSourceIdentity(String),
    /// An OAuth client id.
    OauthClient(String),
    /// An OAuth token id (`jti`).
    OauthToken(String),
    /// A token minted by Custody (its `jti`).
    CustodyToken(String),
}

impl BindingKey {
    /// The key's type, as [`BindingKey::parse`] reads it.
    pub fn kind(&self) -> &'static str {
        match self {
            BindingKey::AwsAccessKey(_) => "aws_access_key",
            BindingKey::AwsRoleSession(_) => "aws_role_session",
            BindingKey::AwsSourceIdentity(_) => "aws_source_identity",
            BindingKey::OauthClient(_) => "oauth_client",
            BindingKey::OauthToken(_) => "oauth_token",
            BindingKey::CustodyToken(_) => "custody_token",
        }
    }

    /// The key's value.
    pub fn value(&self) -> &str {
        match self {
            BindingKey::AwsAccessKey(v)
            | BindingKey::AwsRoleSession(v)
            | BindingKey::AwsSourceIdentity(v)
            | BindingKey::OauthClient(v)
            | BindingKey::OauthToken(v)
            | BindingKey::CustodyToken(v) => v,
        }
    }

    /// The key of type `kind` (as [`BindingKey::kind`] names it) and
    /// `value`; `None` for an unknown type or an empty value. Custody tokens
    /// are bound by minting, never declared.
    pub fn parse(kind: &str, value: &str) -> Option<BindingKey> {
        let value = value.trim();
        if value.is_empty() {
            return None;
        }
        let value = value.to_owned();
        Some(match kind {
            "aws_access_key" => BindingKey::AwsAccessKey(value),
            "aws_role_session" => BindingKey::AwsRoleSession(value),
            "aws_source_identity" => BindingKey::AwsSourceIdentity(value),
            "oauth_client" => BindingKey::OauthClient(value),
            "oauth_token" => BindingKey::OauthToken(value),
            _ => return None,
        })
    }
}

impl std::fmt::Display for BindingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind(), self.value())
    }
}

/// Where a binding comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Declared through the API.
    Declared,
    /// Made with a token Custody minted.
    Minted,
    /// Learned from an attributed event that created or assumed the
    /// credential.
    Learned(EventId),
}

/// A chain holding a credential key for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Its id, quoted in evidence.
    pub id: String,
    /// What is held.
    pub key: BindingKey,
    /// The chain that holds it; its current actor is the holder (a run).
    pub holder: Actor,
    /// From when.
    pub valid_from: DateTime<Utc>,
    /// Until when (exclusive); `None` for as long as it lasts.
    pub valid_until: Option<DateTime<Utc>>,
    /// Where it comes from.
    pub origin: Origin,
}

impl Binding {
    /// Whether the binding held at `at`, give or take `skew` at either end.
    fn covers(&self, at: DateTime<Utc>, skew: Duration) -> bool {
        self.valid_from - skew <= at && self.valid_until.is_none_or(|until| at < until + skew)
    }

    /// The evidence of this binding explaining a record of time `at`, which
    /// says so when `at` is outside the binding's own window and inside
    /// only by the clock skew allowed.
    fn evidence_at(&self, at: DateTime<Utc>, skew: Duration) -> String {
        let outside = at < self.valid_from || self.valid_until.is_some_and(|until| at >= until);
        if outside {
            format!(
                "{}; the record's time {} is within the {} s allowed for clock skew",
                self.evidence(),
                at.to_rfc3339(),
                skew.num_seconds()
            )
        } else {
            self.evidence()
        }
    }

    fn evidence(&self) -> String {
        let until = self
            .valid_until
            .map_or_else(|| "open".to_owned(), |until| until.to_rfc3339());
        let origin = match &self.origin {
            Origin::Declared => "declared".to_owned(),
            Origin::Minted => "minted".to_owned(),
            Origin::Learned(event) => format!("learned from event {event}"),
        };
        format!(
            "binding {}: {} held by {} from {} until {until} ({origin})",
            self.id,
            self.key,
            hop_name(&self.holder.current),
            self.valid_from.to_rfc3339(),
        )
    }
}

/// Whether the submitter of an event proved its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Custody validated the caller's token, whose id this is.
    Authenticated(String),
    /// The source reported the actor; nothing proved it.
    Reported,
}

/// What the attributor remembers of a session: the chains seen in it.
#[derive(Debug, Clone)]
struct SessionSeen {
    at: DateTime<Utc>,
    event: EventId,
    chain: Actor,
}

/// Resolves events' chains from bindings and sessions, in memory.
#[derive(Debug)]
pub struct Attributor {
    bindings: Map<BindingKey, Vec<Binding>>,
    /// Sessions, the one sighted longest ago first, as it is the first to
    /// forget.
    sessions: LinkedHashMap<String, Vec<SessionSeen>, foldhash::fast::RandomState>,
    window: Duration,
    max_sessions: usize,
    /// How far a record's time may fall outside a binding's window and
    /// still be explained by it: sources keep their own clocks, and
    /// CloudTrail writes whole seconds.
    clock_skew: Duration,
}

/// The clock skew allowed by default, in seconds.
pub const DEFAULT_CLOCK_SKEW_SECS: i64 = 5;

impl Default for Attributor {
    /// A 15-minute correlation window over at most 100,000 sessions, and
    /// 5 seconds of clock skew.
    fn default() -> Self {
        Attributor::new(Duration::minutes(15), 100_000)
    }
}

impl Attributor {
    /// An attributor correlating sessions within `window`, remembering at
    /// most `max_sessions` of them (the oldest are forgotten first; a
    /// forgotten session only costs a correlation, never an event).
    pub fn new(window: Duration, max_sessions: usize) -> Attributor {
        Attributor {
            bindings: Map::default(),
            sessions: LinkedHashMap::default(),
            window,
            max_sessions: max_sessions.max(1),
            clock_skew: Duration::seconds(DEFAULT_CLOCK_SKEW_SECS),
        }
    }

    /// The same, allowing `skew` between a record's time and a binding's
    /// window.
    pub fn with_clock_skew(mut self, skew: Duration) -> Attributor {
        self.clock_skew = skew.abs();
        self
    }

    /// Adds a binding.
    pub fn bind(&mut self, binding: Binding) {
        self.bindings
            .entry(binding.key.clone())
            .or_default()
            .push(binding);
    }

    /// Sets `event`'s chain and attribution, then learns the bindings and
    /// session it makes known.
    pub fn attribute(&mut self, event: &mut RuntimeEvent, trust: &Trust) {
        let at = event.observed_at;
        match trust {
            Trust::Authenticated(token) => {
                event.attribution.method = AttributionMethod::Authenticated;
                event.attribution.evidence = vec![evidence("token", token.clone())];
            }
            Trust::Reported => self.resolve(event, at),
        }
        if matches!(
            event.attribution.method,
            AttributionMethod::Authenticated | AttributionMethod::Bound
        ) {
            self.learn(event);
            self.remember_session(event);
        }
    }

    /// Learns from an event attributed before, as when replaying the store
    /// on start: its bindings and its session, without changing it.
    pub fn observe(&mut self, event: &RuntimeEvent) {
        if matches!(
            event.attribution.method,
            AttributionMethod::Authenticated | AttributionMethod::Bound
        ) {
            self.learn(event);
            self.remember_session(event);
        }
    }

    /// Steps 2 to 4: bindings, then sessions, else unattributed.
    fn resolve(&mut self, event: &mut RuntimeEvent, at: DateTime<Utc>) {
        let keys = binding_keys(event);
        let mut holders: Vec<&Binding> = Vec::new();
        for key in &keys {
            for binding in self.bindings.get(key).into_iter().flatten() {
                if binding.covers(at, self.clock_skew)
                    && !holders
                        .iter()
                        .any(|h| same_chain(&h.holder, &binding.holder))
                {
                    holders.push(binding);
                }
            }
        }
        match holders.as_slice() {
            [binding] => {
                let binding = (*binding).clone();
                event.actor = below(&binding.holder, &event.actor);
                event.attribution.method = AttributionMethod::Bound;
                event.attribution.evidence = vec![evidence(
                    "binding",
                    binding.evidence_at(at, self.clock_skew),
                )];
                return;
            }
            [] => {}
            several => {
                event.attribution.method = AttributionMethod::Unattributed;
                event.attribution.evidence = several
                    .iter()
                    .map(|binding| evidence("ambiguous", binding.evidence_at(at, self.clock_skew)))
                    .collect();
                return;
            }
        }
        if let Some(session) = event.context.session_id.clone() {
            let earliest = at - self.window;
            let mut chains: Vec<&SessionSeen> = Vec::new();
            for seen in self.sessions.get(&session).into_iter().flatten() {
                if seen.at >= earliest
                    && seen.at <= at + self.window
                    && !chains.iter().any(|c| same_chain(&c.chain, &seen.chain))
                {
                    chains.push(seen);
                }
            }
            let describe = |seen: &SessionSeen| {
                format!(
                    "session_id {session} seen with {} in event {} at {}, within {} minutes",
                    hop_name(&seen.chain.current),
                    seen.event,
                    seen.at.to_rfc3339(),
                    self.window.num_minutes()
                )
            };
            match chains.as_slice() {
                [seen] => {
                    let detail = describe(seen);
                    event.actor = below(&seen.chain, &event.actor);
                    event.attribution.method = AttributionMethod::Correlated;
                    event.attribution.evidence = vec![evidence("correlation", detail)];
                    return;
                }
                [] => {}
                several => {
                    event.attribution.method = AttributionMethod::Unattributed;
                    event.attribution.evidence = several
                        .iter()
                        .map(|seen| evidence("ambiguous", describe(seen)))
                        .collect();
                    return;
                }
            }
        }
        event.attribution.method = AttributionMethod::Unattributed;
        event.attribution.evidence = Vec::new();
        if event.actor.root.is_some() || !event.actor.agents.is_empty() {
            event.attribution.evidence.push(evidence(
                "reported",
                "the chain is as the source reported it; nothing Custody holds confirms it".into(),
            ));
        }
    }

    /// Bindings an attributed event makes known: a created access key, an
    /// assumed role's session name and source identity.
    fn learn(&mut self, event: &RuntimeEvent) {
        let at = event.observed_at;
        let learned = |key: BindingKey, until: Option<DateTime<Utc>>| Binding {
            id: format!("learned-{}-{}", event.id, key.kind()),
            key,
            holder: holder_of(&event.actor),
            valid_from: at,
            valid_until: until,
            origin: Origin::Learned(event.id),
        };
        let verb = Verb::of(&event.action);
        let target = &event.target;
        // A token Custody minted binds the spawned agent's chain to its id;
        // only an event Custody recorded itself can say so.
        let by_custody = event
            .attribution
            .evidence
            .iter()
            .any(|e| e.kind == custody_engine::CUSTODY_EVIDENCE);
        if by_custody
            && event.action == DECLARE_BINDING
            && let (Some(kind), Some(value)) = (
                attribute(event, ATTR_BINDING_KEY_TYPE),
                attribute(event, ATTR_BINDING_KEY),
            )
            && let Some(key) = BindingKey::parse(kind, value)
        {
            let time = |name| {
                attribute(event, name)
                    .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                    .map(|time| time.with_timezone(&Utc))
            };
            self.bind(Binding {
                id: format!("declared-{}", event.id),
                key,
                holder: holder_of(&event.actor),
                valid_from: time(ATTR_BINDING_FROM).unwrap_or(at),
                valid_until: time(ATTR_BINDING_UNTIL),
                origin: Origin::Declared,
            });
        }
        if by_custody
            && event.kind == custody_event::EventKind::AgentSpawn
            && let (Some(jti), Some(child)) =
                (attribute(event, ATTR_MINTED_TOKEN), &target.principal)
        {
            let until = attribute(event, ATTR_MINTED_EXPIRES)
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map(|until| until.with_timezone(&Utc));
            self.bind(Binding {
                id: format!("minted-{jti}"),
                key: BindingKey::CustodyToken(jti.to_owned()),
                holder: descend(&holder_of(&event.actor), child),
                valid_from: at,
                valid_until: until,
                origin: Origin::Minted,
            });
        }
        if verb == Verb::Create
            && let Some(resource) = &target.resource
            && target
                .resource_type
                .as_deref()
                .is_some_and(|kind| kind.to_ascii_lowercase().contains("access_key"))
        {
            self.bind(learned(BindingKey::AwsAccessKey(resource.clone()), None));
        }
        if verb == Verb::Assume {
            let until = attribute(event, ATTR_AWS_SESSION_EXPIRES)
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map(|until| until.with_timezone(&Utc))
                .or_else(|| Some(at + Duration::hours(DEFAULT_ROLE_SESSION)));
            if let Some(session) = attribute(event, ATTR_AWS_ROLE_SESSION) {
                // Any caller may name a session anything: when the role is
                // known, only that role's session of that name is bound.
                let role = target
                    .principal
                    .as_ref()
                    .map(|principal| principal.id.as_str())
                    .or(target.resource.as_deref());
                let key = role
                    .and_then(|role| assumed_role_arn(role, session))
                    .unwrap_or_else(|| session.to_owned());
                self.bind(learned(BindingKey::AwsRoleSession(key), until));
            }
            if let Some(identity) = attribute(event, ATTR_AWS_SOURCE_IDENTITY) {
                self.bind(learned(
                    BindingKey::AwsSourceIdentity(identity.to_owned()),
                    until,
                ));
            }
            // Unlike a session name, which any caller may choose, the
            // issued key is the session's own.
            if let Some(key) = attribute(event, ATTR_AWS_ISSUED_ACCESS_KEY) {
                self.bind(learned(BindingKey::AwsAccessKey(key.to_owned()), until));
            }
        }
    }

    fn remember_session(&mut self, event: &RuntimeEvent) {
        let Some(session) = &event.context.session_id else {
            return;
        };
        let seen = SessionSeen {
            at: event.observed_at,
            event: event.id,
            chain: holder_of(&event.actor),
        };
        // Most recently sighted last: the front is the one to forget first.
        if self.sessions.to_back(session.as_str()).is_none() {
            self.sessions.insert(session.clone(), Vec::new());
        }
        if let Some(chains) = self.sessions.get_mut(session.as_str()) {
            match chains
                .iter_mut()
                .find(|c| same_chain(&c.chain, &seen.chain))
            {
                Some(known) if known.at <= seen.at => *known = seen,
                Some(_) => {}
                None => chains.push(seen),
            }
        }
        while self.sessions.len() > self.max_sessions {
            self.sessions.pop_front();
        }
    }
}

/// The credential keys an event carries.
pub fn binding_keys(event: &RuntimeEvent) -> Vec<BindingKey> {
    let mut keys = Vec::new();
    if let Some(credential) = &event.actor.credential {
        let id = credential.id.clone();
        match credential.kind {
            CredentialKind::AwsAccessKey => keys.push(BindingKey::AwsAccessKey(id)),
            CredentialKind::AwsRoleSession => {
                // Bound by its full ARN when the binding knew the role, by
                // its name when it did not.
                let name = session_name(&id).to_owned();
                if name != id {
                    keys.push(BindingKey::AwsRoleSession(id));
                }
                keys.push(BindingKey::AwsRoleSession(name));
            }
            CredentialKind::OauthToken => keys.push(BindingKey::OauthToken(id)),
            CredentialKind::CustodyToken => keys.push(BindingKey::CustodyToken(id)),
            _ => {}
        }
    }
    type Make = fn(String) -> BindingKey;
    let attributes: [(&str, Make); 5] = [
        (ATTR_AWS_ACCESS_KEY, BindingKey::AwsAccessKey),
        (ATTR_AWS_ROLE_SESSION, BindingKey::AwsRoleSession),
        (ATTR_AWS_SOURCE_IDENTITY, BindingKey::AwsSourceIdentity),
        (ATTR_OAUTH_CLIENT, BindingKey::OauthClient),
        (ATTR_OAUTH_TOKEN, BindingKey::OauthToken),
    ];
    for (name, key) in attributes {
        if let Some(value) = attribute(event, name) {
            let key = key(value.to_owned());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// A string attribute of an event.
fn attribute<'e>(event: &'e RuntimeEvent, name: &str) -> Option<&'e str> {
    event.attributes.get(name)?.as_str()
}

/// The session name of an AWS role session id: the last segment of an
/// assumed-role ARN (`arn:aws:sts::1:assumed-role/Role/name`), else the id.
fn session_name(id: &str) -> &str {
    if id.contains(":assumed-role/") {
        id.rsplit('/').next().unwrap_or(id)
    } else {
        id
    }
}

/// The ARN of session `session` of the role `role`
/// (`arn:aws:iam::1:role/path/Name` -> `arn:aws:sts::1:assumed-role/Name/session`),
/// if `role` is a role ARN.
pub(crate) fn assumed_role_arn(role: &str, session: &str) -> Option<String> {
    let mut parts = role.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(_region), Some(account), Some(path)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let name = path.strip_prefix("role/")?.rsplit('/').next()?;
    (!name.is_empty() && !account.is_empty())
        .then(|| format!("arn:{partition}:sts::{account}:assumed-role/{name}/{session}"))
}

fn evidence(kind: &str, detail: String) -> Evidence {
    Evidence {
        kind: kind.to_owned(),
        detail,
    }
}

/// A chain as a holder: without the credential it happened to use.
fn holder_of(actor: &Actor) -> Actor {
    Actor {
        credential: None,
        ..actor.clone()
    }
}

/// The chain of `child`, started by `parent`: the parent's chain with the
/// parent's current actor above the child; a parent with no root and a human
/// or service as its actor becomes the root.
fn descend(parent: &Actor, child: &Principal) -> Actor {
    let mut chain = parent.clone();
    let is_root = matches!(
        parent.current.kind,
        custody_event::PrincipalKind::Human | custody_event::PrincipalKind::Service
    );
    if parent.root.is_none() && is_root {
        chain.root = Some(parent.current.clone());
    } else {
        chain.agents.push(parent.current.clone());
    }
    chain.current = child.clone();
    chain.credential = None;
    chain
}

/// Whether two chains are the same holder: the same principals, in order.
fn same_chain(a: &Actor, b: &Actor) -> bool {
    let key = |p: &Principal| (p.kind, p.id.clone(), p.run_id.clone());
    a.root.as_ref().map(key) == b.root.as_ref().map(key)
        && a.agents.len() == b.agents.len()
        && a.agents
            .iter()
            .zip(&b.agents)
            .all(|(x, y)| key(x) == key(y))
        && key(&a.current) == key(&b.current)
}

/// `reported` hung below `holder`: the holder's chain, then the reported
/// actor as the current one, unless it is the holder itself. The reported
/// credential stays.
fn below(holder: &Actor, reported: &Actor) -> Actor {
    let same = |a: &Principal, b: &Principal| a.id == b.id && a.run_id == b.run_id;
    let mut agents = holder.agents.clone();
    let current = if same(&holder.current, &reported.current) {
        holder.current.clone()
    } else {
        agents.push(holder.current.clone());
        reported.current.clone()
    };
    Actor {
        root: holder.root.clone(),
        agents,
        current,
        credential: reported.credential.clone(),
    }
}

/// How evidence names a hop: its run, or its id.
fn hop_name(principal: &Principal) -> String {
    match &principal.run_id {
        Some(run) => format!("run {run} ({})", principal.id),
        None => principal.id.clone(),
    }
}
