//! Manifest paths: relative, `/`-separated, able to carry the non-UTF-8 POSIX names that the
//! official client writes as lone surrogates (`\udcNN`, Python's `surrogateescape`).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

/// A path relative to an asset root, as a manifest spells it.
///
/// Held as WTF-8: UTF-8 that may also encode lone surrogate code points (3 bytes each). That
/// is exactly the set of strings Python can hold, so every path the official client writes
/// round-trips, while valid UTF-8 paths cost nothing extra.
/// `Default` is the empty path: a placeholder for a path moved or freed, never valid.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ManifestPath(Box<[u8]>);

/// Why a path is refused. Manifests come from a bucket: untrusted input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is absolute")]
    Absolute,
    #[error("path starts with a drive letter")]
    DriveLetter,
    #[error("path has an empty segment")]
    EmptySegment,
    #[error("path has a '.' segment")]
    DotSegment,
    #[error("path has a '..' segment")]
    DotDotSegment,
    #[error("path contains a NUL character")]
    Nul,
    #[error("path contains a backslash, which Windows reads as a separator")]
    Backslash,
    #[error("path has a segment Windows cannot store ({0})")]
    WindowsName(String),
    #[error("path contains a lone surrogate that is not an escaped byte (\\u{0:04x})")]
    Unrepresentable(u32),
}

/// Which platform's file-name rules a path must satisfy before it touches a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRules {
    Posix,
    Windows,
}

impl PathRules {
    /// The rules of the platform this binary runs on.
    pub fn native() -> Self {
        if cfg!(windows) {
            PathRules::Windows
        } else {
            PathRules::Posix
        }
    }
}

const SURROGATE_ESCAPE_BASE: u32 = 0xDC00;

impl ManifestPath {
    /// A path from a valid UTF-8 string (not validated; see [`ManifestPath::validate`]).
    pub fn from_utf8(s: &str) -> Self {
        ManifestPath(s.as_bytes().into())
    }

    /// A path from raw POSIX name bytes: every byte that is not part of valid UTF-8 becomes the
    /// lone surrogate U+DC80..U+DCFF, as Python's `surrogateescape` does.
    pub fn from_posix_bytes(bytes: &[u8]) -> Self {
        if std::str::from_utf8(bytes).is_ok() {
            return ManifestPath(bytes.into());
        }
        let mut out = Vec::with_capacity(bytes.len() + 8);
        for chunk in bytes.utf8_chunks() {
            out.extend_from_slice(chunk.valid().as_bytes());
            for &b in chunk.invalid() {
                push_code_point(&mut out, SURROGATE_ESCAPE_BASE + u32::from(b));
            }
        }
        ManifestPath(out.into())
    }

    /// Builds a path from WTF-8 bytes produced by this module's own decoder.
    pub(crate) fn from_wtf8_unchecked(bytes: Vec<u8>) -> Self {
        ManifestPath(bytes.into())
    }

    /// The WTF-8 bytes (equal to the UTF-8 bytes when [`ManifestPath::as_str`] is `Some`).
    pub fn as_wtf8(&self) -> &[u8] {
        &self.0
    }

    /// The path as a string, when it holds no lone surrogate.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The path for people: lone surrogates shown as `\udcNN`.
    pub fn display(&self) -> Cow<'_, str> {
        if let Some(s) = self.as_str() {
            return Cow::Borrowed(s);
        }
        let mut s = String::with_capacity(self.0.len() + 8);
        for cp in self.code_points() {
            match char::from_u32(cp) {
                Some(c) => s.push(c),
                None => s.push_str(&format!("\\u{cp:04x}")),
            }
        }
        Cow::Owned(s)
    }

    /// The WTF-8 bytes, moved out (no copy).
    pub fn into_wtf8(self) -> Box<[u8]> {
        self.0
    }

    /// The POSIX file-name bytes: escaped bytes (U+DC80..U+DCFF) turn back into raw bytes.
    pub fn to_posix_bytes(&self) -> Result<Cow<'_, [u8]>, PathError> {
        if self.as_str().is_some() {
            return Ok(Cow::Borrowed(&self.0));
        }
        let mut out = Vec::with_capacity(self.0.len());
        for cp in self.code_points() {
            match cp {
                0xDC80..=0xDCFF => out.push((cp - SURROGATE_ESCAPE_BASE) as u8),
                0xD800..=0xDFFF => return Err(PathError::Unrepresentable(cp)),
                _ => push_code_point(&mut out, cp),
            }
        }
        Ok(Cow::Owned(out))
    }

    /// Code points, lone surrogates included.
    pub fn code_points(&self) -> CodePoints<'_> {
        CodePoints { bytes: &self.0 }
    }

    /// UTF-16 code units: the order the official client sorts manifest paths in.
    pub fn utf16_units(&self) -> impl Iterator<Item = u16> + '_ {
        self.code_points().flat_map(|cp| {
            let (a, b) = utf16_of(cp);
            std::iter::once(a).chain(b)
        })
    }

    /// Compares by UTF-16 code units, the manifest's canonical order.
    pub fn cmp_utf16(&self, other: &Self) -> Ordering {
        // Equal byte prefixes are equal code-unit prefixes: compare from the first code point
        // that differs only (the common case is all-ASCII, decided by the bytes alone).
        let (a, b) = (&self.0[..], &other.0[..]);
        let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let mut start = common;
        while start > 0 && is_continuation(a.get(start).or(b.get(start)).copied()) {
            start -= 1;
        }
        let tail_a = CodePoints { bytes: &a[start..] };
        let tail_b = CodePoints { bytes: &b[start..] };
        let units_a = tail_a.flat_map(|cp| {
            let (x, y) = utf16_of(cp);
            std::iter::once(x).chain(y)
        });
        let units_b = tail_b.flat_map(|cp| {
            let (x, y) = utf16_of(cp);
            std::iter::once(x).chain(y)
        });
        units_a.cmp(units_b)
    }

    /// Checks the rules every manifest path obeys, plus the target platform's naming rules.
    pub fn validate(&self, rules: PathRules) -> Result<(), PathError> {
        let b = &self.0[..];
        if b.is_empty() {
            return Err(PathError::Empty);
        }
        if b.contains(&0) {
            return Err(PathError::Nul);
        }
        if b[0] == b'/' {
            return Err(PathError::Absolute);
        }
        if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
            return Err(PathError::DriveLetter);
        }
        if rules == PathRules::Windows && b.contains(&b'\\') {
            return Err(PathError::Backslash);
        }
        for segment in b.split(|&c| c == b'/') {
            match segment {
                b"" => return Err(PathError::EmptySegment),
                b"." => return Err(PathError::DotSegment),
                b".." => return Err(PathError::DotDotSegment),
                _ => {}
            }
            if rules == PathRules::Windows {
                check_windows_segment(segment)?;
            }
        }
        Ok(())
    }

    /// The last segment (the file name), as WTF-8 bytes.
    pub fn file_name(&self) -> &[u8] {
        let b = &self.0[..];
        match b.iter().rposition(|&c| c == b'/') {
            Some(i) => &b[i + 1..],
            None => b,
        }
    }
}

impl fmt::Debug for ManifestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

/// `text` for a line of text output (`manifest cat`, `check`): a control character (a newline
/// in a file name) written as `\u000a`, as a lone surrogate is, so that one path stays one
/// line. JSON output escapes them itself.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut s = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c.is_control() {
            true => s.push_str(&format!("\\u{:04x}", u32::from(c))),
            false => s.push(c),
        }
    }
    Cow::Owned(s)
}

impl fmt::Display for ManifestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// Windows refuses these names (with any extension), and `<>:"|?*`, control characters and a
/// trailing dot or space in any segment.
fn check_windows_segment(segment: &[u8]) -> Result<(), PathError> {
    let name = String::from_utf8_lossy(segment);
    let bad = |why: &str| Err(PathError::WindowsName(format!("{name:?}: {why}")));
    if let Some(c) = segment
        .iter()
        .find(|&&c| c < 0x20 || b"<>:\"|?*".contains(&c))
    {
        return bad(&format!("character {:?} is not allowed", *c as char));
    }
    if segment.ends_with(b".") || segment.ends_with(b" ") {
        return bad("ends with a dot or a space");
    }
    let stem = name
        .split('.')
        .next()
        .unwrap_or("")
        .trim_end()
        .to_ascii_uppercase();
    const RESERVED: &[&str] = &["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];
    let numbered = (stem.starts_with("COM") || stem.starts_with("LPT"))
        && matches!(
            stem.get(3..),
            Some("0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³")
        );
    if RESERVED.contains(&stem.as_str()) || numbered {
        return bad("reserved device name");
    }
    Ok(())
}

fn is_continuation(b: Option<u8>) -> bool {
    matches!(b, Some(x) if x & 0xC0 == 0x80)
}

/// The UTF-16 units of one code point (a lone surrogate is its own unit).
fn utf16_of(cp: u32) -> (u16, Option<u16>) {
    if cp < 0x10000 {
        (cp as u16, None)
    } else {
        let v = cp - 0x10000;
        (0xD800 + (v >> 10) as u16, Some(0xDC00 + (v & 0x3FF) as u16))
    }
}

/// Appends one code point (surrogates allowed) as generalized UTF-8.
pub(crate) fn push_code_point(out: &mut Vec<u8>, cp: u32) {
    match cp {
        0..=0x7F => out.push(cp as u8),
        0x80..=0x7FF => out.extend_from_slice(&[0xC0 | (cp >> 6) as u8, 0x80 | (cp & 0x3F) as u8]),
        0x800..=0xFFFF => out.extend_from_slice(&[
            0xE0 | (cp >> 12) as u8,
            0x80 | ((cp >> 6) & 0x3F) as u8,
            0x80 | (cp & 0x3F) as u8,
        ]),
        _ => out.extend_from_slice(&[
            0xF0 | (cp >> 18) as u8,
            0x80 | ((cp >> 12) & 0x3F) as u8,
            0x80 | ((cp >> 6) & 0x3F) as u8,
            0x80 | (cp & 0x3F) as u8,
        ]),
    }
}

/// Decodes well-formed WTF-8 (as produced by this module) into code points.
pub struct CodePoints<'a> {
    bytes: &'a [u8],
}

impl Iterator for CodePoints<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let (&b0, rest) = self.bytes.split_first()?;
        let (len, init) = match b0 {
            0x00..=0x7F => (1, u32::from(b0)),
            0xC0..=0xDF => (2, u32::from(b0 & 0x1F)),
            0xE0..=0xEF => (3, u32::from(b0 & 0x0F)),
            _ => (4, u32::from(b0 & 0x07)),
        };
        let tail_len = (len - 1).min(rest.len());
        let cp = rest[..tail_len]
            .iter()
            .fold(init, |acc, &b| (acc << 6) | u32::from(b & 0x3F));
        self.bytes = &rest[tail_len..];
        Some(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ManifestPath {
        ManifestPath::from_utf8(s)
    }

    #[test]
    fn non_utf8_bytes_round_trip_as_surrogate_escapes() {
        let raw = b"caf\xe9/\xff\xfe-ok-\xe6\x97.txt";
        let path = ManifestPath::from_posix_bytes(raw);
        assert_eq!(path.as_str(), None);
        assert_eq!(path.to_posix_bytes().unwrap().as_ref(), raw);
        let cps: Vec<u32> = path.code_points().collect();
        assert!(cps.contains(&0xDCE9) && cps.contains(&0xDCFF) && cps.contains(&0xDC97));
        assert_eq!(
            path.display(),
            "caf\\udce9/\\udcff\\udcfe-ok-\\udce6\\udc97.txt"
        );
    }

    #[test]
    fn utf8_paths_are_stored_as_is() {
        let path = ManifestPath::from_posix_bytes("sub/déjà vu 日本.txt".as_bytes());
        assert_eq!(path.as_str(), Some("sub/déjà vu 日本.txt"));
        assert_eq!(path.file_name(), "déjà vu 日本.txt".as_bytes());
    }

    #[test]
    fn lone_surrogate_outside_escape_range_cannot_become_a_file_name() {
        let mut b = b"a".to_vec();
        push_code_point(&mut b, 0xD800);
        let path = ManifestPath::from_wtf8_unchecked(b);
        assert_eq!(
            path.to_posix_bytes(),
            Err(PathError::Unrepresentable(0xD800))
        );
    }

    #[test]
    fn utf16_order_matches_the_official_client() {
        // From the spec: astral characters sort before U+E000..U+FFFF, '/' after '-' and '.'.
        let mut v = [
            p("ｆ.txt"),
            p("😀.txt"),
            p("a/x"),
            p("a.txt"),
            p("a-b.txt"),
            p("a b/c.txt"),
            p("B.txt"),
        ];
        v.sort_by(|a, b| a.cmp_utf16(b));
        let got: Vec<_> = v.iter().map(|x| x.as_str().unwrap()).collect();
        assert_eq!(
            got,
            [
                "B.txt",
                "a b/c.txt",
                "a-b.txt",
                "a.txt",
                "a/x",
                "😀.txt",
                "ｆ.txt"
            ]
        );
    }

    #[test]
    fn utf16_compare_from_a_shared_multibyte_prefix() {
        // Same first two bytes of a 3-byte char, then a difference inside the character.
        assert_eq!(p("x日").cmp_utf16(&p("x旦")), Ordering::Less);
        assert_eq!(p("x旦").cmp_utf16(&p("x日")), Ordering::Greater);
        assert_eq!(p("é😀").cmp_utf16(&p("éｆ")), Ordering::Less);
        assert_eq!(p("ab").cmp_utf16(&p("abc")), Ordering::Less);
        assert_eq!(p("abc").cmp_utf16(&p("abc")), Ordering::Equal);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("C:/x", PathError::DriveLetter),
            ("c:x", PathError::DriveLetter),
            ("a//b", PathError::EmptySegment),
            ("a/", PathError::EmptySegment),
            ("./a", PathError::DotSegment),
            ("../x", PathError::DotDotSegment),
            ("a/../../x", PathError::DotDotSegment),
            ("a\0b", PathError::Nul),
        ];
        for (path, want) in cases {
            assert_eq!(
                p(path).validate(PathRules::Posix),
                Err(want.clone()),
                "{path:?}"
            );
            assert_eq!(p(path).validate(PathRules::Windows), Err(want), "{path:?}");
        }
        for ok in [
            "a",
            "a/b.txt",
            "..a/b..",
            "a b/c.txt",
            "日本/😀",
            "back\\slash",
        ] {
            assert_eq!(p(ok).validate(PathRules::Posix), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn windows_rules_refuse_backslashes_and_reserved_names() {
        assert_eq!(
            p("a\\b").validate(PathRules::Windows),
            Err(PathError::Backslash)
        );
        // A UNC-looking name is an ordinary file name on POSIX, refused on Windows.
        assert_eq!(
            p("\\\\server\\share").validate(PathRules::Windows),
            Err(PathError::Backslash)
        );
        assert_eq!(p("\\\\server\\share").validate(PathRules::Posix), Ok(()));
        for bad in [
            "CON",
            "con.txt",
            "dir/Nul.tar.gz",
            "COM1",
            "lpt9.log",
            "aux ",
            "a.",
            "a?b",
            "x/b:c",
        ] {
            assert!(
                matches!(
                    p(bad).validate(PathRules::Windows),
                    Err(PathError::WindowsName(_))
                ),
                "{bad:?} must be refused on Windows"
            );
            assert!(!matches!(
                p(bad).validate(PathRules::Posix),
                Err(PathError::WindowsName(_))
            ));
        }
        for ok in ["console.txt", "COM10", "CONFIG/a", "nul_file"] {
            assert_eq!(p(ok).validate(PathRules::Windows), Ok(()), "{ok:?}");
        }
    }
}
