//! rclone's filter patterns read as rclone reads them: its `globToRegexp` (path mode) and
//! `globToDirGlobs`, followed step by step, so that a rule matches here what it matches there
//! (`rclone --dump filters` shows the same regular expressions, but for the `(?s)` flag).

use std::sync::LazyLock;

/// The regular expression rclone makes of `glob`: anchored at the root by a leading `/`, else
/// at the start of any component; `*` within a component, `**` across them, `?` one character
/// but `/`, `[...]` a class, `{a,b}` alternatives, `{{regexp}}` a regexp as it is, `\` escaping
/// the next character. `Err`: why it is not a pattern.
pub fn to_regex(glob: &str) -> Result<String, String> {
    // `(?s)`: rclone matches names whose control characters it has encoded (a newline is `␊`
    // there), so its `**` crosses every name; here names are raw.
    let mut re = String::from("(?s)");
    let glob = match glob.strip_prefix('/') {
        Some(rest) => {
            re.push('^');
            rest
        }
        None => {
            re.push_str("(^|/)");
            glob
        }
    };
    let mut stars = 0;
    let mut brace_depth = 0usize;
    let mut in_brackets = 0usize;
    let mut escaped = false;
    let mut in_regexp = false;
    let mut in_regexp_end = false;
    let mut prev = '\0';
    for c in glob.chars() {
        let last = std::mem::replace(&mut prev, c);
        if escaped {
            re.push(c);
            escaped = false;
            continue;
        }
        if in_regexp_end {
            in_regexp_end = false;
            if c == '}' {
                // `}}}`: the regexp ends with a `}` (rclone takes the longest).
                re.pop();
                re.push_str("})");
                in_regexp_end = true;
                continue;
            }
        }
        if in_regexp {
            if c == '}' && last == '}' {
                re.pop();
                re.push(')');
                in_regexp = false;
                in_regexp_end = true;
            } else {
                re.push(c);
            }
            continue;
        }
        if c != '*' {
            push_stars(&mut re, &mut stars)?;
        }
        if in_brackets > 0 {
            // `[!...]` negates as rclone's documentation says (its regexp engine would read
            // `!` as itself); `[^...]` is the regexp's own negation.
            let negation = c == '!' && last == '[' && in_brackets == 1;
            re.push(if negation { '^' } else { c });
            match c {
                '[' => in_brackets += 1,
                ']' => in_brackets -= 1,
                _ => {}
            }
            continue;
        }
        match c {
            '\\' => {
                re.push(c);
                escaped = true;
            }
            '*' => stars += 1,
            '?' => re.push_str("[^/]"),
            '[' => {
                re.push(c);
                in_brackets += 1;
            }
            ']' => return Err("a `]` without its `[` (write `\\]` for the character)".into()),
            '{' if brace_depth > 0 && last == '{' => {
                // `{{` opens a regexp; the `(` of the first `{` holds it.
                in_regexp = true;
                brace_depth -= 1;
            }
            '{' => {
                brace_depth += 1;
                re.push('(');
            }
            '}' if brace_depth == 0 => {
                return Err("a `}` without its `{` (write `\\}` for the character)".into());
            }
            '}' => {
                brace_depth -= 1;
                re.push(')');
            }
            ',' if brace_depth > 0 => re.push('|'),
            '.' | '+' | '(' | ')' | '|' | '^' | '$' => {
                re.push('\\');
                re.push(c);
            }
            _ => re.push(c),
        }
    }
    push_stars(&mut re, &mut stars)?;
    if in_brackets > 0 {
        return Err("unclosed character class: a `[` without its `]`".into());
    }
    if brace_depth > 0 {
        return Err("unclosed alternatives: a `{` without its `}`".into());
    }
    if in_regexp {
        return Err("unclosed regexp: a `{{` without its `}}`".into());
    }
    re.push('$');
    Ok(re)
}

/// `\d`, `\w`, `\s` and their negations as Go's regexp reads them, ASCII only (Rust's `regex`
/// would take non-ASCII digits, letters and spaces too): `[0-9]`, `[0-9A-Za-z_]`,
/// `[\t\n\f\r ]`. In a class too (`[\d_]` is `[[0-9]_]`, a union). For a regexp of
/// [`to_regex`], which stays as rclone's `--dump filters` shows it.
pub fn ascii_classes(re: &str) -> String {
    let mut out = String::with_capacity(re.len());
    let mut chars = re.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str("[0-9]"),
            Some('D') => out.push_str("[^0-9]"),
            Some('w') => out.push_str("[0-9A-Za-z_]"),
            Some('W') => out.push_str("[^0-9A-Za-z_]"),
            Some('s') => out.push_str(r"[\t\n\f\r ]"),
            Some('S') => out.push_str(r"[^\t\n\f\r ]"),
            // Another escape (`\.`, `\\`, `\pL`) stays as it is.
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The stars just read: `*` within a component, `**` across them.
fn push_stars(re: &mut String, stars: &mut usize) -> Result<(), String> {
    match std::mem::take(stars) {
        0 => {}
        1 => re.push_str("[^/]*"),
        2 => re.push_str(".*"),
        _ => {
            return Err(
                "too many `*` in a row: `*` stays within a component, `**` crosses them".into(),
            );
        }
    }
    Ok(())
}

/// The directory globs rclone derives from a file glob, so that a `+` rule's directories are
/// entered: those that may hold what the glob matches (`renders/**/*.exr`: `renders/**/`,
/// `renders/`; `*.exr`: every one, `/**`). Matched against a directory's path and a `/`.
pub fn dir_globs(glob: &str) -> Vec<String> {
    // rclone's own limits: `/` or `**` in alternatives, a regexp, nested alternatives.
    static TOO_HARD: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"(\{[^{}]*(\*\*|/)[^{}]*\})|\{\{|\}\}|\{[^{}]*\{").expect("valid")
    });
    if TOO_HARD.is_match(glob) {
        return vec!["/**".into()];
    }
    let mut glob = glob.to_string();
    while glob.contains("//") {
        glob = glob.replace("//", "/");
    }
    let mut out: Vec<String> = Vec::new();
    loop {
        let (slash, stars) = (glob.rfind('/'), glob.rfind("**"));
        let (at, what) = match (slash, stars) {
            (_, Some(j)) if Some(j) > slash => (j, "**"),
            (Some(i), _) => (i, ""),
            _ => break,
        };
        glob.truncate(at);
        let dir = format!("{glob}{what}/");
        if out.last() != Some(&dir) {
            out.push(dir);
        }
    }
    if out.is_empty() {
        out.push("/**".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `rclone --dump filters` prints them (v1.75.2), but for the `(?s)` flag.
    #[test]
    fn globs_read_as_rclone_dumps_them() {
        for (glob, want) in [
            ("renders/final.exr", r"(^|/)renders/final\.exr$"),
            ("renders/**", r"(^|/)renders/.*$"),
            ("/renders/**", r"^renders/.*$"),
            ("**/tmp/**", r"(^|/).*/tmp/.*$"),
            ("*", r"(^|/)[^/]*$"),
            ("/**", r"^.*$"),
            ("renders/**/*.exr", r"(^|/)renders/.*/[^/]*\.exr$"),
            (r"{{r\d\.exr}}", r"(^|/)(r\d\.exr)$"),
            ("a/{{x/y}}/b", r"(^|/)a/(x/y)/b$"),
            ("{{a{2}}}", r"(^|/)(a{2})$"),
            ("{a,{b,c}}/x", r"(^|/)(a|(b|c))/x$"),
            ("?.exr", r"(^|/)[^/]\.exr$"),
            (r"a\*b", r"(^|/)a\*b$"),
            ("[!t]*.exr", r"(^|/)[^t][^/]*\.exr$"),
            ("[[:digit:]]", r"(^|/)[[:digit:]]$"),
            ("a(b)+c|d^$", r"(^|/)a\(b\)\+c\|d\^\$$"),
        ] {
            assert_eq!(to_regex(glob).unwrap(), format!("(?s){want}"), "{glob}");
        }
    }

    #[test]
    fn bad_globs_are_refused_as_rclone_refuses_them() {
        for (glob, why) in [
            ("a***", "too many `*`"),
            ("a]", "a `]` without"),
            ("a[b", "unclosed character class"),
            ("{a,b", "unclosed alternatives"),
            ("a}", "a `}` without"),
            ("{{a", "unclosed regexp"),
        ] {
            let e = to_regex(glob).unwrap_err();
            assert!(e.contains(why), "{glob}: {e}");
        }
    }

    #[test]
    fn dir_globs_are_rclone_s() {
        for (glob, want) in [
            ("renders/final.exr", &["renders/"][..]),
            ("/renders/**", &["/renders/**/", "/renders/", "/"]),
            ("renders/**/*.exr", &["renders/**/", "renders/"]),
            ("*.exr", &["/**"]),
            ("a//b/c", &["a/b/", "a/"]),
            ("a/{{x/y}}/b", &["/**"]),
            ("{a,b/c}/x", &["/**"]),
            ("{a,{b,c}}/x", &["/**"]),
        ] {
            assert_eq!(dir_globs(glob), want, "{glob}");
        }
    }
}
