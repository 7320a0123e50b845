//! Canonical encoding, byte-identical with Python's
//! `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)`.

use std::io::Write;

use super::{HASH_ALG, Manifest};

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
    out.extend_from_slice(b"{\"hashAlg\":\"");
    out.extend_from_slice(HASH_ALG.as_bytes());
    out.extend_from_slice(b"\",\"manifestVersion\":\"");
    out.extend_from_slice(m.version.as_str().as_bytes());
    out.extend_from_slice(b"\",\"paths\":[");
    for (i, e) in m.entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "{{\"hash\":\"{}\",\"mtime\":{},\"path\":",
            e.hash, e.mtime_us
        );
        write_string(&mut out, e.path.code_points());
        let _ = write!(out, ",\"size\":{}}}", e.size);
    }
    let _ = write!(out, "],\"totalSize\":{}}}", m.total_size());
    Ok(out)
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
