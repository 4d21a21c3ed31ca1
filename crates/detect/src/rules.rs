//! Reading Sigma rules from files, with errors that say where.
//!
//! A rule file holds one or more YAML documents: detection rules,
//! correlation rules and filters. Each document is parsed on its own so an
//! error can name its line (the parser's messages do not); collection
//! actions (`action: global`) make a file one unit again. Every error names
//! the file, a line and, when it can be found, the field.
//!
//! Files ending in `.tests.yml` beside the rules hold their examples
//! ([`crate::testing`]) and are not rules.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rsigma_eval::CompiledRule;
use rsigma_parser::{CorrelationRule, FilterRule, SigmaRule};

/// The suffix of a file of examples.
pub const TESTS_SUFFIX: &str = ".tests.yml";

/// The text of one rule file and the name errors give it.
#[derive(Debug, Clone)]
pub struct RuleFile {
    /// The path, or the name of a built-in file (`builtin:agent/x.yml`).
    pub name: String,
    /// The YAML.
    pub text: String,
}

/// What is wrong with a rule, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The file.
    pub file: String,
    /// The line, 1-based, when it could be found.
    pub line: Option<usize>,
    /// The field, when it could be found (`detection.selection.eventName|foo`
    /// is reported as the key on its line).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RuleError {}

/// Where a rule was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: String,
    /// The line its document starts on.
    pub line: usize,
}

/// A detection rule, parsed and compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule as written.
    pub sigma: SigmaRule,
    /// The rule compiled for evaluation.
    pub compiled: CompiledRule,
    /// Where it was read from.
    pub origin: Origin,
}

impl Rule {
    /// The id findings name it by: its `id`, else its `name`, else its title.
    pub fn key(&self) -> &str {
        key_of(
            self.sigma.id.as_deref(),
            self.sigma.name.as_deref(),
            &self.sigma.title,
        )
    }
}

/// A correlation rule.
#[derive(Debug, Clone)]
pub struct Correlation {
    /// The rule as written.
    pub sigma: CorrelationRule,
    /// Where it was read from.
    pub origin: Origin,
}

impl Correlation {
    /// The id findings name it by.
    pub fn key(&self) -> &str {
        key_of(
            self.sigma.id.as_deref(),
            self.sigma.name.as_deref(),
            &self.sigma.title,
        )
    }
}

fn key_of<'a>(id: Option<&'a str>, name: Option<&'a str>, title: &'a str) -> &'a str {
    id.or(name).unwrap_or(title)
}

/// A set of rules that load together: every correlation's rules are in it.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Detection rules.
    pub rules: Vec<Rule>,
    /// Correlation rules.
    pub correlations: Vec<Correlation>,
    /// Filters (applied to the rules they name).
    pub filters: Vec<FilterRule>,
}

/// Values for the placeholders rules name with the `expand` modifier
/// (`User|expand: '%admins%'`): each placeholder stands for any of its
/// values.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Placeholders(pub BTreeMap<String, Vec<String>>);

impl Placeholders {
    /// The pipeline that substitutes them, if there are any.
    fn pipeline(&self) -> Result<Option<rsigma_eval::Pipeline>, String> {
        if self.0.is_empty() {
            return Ok(None);
        }
        // JSON is YAML: the pipeline is written as JSON and read by the
        // crate's own pipeline parser.
        let text = serde_json::json!({
            "name": "custody placeholders",
            "vars": self.0,
            "transformations": [{"type": "value_placeholders"}],
        })
        .to_string();
        rsigma_eval::parse_pipeline(&text)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

impl RuleSet {
    /// Parses, compiles and cross-checks `files`. Every error in every file
    /// is reported, not only the first.
    pub fn load(files: &[RuleFile]) -> Result<RuleSet, Vec<RuleError>> {
        RuleSet::load_with(files, &Placeholders::default())
    }

    /// [`RuleSet::load`], with values for placeholders.
    pub fn load_with(
        files: &[RuleFile],
        placeholders: &Placeholders,
    ) -> Result<RuleSet, Vec<RuleError>> {
        let mut set = RuleSet::default();
        let mut errors = Vec::new();
        let pipeline = placeholders.pipeline().map_err(|message| {
            vec![RuleError {
                file: "(placeholders)".into(),
                line: None,
                field: None,
                message,
            }]
        })?;
        for file in files {
            for (start, chunk) in documents(&file.text) {
                set.read(file, start, chunk, pipeline.as_ref(), &mut errors);
            }
        }
        set.apply_filters(files, &mut errors);
        set.check(files, &mut errors);
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// How many rules of each sort.
    pub fn len(&self) -> usize {
        self.rules.len() + self.correlations.len()
    }

    /// Whether the set holds no rule.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(
        &mut self,
        file: &RuleFile,
        start: usize,
        chunk: &str,
        pipeline: Option<&rsigma_eval::Pipeline>,
        errors: &mut Vec<RuleError>,
    ) {
        let origin = Origin {
            file: file.name.clone(),
            line: start,
        };
        let collection = match rsigma_parser::parse_sigma_yaml(chunk) {
            Ok(collection) => collection,
            Err(error) => {
                errors.push(locate(file, start, chunk, &error.to_string()));
                return;
            }
        };
        for message in &collection.errors {
            errors.push(locate(file, start, chunk, message));
        }
        for mut sigma in collection.rules {
            if let Some(pipeline) = pipeline
                && let Err(error) =
                    rsigma_eval::apply_pipelines(std::slice::from_ref(pipeline), &mut sigma)
            {
                errors.push(locate(file, start, chunk, &error.to_string()));
                continue;
            }
            match rsigma_eval::compile_rule(&sigma) {
                Ok(compiled) => self.rules.push(Rule {
                    sigma,
                    compiled,
                    origin: origin.clone(),
                }),
                Err(error) => errors.push(locate(file, start, chunk, &error.to_string())),
            }
        }
        for mut sigma in collection.correlations {
            all_rules_by_default(&mut sigma, chunk);
            self.correlations.push(Correlation {
                sigma,
                origin: origin.clone(),
            });
        }
        self.filters.extend(collection.filters);
    }

    /// Filters are folded into the rules they name, as `and not`.
    fn apply_filters(&mut self, files: &[RuleFile], errors: &mut Vec<RuleError>) {
        if self.filters.is_empty() {
            return;
        }
        let mut engine = rsigma_eval::Engine::new();
        for rule in &self.rules {
            if let Err(error) = engine.add_rule(&rule.sigma) {
                errors.push(at_origin(files, &rule.origin, &error.to_string()));
            }
        }
        for filter in &self.filters {
            if let Err(error) = engine.apply_filter(filter) {
                errors.push(RuleError {
                    file: "(filters)".into(),
                    line: None,
                    field: None,
                    message: format!("filter `{}`: {error}", filter.title),
                });
            }
        }
        for (rule, compiled) in self.rules.iter_mut().zip(engine.rules()) {
            rule.compiled = compiled.clone();
        }
    }

    /// Ids are unique, and a correlation's rules exist.
    fn check(&self, files: &[RuleFile], errors: &mut Vec<RuleError>) {
        let mut seen: HashMap<&str, &Origin> = HashMap::new();
        let keys = self
            .rules
            .iter()
            .map(|r| (r.key(), &r.origin))
            .chain(self.correlations.iter().map(|c| (c.key(), &c.origin)));
        for (key, origin) in keys {
            if let Some(first) = seen.insert(key, origin) {
                errors.push(at_origin(
                    files,
                    origin,
                    &format!(
                        "the id `{key}` is already used by the rule at {}:{}",
                        first.file, first.line
                    ),
                ));
            }
        }
        let known: HashSet<&str> = self
            .rules
            .iter()
            .flat_map(|r| {
                [r.sigma.id.as_deref(), r.sigma.name.as_deref()]
                    .into_iter()
                    .flatten()
            })
            .chain(self.correlations.iter().flat_map(|c| {
                [c.sigma.id.as_deref(), c.sigma.name.as_deref()]
                    .into_iter()
                    .flatten()
            }))
            .collect();
        for correlation in &self.correlations {
            for name in &correlation.sigma.rules {
                if !known.contains(name.as_str()) {
                    let file = files.iter().find(|f| f.name == correlation.origin.file);
                    let line = file.and_then(|f| line_of(&f.text, correlation.origin.line, name));
                    errors.push(RuleError {
                        file: correlation.origin.file.clone(),
                        line: line.or(Some(correlation.origin.line)),
                        field: Some("correlation.rules".into()),
                        message: format!(
                            "correlation `{}` names the rule `{name}`, which no loaded rule has as its id or name",
                            correlation.key()
                        ),
                    });
                }
            }
        }
    }
}

/// A temporal correlation without a condition needs all its rules, as the
/// specification says; the parser reads the missing condition as one rule.
fn all_rules_by_default(sigma: &mut CorrelationRule, chunk: &str) {
    use rsigma_parser::{ConditionOperator, CorrelationCondition, CorrelationType};
    if !matches!(
        sigma.correlation_type,
        CorrelationType::Temporal | CorrelationType::TemporalOrdered
    ) {
        return;
    }
    let written = yaml_serde::from_str::<yaml_serde::Value>(chunk)
        .ok()
        .and_then(|doc| doc.get("correlation")?.get("condition").cloned())
        .is_some();
    if !written {
        sigma.condition = CorrelationCondition::Threshold {
            predicates: vec![(ConditionOperator::Gte, sigma.rules.len() as u64)],
            field: None,
            percentile: None,
        };
    }
}

/// Reads every rule file under `path` (a file, or a directory read
/// recursively in name order), leaving out examples.
pub fn read(path: &Path) -> std::io::Result<Vec<RuleFile>> {
    let mut paths = Vec::new();
    collect(path, &mut paths)?;
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|error| {
                std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
            })?;
            Ok(RuleFile {
                name: path.display().to_string(),
                text,
            })
        })
        .collect()
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let metadata = std::fs::metadata(path).map_err(|error| {
        std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
    })?;
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path)? {
            collect(&entry?.path(), out)?;
        }
    } else if is_rule_file(path) {
        out.push(path.to_owned());
    }
    Ok(())
}

/// A `.yml` or `.yaml` file that is not a file of examples.
pub fn is_rule_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".yml") || name.ends_with(".yaml")) && !name.ends_with(TESTS_SUFFIX)
}

/// The documents of a file with the line each starts on; the whole file
/// when it uses collection actions, which span documents.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let uses_actions = text.lines().any(|line| line.starts_with("action:"));
    if uses_actions {
        return vec![(1, text)];
    }
    let mut out = Vec::new();
    let mut start_line = 1;
    let mut start_byte = 0;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" {
            let chunk = &text[start_byte..offset];
            if !chunk.trim().is_empty() {
                out.push((start_line, chunk));
            }
            start_line = index + 2;
            start_byte = offset + line.len();
        }
        offset += line.len();
    }
    let chunk = &text[start_byte..];
    if !chunk.trim().is_empty() {
        out.push((start_line, chunk));
    }
    out
}

/// An error of the document starting on line `start`, placed on the line
/// it quotes when it quotes one, else the line the parser gave, else the
/// document's first line.
fn locate(file: &RuleFile, start: usize, chunk: &str, message: &str) -> RuleError {
    // YAML also breaks lines at a lone carriage return, which `lines()`
    // does not: keep the line within the document.
    let last = chunk.lines().count().max(1);
    let from_yaml = yaml_line(message).map(|line| line.clamp(1, last) + start - 1);
    // What the message quotes, else a line of it (a regex error shows the
    // pattern on a line of its own).
    let candidates = quoted(message).into_iter().chain(
        message
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|line| line.len() >= 3)
            .map(str::to_owned),
    );
    let quoted = candidates
        .into_iter()
        .find_map(|token| line_of(chunk, 1, &token).map(|line| line + start - 1));
    let line = from_yaml.or(quoted).unwrap_or(start);
    RuleError {
        file: file.name.clone(),
        line: Some(line),
        field: key_on_line(&file.text, line),
        message: message.to_owned(),
    }
}

fn at_origin(files: &[RuleFile], origin: &Origin, message: &str) -> RuleError {
    let field = files
        .iter()
        .find(|f| f.name == origin.file)
        .and_then(|f| key_on_line(&f.text, origin.line));
    RuleError {
        file: origin.file.clone(),
        line: Some(origin.line),
        field,
        message: message.to_owned(),
    }
}

/// The line number in the parser's message ("at line 3 column 5").
fn yaml_line(message: &str) -> Option<usize> {
    let after = message.split("line ").nth(1)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What the message quotes: 'x', "x" or `x`.
fn quoted(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    for quote in ['\'', '"', '`'] {
        let parts: Vec<&str> = message.split(quote).collect();
        // Odd parts lie between a quote and the next; the last part has no
        // closing quote after it.
        for (index, inside) in parts.iter().enumerate() {
            if index % 2 == 1 && index + 1 < parts.len() && !inside.is_empty() {
                out.push((*inside).to_owned());
            }
        }
    }
    out
}

/// The first line at or after `from` (1-based) containing `token`.
fn line_of(text: &str, from: usize, token: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, line)| line.contains(token))
        .map(|(index, _)| index + 1)
}

/// The YAML key on a line (`eventName|foo` in `    eventName|foo: x`).
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let content = text.lines().nth(line.checked_sub(1)?)?;
    let content = content.trim_start().trim_start_matches("- ");
    let (key, _) = content.split_once(':')?;
    let key = key.trim().trim_matches(['\'', '"']);
    (!key.is_empty() && !key.contains(' ')).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> RuleFile {
        RuleFile {
            name: name.into(),
            text: text.into(),
        }
    }

    const GOOD: &str = "title: Tool call
id: 8a7c1d2e-0000-4000-8000-000000000001
logsource:
    product: custody
    category: tool_call
detection:
    selection:
        target.tool: delete_repo
    condition: selection
level: high
";

    #[test]
    fn a_good_rule_loads() {
        let set = RuleSet::load(&[file("good.yml", GOOD)]).unwrap();
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.rules[0].key(), "8a7c1d2e-0000-4000-8000-000000000001");
        assert_eq!(set.rules[0].origin.line, 1);
    }

    #[test]
    fn an_unknown_modifier_names_its_file_line_and_field() {
        let text = GOOD.replace("target.tool: delete_repo", "target.tool|sartswith: delete");
        let errors = RuleSet::load(&[file("bad.yml", &text)]).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, "bad.yml");
        assert_eq!(errors[0].line, Some(8), "{}", errors[0]);
        assert_eq!(errors[0].field.as_deref(), Some("target.tool|sartswith"));
        assert!(errors[0].message.contains("sartswith"), "{}", errors[0]);
    }

    #[test]
    fn errors_in_a_later_document_count_lines_from_the_file() {
        let text = format!(
            "{GOOD}---\ntitle: Second\nid: second\nlogsource:\n    product: custody\ndetection:\n    selection:\n        action|re: '(unclosed'\n    condition: selection\n"
        );
        let errors = RuleSet::load(&[file("two.yml", &text)]).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, Some(18), "{}", errors[0]);
        assert_eq!(errors[0].field.as_deref(), Some("action|re"));
    }

    #[test]
    fn broken_yaml_says_where() {
        let text = GOOD.replace("    condition: selection", "  condition: [selection");
        let errors = RuleSet::load(&[file("yaml.yml", &text)]).unwrap_err();
        assert!(
            errors[0].line.is_some_and(|line| line >= 9),
            "{}",
            errors[0]
        );
    }

    /// YAML breaks lines at a lone carriage return too; the line an error
    /// names stays within the file.
    #[test]
    fn a_lone_carriage_return_keeps_the_line_in_the_file() {
        let text = "title: x\rid: y\rlogsource: {}\rdetection:\r  s: [\r";
        let errors = RuleSet::load(&[file("cr.yml", text)]).unwrap_err();
        let lines = text.lines().count();
        assert!(
            errors[0].line.is_some_and(|line| line <= lines),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn a_correlation_naming_a_missing_rule_is_refused() {
        let text = format!(
            "{GOOD}---\ntitle: Many\nid: many\ncorrelation:\n    type: event_count\n    rules:\n        - nosuch\n    group-by:\n        - chain.run\n    timespan: 1m\n    condition:\n        gte: 3\n"
        );
        let errors = RuleSet::load(&[file("corr.yml", &text)]).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, Some(17), "{}", errors[0]);
        assert!(errors[0].message.contains("nosuch"));
    }

    #[test]
    fn the_same_id_twice_is_refused() {
        let errors = RuleSet::load(&[file("a.yml", GOOD), file("b.yml", GOOD)]).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, "b.yml");
        assert!(errors[0].message.contains("a.yml:1"), "{}", errors[0]);
    }

    #[test]
    fn examples_are_not_rules() {
        assert!(is_rule_file(Path::new("rules/x.yml")));
        assert!(is_rule_file(Path::new("rules/x.yaml")));
        assert!(!is_rule_file(Path::new("rules/x.tests.yml")));
        assert!(!is_rule_file(Path::new("rules/README.md")));
    }
}
