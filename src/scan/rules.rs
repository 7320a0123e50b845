//! rclone's ordered filter rules (`--filter`, `--filter-from`, a job's `filter`): `+ PATTERN`
//! takes, `- PATTERN` leaves out, `!` forgets the rules before it; the first rule that matches
//! a path decides, before the exclusion and inclusion patterns.
//!
//! Patterns are read as rclone reads them: one starting with `/` is anchored at the root,
//! any other matches the end of the path on whole components (`*.exr`, `cache/*.vdb` in any
//! directory); `*` stays within a component, `**` crosses them; a trailing `/` makes a rule
//! of directories only. Directories are filtered as rclone does, so that an excluded one is
//! not read: a `-` rule ending in `**` (`- cache/**`, `- **`) also leaves the directory out,
//! and no later rule leaves out a directory a `+` rule may take files from: those above and
//! under an anchored one (`+ /renders/**/*.exr`: `renders` and everything under it), any for
//! an unanchored one. Those are entered unless an exclusion pattern says otherwise.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::GlobMatcher;

use super::filter::PatternError;

/// Compiled rules; none decide nothing.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// As given, for messages and to add more.
    pub given: Vec<String>,
    files: Vec<(bool, GlobMatcher)>,
    /// `Some`: take or leave out; `None`: enter, leaving it to the patterns (the directories
    /// a `+` rule of files may take files from: no later rule leaves them out).
    dirs: Vec<(Option<bool>, GlobMatcher)>,
}

impl Rules {
    pub fn new<S: AsRef<str>>(rules: &[S]) -> Result<Rules, PatternError> {
        let mut out = Rules::default();
        for rule in rules {
            let rule = rule.as_ref();
            out.given.push(rule.to_string());
            if rule.trim() == "!" {
                out.files.clear();
                out.dirs.clear();
                continue;
            }
            let (take, pattern) = match (rule.strip_prefix("+ "), rule.strip_prefix("- ")) {
                (Some(p), _) => (true, p),
                (_, Some(p)) => (false, p),
                _ => {
                    return Err(PatternError {
                        pattern: rule.to_string(),
                        reason: "a filter rule is `+ PATTERN` (take), `- PATTERN` (leave out) or `!` (forget the rules before it)".into(),
                    });
                }
            };
            out.add(take, pattern)?;
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.given.is_empty()
    }

    fn add(&mut self, take: bool, pattern: &str) -> Result<(), PatternError> {
        let bad = |reason: &str| PatternError {
            pattern: pattern.to_string(),
            reason: reason.to_string(),
        };
        let (anchored, body) = match pattern.strip_prefix('/') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let (body, dirs_only) = match body.strip_suffix('/') {
            Some(b) => (b, true),
            None => (body, false),
        };
        if body.is_empty() {
            return Err(bad("an empty pattern: write `**` for everything"));
        }
        let glob = |body: &str| -> Result<GlobMatcher, PatternError> {
            let full = match anchored {
                true => body.to_string(),
                false => format!("**/{body}"),
            };
            Ok(super::filter::glob(&full, pattern)?.compile_matcher())
        };
        if dirs_only {
            self.dirs.push((Some(take), glob(body)?));
            return Ok(());
        }
        self.files.push((take, glob(body)?));
        if take && !anchored {
            // What it takes may be in any directory.
            self.dirs.push((None, glob("**")?));
        } else if take {
            // The directories above the files it takes, and all of those under a `**`.
            let parts: Vec<&str> = body.split('/').collect();
            for n in 1..parts.len() {
                self.dirs.push((None, glob(&parts[..n].join("/"))?));
            }
            if parts.last() == Some(&"**") {
                self.dirs.push((None, glob(body)?));
            }
        } else if body == "**" {
            self.dirs.push((Some(false), glob("**")?));
        } else if let Some(dir) = body.strip_suffix("/**") {
            self.dirs.push((Some(false), glob(dir)?));
        }
        Ok(())
    }

    /// What the first rule matching the entry at `rel` says: `Some(true)` take it,
    /// `Some(false)` leave it out, `None` no rule decides (none matches; a directory a `+`
    /// rule may take files from; an entry not known to be a file or a directory yet).
    pub fn decide(&self, rel: &[u8], is_dir: Option<bool>) -> Option<bool> {
        let path = Path::new(OsStr::from_bytes(rel));
        match is_dir? {
            true => self
                .dirs
                .iter()
                .find(|(_, glob)| glob.is_match(path))
                .and_then(|(d, _)| *d),
            false => self
                .files
                .iter()
                .find(|(_, glob)| glob.is_match(path))
                .map(|(take, _)| *take),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(r: &[&str]) -> Rules {
        Rules::new(r).unwrap()
    }

    const FILE: Option<bool> = Some(false);
    const DIR: Option<bool> = Some(true);

    #[test]
    fn the_first_matching_rule_decides() {
        let r = rules(&["- *.tmp.exr", "+ *.exr", "- *"]);
        assert_eq!(r.decide(b"renders/010/a.exr", FILE), Some(true));
        assert_eq!(r.decide(b"renders/010/a.tmp.exr", FILE), Some(false));
        assert_eq!(r.decide(b"renders/010/render.log", FILE), Some(false));
        assert_eq!(r.decide(b"renders", DIR), None, "directories are entered");
        assert_eq!(rules(&["+ *.exr"]).decide(b"a.log", FILE), None);
    }

    #[test]
    fn anchored_and_unanchored_patterns_match_as_rclone_s() {
        let r = rules(&["- /cache/*.vdb", "- sim/*.abc"]);
        assert_eq!(r.decide(b"cache/a.vdb", FILE), Some(false));
        assert_eq!(r.decide(b"shots/cache/a.vdb", FILE), None, "anchored");
        assert_eq!(
            r.decide(b"cache/sub/a.vdb", FILE),
            None,
            "* in one component"
        );
        assert_eq!(r.decide(b"sim/a.abc", FILE), Some(false));
        assert_eq!(r.decide(b"shots/010/sim/a.abc", FILE), Some(false));
        assert_eq!(
            r.decide(b"shots/010/xsim/a.abc", FILE),
            None,
            "whole components"
        );
    }

    #[test]
    fn directories_are_left_out_or_entered_as_rclone_does() {
        let r = rules(&[
            "- tmp/",
            "+ /renders/**",
            "- cache/**",
            "+ comp/*.mov",
            "- **",
        ]);
        // Left out, so not read: by a rule of directories, or one ending in `**`.
        assert_eq!(r.decide(b"shots/tmp", DIR), Some(false));
        assert_eq!(r.decide(b"cache", DIR), Some(false));
        // Entered (the patterns decide): above and under what an anchored `+` rule takes, and
        // any directory for an unanchored one (its files may be anywhere).
        assert_eq!(r.decide(b"renders", DIR), None);
        assert_eq!(r.decide(b"renders/010/beauty", DIR), None);
        assert_eq!(r.decide(b"shots/010", DIR), None);
        assert_eq!(r.decide(b"renders/010/beauty/a.exr", FILE), Some(true));
        assert_eq!(r.decide(b"shots/010/comp/final.mov", FILE), Some(true));
        assert_eq!(r.decide(b"shots/010/notes.txt", FILE), Some(false));
        assert_eq!(r.decide(b"x", None), None, "not known yet");
        // Only anchored ones taken: every other directory is left out by `- **`.
        let r = rules(&["+ /renders/**", "- **"]);
        assert_eq!(r.decide(b"scenes", DIR), Some(false));
        assert_eq!(r.decide(b"renders/010", DIR), None);
        assert_eq!(rules(&["+ tmp/"]).decide(b"a/tmp", DIR), Some(true));
    }

    #[test]
    fn a_bang_forgets_the_rules_before_it() {
        let r = rules(&["- *.exr", "!", "+ *.exr"]);
        assert_eq!(r.decide(b"a.exr", FILE), Some(true));
        assert_eq!(r.given.len(), 3);
    }

    #[test]
    fn a_rule_without_its_sign_or_pattern_is_refused() {
        for (rule, why) in [
            ("*.exr", "`+ PATTERN`"),
            ("+*.exr", "`+ PATTERN`"),
            ("- ", "empty"),
            ("+ /", "empty"),
            ("- a[b", "unclosed"),
        ] {
            let e = Rules::new(&[rule]).unwrap_err().to_string();
            assert!(e.contains(why), "{rule}: {e}");
        }
    }
}
