//! The official client's bytes, reproduced: fixture manifests from decoded bytes, from the
//! recreated trees through the library, and through `attache hash`.

mod common;

use attache::hash::ContentHash;
use attache::jobs::hash::{HashSpec, run};
use attache::manifest::decode;
use attache::progress::Progress;
use attache::scan::ScanOptions;
use common::*;
use tokio_util::sync::CancellationToken;

const FIXTURES: [&str; 2] = ["tiny", "edge"];

fn spec(root: &std::path::Path, cache: Option<&std::path::Path>) -> HashSpec {
    HashSpec {
        roots: vec![root.to_path_buf()],
        cache_dir: cache.map(|c| c.to_path_buf()),
        threads: 2,
        read_buffer: 1 << 20,
        scan: ScanOptions::default(),
    }
}

#[test]
fn decoding_and_reencoding_the_fixtures_is_byte_identical() {
    for name in FIXTURES {
        let bytes = std::fs::read(fixture(name).join("manifest.json")).unwrap();
        let m = decode(&bytes).unwrap();
        assert_eq!(m.encode().unwrap(), bytes, "{name}");
    }
}

#[test]
fn hashing_the_recreated_trees_reproduces_the_fixture_manifests() {
    for name in FIXTURES {
        let t = tempfile::tempdir().unwrap();
        build_fixture_tree(name, t.path());
        let report = run(
            &spec(t.path(), None),
            &CancellationToken::new(),
            &Progress::default(),
        )
        .unwrap();
        let got = report.roots[0].manifest.encode().unwrap();
        let want = std::fs::read(fixture(name).join("manifest.json")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{name}"
        );
        assert_eq!(got, want, "{name}");

        // The manifest's own hash is the attachments JSON's inputManifestHash.
        let attachments = read_json(&fixture(name).join("attachments.json"));
        let m = &attachments["manifests"][0];
        assert_eq!(
            ContentHash::of(&got).to_hex(),
            m["inputManifestHash"].as_str().unwrap()
        );

        // Every data object key the official client wrote is a hash of this manifest.
        let keys = std::fs::read_to_string(fixture(name).join("keys.txt")).unwrap();
        let mut data_keys: Vec<String> = report.roots[0]
            .manifest
            .entries()
            .iter()
            .map(|e| format!("DeadlineCloud/Data/{}.xxh128", e.hash))
            .collect();
        data_keys.sort();
        data_keys.dedup();
        let mut want_keys: Vec<&str> = keys.lines().filter(|k| k.contains("/Data/")).collect();
        want_keys.sort();
        assert_eq!(data_keys, want_keys, "{name}");
    }
}

#[test]
fn attache_hash_writes_the_fixture_bytes_and_the_input_manifest_name() {
    for name in FIXTURES {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        build_fixture_tree(name, &root);
        let out = t.path().join("m.json");
        let (code, _, err) = common::run(
            attache(&t.path().join("cache"))
                .arg("hash")
                .arg(&root)
                .arg("-o")
                .arg(&out),
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(fixture(name).join("manifest.json")).unwrap()
        );
    }
    // The manifest object name is xxh128 of the root path: the fixture's key ends with it.
    let tree = read_json(&fixture("tiny").join("tree.json"));
    let root_path = tree["root_path"].as_str().unwrap();
    let key = tree["s3"]["manifest_key"].as_str().unwrap();
    let name = attache::store::layout::input_manifest_name(std::path::Path::new(root_path));
    assert!(key.ends_with(&format!("/{name}")), "{key} vs {name}");
}

#[test]
fn directory_output_names_manifests_like_deadline() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    build_fixture_tree("tiny", &a);
    build_fixture_tree("edge", &b);
    let out = t.path().join("manifests");
    let (code, _, err) = common::run(
        attache(&t.path().join("cache"))
            .arg("hash")
            .arg(&a)
            .arg(&b)
            .arg("-o")
            .arg(&out),
    );
    assert_eq!(code, 0, "{err}");
    for (root, name) in [(&a, "tiny"), (&b, "edge")] {
        let file = out.join(attache::store::layout::input_manifest_name(root));
        assert_eq!(
            std::fs::read(&file).unwrap(),
            std::fs::read(fixture(name).join("manifest.json")).unwrap()
        );
    }
}
