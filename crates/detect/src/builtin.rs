//! The rule pack shipped in the repository's `rules/`, built into the
//! binary so that `custody serve` runs it without the repository.

include!(concat!(env!("OUT_DIR"), "/builtin_rules.rs"));

/// The pack's rule files, named `builtin:<path under rules/>`.
pub fn files() -> Vec<crate::RuleFile> {
    RULES
        .iter()
        .filter(|(path, _)| crate::rules::is_rule_file(std::path::Path::new(path)))
        .map(|(path, text)| crate::RuleFile {
            name: format!("builtin:{path}"),
            text: (*text).to_owned(),
        })
        .collect()
}

/// The pack's examples files, by path under `rules/`.
pub fn examples() -> Vec<(&'static str, &'static str)> {
    RULES
        .iter()
        .filter(|(path, _)| path.ends_with(crate::rules::TESTS_SUFFIX))
        .copied()
        .collect()
}
