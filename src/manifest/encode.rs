//! Canonical encoding, byte-identical with Python's
//! `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)`.

use std::io::Write;

use super::{HASH_ALG, Manifest, ManifestEntry, ManifestVersion};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The official decoder rejects `"paths": []`, so attache never writes one.
    #[error("a manifest needs at least one file; the official client rejects an empty one")]
    Empty,
}

pub(super) fn encode(m: &Manifest) -> Result<Vec<u8>, EncodeError> {
    if m.entries.is_empty() {
        return Err(EncodeError::Empty);
    }
    let mut out = Vec::with_capacity(96 + m.entries.len() * 120);
    encode_to(m, &mut out).expect("writing into a Vec cannot fail");
    Ok(out)
}

/// Streams the canonical bytes into `w` in 64 KiB pieces, so a million-entry manifest is
/// written without holding its 100+ MiB of JSON. An empty manifest is an error.
pub(super) fn encode_to(m: &Manifest, w: &mut impl Write) -> std::io::Result<()> {
    let mut out = ManifestWriter::new(w, m.version);
    for e in &m.entries {
        out.push(e)?;
    }
    out.finish().map(drop)
}

/// Writes a manifest entry by entry, in 64 KiB pieces: the header, each entry as it comes,
/// and `totalSize` at the end. Entries given in canonical order make the canonical bytes;
/// attache also reads back any other order (decoding sorts), which its own records may use.
pub struct ManifestWriter<W: Write> {
    w: W,
    out: Vec<u8>,
    entries: u64,
    total_size: u64,
}

const PIECE: usize = 64 << 10;

impl<W: Write> ManifestWriter<W> {
    pub fn new(w: W, version: ManifestVersion) -> Self {
        let mut out = Vec::with_capacity(PIECE + 4096);
        out.extend_from_slice(b"{\"hashAlg\":\"");
        out.extend_from_slice(HASH_ALG.as_bytes());
        out.extend_from_slice(b"\",\"manifestVersion\":\"");
        out.extend_from_slice(version.as_str().as_bytes());
        out.extend_from_slice(b"\",\"paths\":[");
        ManifestWriter {
            w,
            out,
            entries: 0,
            total_size: 0,
        }
    }

    pub fn push(&mut self, e: &ManifestEntry) -> std::io::Result<()> {
        let out = &mut self.out;
        if self.entries > 0 {
            out.push(b',');
        }
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "{{\"hash\":\"{}\",\"mtime\":{},\"path\":",
            e.hash, e.mtime_us
        );
        write_string(out, e.path.code_points());
        let _ = write!(out, ",\"size\":{}}}", e.size);
        self.entries += 1;
        self.total_size += e.size;
        if out.len() >= PIECE {
            self.w.write_all(out)?;
            out.clear();
        }
        Ok(())
    }

    /// Entries pushed so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Ends the document and hands back the writer, flushed. No entry is an error: the
    /// official decoder rejects `"paths": []`.
    pub fn finish(mut self) -> std::io::Result<W> {
        if self.entries == 0 {
            return Err(std::io::Error::other(EncodeError::Empty));
        }
        let _ = write!(self.out, "],\"totalSize\":{}}}", self.total_size);
        self.w.write_all(&self.out)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Writes a JSON string with ASCII-only escaping: lowercase `\uXXXX` for every code point
/// outside 0x20..=0x7E (0x7F included), surrogate pairs above U+FFFF.
pub(crate) fn write_string(out: &mut Vec<u8>, code_points: impl Iterator<Item = u32>) {
    out.push(b'"');
    for cp in code_points {
        match cp {
            0x22 => out.extend_from_slice(b"\\\""),
            0x5C => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0C => out.extend_from_slice(b"\\f"),
            0x0A => out.extend_from_slice(b"\\n"),
            0x0D => out.extend_from_slice(b"\\r"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x20..=0x7E => out.push(cp as u8),
            0..=0xFFFF => push_u_escape(out, cp),
            _ => {
                let v = cp - 0x10000;
                push_u_escape(out, 0xD800 + (v >> 10));
                push_u_escape(out, 0xDC00 + (v & 0x3FF));
            }
        }
    }
    out.push(b'"');
}

fn push_u_escape(out: &mut Vec<u8>, unit: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 0xF) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use crate::hash::ContentHash;
    use crate::manifest::{Manifest, ManifestEntry, ManifestPath};

    /// Records each write, so the test sees the pieces.
    struct Pieces(Vec<Vec<u8>>);

    impl std::io::Write for Pieces {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn streamed_encoding_is_the_same_bytes_in_pieces() {
        let entries = (0..3000u64)
            .map(|i| ManifestEntry {
                path: ManifestPath::from_utf8(&format!("dir{}/fïle {i}.exr", i % 7)),
                hash: ContentHash::of(&i.to_le_bytes()),
                size: i,
                mtime_us: 1_700_000_000_000_000 + i as i64,
            })
            .collect();
        let m = Manifest::new(entries);
        let mut pieces = Pieces(Vec::new());
        m.encode_to(&mut pieces).unwrap();
        assert!(pieces.0.len() > 3, "{} pieces", pieces.0.len());
        assert!(pieces.0.iter().all(|p| p.len() < 80 << 10));
        assert_eq!(pieces.0.concat(), m.encode().unwrap());
        let empty = Manifest::new(Vec::new()).encode_to(&mut Pieces(Vec::new()));
        assert!(empty.is_err(), "an empty manifest is never written");
    }
}
