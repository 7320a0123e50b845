//! Strict decoding of manifest documents.
//!
//! Hand-written because `serde_json` cannot hold the lone surrogates (`\udcNN`) that the
//! official client writes for non-UTF-8 POSIX names. Strict about what attache relies on
//! (required keys, types, version, hash algorithm, safe paths); lenient about unknown keys
//! and white space, as the official decoder is.
//!
//! Streaming: the document is read in 64 KiB chunks and the bytes of entries already decoded
//! are let go of, so a million-entry manifest (116 MiB of JSON) is never held whole beside
//! its entries.

use std::io::{self, Read};

use super::path::{ManifestPath, PathError, PathRules, push_code_point};
use super::{HASH_ALG, Manifest, ManifestEntry, ManifestVersion};
use crate::hash::ContentHash;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid JSON at byte {offset}: {message}")]
    Syntax { offset: usize, message: String },
    #[error("{context}: missing required key \"{key}\"")]
    MissingKey { context: String, key: &'static str },
    #[error("{context}: key \"{key}\" appears twice")]
    DuplicateKey { context: String, key: String },
    #[error("{context}: \"{key}\" must be {expected}")]
    WrongType {
        context: String,
        key: &'static str,
        expected: &'static str,
    },
    #[error(
        "unsupported manifest version {0:?}: attache reads \"2023-03-03\" (the format of every released Deadline client)"
    )]
    UnsupportedVersion(String),
    #[error("unsupported hash algorithm {0:?}: only \"xxh128\" is defined for this format")]
    UnsupportedHashAlg(String),
    #[error("paths[{index}]: hash {value:?} is not 32 hex digits")]
    BadHash { index: usize, value: String },
    #[error("paths[{index}] ({path:?}) is refused: {reason}")]
    UnsafePath {
        index: usize,
        path: String,
        reason: PathError,
    },
    #[error("the manifest lists no files (\"paths\" is empty)")]
    NoPaths,
    #[error(
        "{path:?} is listed below {file:?}, which is a file: the manifest is not a tree (make it again)"
    )]
    BelowAFile { path: String, file: String },
}

/// Why a manifest could not be read from a file or stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the manifest: {0}")]
    Io(#[source] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Decodes a manifest held in memory, validating every path against this platform's rules.
pub fn decode(bytes: &[u8]) -> Result<Manifest, DecodeError> {
    decode_from(bytes).map_err(|e| match e {
        ReadError::Decode(e) => e,
        ReadError::Io(e) => unreachable!("reading a byte slice cannot fail: {e}"),
    })
}

/// Decodes a manifest as it is read from `src`, validating every path against this
/// platform's rules. Memory: the entries, and the read-ahead of one entry.
pub fn decode_from(src: impl Read) -> Result<Manifest, ReadError> {
    let mut p = Parser::new(src);
    let doc = p.document();
    // A failed read ends the input early; report it, not the syntax error it leads to.
    if let Some(e) = p.read_error.take() {
        return Err(ReadError::Io(e));
    }
    Ok(check(doc?)?)
}

/// The document's header checked and its entries made a manifest.
fn check(doc: Document) -> Result<Manifest, DecodeError> {
    let version = match (doc.manifest_version, doc.specification_version) {
        (Some(v), _) if v == ManifestVersion::V2023_03_03.as_str() => ManifestVersion::V2023_03_03,
        (Some(v), _) | (None, Some(v)) => return Err(DecodeError::UnsupportedVersion(v)),
        (None, None) => return Err(missing("manifest", "manifestVersion")),
    };
    let hash_alg = doc.hash_alg.ok_or_else(|| missing("manifest", "hashAlg"))?;
    if hash_alg != HASH_ALG {
        return Err(DecodeError::UnsupportedHashAlg(hash_alg));
    }
    let entries = doc.paths.ok_or_else(|| missing("manifest", "paths"))?;
    if doc.total_size.is_none() {
        return Err(missing("manifest", "totalSize"));
    }
    if entries.is_empty() {
        return Err(DecodeError::NoPaths);
    }
    let mut manifest = Manifest::new(entries);
    manifest.version = version;
    manifest.validate_paths(PathRules::native())?;
    Ok(manifest)
}

fn missing(context: &str, key: &'static str) -> DecodeError {
    DecodeError::MissingKey {
        context: context.to_string(),
        key,
    }
}

#[derive(Default)]
struct Document {
    hash_alg: Option<String>,
    manifest_version: Option<String>,
    specification_version: Option<String>,
    paths: Option<Vec<ManifestEntry>>,
    total_size: Option<u64>,
}

/// Unknown values may nest; cap the depth so a hostile document cannot overflow the stack.
const MAX_DEPTH: usize = 64;

/// Bytes asked of the source at a time.
const READ_CHUNK: usize = 64 * 1024;

struct Parser<R> {
    src: R,
    /// What has been read of the document and not let go of yet; `i` indexes it. It only
    /// grows while a value is parsed, so indices into it stay valid until [`Parser::let_go`].
    buf: Vec<u8>,
    i: usize,
    /// Bytes of the document before `buf[0]`, for error offsets.
    base: usize,
    /// Where reads land before they join `buf` (reading into `buf` itself would mean zeroing
    /// its spare room first, for every read however short).
    scratch: Box<[u8]>,
    at_end: bool,
    read_error: Option<io::Error>,
}

enum Number {
    Int(i128),
    Other,
}

impl<R: Read> Parser<R> {
    fn new(src: R) -> Self {
        Parser {
            src,
            buf: Vec::with_capacity(2 * READ_CHUNK),
            i: 0,
            base: 0,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            at_end: false,
            read_error: None,
        }
    }

    fn document(&mut self) -> Result<Document, DecodeError> {
        let mut doc = Document::default();
        self.object(|p, key| {
            let ctx = "manifest";
            match key {
                b"hashAlg" => set_once(&mut doc.hash_alg, ctx, key, |_| {
                    p.string_value(ctx, "hashAlg")
                }),
                b"manifestVersion" => set_once(&mut doc.manifest_version, ctx, key, |_| {
                    p.string_value(ctx, "manifestVersion")
                }),
                b"specificationVersion" => {
                    set_once(&mut doc.specification_version, ctx, key, |_| {
                        p.string_value(ctx, "specificationVersion")
                    })
                }
                b"totalSize" => set_once(&mut doc.total_size, ctx, key, |_| {
                    p.unsigned(ctx, "totalSize")
                }),
                b"paths" => set_once(&mut doc.paths, ctx, key, |_| p.paths()),
                _ => p.skip_value(0),
            }
        })?;
        self.ws();
        if self.peek().is_some() {
            return Err(self.syntax("unexpected data after the manifest object"));
        }
        Ok(doc)
    }

    fn paths(&mut self) -> Result<Vec<ManifestEntry>, DecodeError> {
        self.ws();
        if self.peek() != Some(b'[') {
            return Err(DecodeError::WrongType {
                context: "manifest".into(),
                key: "paths",
                expected: "an array",
            });
        }
        self.i += 1;
        let mut entries = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(entries);
        }
        loop {
            let index = entries.len();
            self.let_go();
            entries.push(self.entry(index)?);
            self.ws();
            match self.next_byte() {
                Some(b',') => continue,
                Some(b']') => return Ok(entries),
                _ => return Err(self.syntax("expected ',' or ']' in \"paths\"")),
            }
        }
    }

    fn entry(&mut self, index: usize) -> Result<ManifestEntry, DecodeError> {
        let ctx = format!("paths[{index}]");
        let (mut hash, mut mtime, mut path, mut size) = (None, None, None, None);
        self.ws();
        if self.peek() != Some(b'{') {
            return Err(self.syntax(&format!("{ctx} must be an object")));
        }
        self.object(|p, key| match key {
            b"hash" => set_once(&mut hash, &ctx, key, |_| {
                let value = p.string_value(&ctx, "hash")?;
                ContentHash::from_hex(&value).ok_or(DecodeError::BadHash { index, value })
            }),
            b"mtime" => set_once(&mut mtime, &ctx, key, |_| match p.number()? {
                Number::Int(v) => i64::try_from(v).map_err(|_| wrong(&ctx, "mtime", "an integer")),
                Number::Other => Err(wrong(&ctx, "mtime", "an integer")),
            }),
            b"path" => set_once(&mut path, &ctx, key, |_| {
                p.ws();
                if p.peek() != Some(b'"') {
                    return Err(wrong(&ctx, "path", "a string"));
                }
                Ok(ManifestPath::from_wtf8_unchecked(p.string()?))
            }),
            b"size" => set_once(&mut size, &ctx, key, |_| p.unsigned(&ctx, "size")),
            _ => p.skip_value(0),
        })?;
        Ok(ManifestEntry {
            hash: hash.ok_or_else(|| missing(&ctx, "hash"))?,
            mtime_us: mtime.ok_or_else(|| missing(&ctx, "mtime"))?,
            path: path.ok_or_else(|| missing(&ctx, "path"))?,
            size: size.ok_or_else(|| missing(&ctx, "size"))?,
        })
    }

    /// Parses an object, calling `on_key` with the parser positioned at each value.
    fn object(
        &mut self,
        mut on_key: impl FnMut(&mut Self, &[u8]) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        self.ws();
        if self.next_byte() != Some(b'{') {
            return Err(self.syntax("expected an object"));
        }
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.syntax("expected a key"));
            }
            let key = self.string()?;
            self.ws();
            if self.next_byte() != Some(b':') {
                return Err(self.syntax("expected ':' after a key"));
            }
            on_key(self, &key)?;
            self.ws();
            match self.next_byte() {
                Some(b',') => continue,
                Some(b'}') => return Ok(()),
                _ => return Err(self.syntax("expected ',' or '}'")),
            }
        }
    }

    fn string_value(&mut self, ctx: &str, key: &'static str) -> Result<String, DecodeError> {
        self.ws();
        if self.peek() != Some(b'"') {
            return Err(wrong(ctx, key, "a string"));
        }
        let bytes = self.string()?;
        // A lone surrogate cannot be a valid version or hash, so lossy is enough for errors.
        Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn unsigned(&mut self, ctx: &str, key: &'static str) -> Result<u64, DecodeError> {
        match self.number()? {
            Number::Int(v) => {
                u64::try_from(v).map_err(|_| wrong(ctx, key, "a non-negative integer"))
            }
            Number::Other => Err(wrong(ctx, key, "a non-negative integer")),
        }
    }

    /// Parses a JSON string into WTF-8 bytes (lone surrogates kept, pairs combined).
    fn string(&mut self) -> Result<Vec<u8>, DecodeError> {
        self.i += 1; // opening quote, checked by the caller
        let mut out = Vec::new();
        loop {
            let run_start = self.i;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            let run = &self.buf[run_start..self.i];
            if std::str::from_utf8(run).is_err() {
                return Err(self.syntax_at(run_start, "string is not valid UTF-8"));
            }
            out.extend_from_slice(run);
            match self.next_byte() {
                Some(b'"') => return Ok(out),
                Some(b'\\') => self.escape(&mut out)?,
                Some(_) => return Err(self.syntax("control character in a string")),
                None => return Err(self.syntax("unterminated string")),
            }
        }
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let c = match self.next_byte() {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0C,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                let unit = self.hex4()?;
                let is_high = (0xD800..0xDC00).contains(&unit);
                if is_high && self.fill(2) && self.buf[self.i..].starts_with(b"\\u") {
                    let save = self.i;
                    self.i += 2;
                    let low = self.hex4()?;
                    if (0xDC00..0xE000).contains(&low) {
                        push_code_point(out, 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00));
                        return Ok(());
                    }
                    self.i = save;
                }
                push_code_point(out, unit);
                return Ok(());
            }
            _ => return Err(self.syntax("invalid escape")),
        };
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, DecodeError> {
        self.fill(4);
        let digits = self
            .buf
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.syntax("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.syntax("bad \\u escape"))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.syntax("bad \\u escape"));
        }
        self.i += 4;
        Ok(u32::from_str_radix(text, 16).expect("four hex digits"))
    }

    /// Parses a number; any other value is skipped and reported as `Number::Other`, so the
    /// caller can name the key and the type it wanted.
    fn number(&mut self) -> Result<Number, DecodeError> {
        self.ws();
        if !matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
            self.skip_value(0)?;
            return Ok(Number::Other);
        }
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        self.digits();
        let int_digits = &self.buf[int_start..self.i];
        if int_digits.is_empty() || (int_digits.len() > 1 && int_digits[0] == b'0') {
            return Err(self.syntax_at(start, "expected a number"));
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.syntax("bad fraction"));
            }
            integral = false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.syntax("bad exponent"));
            }
            integral = false;
        }
        let text = std::str::from_utf8(&self.buf[start..self.i]).expect("ASCII digits");
        Ok(match (integral, text.parse::<i128>()) {
            (true, Ok(v)) => Number::Int(v),
            _ => Number::Other,
        })
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn skip_value(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.syntax("nested too deeply"));
        }
        self.ws();
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.object(|p, _| p.skip_value(depth + 1)),
            Some(b'[') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next_byte() {
                        Some(b',') => continue,
                        Some(b']') => return Ok(()),
                        _ => return Err(self.syntax("expected ',' or ']'")),
                    }
                }
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            _ => Err(self.syntax("expected a value")),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), DecodeError> {
        if self.fill(word.len()) && self.buf[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.syntax("unexpected token"))
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        if self.i >= self.buf.len() && !self.fill(1) {
            return None;
        }
        Some(self.buf[self.i])
    }

    /// Reads until `n` bytes from `i` on are held; false if the document ends (or its source
    /// fails) first.
    fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < self.i + n && !self.at_end {
            match self.src.read(&mut self.scratch) {
                Ok(0) => self.at_end = true,
                Ok(got) => self.buf.extend_from_slice(&self.scratch[..got]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.read_error = Some(e);
                    self.at_end = true;
                }
            }
        }
        self.buf.len() >= self.i + n
    }

    /// Drops the bytes before `i` once they are a chunk's worth. Only between values: callers
    /// hold indices into `buf` while they parse one.
    fn let_go(&mut self) {
        if self.i >= READ_CHUNK {
            self.buf.drain(..self.i);
            self.base += self.i;
            self.i = 0;
        }
    }

    fn next_byte(&mut self) -> Option<u8> {
        let c = self.peek();
        if c.is_some() {
            self.i += 1;
        }
        c
    }

    fn syntax(&self, message: &str) -> DecodeError {
        self.syntax_at(self.i, message)
    }

    fn syntax_at(&self, i: usize, message: &str) -> DecodeError {
        DecodeError::Syntax {
            offset: self.base + i,
            message: message.to_string(),
        }
    }
}

fn wrong(ctx: &str, key: &'static str, expected: &'static str) -> DecodeError {
    DecodeError::WrongType {
        context: ctx.to_string(),
        key,
        expected,
    }
}

/// Stores a key's value, refusing a second occurrence (Python would silently keep the last).
fn set_once<T>(
    slot: &mut Option<T>,
    ctx: &str,
    key: &[u8],
    parse: impl FnOnce(()) -> Result<T, DecodeError>,
) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateKey {
            context: ctx.to_string(),
            key: String::from_utf8_lossy(key).into_owned(),
        });
    }
    *slot = Some(parse(())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most `step` bytes per read, then fails with `fail` (if any) at `fail_at`.
    struct Trickle<'a> {
        data: &'a [u8],
        at: usize,
        step: usize,
        fail_at: Option<usize>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let end = self.data.len().min(self.fail_at.unwrap_or(usize::MAX));
            if self.at == end && self.fail_at.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset",
                ));
            }
            let n = out.len().min(self.step).min(end - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn trickle(data: &[u8], step: usize) -> Trickle<'_> {
        Trickle {
            data,
            at: 0,
            step,
            fail_at: None,
        }
    }

    /// `n` entries exercising every token kind: escapes (a surrogate pair, a lone surrogate),
    /// unknown keys holding nested values, literals, fractions, white space.
    fn awkward(n: usize) -> String {
        let entries: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "{{ \"hash\" : \"{:032x}\",\n\t\"extra\": [true, false, null, -1.5e3, {{\"k\": [\"v\\\"\"]}}],\r\n  \"mtime\": {i}, \"path\": \"d{}/f\\u00e9\\ud83d\\ude00\\udc80\\/{i:06}\", \"size\": {} }}",
                    i * 7919,
                    i % 10,
                    i % 1000
                )
            })
            .collect();
        format!(
            "{{\"other\": {{\"deep\": [[1], [2.0]]}}, \"hashAlg\": \"xxh128\", \"manifestVersion\": \"2023-03-03\",\n \"paths\": [{}], \"totalSize\": 1}}\n",
            entries.join(",\n ")
        )
    }

    #[test]
    fn a_document_read_a_few_bytes_at_a_time_decodes_as_it_does_whole() {
        // 2,000 entries: about 300 KiB, so the parser lets go of read bytes several times.
        let doc = awkward(2_000);
        assert!(doc.len() > 4 * READ_CHUNK);
        let whole = decode(doc.as_bytes()).unwrap();
        assert_eq!(whole.len(), 2_000);
        // 1 byte: every refill boundary, inside escapes, literals and numbers; 7 and 4093:
        // boundaries that fall elsewhere each time.
        for step in [1, 7, 4093] {
            let m = decode_from(trickle(doc.as_bytes(), step)).unwrap();
            assert_eq!(m, whole, "{step} bytes per read");
        }
        let e = &whole.entries()[0];
        assert_eq!(
            e.path.as_wtf8(),
            b"d0/f\xc3\xa9\xf0\x9f\x98\x80\xed\xb2\x80/000000"
        );
    }

    #[test]
    fn a_failing_source_is_reported_as_a_read_error_not_as_bad_json() {
        let doc = awkward(2_000);
        let src = Trickle {
            fail_at: Some(doc.len() / 2),
            ..trickle(doc.as_bytes(), 1000)
        };
        match decode_from(src) {
            Err(ReadError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_give_the_offset_in_the_whole_document() {
        let doc = awkward(2_000);
        // Break the last entry's opening brace, far past what the parser still holds.
        let at = doc.rfind("{ \"hash\"").unwrap();
        let mut bad = doc.into_bytes();
        bad[at] = b'x';
        match decode_from(trickle(&bad, 4093)) {
            Err(ReadError::Decode(DecodeError::Syntax { offset, .. })) => assert_eq!(offset, at),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_parser_holds_a_few_chunks_however_long_the_document() {
        let doc = awkward(20_000);
        assert!(doc.len() > 2_000_000);
        let mut p = Parser::new(doc.as_bytes());
        let parsed = p.document().unwrap();
        assert_eq!(parsed.paths.unwrap().len(), 20_000);
        assert!(p.buf.capacity() <= 4 * READ_CHUNK, "{}", p.buf.capacity());
    }
}
