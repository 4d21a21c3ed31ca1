//! The scope index decides as the whole set does: the same verdict and the
//! same deciding policies, with the same reasons, for every generated call
//! (`benches/support/corpus.rs`: scopes on humans, agent types, runs,
//! tools, servers, actions and types; chains one to four deep).

use custody_engine::Verdict;
use custody_policy::Policies;

#[path = "../benches/support/corpus.rs"]
mod corpus;

fn check(size: usize, calls: usize) {
    let policies = Policies::load(&corpus::policies(size)).unwrap();
    let events = corpus::events(calls);
    let mut verdicts = [0; 3];
    for (i, event) in events.iter().enumerate() {
        // Facts and signals out of step with the bench's, for other mixes.
        let (signals, facts) = (corpus::signals(i / 3), corpus::facts(i * 7 + 1));
        let indexed = policies.decide_with(event, &signals, &facts);
        let whole = policies.decide_unindexed(event, &signals, &facts);
        assert_eq!(indexed, whole, "call {i} with {size} policies: {event:?}");
        // A second time, from the candidate cache.
        assert_eq!(policies.decide_with(event, &signals, &facts), whole);
        verdicts[match whole.verdict {
            Verdict::Allow => 0,
            Verdict::Deny => 1,
            _ => 2,
        }] += 1;
    }
    assert!(
        verdicts.iter().all(|&n| n > 0),
        "the calls reach every verdict with {size} policies: {verdicts:?}"
    );
}

#[test]
fn the_index_decides_as_the_whole_set_with_ten_policies() {
    check(10, 2000);
}

#[test]
fn the_index_decides_as_the_whole_set_with_a_thousand_policies() {
    check(1000, 2000);
}
