//! Which policies could apply to a request, found from their scopes, so
//! that a request is authorized against those alone.
//!
//! Cedar's authorizer evaluates every policy of the set it is given; with
//! a thousand policies that is most of a decision's cost, though a call
//! is in scope of few of them. Each policy's principal, action and
//! resource constraints are indexed: for each of the three, a bit set of
//! the policies whose constraint the request's entity (with everything it
//! is `in`) could satisfy. Their intersection is the candidates, a
//! superset of the policies whose scope holds: `is` and `is ... in` are
//! indexed by their type, or by their entity alone, which is looser. A
//! policy outside the candidates has a scope that does not hold, so Cedar
//! would neither apply it nor report an error from it: authorizing against
//! the candidates gives the same decision, deciding policies and errors
//! as the whole set. The subset of policies for each distinct candidate
//! set is built once and cached.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};

use crate::request::Scope;

/// How many candidate sets are kept; past it the cache starts again.
/// Each holds clones of its policies (their text included), some hundreds
/// of bytes a policy, so a thousand sets of a few dozen policies are some
/// MiB; a miss costs building one set, a few µs.
const CACHED_SETS: usize = 1024;

/// The policies of a set by scope.
#[derive(Debug)]
pub(crate) struct Index {
    policies: Vec<Policy>,
    principal: Dimension,
    action: Dimension,
    resource: Dimension,
    cache: RwLock<HashMap<Bits, Arc<PolicySet>>>,
}

/// One of a bit per policy.
type Bits = Box<[u64]>;

/// One scope constraint of every policy.
#[derive(Debug)]
struct Dimension {
    /// Unconstrained.
    any: Bits,
    /// `== E`: the entity itself.
    eq: HashMap<EntityUid, Bits>,
    /// `in E` (and `is T in E`): the entity or anything it is in.
    within: HashMap<EntityUid, Bits>,
    /// `is T`: any entity of the type.
    is: HashMap<EntityTypeName, Bits>,
}

/// One policy's constraint on one of the three.
enum Constraint {
    Any,
    Eq(EntityUid),
    In(Vec<EntityUid>),
    Is(EntityTypeName),
}

impl Index {
    /// The index of `policies`, whose order is their bit.
    pub fn new(policies: Vec<Policy>) -> Index {
        let words = policies.len().div_ceil(64);
        let mut principal = Dimension::new(words);
        let mut action = Dimension::new(words);
        let mut resource = Dimension::new(words);
        for (bit, policy) in policies.iter().enumerate() {
            principal.add(
                bit,
                match policy.principal_constraint() {
                    PrincipalConstraint::Any => Constraint::Any,
                    PrincipalConstraint::Eq(e) => Constraint::Eq(e),
                    PrincipalConstraint::In(e) | PrincipalConstraint::IsIn(_, e) => {
                        Constraint::In(vec![e])
                    }
                    PrincipalConstraint::Is(t) => Constraint::Is(t),
                },
            );
            action.add(
                bit,
                match policy.action_constraint() {
                    ActionConstraint::Any => Constraint::Any,
                    ActionConstraint::Eq(e) => Constraint::Eq(e),
                    ActionConstraint::In(list) => Constraint::In(list),
                },
            );
            resource.add(
                bit,
                match policy.resource_constraint() {
                    ResourceConstraint::Any => Constraint::Any,
                    ResourceConstraint::Eq(e) => Constraint::Eq(e),
                    ResourceConstraint::In(e) | ResourceConstraint::IsIn(_, e) => {
                        Constraint::In(vec![e])
                    }
                    ResourceConstraint::Is(t) => Constraint::Is(t),
                },
            );
        }
        Index {
            policies,
            principal,
            action,
            resource,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The policies that could apply to a request in `scope`.
    pub fn candidates(&self, scope: &Scope) -> Arc<PolicySet> {
        let mut bits = self
            .principal
            .matching(&scope.principal, &scope.principal_ancestors);
        // Actions have no groups in Custody's schema: an action is in
        // itself alone.
        and(&mut bits, &self.action.matching(&scope.action, &[]));
        and(
            &mut bits,
            &self
                .resource
                .matching(&scope.resource, &scope.resource_ancestors),
        );
        if let Some(set) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&bits)
        {
            return set.clone();
        }
        let chosen = self
            .policies
            .iter()
            .enumerate()
            .filter(|(bit, _)| is_set(&bits, *bit))
            .map(|(_, policy)| policy.clone());
        // The policies' ids were unique in the whole set, so they are in
        // any part of it.
        let set = Arc::new(PolicySet::from_policies(chosen).unwrap_or_else(|_| PolicySet::new()));
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHED_SETS {
            cache.clear();
        }
        cache.insert(bits, set.clone());
        set
    }
}

impl Dimension {
    fn new(words: usize) -> Dimension {
        Dimension {
            any: empty(words),
            eq: HashMap::new(),
            within: HashMap::new(),
            is: HashMap::new(),
        }
    }

    fn add(&mut self, bit: usize, constraint: Constraint) {
        let words = self.any.len();
        match constraint {
            Constraint::Any => set(&mut self.any, bit),
            Constraint::Eq(entity) => {
                set(self.eq.entry(entity).or_insert_with(|| empty(words)), bit);
            }
            Constraint::In(entities) => {
                for entity in entities {
                    set(
                        self.within.entry(entity).or_insert_with(|| empty(words)),
                        bit,
                    );
                }
            }
            Constraint::Is(kind) => set(self.is.entry(kind).or_insert_with(|| empty(words)), bit),
        }
    }

    /// The policies whose constraint `entity`, in each of `ancestors`,
    /// could satisfy.
    fn matching(&self, entity: &EntityUid, ancestors: &[EntityUid]) -> Bits {
        let mut bits = self.any.clone();
        let mut add = |found: Option<&Bits>| {
            if let Some(found) = found {
                or(&mut bits, found);
            }
        };
        add(self.eq.get(entity));
        add(self.within.get(entity));
        add(self.is.get(entity.type_name()));
        for ancestor in ancestors {
            add(self.within.get(ancestor));
        }
        bits
    }
}

fn empty(words: usize) -> Bits {
    vec![0; words].into_boxed_slice()
}

fn set(bits: &mut [u64], bit: usize) {
    if let Some(word) = bits.get_mut(bit / 64) {
        *word |= 1 << (bit % 64);
    }
}

fn is_set(bits: &[u64], bit: usize) -> bool {
    bits.get(bit / 64)
        .is_some_and(|word| word & (1 << (bit % 64)) != 0)
}

fn or(into: &mut [u64], other: &[u64]) {
    for (word, other) in into.iter_mut().zip(other) {
        *word |= other;
    }
}

fn and(into: &mut [u64], other: &[u64]) {
    for (word, other) in into.iter_mut().zip(other) {
        *word &= other;
    }
}
