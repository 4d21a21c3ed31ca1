//! Reading a directory of policy files: the one place this crate reads
//! the filesystem, so that `custody serve`, its reloads and `custody
//! policy` read a directory the same way.

use std::path::Path;

use crate::PolicyError;

/// Every `*.cedar` file under `path` (subdirectories included), as (name
/// relative to `path`, with `/` between its parts, text), in name order.
/// A directory or file that cannot be read, or a file that is not UTF-8,
/// is an error naming it (the first, in name order).
pub fn read_dir(path: impl AsRef<Path>) -> Result<Vec<(String, String)>, PolicyError> {
    let root = path.as_ref();
    let mut found = Vec::new();
    let mut errors = Vec::new();
    walk(root, root, &mut found, &mut errors);
    errors.sort_by(|a, b| a.file.cmp(&b.file));
    if let Some(error) = errors.into_iter().next() {
        return Err(error);
    }
    found.sort();
    let mut files = Vec::with_capacity(found.len());
    for (name, full) in found {
        let bytes = std::fs::read(&full).map_err(|error| PolicyError {
            file: name.clone(),
            line: None,
            message: format!("cannot be read: {error}"),
        })?;
        let text = String::from_utf8(bytes).map_err(|error| PolicyError {
            file: name.clone(),
            line: None,
            message: format!(
                "is not UTF-8 (byte {} is invalid)",
                error.utf8_error().valid_up_to()
            ),
        })?;
        files.push((name, text));
    }
    Ok(files)
}

/// Collects (relative name, path) of the `*.cedar` files under `dir`.
fn walk(
    root: &Path,
    dir: &Path,
    found: &mut Vec<(String, std::path::PathBuf)>,
    errors: &mut Vec<PolicyError>,
) {
    let name = |path: &Path| {
        let relative = path.strip_prefix(root).unwrap_or(path);
        let parts: Vec<String> = relative
            .components()
            .map(|part| part.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.is_empty() {
            path.display().to_string()
        } else {
            parts.join("/")
        }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            errors.push(PolicyError {
                file: if dir == root {
                    root.display().to_string()
                } else {
                    name(dir)
                },
                line: None,
                message: format!("cannot be read: {error}"),
            });
            return;
        }
    };
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(error) => {
                errors.push(PolicyError {
                    file: name(dir),
                    line: None,
                    message: format!("cannot be listed: {error}"),
                });
                continue;
            }
        };
        // Follows links, as reading the file would.
        if path.is_dir() {
            walk(root, &path, found, errors);
        } else if path.extension().is_some_and(|ext| ext == "cedar") {
            found.push((name(&path), path));
        }
    }
}
