//! Helpers shared by the integration tests: where the committed files are,
//! and validators for the committed JSON Schemas.

// Each test crate includes this module and uses only some of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use jsonschema::Validator;
use serde_json::Value;

/// The repository root, two levels above this crate.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed schema files' directory.
pub fn schema_dir() -> PathBuf {
    repo_root().join("schema")
}

/// The example events' directory.
pub fn examples_dir() -> PathBuf {
    repo_root().join("examples/events")
}

/// Every example event, as (file name, bytes), sorted by name.
pub fn examples() -> Vec<(String, Vec<u8>)> {
    json_files(&examples_dir())
}

/// Every `.json` file in `dir`, as (file name, bytes), sorted by name.
pub fn json_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// A validator for the committed schema `file`, checking formats too
/// (`date-time`, `uuid`), which draft 2020-12 only annotates by default.
pub fn committed_validator(file: &str) -> Validator {
    let path = schema_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|error| panic!("{file} is not a valid schema: {error}"))
}

/// Every way `instance` breaks the schema, one per line; empty when valid.
pub fn schema_errors(validator: &Validator, instance: &Value) -> String {
    validator
        .iter_errors(instance)
        .map(|error| format!("{}: {error}", error.instance_path))
        .collect::<Vec<_>>()
        .join("\n")
}
