//! Exclusion and inclusion patterns (`hash.exclude`, `--exclude`; `hash.include`,
//! `--include`): which files and directories a scan leaves out of the manifest, so editor
//! backups, autosaves and caches are neither hashed nor sent, or which files alone it takes
//! (a render's frames, not its logs).
//!
//! The rules, close to rclone's and gitignore's:
//! - a pattern without `/` matches the name of a file or directory at any depth
//!   (`*.tmp`, `.DS_Store`, `__pycache__`);
//! - a pattern with a `/` matches the whole path as the manifest spells it (`cache/**`,
//!   `**/backup/*.ma`); `*` stays within one path component, `**` crosses them;
//! - a trailing `/` (`tmp/`) matches directories only (exclusions only);
//! - a directory that matches an exclusion is not entered: nothing under it is read;
//! - with inclusion patterns, a file is taken only when one of them matches it (and no
//!   exclusion does); every directory not excluded is entered, as rclone's `--include` does;
//! - rclone's ordered filter rules (`--filter`, see `scan::rules`) come first: the first
//!   that matches decides, and the patterns above decide the paths no rule matches.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use super::rules::Rules;

#[derive(Debug, thiserror::Error)]
#[error("{pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// Compiled patterns; empty (the default) leaves out nothing. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PathFilter(Option<Arc<Compiled>>);

#[derive(Debug)]
struct Compiled {
    patterns: Vec<String>,
    /// Matched against an entry's name, for files and directories / directories only.
    names: GlobSet,
    dir_names: GlobSet,
    /// Matched against the entry's path, for files and directories / directories only.
    paths: GlobSet,
    dir_paths: GlobSet,
    includes: Vec<String>,
    /// Matched against a file's name / path; `None`: no inclusion patterns (every file).
    include: Option<(GlobSet, GlobSet)>,
    /// Ordered rules, asked first.
    rules: Rules,
}

/// One pattern: its glob, whether it has a `/` (matches paths, not names), whether it ends
/// in `/` (directories only).
fn compile(p: &str) -> Result<(Glob, bool, bool), PatternError> {
    let bad = |reason: &str| PatternError {
        pattern: p.to_owned(),
        reason: reason.to_owned(),
    };
    let (body, dir_only) = match p.strip_suffix('/') {
        Some(body) => (body, true),
        None => (p, false),
    };
    let body = body.strip_prefix("./").unwrap_or(body);
    if body.is_empty() || body == "." {
        return Err(bad("an empty pattern would match everything"));
    }
    if body.starts_with('/') {
        return Err(bad(
            "paths in a manifest are relative: write the pattern without the leading /",
        ));
    }
    Ok((glob(body, p)?, body.contains('/'), dir_only))
}

/// `text` as a glob of paths: `*` within a component, `**` across them, `\` escaping; a bad
/// one is refused naming `pattern`, as it was given.
fn glob(text: &str, pattern: &str) -> Result<Glob, PatternError> {
    GlobBuilder::new(text)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| PatternError {
            pattern: pattern.to_owned(),
            reason: e.kind().to_string(),
        })
}

fn build(b: GlobSetBuilder) -> GlobSet {
    b.build()
        .expect("each glob was built alone; a set of them builds")
}

impl PathFilter {
    /// Exclusion patterns only.
    pub fn excluding<S: AsRef<str>>(patterns: &[S]) -> Result<PathFilter, PatternError> {
        PathFilter::new(patterns, &[] as &[&str])
    }

    /// Exclusion patterns, and inclusion patterns (none: every file not excluded is taken).
    pub fn new<S: AsRef<str>, T: AsRef<str>>(
        patterns: &[S],
        includes: &[T],
    ) -> Result<PathFilter, PatternError> {
        PathFilter::with_rules(patterns, includes, &[] as &[&str])
    }

    /// [`PathFilter::new`] with ordered filter rules asked first (see `scan::rules`).
    pub fn with_rules<S: AsRef<str>, T: AsRef<str>, R: AsRef<str>>(
        patterns: &[S],
        includes: &[T],
        rules: &[R],
    ) -> Result<PathFilter, PatternError> {
        if patterns.is_empty() && includes.is_empty() && rules.is_empty() {
            return Ok(PathFilter::default());
        }
        let rules = Rules::new(rules)?;
        let mut sets: [GlobSetBuilder; 4] = std::array::from_fn(|_| GlobSetBuilder::new());
        for p in patterns {
            let (glob, has_slash, dir_only) = compile(p.as_ref())?;
            let set = match (has_slash, dir_only) {
                (false, false) => 0,
                (false, true) => 1,
                (true, false) => 2,
                (true, true) => 3,
            };
            sets[set].add(glob);
        }
        let [names, dir_names, paths, dir_paths] = sets.map(build);
        let mut include = None;
        if !includes.is_empty() {
            let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
            for p in includes {
                let (glob, has_slash, dir_only) = compile(p.as_ref())?;
                if dir_only {
                    return Err(PatternError {
                        pattern: p.as_ref().to_owned(),
                        reason:
                            "an inclusion pattern takes files: for a directory's files write dir/**"
                                .into(),
                    });
                }
                match has_slash {
                    true => paths.add(glob),
                    false => names.add(glob),
                };
            }
            include = Some((build(names), build(paths)));
        }
        Ok(PathFilter(Some(Arc::new(Compiled {
            patterns: patterns.iter().map(|p| p.as_ref().to_owned()).collect(),
            names,
            dir_names,
            paths,
            dir_paths,
            includes: includes.iter().map(|p| p.as_ref().to_owned()).collect(),
            include,
            rules,
        }))))
    }

    /// The filter rules as given.
    pub fn rules(&self) -> &[String] {
        self.0.as_ref().map_or(&[], |c| &c.rules.given)
    }

    /// The exclusion patterns as given.
    pub fn exclusions(&self) -> &[String] {
        self.0.as_ref().map_or(&[], |c| &c.patterns)
    }

    /// The inclusion patterns as given.
    pub fn inclusions(&self) -> &[String] {
        self.0.as_ref().map_or(&[], |c| &c.includes)
    }

    /// Whether the entry at `rel` (its path as the manifest spells it, `/`-separated) is left
    /// out. `is_dir: None`: not known yet (a symlink not followed yet); only patterns that
    /// match files and directories alike apply then.
    pub fn excludes(&self, rel: &[u8], is_dir: Option<bool>) -> bool {
        let Some(c) = &self.0 else {
            return false;
        };
        if let Some(take) = c.rules.decide(rel, is_dir) {
            return !take;
        }
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
        let (rel, name) = (Path::new(OsStr::from_bytes(rel)), OsStr::from_bytes(name));
        c.names.is_match(name)
            || c.paths.is_match(rel)
            || (is_dir == Some(true) && (c.dir_names.is_match(name) || c.dir_paths.is_match(rel)))
    }

    /// Whether a manifest's file at `rel` is taken, for a download that picks among a
    /// manifest's files: no directory above it excluded, the file not excluded, and included.
    pub fn takes_path(&self, rel: &[u8]) -> bool {
        if self.0.is_none() {
            return true;
        }
        let dirs_taken = rel
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .all(|(i, _)| !self.excludes(&rel[..i], Some(true)));
        dirs_taken && !self.excludes(rel, Some(false)) && self.takes_file(rel)
    }

    /// Whether the file at `rel`, not excluded, is taken: as the first filter rule matching
    /// it says; else always without inclusion patterns, else when one of them matches its name
    /// or path.
    pub fn takes_file(&self, rel: &[u8]) -> bool {
        let Some(c) = &self.0 else {
            return true;
        };
        if let Some(take) = c.rules.decide(rel, Some(false)) {
            return take;
        }
        let Some((names, paths)) = &c.include else {
            return true;
        };
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
        names.is_match(OsStr::from_bytes(name)) || paths.is_match(Path::new(OsStr::from_bytes(rel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(patterns: &[&str]) -> PathFilter {
        PathFilter::excluding(patterns).unwrap()
    }

    #[test]
    fn a_name_pattern_matches_at_any_depth() {
        let e = ex(&["*.tmp", ".DS_Store", "__pycache__"]);
        assert!(e.excludes(b"a.tmp", Some(false)));
        assert!(e.excludes(b"shots/010/render.tmp", Some(false)));
        assert!(e.excludes(b"shots/.DS_Store", Some(false)));
        assert!(e.excludes(b"tools/__pycache__", Some(true)));
        assert!(!e.excludes(b"shots/010/render.exr", Some(false)));
        assert!(!e.excludes(b"a.tmp.exr", Some(false)));
        assert!(!e.excludes(b"shots/x.DS_Store", Some(false)));
    }

    #[test]
    fn a_pattern_with_a_slash_matches_the_whole_path() {
        let e = ex(&["cache/*", "**/backup/*.ma", "./textures/raw"]);
        assert!(e.excludes(b"cache/sim.abc", Some(false)));
        assert!(
            !e.excludes(b"cache/sub/sim.abc", Some(false)),
            "* stays in a component"
        );
        assert!(
            !e.excludes(b"shots/cache/sim.abc", Some(false)),
            "anchored at the root"
        );
        assert!(e.excludes(b"backup/a.ma", Some(false)));
        assert!(e.excludes(b"shots/010/backup/a.ma", Some(false)));
        assert!(!e.excludes(b"shots/010/backup/a.mb", Some(false)));
        assert!(e.excludes(b"textures/raw", Some(true)));
        assert!(!e.excludes(b"textures/raw.png", Some(false)));
    }

    #[test]
    fn a_trailing_slash_matches_directories_only() {
        let e = ex(&["tmp/", "shots/*/scratch/"]);
        assert!(e.excludes(b"tmp", Some(true)));
        assert!(e.excludes(b"a/b/tmp", Some(true)));
        assert!(!e.excludes(b"a/b/tmp", Some(false)));
        assert!(
            !e.excludes(b"a/b/tmp", None),
            "not known to be a directory yet"
        );
        assert!(e.excludes(b"shots/010/scratch", Some(true)));
        assert!(!e.excludes(b"shots/010/scratch", Some(false)));
    }

    #[test]
    fn names_that_are_not_utf8_are_matched_too() {
        let e = ex(&["*.tmp"]);
        assert!(e.excludes(b"d/\xff\xfe.tmp", Some(false)));
        assert!(!e.excludes(b"d/\xff\xfe.exr", Some(false)));
    }

    #[test]
    fn with_inclusion_patterns_only_the_files_they_match_are_taken() {
        let f = PathFilter::new(&["*.tmp.exr"], &["*.exr", "comp/**/*.mov"]).unwrap();
        assert!(f.takes_file(b"renders/010/beauty.0001.exr"));
        assert!(f.takes_file(b"comp/010/v2/final.mov"));
        assert!(!f.takes_file(b"renders/010/render.log"));
        assert!(
            !f.takes_file(b"preview/final.mov"),
            "a path pattern is anchored"
        );
        assert!(
            !f.excludes(b"renders", Some(true)),
            "directories are entered"
        );
        assert!(
            f.excludes(b"renders/a.tmp.exr", Some(false)),
            "an exclusion wins"
        );
        assert_eq!(f.inclusions(), ["*.exr", "comp/**/*.mov"]);
        let none = PathFilter::excluding(&["*.tmp"]).unwrap();
        assert!(
            none.takes_file(b"render.log"),
            "no inclusion patterns: every file"
        );
        let e = PathFilter::new(&[] as &[&str], &["renders/"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("dir/**"), "{e}");
    }

    #[test]
    fn a_manifest_path_is_taken_as_a_scan_would_take_its_file() {
        let f = PathFilter::new(&["tmp/", "*.log"], &["*.exr", "*.log", "comp/*.mov"]).unwrap();
        assert!(f.takes_path(b"renders/010/beauty.0001.exr"));
        assert!(
            !f.takes_path(b"renders/tmp/beauty.0001.exr"),
            "under an excluded directory"
        );
        assert!(
            !f.takes_path(b"renders/render.log"),
            "excluded, though included"
        );
        assert!(!f.takes_path(b"renders/preview.mov"), "not included");
        assert!(f.takes_path(b"comp/final.mov"));
        assert!(PathFilter::default().takes_path(b"anything/at/all"));
    }

    #[test]
    fn filter_rules_decide_before_the_patterns() {
        let f = PathFilter::with_rules(
            &["*.tmp.exr", "cache/"],
            &["*.exr"],
            &["+ keep.tmp.exr", "- *.log"],
        )
        .unwrap();
        assert!(
            f.takes_path(b"renders/keep.tmp.exr"),
            "a rule wins over an exclusion"
        );
        assert!(
            !f.takes_path(b"renders/other.tmp.exr"),
            "no rule: the exclusion"
        );
        assert!(!f.takes_path(b"renders/render.log"));
        assert!(f.takes_path(b"renders/beauty.exr"));
        assert!(
            !f.takes_path(b"renders/notes.txt"),
            "no rule: the inclusion"
        );
        assert!(f.excludes(b"shots/cache", Some(true)));
        assert_eq!(f.rules(), ["+ keep.tmp.exr", "- *.log"]);
        let only = PathFilter::with_rules(&[] as &[&str], &[] as &[&str], &["- *.log"]).unwrap();
        assert!(!only.takes_path(b"a.log") && only.takes_path(b"a.exr"));
    }

    #[test]
    fn no_patterns_exclude_nothing_and_bad_ones_are_refused_with_the_reason() {
        assert!(!PathFilter::default().excludes(b"a.tmp", Some(false)));
        assert!(!ex(&[]).excludes(b"a.tmp", Some(false)));
        for (p, why) in [
            ("", "empty"),
            ("/", "empty"),
            ("./", "empty"),
            ("/abs/*.tmp", "relative"),
            ("a[b", "unclosed"),
        ] {
            let e = PathFilter::excluding(&[p]).unwrap_err().to_string();
            assert!(e.contains(&format!("{p:?}")) && e.contains(why), "{p}: {e}");
        }
    }
}
