//! rclone's ordered filter rules (`--filter`, `--filter-from`, a job's `filter`): `+ PATTERN`
//! takes, `- PATTERN` leaves out, `!` forgets the rules before it; the first rule that matches
//! a path decides, before the exclusion and inclusion patterns.
//!
//! Patterns are read as rclone reads them (see `rclone_glob`): one starting with `/` is
//! anchored at the root, any other matches the end of the path on whole components (`*.exr`,
//! `cache/*.vdb` in any directory); `*` stays within a component, `**` crosses them,
//! `{{regexp}}` is a regular expression. Directories are filtered as rclone does, so that an
//! excluded one is not read: a rule ending in `/` is one of directories, and a `-` one also
//! leaves out the files under them (`- tmp/` is `- tmp/**`); a rule with `**` is one of files
//! and directories; a `+` rule of files enters the directories that may hold them
//! (`+ renders/*.exr`: any `renders`; `+ *.exr`: every one). A directory a `+` rule enters is
//! entered unless an exclusion pattern says otherwise.

use regex::Regex;

use super::filter::PatternError;
use super::rclone_glob;

/// Compiled rules; none decide nothing.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// As given, for messages and to add more.
    pub given: Vec<String>,
    files: Vec<(bool, Regex)>,
    /// Matched against a directory's path and a `/`. `Some`: take or leave out; `None`:
    /// enter, leaving it to the patterns (a directory a `+` rule of files enters).
    dirs: Vec<(Option<bool>, Regex)>,
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

    /// One rule, as rclone's `Filter.Add` makes its file and directory rules of it.
    fn add(&mut self, take: bool, pattern: &str) -> Result<(), PatternError> {
        let compile = |glob: &str| compile(glob, pattern);
        if pattern.trim_matches('/').is_empty() {
            return Err(PatternError {
                pattern: pattern.to_string(),
                reason: "an empty pattern: write `**` for everything".into(),
            });
        }
        let dirs_only = pattern.ends_with('/');
        // Leaving out a directory leaves out its files too, wherever they are matched from.
        let glob = match dirs_only && !take {
            true => format!("{pattern}**"),
            false => pattern.to_string(),
        };
        let crosses = glob.contains("**");
        let re = compile(&glob)?;
        if !dirs_only || crosses {
            self.files.push((take, re.clone()));
            // A `- *` leaves out every file anywhere, so no directory need be read either.
            if take || glob == "*" {
                for dir in rclone_glob::dir_globs(&glob) {
                    if dir != "/" {
                        let re = compile(&dir).map_err(|e| in_dirs(e, &dir))?;
                        self.dirs.push((enters(take), re));
                    }
                }
            }
        }
        if dirs_only || crosses {
            let says = if dirs_only && take {
                Some(true)
            } else {
                enters(take)
            };
            self.dirs.push((says, re));
        }
        Ok(())
    }

    /// What the first rule matching the entry at `rel` says: `Some(true)` take it,
    /// `Some(false)` leave it out, `None` no rule decides (none matches; a directory a `+`
    /// rule may take files from; an entry not known to be a file or a directory yet).
    pub fn decide(&self, rel: &[u8], is_dir: Option<bool>) -> Option<bool> {
        // Not UTF-8: a bad sequence is read as one `\u{FFFD}`, which `*` and `?` match.
        let path = String::from_utf8_lossy(rel);
        match is_dir? {
            true => {
                let dir = path + "/";
                self.dirs
                    .iter()
                    .find(|(_, re)| re.is_match(&dir))
                    .and_then(|(says, _)| *says)
            }
            false => self
                .files
                .iter()
                .find(|(_, re)| re.is_match(&path))
                .map(|(take, _)| *take),
        }
    }
}

/// What a directory rule of a `+` or `-` rule of files says: a `+` one enters, the patterns
/// deciding (no later rule leaves the directory out); a `-` one leaves out.
fn enters(take: bool) -> Option<bool> {
    (!take).then_some(false)
}

/// A directory glob that is no pattern (`[a/b]` gives `[a/`): said as such, since the rule
/// alone looks right.
fn in_dirs(e: PatternError, dir: &str) -> PatternError {
    PatternError {
        reason: format!(
            "{} (in `{dir}`, the directories it takes files from: keep `/` and `**` out of `[...]`)",
            e.reason
        ),
        ..e
    }
}

/// `glob` (from the rule's `pattern`) as rclone's regular expression.
fn compile(glob: &str, pattern: &str) -> Result<Regex, PatternError> {
    let bad = |reason: String| PatternError {
        pattern: pattern.to_string(),
        reason,
    };
    let text = rclone_glob::to_regex(glob).map_err(bad)?;
    Regex::new(&rclone_glob::ascii_classes(&text)).map_err(|e| {
        // The parser's message is several lines (the regexp, a caret); its last says why.
        let e = e.to_string();
        let why = e.lines().last().unwrap_or_default();
        bad(format!(
            "not a valid pattern once read as a regexp ({text}): {}",
            why.trim_start_matches("error: ")
        ))
    })
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
            "+ *.abc",
            "- **",
        ]);
        // Left out, so not read: by a rule of directories, or one with `**`.
        assert_eq!(r.decide(b"shots/tmp", DIR), Some(false));
        assert_eq!(r.decide(b"cache", DIR), Some(false));
        // Entered (the patterns decide): above and under what a `+` rule takes.
        assert_eq!(r.decide(b"renders", DIR), None);
        assert_eq!(r.decide(b"renders/010/beauty", DIR), None);
        assert_eq!(r.decide(b"shots/010/comp", DIR), None);
        // `*.abc` may be anywhere: every directory is entered.
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

    /// rclone: `- renders/` is `- renders/**`, a rule of files too; an earlier `+` rule
    /// enters the directory for its own files only.
    #[test]
    fn a_directory_rule_also_decides_the_files_under_it() {
        let r = rules(&["+ renders/final.exr", "- renders/"]);
        assert_eq!(r.decide(b"renders", DIR), None, "entered for final.exr");
        assert_eq!(r.decide(b"renders/final.exr", FILE), Some(true));
        assert_eq!(r.decide(b"renders/wip.exr", FILE), Some(false));
        assert_eq!(r.decide(b"shots/renders/wip.exr", FILE), Some(false));
        assert_eq!(r.decide(b"renders/beauty", DIR), Some(false));
        assert_eq!(r.decide(b"renders/beauty/b.exr", FILE), Some(false));
        assert_eq!(r.decide(b"top.txt", FILE), None);
        // A `+` rule of directories takes no file: `- *` leaves out every one (and every
        // directory, as rclone does), so nothing is taken.
        let r = rules(&["+ renders/", "- *"]);
        assert_eq!(r.decide(b"renders", DIR), Some(true));
        assert_eq!(r.decide(b"renders/a.exr", FILE), Some(false));
        assert_eq!(r.decide(b"scenes", DIR), Some(false));
        let r = rules(&["+ renders/", "- **"]);
        assert_eq!(r.decide(b"renders/a.exr", FILE), Some(false));
    }

    #[test]
    fn an_unanchored_rule_enters_only_the_directories_it_names() {
        let r = rules(&["+ beauty/*", "- **"]);
        assert_eq!(r.decide(b"beauty", DIR), None);
        assert_eq!(r.decide(b"renders/beauty", DIR), None);
        assert_eq!(
            r.decide(b"renders", DIR),
            Some(false),
            "rclone does not read it"
        );
    }

    #[test]
    fn a_leading_double_star_needs_a_slash_before_the_name() {
        let r = rules(&["- **/tmp/**"]);
        assert_eq!(r.decide(b"tmp", DIR), None);
        assert_eq!(r.decide(b"tmp/t", FILE), None);
        assert_eq!(r.decide(b"a/tmp", DIR), Some(false));
        assert_eq!(r.decide(b"a/tmp/t", FILE), Some(false));
    }

    #[test]
    fn a_regexp_between_double_braces_is_matched() {
        let r = rules(&[r"- {{r\d\.exr}}", "- /{{sh[0-9]+}}/*.tmp"]);
        assert_eq!(r.decide(b"r1.exr", FILE), Some(false));
        assert_eq!(r.decide(b"renders/r2.exr", FILE), Some(false));
        assert_eq!(r.decide(b"rx.exr", FILE), None);
        assert_eq!(r.decide(b"R1.exr", FILE), None, "case matters");
        assert_eq!(r.decide(b"sh010/a.tmp", FILE), Some(false));
        assert_eq!(r.decide(b"x/sh010/a.tmp", FILE), None, "anchored");
        // As Go's: `\d`, `\w`, `\s` are ASCII (Rust's regex alone takes `٣` for a digit).
        let r = rules(&[r"- {{f\d\w\s[\d_]}}\.exr", r"- {{\\d}}"]);
        assert_eq!(r.decide(b"f1a 7.exr", FILE), Some(false));
        assert_eq!(r.decide(b"f1a _.exr", FILE), Some(false));
        assert_eq!(r.decide("f٣a 7.exr".as_bytes(), FILE), None);
        assert_eq!(r.decide("f1é 7.exr".as_bytes(), FILE), None);
        assert_eq!(r.decide("f1a\u{2003}7.exr".as_bytes(), FILE), None);
        assert_eq!(
            r.decide(br"\d", FILE),
            Some(false),
            "an escaped backslash and a d"
        );
        let e = Rules::new(&["- {{a(}}"]).unwrap_err().to_string();
        assert!(e.starts_with("\"{{a(}}\": ") && e.contains("regexp"), "{e}");
    }

    #[test]
    fn names_that_are_not_utf8_are_matched_too() {
        let r = rules(&["- *.tmp", "+ d/?.exr"]);
        assert_eq!(r.decide(b"d/\xff\xfe.tmp", FILE), Some(false));
        assert_eq!(r.decide(b"d/\xff.exr", FILE), Some(true));
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
            ("- a***", "too many `*`"),
            ("+ [a/b]c", "in `[a/`"),
        ] {
            let e = Rules::new(&[rule]).unwrap_err().to_string();
            assert!(e.contains(why), "{rule}: {e}");
        }
    }
}
