//! `--exclude PATTERN` and `--exclude-from FILE`, shared by the commands that scan trees into
//! manifests.

use std::path::{Path, PathBuf};

use clap::Args;

use super::UsageError;
use crate::jobs::hash::HashSpec;
use crate::scan::exclude::Exclude;

#[derive(Debug, Args)]
pub struct ExcludeArgs {
    /// Leave out the paths PATTERN matches: a name at any depth (`*.tmp`, `.DS_Store`), a path
    /// as the manifest spells it when it has a `/` (`cache/**`), directories only with a
    /// trailing `/` (repeatable; adds to [config: hash.exclude]).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Read exclusion patterns from FILE, one per line; blank lines and lines starting with
    /// `#` are skipped (repeatable; adds to --exclude and hash.exclude).
    #[arg(long = "exclude-from", value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
}

impl ExcludeArgs {
    /// The patterns of the flags and of the files, each checked; a file that cannot be read
    /// or a bad pattern is a usage error naming the flag (and the file and line).
    pub fn patterns(&self) -> Result<Vec<String>, UsageError> {
        Exclude::new(&self.exclude).map_err(|e| UsageError {
            message: format!("--exclude {e}"),
        })?;
        let mut all = self.exclude.clone();
        for file in &self.exclude_from {
            all.extend(read_patterns(file)?);
        }
        Ok(all)
    }

    /// Adds the patterns to `spec`.
    pub fn apply(&self, spec: &mut HashSpec) -> Result<(), UsageError> {
        spec.exclude_also(&self.patterns()?)
            .map_err(|e| UsageError {
                message: format!("--exclude {e}"),
            })
    }
}

/// The patterns of an exclude file (rclone's `--exclude-from` format).
fn read_patterns(file: &Path) -> Result<Vec<String>, UsageError> {
    let text = std::fs::read_to_string(file).map_err(|e| UsageError {
        message: format!("--exclude-from {}: {e}", file.display()),
    })?;
    let mut patterns = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        Exclude::new(&[line]).map_err(|e| UsageError {
            message: format!("--exclude-from {} line {}: {e}", file.display(), n + 1),
        })?;
        patterns.push(line.to_string());
    }
    Ok(patterns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exclude_file_gives_its_patterns_and_names_a_bad_line() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("ignore");
        std::fs::write(&file, "# scratch\n*.tmp\n\n  cache/**  \r\n#not/this\n").unwrap();
        let args = ExcludeArgs {
            exclude: vec![".DS_Store".into()],
            exclude_from: vec![file.clone()],
        };
        assert_eq!(args.patterns().unwrap(), [".DS_Store", "*.tmp", "cache/**"]);

        std::fs::write(&file, "*.tmp\na[b\n").unwrap();
        let e = args.patterns().unwrap_err().message;
        assert!(
            e.starts_with(&format!(
                "--exclude-from {} line 2: \"a[b\"",
                file.display()
            )),
            "{e}"
        );
        let missing = ExcludeArgs {
            exclude: vec![],
            exclude_from: vec![t.path().join("nope")],
        };
        let e = missing.patterns().unwrap_err().message;
        assert!(e.contains("nope") && e.contains("No such file"), "{e}");
    }
}
