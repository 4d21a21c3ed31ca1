//! The rule pack shipped in `rules/`: it loads, each agent rule carries its
//! framework ids and examples, and every example holds.

use custody_detect::{RuleSet, builtin, testing};

fn pack() -> RuleSet {
    RuleSet::load(&builtin::files()).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

#[test]
fn the_pack_loads() {
    let set = pack();
    assert!(set.rules.len() >= 40, "{} rules", set.rules.len());
}

#[test]
fn every_example_holds() {
    let set = pack();
    let mut failures = Vec::new();
    let mut cases = 0;
    for (path, text) in builtin::examples() {
        let examples = testing::parse(path, text).unwrap_or_else(|e| panic!("{e}"));
        for outcome in testing::run(&set, path, &examples) {
            cases += 1;
            if let Some(failure) = outcome.failure {
                failures.push(format!("{path}: {}: {failure}", outcome.case));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases >= 18, "{cases} cases");
}

/// Each agent rule names its OWASP Agentic (ASI01-ASI10) and NIST CSF ids,
/// and has at least one case that fires and one that does not.
#[test]
fn agent_rules_are_tagged_and_exemplified() {
    let set = pack();
    let examples: Vec<testing::Examples> = builtin::examples()
        .into_iter()
        .map(|(path, text)| testing::parse(path, text).unwrap())
        .collect();
    // Rules that only feed a correlation are checked through it.
    let referenced: Vec<&str> = set
        .correlations
        .iter()
        .flat_map(|c| c.sigma.rules.iter().map(String::as_str))
        .collect();
    let feeds = |id: Option<&str>, name: Option<&str>| {
        [id, name]
            .into_iter()
            .flatten()
            .any(|key| referenced.contains(&key))
    };
    let agent_rules = set
        .rules
        .iter()
        .filter(|r| r.origin.file.starts_with("builtin:agent/"))
        .map(|r| {
            (
                r.key(),
                r.sigma.name.as_deref(),
                &r.sigma.tags,
                feeds(r.sigma.id.as_deref(), r.sigma.name.as_deref()),
            )
        })
        .chain(
            set.correlations
                .iter()
                .filter(|c| c.origin.file.starts_with("builtin:agent/"))
                .map(|c| (c.key(), c.sigma.name.as_deref(), &c.sigma.tags, false)),
        );
    let mut checked = 0;
    for (key, name, tags, helper) in agent_rules {
        if helper {
            continue;
        }
        checked += 1;
        assert!(
            tags.iter().any(|t| t.starts_with("owasp.asi")),
            "{key}: no owasp.asiNN tag in {tags:?}"
        );
        assert!(
            tags.iter().any(|t| t.starts_with("nist_csf.")),
            "{key}: no nist_csf. tag in {tags:?}"
        );
        let mine: Vec<_> = examples
            .iter()
            .filter(|e| e.rule == key || Some(e.rule.as_str()) == name)
            .flat_map(|e| &e.cases)
            .collect();
        assert!(
            mine.iter().any(|c| c.expect == testing::Expect::Fire),
            "{key}: no example that fires"
        );
        assert!(
            mine.iter().any(|c| c.expect == testing::Expect::Quiet),
            "{key}: no example that stays quiet"
        );
    }
    assert!(checked >= 9, "{checked} agent rules");
}
