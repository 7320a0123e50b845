//! Codec properties: round trip, canonical order, escaping of every code-point class, checked
//! against Python's own `json.dumps` (the official client's encoder) as an independent oracle.

use std::io::Write;
use std::process::{Command, Stdio};

use attache::hash::ContentHash;
use attache::manifest::{Manifest, ManifestEntry, ManifestPath, decode};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// One piece of a file name: a character from a chosen class, or a raw non-UTF-8 byte.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let ch = |r: std::ops::RangeInclusive<u32>| {
        r.prop_filter_map("a scalar value", char::from_u32)
            .prop_map(|c| c.to_string().into_bytes())
    };
    prop_oneof![
        4 => ch(0x20..=0x7E).prop_filter("no separator", |b| b != b"/"),
        1 => ch(0x01..=0x1F),
        1 => Just(vec![0x7F]),
        1 => Just(b"\"".to_vec()),
        1 => Just(b"\\".to_vec()),
        1 => ch(0x80..=0x7FF),
        1 => ch(0x800..=0xD7FF),
        1 => ch(0xE000..=0xFFFF),
        1 => ch(0x10000..=0x10FFFF),
        1 => (0x80u8..=0xFF).prop_map(|b| vec![b]),
    ]
}

fn segment() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(piece(), 1..6)
        .prop_map(|v| v.concat())
        .prop_filter("not . or ..", |s| s != b"." && s != b"..")
}

fn posix_path() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(segment(), 1..4)
        .prop_map(|segs| segs.join(&b'/'))
        // "c:…" reads as a drive letter and is refused by design.
        .prop_filter("no drive letter", |p| {
            !(p.len() >= 2 && p[0].is_ascii_alphabetic() && p[1] == b':')
        })
}

fn entry() -> impl Strategy<Value = ManifestEntry> {
    (
        posix_path(),
        any::<u128>(),
        0u64..u64::MAX / 1024,
        any::<i64>(),
    )
        .prop_map(|(p, h, size, mtime_us)| ManifestEntry {
            path: ManifestPath::from_posix_bytes(&p),
            hash: ContentHash(h),
            size,
            mtime_us,
        })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    prop::collection::vec(entry(), 1..40).prop_map(Manifest::new)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn encode_decode_encode_is_identity(m in manifest()) {
        let bytes = m.encode().unwrap();
        let back = decode(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.encode().unwrap(), bytes);
    }

    #[test]
    fn encoding_is_pure_ascii_without_whitespace_outside_strings(m in manifest()) {
        let bytes = m.encode().unwrap();
        prop_assert!(bytes.iter().all(|b| (0x20..0x7F).contains(b)));
        prop_assert!(!bytes.ends_with(b"\n"));
        let head: &[u8] = br#"{"hashAlg":"xxh128","manifestVersion":"2023-03-03","paths":[{"hash":""#;
        prop_assert!(bytes.starts_with(head));
    }

    #[test]
    fn entries_are_in_utf16_order_whatever_the_input_order(mut entries in prop::collection::vec(entry(), 1..40)) {
        let sorted = Manifest::new(entries.clone());
        entries.reverse();
        let reversed = Manifest::new(entries);
        let units = |e: &ManifestEntry| e.path.utf16_units().collect::<Vec<u16>>();
        prop_assert!(sorted.entries().windows(2).all(|w| units(&w[0]) <= units(&w[1])));
        // Same bytes whatever order the files were found in (ties keep their own order).
        let dedup = |m: &Manifest| m.entries().iter().map(units).collect::<Vec<_>>();
        prop_assert_eq!(dedup(&sorted), dedup(&reversed));
    }

    #[test]
    fn posix_names_round_trip(p in posix_path()) {
        let path = ManifestPath::from_posix_bytes(&p);
        let back = path.to_posix_bytes().unwrap().into_owned();
        prop_assert_eq!(back, p);
    }
}

/// Builds manifests of many random names with Python's `json.dumps` exactly as the official
/// client calls it, and compares bytes with attache's encoder.
#[test]
fn encoding_matches_python_json_dumps() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let tree = prop::collection::vec(entry(), 200..201)
        .new_tree(&mut runner)
        .unwrap();
    let entries = tree.current();
    // Python needs unique paths to sort deterministically the same way.
    let mut seen = std::collections::HashSet::new();
    let entries: Vec<ManifestEntry> = entries
        .into_iter()
        .filter(|e| seen.insert(e.path.clone()))
        .collect();
    let ours = Manifest::new(entries.clone()).encode().unwrap();

    let script = r#"
import json, sys
paths = []
for line in sys.stdin.read().split("\n"):
    if not line:
        continue
    p, h, m, s = line.split(" ")
    paths.append({"hash": h, "mtime": int(m), "path": bytes.fromhex(p).decode("utf-8", "surrogateescape"), "size": int(s)})
paths.sort(key=lambda e: e["path"].encode("utf-16-be", "surrogatepass"))
doc = {"hashAlg": "xxh128", "manifestVersion": "2023-03-03", "paths": paths, "totalSize": sum(e["size"] for e in paths)}
sys.stdout.write(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test (it is the official client's encoder)");
    {
        let mut stdin = child.stdin.take().unwrap();
        for e in &entries {
            let hex: String = e
                .path
                .to_posix_bytes()
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            writeln!(stdin, "{hex} {} {} {}", e.hash, e.mtime_us, e.size).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn every_escape_class_is_spelled_like_python() {
    let cases: &[(&[u8], &str)] = &[
        (b"q\"b\\s", r#"q\"b\\s"#),
        (b"\x08\x0c\n\r\t", r"\b\f\n\r\t"),
        (b"\x01\x1f\x7f", r"\u0001\u001f\u007f"),
        ("é€".as_bytes(), r"\u00e9\u20ac"),
        ("\u{FFFF}😀".as_bytes(), r"\uffff\ud83d\ude00"),
        (b"\xff", r"\udcff"),
        (b"a/b c", "a/b c"),
    ];
    for (raw, want) in cases {
        let m = Manifest::new(vec![ManifestEntry {
            path: ManifestPath::from_posix_bytes(raw),
            hash: ContentHash(0),
            size: 0,
            mtime_us: 0,
        }]);
        let text = String::from_utf8(m.encode().unwrap()).unwrap();
        assert!(
            text.contains(&format!("\"path\":\"{want}\"")),
            "{raw:?}: {text}"
        );
    }
}

/// A manifest of a million entries (the size a hostile or huge job can reach) decodes and
/// re-encodes to the same bytes.
#[test]
fn a_million_entry_manifest_round_trips() {
    let entries: Vec<ManifestEntry> = (0..1_000_000u64)
        .map(|i| ManifestEntry {
            path: ManifestPath::from_utf8(&format!("shot{:03}/frame.{i:07}.exr", i % 997)),
            hash: ContentHash(
                u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
            ),
            size: i,
            mtime_us: 1_700_000_000_000_000 + i as i64,
        })
        .collect();
    let m = Manifest::new(entries);
    let bytes = m.encode().unwrap();
    let back = decode(&bytes).unwrap();
    assert_eq!(back.len(), 1_000_000);
    assert_eq!(back.encode().unwrap(), bytes);
}
