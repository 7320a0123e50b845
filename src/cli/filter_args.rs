//! `--exclude PATTERN`, `--exclude-from FILE`, `--include PATTERN`, `--include-from FILE`,
//! `--filter RULE` and `--filter-from FILE`, shared by the commands that scan trees into
//! manifests and by those that pick among a manifest's files to download; the bounds of size
//! and age; `--exclude-if-present NAME`, for the scanning commands alone.

use std::path::{Path, PathBuf};

use clap::Args;

use super::UsageError;
use crate::jobs::hash::HashSpec;
use crate::scan::filter::PathFilter;
use crate::scan::rules::Rules;
use crate::scan::size_age::{self, SizeAge};

#[derive(Debug, Default, Args)]
pub struct FilterArgs {
    /// Leave out the paths PATTERN matches: a name at any depth (`*.tmp`, `.DS_Store`), a path
    /// as the manifest spells it when it has a `/` (`cache/**`), directories only with a
    /// trailing `/` (repeatable; hash, put, submit, sync-outputs, manifest verify: adds to
    /// [config: hash.exclude]; get, download-outputs: picks among the manifests' files, the
    /// config not applying).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Read exclusion patterns from FILE, one per line; blank lines and lines starting with
    /// `#` are skipped (repeatable; adds to --exclude).
    #[arg(long = "exclude-from", value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Take only the files PATTERN matches (a name, `*.exr`, or a path with a `/`,
    /// `renders/**`); an exclusion still wins (repeatable; hash, put, submit, sync-outputs,
    /// manifest verify: adds to [config: hash.include]; get, download-outputs: the config not
    /// applying).
    #[arg(long = "include", value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Read inclusion patterns from FILE, as --exclude-from reads its (repeatable).
    #[arg(long = "include-from", value_name = "FILE")]
    pub include_from: Vec<PathBuf>,
    /// An rclone filter rule: `+ PATTERN` takes, `- PATTERN` leaves out, `!` forgets the rules
    /// before it; the first rule matching a path decides, before --exclude and --include
    /// (patterns as rclone reads them: `/` first anchors at the root, `{{regexp}}` is a regular
    /// expression, `- dir/` leaves out the files under dir too) (repeatable; hash, put,
    /// submit, sync-outputs, manifest verify: adds to [config: hash.filter]; get,
    /// download-outputs: the config not applying).
    #[arg(long = "filter", value_name = "RULE", allow_hyphen_values = true)]
    pub filter: Vec<String>,
    /// Read filter rules from FILE, one per line, as rclone's --filter-from; blank lines and
    /// lines starting with `#` or `;` are skipped (repeatable; after the --filter rules).
    #[arg(long = "filter-from", value_name = "FILE")]
    pub filter_from: Vec<PathBuf>,
}

impl FilterArgs {
    /// The exclusion patterns of the flags and of the files, each checked; a file that cannot
    /// be read or a bad pattern is a usage error naming the flag (and the file and line).
    pub fn excludes(&self) -> Result<Vec<String>, UsageError> {
        gather(
            &self.exclude,
            &self.exclude_from,
            "exclude",
            Lines::Patterns,
            |p| PathFilter::excluding(&[p]).map(drop),
        )
    }

    /// The inclusion patterns of the flags and of the files, checked as [`Self::excludes`].
    pub fn includes(&self) -> Result<Vec<String>, UsageError> {
        gather(
            &self.include,
            &self.include_from,
            "include",
            Lines::Patterns,
            |p| PathFilter::new(&[] as &[&str], &[p]).map(drop),
        )
    }

    /// The filter rules of `--filter`, then of each `--filter-from` file, each checked.
    pub fn rules(&self) -> Result<Vec<String>, UsageError> {
        gather(
            &self.filter,
            &self.filter_from,
            "filter",
            Lines::Rules,
            |r| Rules::new(&[r]).map(drop),
        )
    }

    /// The flags' patterns and rules alone (the config's `hash.exclude`, `hash.include` and
    /// `hash.filter` are about scanning, not about picking among a manifest's files).
    pub fn filter(&self) -> Result<PathFilter, UsageError> {
        PathFilter::with_rules(&self.excludes()?, &self.includes()?, &self.rules()?).map_err(|e| {
            UsageError {
                message: format!("--exclude/--include {e}"),
            }
        })
    }

    /// Adds the patterns and rules to `spec`.
    pub fn apply(&self, spec: &mut HashSpec) -> Result<(), UsageError> {
        spec.filter_also(&self.excludes()?, &self.includes()?, &self.rules()?)
            .map_err(|e| UsageError {
                message: format!("--exclude/--include {e}"),
            })
    }
}

/// rclone's `--min-size`, `--max-size`, `--min-age` and `--max-age`, for the commands that
/// scan trees (by the files on disk) and those that pick among a manifest's files (by the
/// manifest's sizes and times). Not for `manifest verify`, which compares the two.
#[derive(Debug, Default, Args)]
pub struct SizeAgeArgs {
    /// Take only files of at least SIZE, with a unit: `1B` leaves out empty files (a failed
    /// render's frames), `100KiB` (hash, put, submit, sync-outputs: by the file on disk; get,
    /// download-outputs: by the manifest).
    #[arg(long, value_name = "SIZE")]
    pub min_size: Option<String>,
    /// Take only files of at most SIZE, e.g. `2GiB` (MB is 10^6 bytes, MiB 2^20).
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Take only files modified at least AGE ago (`1h`, `7d`), or before a UTC time
    /// (`2026-12-01`, `2026-12-01T18:00:00Z`).
    #[arg(long, value_name = "AGE")]
    pub min_age: Option<String>,
    /// Take only files modified within AGE (`24h`), or since a UTC time.
    #[arg(long, value_name = "AGE")]
    pub max_age: Option<String>,
}

impl SizeAgeArgs {
    /// The bounds given, ages turned into times now; a bad value, or bounds that take no
    /// file, is a usage error naming the flag.
    pub fn bounds(&self) -> Result<SizeAge, UsageError> {
        let now = std::time::SystemTime::now();
        // The flag's value read by `parse`, an error naming the flag.
        fn given<T>(
            value: &Option<String>,
            flag: &str,
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<T>, UsageError> {
            value
                .as_deref()
                .map(|v| {
                    parse(v).map_err(|e| UsageError {
                        message: format!("--{flag}: {e}"),
                    })
                })
                .transpose()
        }
        let bounds = SizeAge {
            min_size: given(&self.min_size, "min-size", size_age::parse_size)?,
            max_size: given(&self.max_size, "max-size", size_age::parse_size)?,
            modified_since_us: given(&self.max_age, "max-age", |a| size_age::parse_age(a, now))?,
            modified_before_us: given(&self.min_age, "min-age", |a| size_age::parse_age(a, now))?,
        };
        bounds.check().map_err(|message| UsageError { message })?;
        Ok(bounds)
    }
}

/// rclone's `--exclude-if-present`, for the commands that scan trees (a manifest has no
/// marker files to ask).
#[derive(Debug, Default, Args)]
pub struct MarkerArgs {
    /// Leave out, whole, every directory holding a file named NAME, as rclone's flag: a cache
    /// or scratch directory an artist tags with an empty `.nojobattach` (repeatable; adds to
    /// [config: hash.exclude_if_present]).
    #[arg(long = "exclude-if-present", value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
}

impl MarkerArgs {
    /// The names given, each checked to be a file name.
    pub fn names(&self) -> Result<Vec<String>, UsageError> {
        crate::scan::check_marker_names(&self.exclude_if_present).map_err(|e| UsageError {
            message: format!("--exclude-if-present {e}"),
        })?;
        Ok(self.exclude_if_present.clone())
    }

    /// Adds the names to `spec`'s, beside the config's.
    pub fn apply(&self, spec: &mut HashSpec) -> Result<(), UsageError> {
        spec.scan.exclude_if_present.extend(self.names()?);
        Ok(())
    }
}

/// How a `--{flag}-from` file's lines are read.
#[derive(Clone, Copy, PartialEq)]
enum Lines {
    /// rclone's `--exclude-from`/`--include-from`: one pattern a line, trimmed; `#` comments.
    Patterns,
    /// rclone's `--filter-from`: one rule a line, its spaces kept (a pattern may end in one);
    /// `#` and `;` comments.
    Rules,
}

/// The items of `--{flag}` and of each `--{flag}-from` file, each checked by `check`; a file
/// that cannot be read or a bad item is a usage error naming the flag (and the file and
/// line).
fn gather(
    given: &[String],
    files: &[PathBuf],
    flag: &str,
    lines: Lines,
    check: impl Fn(&str) -> Result<(), crate::scan::PatternError>,
) -> Result<Vec<String>, UsageError> {
    for p in given {
        check(p).map_err(|e| UsageError {
            message: format!("--{flag} {e}"),
        })?;
    }
    let mut all = given.to_vec();
    for file in files {
        all.extend(read_lines(file, flag, lines, &check)?);
    }
    Ok(all)
}

/// The items of a `--{flag}-from` file.
fn read_lines(
    file: &Path,
    flag: &str,
    lines: Lines,
    check: impl Fn(&str) -> Result<(), crate::scan::PatternError>,
) -> Result<Vec<String>, UsageError> {
    let text = std::fs::read_to_string(file).map_err(|e| UsageError {
        message: format!("--{flag}-from {}: {e}", file.display()),
    })?;
    let at = |n: usize| format!("--{flag}-from {} line {}", file.display(), n + 1);
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = match lines {
            Lines::Patterns => line.trim(),
            Lines::Rules => line.trim_end_matches('\r'),
        };
        let comment = line.starts_with('#') || (lines == Lines::Rules && line.starts_with(';'));
        if line.trim().is_empty() || comment {
            continue;
        }
        // An rclone --filter-from file read as patterns would match nothing it means, silently.
        if lines == Lines::Patterns
            && (line == "!" || line.starts_with("+ ") || line.starts_with("- "))
        {
            return Err(UsageError {
                message: format!(
                    "{}: {line:?} is an rclone filter rule; this file takes one pattern per line, as rclone's --{flag}-from: give a file of rules with --filter-from",
                    at(n)
                ),
            });
        }
        check(line).map_err(|e| UsageError {
            message: format!("{}: {e}", at(n)),
        })?;
        items.push(line.to_string());
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exclude_file_gives_its_patterns_and_names_a_bad_line() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("ignore");
        std::fs::write(&file, "# scratch\n*.tmp\n\n  cache/**  \r\n#not/this\n").unwrap();
        let args = FilterArgs {
            exclude: vec![".DS_Store".into()],
            exclude_from: vec![file.clone()],
            include_from: vec![file.clone()],
            ..Default::default()
        };
        assert_eq!(args.excludes().unwrap(), [".DS_Store", "*.tmp", "cache/**"]);
        assert_eq!(args.includes().unwrap(), ["*.tmp", "cache/**"]);

        std::fs::write(&file, "*.tmp\na[b\n").unwrap();
        let e = args.excludes().unwrap_err().message;
        assert!(
            e.starts_with(&format!(
                "--exclude-from {} line 2: \"a[b\"",
                file.display()
            )),
            "{e}"
        );
        let missing = FilterArgs {
            exclude_from: vec![t.path().join("nope")],
            ..Default::default()
        };
        let e = missing.excludes().unwrap_err().message;
        assert!(e.contains("nope") && e.contains("No such file"), "{e}");
    }

    #[test]
    fn an_rclone_filter_file_is_refused_rather_than_matching_nothing() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("filters");
        std::fs::write(
            &file,
            "# rclone --filter-from
+ *.exr
- *
",
        )
        .unwrap();
        let args = FilterArgs {
            exclude_from: vec![file.clone()],
            include_from: vec![file.clone()],
            ..Default::default()
        };
        for e in [args.excludes(), args.includes()] {
            let e = e.unwrap_err().message;
            assert!(
                e.contains(&format!(
                    "{} line 2: \"+ *.exr\" is an rclone filter rule",
                    file.display()
                )),
                "{e}"
            );
        }
        // A name that merely starts with a sign is a pattern.
        std::fs::write(
            &file,
            "-draft-*.ma
+old
",
        )
        .unwrap();
        assert_eq!(args.excludes().unwrap(), ["-draft-*.ma", "+old"]);
    }

    #[test]
    fn a_filter_file_gives_its_rules_after_the_flags_and_names_a_bad_line() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("filters");
        std::fs::write(
            &file,
            "# renders only\n; as rclone\n+ *.exr\r\n\n- cache/**\n!\n- **\n",
        )
        .unwrap();
        let args = FilterArgs {
            filter: vec!["- *.tmp.exr".into()],
            filter_from: vec![file.clone()],
            ..Default::default()
        };
        assert_eq!(
            args.rules().unwrap(),
            ["- *.tmp.exr", "+ *.exr", "- cache/**", "!", "- **"]
        );
        std::fs::write(&file, "+ *.exr\n*.log\n").unwrap();
        let e = args.rules().unwrap_err().message;
        assert!(
            e.starts_with(&format!("--filter-from {} line 2: ", file.display()))
                && e.contains("`+ PATTERN`"),
            "{e}"
        );
    }
}
