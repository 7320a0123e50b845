//! The farm workflows through the binary against the in-process S3 server: submit →
//! sync-inputs → (render) → sync-outputs → download-outputs, re-submits, failures, malicious
//! manifests, Windows roots.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use attache::hash::ContentHash;
use common::s3::TestS3;
use common::*;

struct Farm {
    s3: TestS3,
    t: tempfile::TempDir,
}

impl Farm {
    fn new() -> Farm {
        Farm {
            s3: TestS3::start_background(),
            t: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.t.path().join(p)
    }

    /// attache with this farm's store, a workstation's or a worker's own cache.
    fn attache(&self, cache: &str) -> Command {
        let mut c = attache(&self.path(cache));
        c.envs(self.s3.env())
            .env("ATTACHE_STORE__URL", self.s3.store_url("DeadlineCloud"));
        c
    }

    fn ok(&self, c: &mut Command) -> String {
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "{err}");
        out
    }

    /// A workstation's submit of `inputs`, with `outputs` as output directories; returns the
    /// attachments file.
    fn submit(&self, inputs: &[PathBuf], outputs: &[PathBuf]) -> PathBuf {
        let att = self.path("attachments.json");
        let mut c = self.attache("ws");
        c.arg("submit").args(IDS).args(inputs);
        for dir in outputs {
            c.arg("--output-dir").arg(dir);
        }
        self.ok(c.arg("-o").arg(&att));
        att
    }

    /// A workstation's `download-outputs` of job-1 with `flags`.
    fn download_outputs(&self, flags: &[&str]) -> Command {
        let mut c = self.attache("ws");
        c.arg("download-outputs")
            .args(IDS)
            .args(["--job-id", "job-1"])
            .args(flags);
        c
    }

    /// A `sync-outputs` of job-1's step-1 task `task` as session action `sa`, with `cache`
    /// (the attachments and the session directory to follow).
    fn task_outputs(&self, cache: &str, task: &str, sa: &str) -> Command {
        let mut c = self.attache(cache);
        c.arg("sync-outputs")
            .args(IDS)
            .args([
                "--job-id",
                "job-1",
                "--step-id",
                "step-1",
                "--task-id",
                task,
            ])
            .args(["--session-action-id", sa]);
        c
    }

    /// A worker's `sync-inputs` of the job in `att` into `session` (more flags may follow).
    fn sync_inputs(&self, att: &Path, session: &Path) -> Command {
        let mut c = self.attache("worker");
        c.arg("sync-inputs")
            .arg("--attachments")
            .arg(att)
            .arg("--session-dir")
            .arg(session);
        c
    }
}

/// Where sync-inputs puts the asset root `root` in `session` (no storage profile).
fn local_root(session: &Path, root: &Path) -> PathBuf {
    session.join(attache::jobs::attachments::asset_root_dir_name(
        root.to_str().unwrap(),
    ))
}

/// The output manifest whose path sync-outputs printed first: its key and its paths.
fn published_outputs(f: &Farm, printed: &str) -> (String, Vec<String>) {
    let outs: serde_json::Value = serde_json::from_str(printed).unwrap();
    let key = format!(
        "DeadlineCloud/Manifests/{}",
        outs[0]["outputManifestPath"].as_str().unwrap()
    );
    let paths = manifest_paths(f, &key);
    (key, paths)
}

/// The paths of the manifest the store holds at `key`.
fn manifest_paths(f: &Farm, key: &str) -> Vec<String> {
    let bytes = f.s3.read_object(key).expect("manifest");
    attache::manifest::decode(&bytes)
        .unwrap()
        .entries()
        .iter()
        .map(|e| e.path.display().into_owned())
        .collect()
}

/// The store key of the first root's input manifest in the attachments file `att`.
fn input_manifest_key(att: &Path) -> String {
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(att).unwrap()).unwrap();
    format!(
        "DeadlineCloud/Manifests/{}",
        a["manifests"][0]["inputManifestPath"].as_str().unwrap()
    )
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn manifest_keys(s3: &TestS3) -> Vec<String> {
    s3.object_keys()
        .into_iter()
        .filter(|k| k.contains("/Manifests/"))
        .collect()
}

#[test]
fn submit_sync_render_sync_outputs_download_outputs() {
    let f = Farm::new();
    let proj = f.path("proj");
    build_fixture_tree("edge", &proj.join("assets"));
    write(&proj.join("scenes/shot.ma"), b"scene v1");
    std::fs::create_dir_all(proj.join("renders")).unwrap();

    // Workstation: submit.
    let att = f.path("attachments.json");
    f.ok(f
        .attache("ws")
        .arg("submit")
        .args(IDS)
        .arg(proj.join("assets"))
        .arg(proj.join("scenes/shot.ma"))
        .arg("--output-dir")
        .arg(proj.join("renders"))
        .arg("-o")
        .arg(&att));
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(&att).unwrap()).unwrap();
    let m = &a["manifests"][0];
    assert_eq!(m["rootPath"], proj.to_str().unwrap());
    assert_eq!(m["rootPathFormat"], "posix");
    assert_eq!(
        m["outputRelativeDirectories"],
        serde_json::json!(["renders"])
    );
    assert_eq!(a["fileSystem"], "COPIED");
    let key = format!(
        "DeadlineCloud/Manifests/{}",
        m["inputManifestPath"].as_str().unwrap()
    );
    let published = f.s3.read_object(&key).expect("manifest published");
    assert_eq!(
        ContentHash::of(&published).to_hex(),
        m["inputManifestHash"].as_str().unwrap()
    );
    assert!(key.ends_with(&attache::store::layout::input_manifest_name(&proj)));

    // Worker: sync inputs into the session dir.
    let session = f.path("session");
    let sync_inputs = || {
        let mut c = f.attache("worker");
        c.arg("sync-inputs")
            .arg("--attachments")
            .arg(&att)
            .arg("--session-dir")
            .arg(&session);
        c
    };
    // A dry run first (-n, as rclone's and rsync's): the same rules, what would be fetched,
    // and nothing in the session dir.
    let (code, dry, err) = run(sync_inputs().arg("-n"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("7 files; would download 6 objects"), "{err}");
    assert!(
        !session.exists(),
        "a dry run wrote {:?}",
        files_under(&session)
    );
    let rules = f.ok(&mut sync_inputs());
    assert_eq!(dry, rules, "the dry run's path-mapping rules");
    let rules: serde_json::Value = serde_json::from_str(&rules).unwrap();
    let local = PathBuf::from(rules[0]["destination_path"].as_str().unwrap());
    assert_eq!(rules[0]["source_path"], proj.to_str().unwrap());
    assert_eq!(
        local,
        session.join(attache::jobs::attachments::asset_root_dir_name(
            proj.to_str().unwrap()
        ))
    );
    for rel in ["assets/a-b.txt", "assets/a/😀.txt", "scenes/shot.ma"] {
        assert_eq!(
            std::fs::read(local.join(rel)).unwrap(),
            std::fs::read(proj.join(rel)).unwrap(),
            "{rel}"
        );
    }

    // The next task's sync finds every input in place: nothing is fetched, and every file,
    // small or large, is known to the hash cache from its download, so none is read.
    let (code, _, err) = run(&mut sync_inputs());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("downloaded 0 objects (0 B), 7 already in place\n"),
        "{err}"
    );

    // The task renders two frames and touches an input outside the output dir.
    write(&local.join("renders/f0001.exr"), b"frame 1");
    write(&local.join("renders/sub/f0002.exr"), b"frame 2");
    write(&local.join("scenes/shot.ma"), b"scene edited by the task");
    let outs = f.ok(sync_outputs(
        &mut f.attache("worker"),
        "sa-1",
        &att,
        &session,
    ));
    let (out_key, paths) = published_outputs(&f, &outs);
    assert_eq!(
        paths,
        ["renders/f0001.exr", "renders/sub/f0002.exr"],
        "only new files under the output dir"
    );
    assert!(
        out_key.contains("/job-1/step-1/task-1/") && out_key.ends_with("_output"),
        "{out_key}"
    );

    // A second run of the same task (a retry) replaces the first one's outputs.
    write(&local.join("renders/f0001.exr"), b"frame 1, retried");
    std::thread::sleep(std::time::Duration::from_millis(20));
    f.ok(sync_outputs(
        &mut f.attache("worker"),
        "sa-2",
        &att,
        &session,
    ));
    // A mistyped session directory fails the task instead of publishing nothing.
    let (code, _, err) = run(sync_outputs(
        &mut f.attache("worker"),
        "sa-3",
        &att,
        &f.path("sesion"),
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("sesion") && err.contains("no such session directory"),
        "{err}"
    );
    // An empty session directory (sync-inputs never ran there): nothing to publish, said.
    std::fs::create_dir_all(f.path("empty-session")).unwrap();
    let (code, _, err) = run(sync_outputs(
        &mut f.attache("worker"),
        "sa-3",
        &att,
        &f.path("empty-session"),
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("is this the task's session directory?"),
        "{err}"
    );
    // A render written as a link to a file outside the session: refused, with what to do
    // (no flag to follow it: sync-outputs takes none).
    let link = local.join("renders/f0003.exr");
    write(&f.path("secrets.txt"), b"not an output");
    std::os::unix::fs::symlink(f.path("secrets.txt"), &link).unwrap();
    let (code, _, err) = run(sync_outputs(
        &mut f.attache("worker"),
        "sa-3",
        &att,
        &session,
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("symlink points outside the directory"),
        "{err}"
    );
    assert!(
        err.contains("write them there, not a link to them"),
        "{err}"
    );
    assert!(!err.contains("--follow-external-symlinks"), "{err}");
    std::fs::remove_file(&link).unwrap();

    // Workstation: a --root-map whose FROM is no root of the job's outputs (a typo) would
    // send them into the project: refused, nothing written.
    let elsewhere = f.path("elsewhere");
    let typo = format!("{}/rendrs={}", proj.display(), elsewhere.display());
    let (code, _, err) = run(&mut f.download_outputs(&["--root-map", &typo]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--root-map: not a root path of this job's outputs"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{:?}", proj.to_str().unwrap())),
        "{err}"
    );
    assert!(files_under(&proj.join("renders")).is_empty());
    assert!(!elsewhere.exists());

    // Workstation: download outputs to where they belong; a dry run first says what would
    // come and touches nothing.
    let (code, _, err) = run(&mut f.download_outputs(&["--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("2 files from 1 manifest; would download 2 objects"),
        "{err}"
    );
    let renders = files_under(&proj.join("renders"));
    assert!(renders.is_empty(), "a dry run wrote {renders:?}");
    // Only some of them: the frames of one directory.
    let (code, _, err) = run(&mut f.download_outputs(&["--include", "renders/sub/**"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("1 file from 1 manifest (1 left out by the filters)"),
        "{err}"
    );
    assert_eq!(
        files_under(&proj.join("renders")),
        [proj.join("renders/sub/f0002.exr")]
    );
    // By the manifests' sizes: frame 1 (16 bytes), not frame 2 (7).
    let (code, _, err) = run(&mut f.download_outputs(&["--dry-run", "--min-size", "8B"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("1 file from 1 manifest (1 left out by the filters); would download 1 object"),
        "{err}"
    );
    f.ok(&mut f.download_outputs(&[]));
    assert_eq!(
        std::fs::read(proj.join("renders/f0001.exr")).unwrap(),
        b"frame 1, retried"
    );
    assert_eq!(
        std::fs::read(proj.join("renders/sub/f0002.exr")).unwrap(),
        b"frame 2"
    );
    assert_eq!(
        std::fs::read(proj.join("scenes/shot.ma")).unwrap(),
        b"scene v1",
        "inputs are not outputs"
    );

    // An artist paints over a frame; downloading the outputs again keeps the edit and puts
    // the job's frame beside it, unless told to replace it.
    write(&proj.join("renders/f0001.exr"), b"paint-over");
    let (code, _, err) = run(&mut f.download_outputs(&[]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("1 copy beside files with other content"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(proj.join("renders/f0001.exr")).unwrap(),
        b"paint-over"
    );
    assert_eq!(
        std::fs::read(proj.join("renders/f0001 (1).exr")).unwrap(),
        b"frame 1, retried"
    );
    f.ok(&mut f.download_outputs(&["--conflict", "overwrite"]));
    assert_eq!(
        std::fs::read(proj.join("renders/f0001.exr")).unwrap(),
        b"frame 1, retried"
    );
}

#[test]
fn a_second_submit_of_an_unchanged_tree_uploads_nothing_and_publishes_one_manifest() {
    let f = Farm::new();
    let proj = f.path("proj");
    for i in 0..40 {
        write(
            &proj.join(format!("d{}/f{i}", i % 4)),
            format!("file {i}").as_bytes(),
        );
    }
    wait_out_racy_window();
    f.ok(f.attache("ws").arg("submit").args(IDS).arg(&proj));
    let before = manifest_keys(&f.s3).len();
    f.s3.stats.reset();
    f.ok(f.attache("ws").arg("submit").args(IDS).arg(&proj));
    assert_eq!(
        f.s3.stats.requests_matching(|r| r.path.contains("/Data/")),
        0,
        "{:?}",
        f.s3.stats.log()
    );
    assert_eq!(
        f.s3.stats.requests(),
        1,
        "one request: the new manifest ({:?})",
        f.s3.stats.log()
    );
    assert_eq!(manifest_keys(&f.s3).len(), before + 1);
}

#[test]
fn a_failed_submit_publishes_no_manifest() {
    let f = Farm::new();
    let proj = f.path("proj");
    for i in 0..10 {
        write(&proj.join(format!("f{i}")), format!("file {i}").as_bytes());
    }
    f.s3.faults
        .only_for(|m, key| m.as_str() == "PUT" && key.contains("/Data/"));
    f.s3.faults.internal_error_next(1_000_000);
    let (code, _, err) = run(f
        .attache("ws")
        .arg("submit")
        .args(IDS)
        .arg(&proj)
        .env("ATTACHE_S3__RETRY_ATTEMPTS", "0"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("PUT") && err.contains("/Data/"), "{err}");
    assert!(
        manifest_keys(&f.s3).is_empty(),
        "a manifest was published without its data"
    );
}

#[test]
fn a_submit_whose_second_manifest_fails_takes_the_first_back() {
    let f = Farm::new();
    let (a, b) = (f.path("a"), f.path("b"));
    write(&a.join("scene.ma"), b"scene");
    write(&b.join("tex.png"), b"texture");
    // Two roots (two LOCAL locations): two manifests. The first PUT of one goes through.
    let manifest_puts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = manifest_puts.clone();
    f.s3.faults.only_for(move |m, key| {
        m.as_str() == "PUT"
            && key.contains("/Manifests/")
            && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1
    });
    f.s3.faults.internal_error_next(1_000_000);
    let (code, _, err) = run(f
        .attache("ws")
        .arg("submit")
        .args(IDS)
        .arg("--location")
        .arg(format!("A={}", a.display()))
        .arg("--location")
        .arg(format!("B={}", b.display()))
        .arg(&a)
        .arg(&b)
        .env("ATTACHE_S3__RETRY_ATTEMPTS", "0"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/Manifests/"), "{err}");
    assert!(manifest_puts.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    assert_eq!(
        manifest_keys(&f.s3),
        Vec::<String>::new(),
        "half a submit stayed published"
    );
}

#[test]
fn windows_roots_sync_on_linux_with_mapping_rules() {
    let f = Farm::new();
    // A manifest as a Windows workstation would publish it.
    let files = [
        ("scene\\ignored", ""),
        ("scenes/shot.ma", "win scene"),
        ("tex/wood.png", "png"),
    ];
    let entries: Vec<attache::manifest::ManifestEntry> = files[1..]
        .iter()
        .map(|(p, c)| attache::manifest::ManifestEntry {
            path: attache::manifest::ManifestPath::from_utf8(p),
            hash: ContentHash::of(c.as_bytes()),
            size: c.len() as u64,
            mtime_us: 1_700_000_000_000_000,
        })
        .collect();
    for (_, c) in &files[1..] {
        f.s3.write_object(
            &format!(
                "DeadlineCloud/Data/{}.xxh128",
                ContentHash::of(c.as_bytes())
            ),
            c.as_bytes(),
        );
    }
    let bytes = attache::manifest::Manifest::new(entries).encode().unwrap();
    let root = "C:\\Projects\\Shot 010";
    let rel = attache::store::layout::input_manifest_path(
        "farm-1",
        "queue-1",
        &attache::store::layout::new_guid(),
        root,
    );
    f.s3.write_object(&format!("DeadlineCloud/Manifests/{rel}"), &bytes);
    // A Windows workstation writes a nested output directory with its own separator.
    let att = serde_json::json!({"manifests": [{"rootPath": root, "rootPathFormat": "windows",
        "inputManifestPath": rel, "inputManifestHash": ContentHash::of(&bytes).to_hex(),
        "outputRelativeDirectories": ["renders\\beauty"]}], "fileSystem": "COPIED"});
    let att_path = f.path("att.json");
    std::fs::write(&att_path, att.to_string()).unwrap();
    let session = f.path("session");
    let rules = f.ok(f
        .attache("w")
        .arg("sync-inputs")
        .arg("--attachments")
        .arg(&att_path)
        .arg("--session-dir")
        .arg(&session));
    let rules: serde_json::Value = serde_json::from_str(&rules).unwrap();
    assert_eq!(rules[0]["source_path_format"], "windows");
    assert_eq!(rules[0]["source_path"], root);
    let local = PathBuf::from(rules[0]["destination_path"].as_str().unwrap());
    assert_eq!(
        local,
        session.join(attache::jobs::attachments::asset_root_dir_name(root))
    );
    assert_eq!(
        std::fs::read(local.join("scenes/shot.ma")).unwrap(),
        b"win scene"
    );
    assert_eq!(std::fs::read(local.join("tex/wood.png")).unwrap(), b"png");

    // The Linux worker finds the frames under renders/beauty.
    write(&local.join("renders/beauty/beauty.0001.exr"), b"frame 1");
    let outs = f.ok(sync_outputs(
        &mut f.attache("w"),
        "sa-1",
        &att_path,
        &session,
    ));
    let (_, paths) = published_outputs(&f, &outs);
    assert_eq!(paths, ["renders/beauty/beauty.0001.exr"]);

    // A Linux desk has no C:\: the outputs are refused without a map, not written under the
    // current directory; a map names the root in any case and with either slash.
    let cwd = f.path("desk");
    std::fs::create_dir_all(&cwd).unwrap();
    let (code, _, err) = run(f.download_outputs(&[]).current_dir(&cwd));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not an absolute path on this machine"),
        "{err}"
    );
    assert!(
        err.contains("--root-map 'C:\\Projects\\Shot 010=/local/dir'"),
        "{err}"
    );
    assert!(files_under(&cwd).is_empty());
    let dest = f.path("shot010");
    let map = format!("c:/projects/SHOT 010/={}", dest.display());
    f.ok(f.download_outputs(&["--root-map", &map]).current_dir(&cwd));
    assert_eq!(
        std::fs::read(dest.join("renders/beauty/beauty.0001.exr")).unwrap(),
        b"frame 1"
    );
}

/// Publishes `manifest_text` as a job's only input manifest and returns the attachments file.
fn job_with_manifest(f: &Farm, manifest_text: &[u8], hash_ok: bool) -> PathBuf {
    let rel = "farm-1/queue-1/Inputs/00000000000040008000000000000000/bad_input";
    f.s3.write_object(&format!("DeadlineCloud/Manifests/{rel}"), manifest_text);
    let hash = if hash_ok {
        ContentHash::of(manifest_text).to_hex()
    } else {
        "0".repeat(32)
    };
    let att = serde_json::json!({"manifests": [{"rootPath": "/proj", "rootPathFormat": "posix",
        "inputManifestPath": rel, "inputManifestHash": hash}], "fileSystem": "COPIED"});
    let p = f.path("att.json");
    std::fs::write(&p, att.to_string()).unwrap();
    p
}

fn entry(path: &str, content: &str) -> String {
    format!(
        r#"{{"hash":"{}","mtime":1700000000000000,"path":"{path}","size":{}}}"#,
        ContentHash::of(content.as_bytes()),
        content.len()
    )
}

#[test]
fn malicious_manifests_touch_nothing_outside_the_session_dir() {
    let f = Farm::new();
    f.s3.write_object(
        &format!("DeadlineCloud/Data/{}.xxh128", ContentHash::of(b"evil")),
        b"evil",
    );
    let outside = f.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let doc = |entries: &[String]| {
        format!(
            r#"{{"hashAlg":"xxh128","manifestVersion":"2023-03-03","paths":[{}],"totalSize":4}}"#,
            entries.join(",")
        )
    };
    let cases: Vec<(String, bool, &str)> = vec![
        (
            doc(&[entry("../../outside/pwned", "evil")]),
            true,
            "'..' segment",
        ),
        (
            doc(&[entry(&format!("{}/pwned", outside.display()), "evil")]),
            true,
            "absolute",
        ),
        ("{not json".to_string(), true, "not valid JSON"),
        (
            doc(&[entry("ok", "evil")]).replace("2023-03-03", "2099-01-01"),
            true,
            "unsupported manifest version",
        ),
        (doc(&[entry("ok", "evil")]), false, "manifest hash is"),
    ];
    for (text, hash_ok, want) in cases {
        let att = job_with_manifest(&f, text.as_bytes(), hash_ok);
        let session = f.path("session");
        let (code, _, err) = run(f
            .attache("w")
            .arg("sync-inputs")
            .arg("--attachments")
            .arg(&att)
            .arg("--session-dir")
            .arg(&session));
        assert_eq!(code, 1, "{want}: {err}");
        assert!(err.contains(want), "{want}: {err}");
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{want}: wrote outside"
        );
    }

    // A symlink planted in the session dir where the manifest has a directory.
    let att = job_with_manifest(&f, doc(&[entry("sub/pwned", "evil")]).as_bytes(), true);
    let session = f.path("session2");
    let local = session.join(attache::jobs::attachments::asset_root_dir_name("/proj"));
    std::fs::create_dir_all(&local).unwrap();
    std::os::unix::fs::symlink(&outside, local.join("sub")).unwrap();
    let (code, _, err) = run(f
        .attache("w")
        .arg("sync-inputs")
        .arg("--attachments")
        .arg(&att)
        .arg("--session-dir")
        .arg(&session));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is a symlink"), "{err}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote through the planted link"
    );

    // Duplicate paths: the later entry wins, one file.
    let text = doc(&[entry("dup", "evil"), entry("dup", "evil")]);
    let att = job_with_manifest(&f, text.as_bytes(), true);
    let session = f.path("session3");
    f.ok(f
        .attache("w")
        .arg("sync-inputs")
        .arg("--attachments")
        .arg(&att)
        .arg("--session-dir")
        .arg(&session));
    let local = session.join(attache::jobs::attachments::asset_root_dir_name("/proj"));
    assert_eq!(std::fs::read(local.join("dup")).unwrap(), b"evil");
}

/// An input manifest is decoded as it streams in. One of 5,000 entries (half a MiB, many
/// chunks) whose read is cut short is read again whole; one delivered with a flipped byte is
/// refused as damaged, and nothing of it is placed.
#[test]
fn an_input_manifest_cut_short_is_read_again_and_a_damaged_one_is_refused() {
    let f = Farm::new();
    f.s3.write_object(
        &format!("DeadlineCloud/Data/{}.xxh128", ContentHash::of(b"frame")),
        b"frame",
    );
    let entries: Vec<String> = (0..5_000)
        .map(|i| entry(&format!("shot/f{i:05}.exr"), "frame"))
        .collect();
    let text = format!(
        r#"{{"hashAlg":"xxh128","manifestVersion":"2023-03-03","paths":[{}],"totalSize":25000}}"#,
        entries.join(",")
    );
    let att = job_with_manifest(&f, text.as_bytes(), true);
    let local =
        |session: &Path| session.join(attache::jobs::attachments::asset_root_dir_name("/proj"));
    let sync = |session: &Path| {
        run(f
            .attache("w")
            .arg("sync-inputs")
            .arg("--attachments")
            .arg(&att)
            .arg("--session-dir")
            .arg(session))
    };
    f.s3.faults
        .only_for(|m, k| m.as_str() == "GET" && k.contains("/Manifests/"));

    f.s3.faults.cut_get_body_next(1);
    let session = f.path("session");
    let (code, _, err) = sync(&session);
    assert_eq!(code, 0, "{err}");
    let shot = local(&session).join("shot");
    assert_eq!(std::fs::read_dir(&shot).unwrap().count(), 5_000);
    assert_eq!(std::fs::read(shot.join("f04999.exr")).unwrap(), b"frame");
    let manifest_gets =
        f.s3.stats
            .requests_matching(|r| r.is_get() && r.key.contains("/Manifests/"));
    assert_eq!(manifest_gets, 2, "the cut read and the one after it");

    f.s3.faults.corrupt_get_body_next(1);
    let session = f.path("session2");
    let (code, _, err) = sync(&session);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the manifest was changed or damaged"), "{err}");
    assert!(
        !local(&session).join("shot").exists(),
        "placed files of a damaged manifest"
    );
}

/// An output directory that also holds inputs: the inputs as sync-inputs placed them are not
/// outputs; one the task rewrote, one it only touched and one it added are.
#[test]
fn inputs_left_as_placed_and_excluded_files_are_not_outputs_and_rewritten_ones_are() {
    let f = Farm::new();
    for c in ["a", "b", "c"] {
        f.s3.write_object(
            &format!(
                "DeadlineCloud/Data/{}.xxh128",
                ContentHash::of(c.as_bytes())
            ),
            c.as_bytes(),
        );
    }
    let entries = [
        entry("renders/a.exr", "a"),
        entry("renders/b.exr", "b"),
        entry("renders/zz/c.exr", "c"),
        entry("tex/a.png", "a"),
    ];
    let text = format!(
        r#"{{"hashAlg":"xxh128","manifestVersion":"2023-03-03","paths":[{}],"totalSize":4}}"#,
        entries.join(",")
    );
    let rel = "farm-1/queue-1/Inputs/00000000000040008000000000000000/in_input";
    f.s3.write_object(&format!("DeadlineCloud/Manifests/{rel}"), text.as_bytes());
    let att = serde_json::json!({"manifests": [{"rootPath": "/proj", "rootPathFormat": "posix",
        "inputManifestPath": rel, "inputManifestHash": ContentHash::of(text.as_bytes()).to_hex(),
        "outputRelativeDirectories": ["renders"]}], "fileSystem": "COPIED"});
    let att_path = f.path("att.json");
    std::fs::write(&att_path, att.to_string()).unwrap();
    let session = f.path("session");
    let with_session = |c: &mut Command| {
        c.arg("--attachments")
            .arg(&att_path)
            .arg("--session-dir")
            .arg(&session);
    };
    let mut sync_inputs = f.attache("w");
    sync_inputs.arg("sync-inputs");
    with_session(&mut sync_inputs);
    f.ok(&mut sync_inputs);

    let local = session.join(attache::jobs::attachments::asset_root_dir_name("/proj"));
    write(&local.join("renders/b.exr"), b"b, rendered again");
    let c = local.join("renders/zz/c.exr");
    let later = filetime::FileTime::from_unix_time(1_800_000_000, 0);
    filetime::set_file_mtime(&c, later).unwrap();
    write(&local.join("renders/new.exr"), b"new frame");
    // Left out by the worker's config and by the command's flags.
    write(&local.join("renders/new.exr.tmp"), b"a frame being written");
    write(&local.join("renders/scratch/x.exr"), b"scratch");
    write(&local.join("renders/zz/.DS_Store"), b"finder");
    let sync_outputs = |task: &str, sa: &str, flags: &[&str]| {
        let mut c = f.task_outputs("w", task, sa);
        c.env("ATTACHE_HASH__EXCLUDE", ".DS_Store")
            .args(["--start-time", "2026-12-05T10:00:00.000000Z"])
            .args(["--exclude", "*.tmp", "--exclude", "scratch/"])
            .args(flags);
        with_session(&mut c);
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 0, "{err}");
        (out, err)
    };
    // A dry run finds the same outputs, says what it would send, and sends nothing.
    let stored = f.s3.object_keys();
    let (would, err) = sync_outputs("task-1", "sa-1", &["--dry-run"]);
    assert_eq!(f.s3.object_keys(), stored, "a dry run stores nothing");
    assert!(
        err.contains("/proj: 3 new or changed outputs (")
            && err.contains("would upload 2 objects")
            && err.contains("1 already in the store")
            && err.contains("; would publish farm-1/queue-1/job-1/"),
        "{err}"
    );
    let (out, err) = sync_outputs("task-1", "sa-1", &[]);
    assert!(err.contains("; published farm-1/queue-1/job-1/"), "{err}");
    assert_eq!(
        out, would,
        "the dry run named the manifest the real run published"
    );
    let (_, paths) = published_outputs(&f, &out);
    assert_eq!(
        paths,
        ["renders/b.exr", "renders/new.exr", "renders/zz/c.exr"],
        "a.exr is as placed; tex/ is not an output directory; the rest is excluded"
    );

    // The session's next task: only what it wrote or changed is its output, not the frames
    // the task before it published (Deadline runs a step's tasks one after another in one
    // session); --include takes only the frames of one directory.
    write(&local.join("renders/zz/d.exr"), b"task 2, frame d");
    write(&local.join("renders/e.exr"), b"task 2, frame e");
    let (out, _) = sync_outputs("task-2", "sa-2", &["--include", "renders/zz/*.exr"]);
    let (_, paths) = published_outputs(&f, &out);
    assert_eq!(
        paths,
        ["renders/zz/d.exr"],
        "--include takes only what it matches, and c.exr went with the task before"
    );
    write(
        &local.join("renders/new.exr"),
        b"new frame, rendered again by task 3",
    );
    // By size: the frame rendered again (35 bytes), not e.exr (15).
    let (_, err) = sync_outputs("task-3", "sa-3", &["--dry-run", "--min-size", "20B"]);
    assert!(err.contains("/proj: 1 new or changed output ("), "{err}");
    // The output directory tagged with a marker file: nothing of it is an output.
    write(&local.join("renders/.nojobattach"), b"");
    let tagged = ["--dry-run", "--exclude-if-present", ".nojobattach"];
    let (_, err) = sync_outputs("task-3", "sa-3", &tagged);
    assert!(err.contains("/proj: no new or changed outputs"), "{err}");
    std::fs::remove_file(local.join("renders/.nojobattach")).unwrap();
    let (out, _) = sync_outputs("task-3", "sa-3", &[]);
    let (_, paths) = published_outputs(&f, &out);
    assert_eq!(
        paths,
        ["renders/e.exr", "renders/new.exr"],
        "what no task published yet, and a frame rewritten since it was"
    );
    let (out, err) = sync_outputs("task-4", "sa-4", &[]);
    assert_eq!(out.trim(), "[]", "{err}");
    // The first task run again in the session (a retry): its latest run is what
    // download-outputs takes, so it publishes all of its own again (new.exr is task 3's now).
    let (out, _) = sync_outputs("task-1", "sa-5", &[]);
    let (_, paths) = published_outputs(&f, &out);
    assert_eq!(paths, ["renders/b.exr", "renders/zz/c.exr"]);
}

/// `download-outputs --watch` downloads the outputs tasks publish while it runs: a new
/// task's, and a retried task's, which replace the frames the watch placed (not written
/// beside them, as the default --conflict does for a file someone else put there); a look at
/// the store that fails is tried again; a --root-map of a root an earlier round downloaded
/// holds for the rounds after it; with --until-idle it ends by itself once nothing new
/// comes, exit 0.
#[test]
fn download_outputs_watch_takes_outputs_as_tasks_publish_them() {
    let f = Farm::new();
    let (proj, other, home) = (f.path("proj"), f.path("other"), f.path("home"));
    write(&proj.join("scene.ma"), b"scene");
    // Two roots: the project (a storage-profile location) and a directory outside it.
    let att = f.path("attachments.json");
    f.ok(f
        .attache("ws")
        .arg("submit")
        .args(IDS)
        .arg(proj.join("scene.ma"))
        .arg("--output-dir")
        .arg(proj.join("renders"))
        .arg("--output-dir")
        .arg(other.join("comp"))
        .arg("--location")
        .arg(format!("Proj={}", proj.display()))
        .arg("-o")
        .arg(&att));
    let session = f.path("session");
    f.ok(&mut f.sync_inputs(&att, &session));
    let local = local_root(&session, &proj);
    let local_other = local_root(&session, &other.join("comp"));
    let publish = |task: &str, sa: &str| {
        f.ok(f
            .task_outputs("worker", task, sa)
            .arg("--attachments")
            .arg(&att)
            .arg("--session-dir")
            .arg(&session));
    };
    write(&local.join("renders/f1.exr"), b"frame 1");
    publish("task-1", "sa-1");
    // An artist's own file in the way of a later frame: kept, the job's written beside it.
    write(&home.join("renders/f3.exr"), b"the artist's f3");

    let root_map = format!("{}={}", proj.display(), home.display());
    let mut watching = f
        .download_outputs(&["--watch", "1s", "--until-idle", "10s"])
        .args(["--root-map", &root_map])
        .env("ATTACHE_S3__RETRY_ATTEMPTS", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let wait_for = |watching: &mut std::process::Child, path: &Path, content: &[u8]| {
        while std::fs::read(path).ok().as_deref() != Some(content) {
            if let Some(status) = watching.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut watching.stderr.take().unwrap(), &mut err)
                    .unwrap();
                panic!("the watch ended ({status}) before {path:?} came: {err}");
            }
            assert!(std::time::Instant::now() < deadline, "{path:?} never came");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for(&mut watching, &home.join("renders/f1.exr"), b"frame 1");
    // The store out of reach for a while (the watch alone lists it): looked at again later.
    f.s3.faults
        .only_for(|m, key| m == http::Method::GET && key.is_empty());
    f.s3.faults.internal_error_next(3);
    std::thread::sleep(std::time::Duration::from_secs(3));
    f.s3.faults.internal_error_next(0);
    f.s3.faults.for_all();
    // A second task, and the first one retried with another frame 1, published while the
    // store fails the frames' downloads for a while: those rounds fail, and the next one
    // still knows frame 1 as the watch's own.
    f.s3.faults.fail_data_gets_after(0);
    write(&local.join("renders/f2.exr"), b"frame 2");
    write(&local.join("renders/f3.exr"), b"frame 3");
    publish("task-2", "sa-2");
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&local.join("renders/f1.exr"), b"frame 1, retried");
    publish("task-1", "sa-3");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        std::fs::read(home.join("renders/f1.exr")).unwrap(),
        b"frame 1"
    );
    f.s3.faults.internal_error_next(0);
    f.s3.faults.for_all();
    wait_for(
        &mut watching,
        &home.join("renders/f1.exr"),
        b"frame 1, retried",
    );
    // A task that writes to the other root alone: the map of the first still stands.
    write(&local_other.join("c1.exr"), b"comp 1");
    publish("task-3", "sa-4");
    wait_for(&mut watching, &other.join("comp/c1.exr"), b"comp 1");

    let out = watching.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let read = |p: &str| std::fs::read(home.join(p)).unwrap();
    assert_eq!(read("renders/f2.exr"), b"frame 2");
    assert_eq!(read("renders/f3.exr"), b"the artist's f3");
    assert_eq!(read("renders/f3 (1).exr"), b"frame 3");
    assert!(
        !home.join("renders/f1 (1).exr").exists(),
        "the retried frame replaced the watch's own"
    );
    assert!(!proj.join("renders").exists(), "mapped away");
    assert!(err.contains("3 tasks with outputs"), "{err}");
    assert!(
        err.contains("listing the store ") && err.contains(": no new outputs for 10s"),
        "{err}"
    );
    assert!(
        err.contains("watching: this look at the store failed; trying again in 1s: "),
        "{err}"
    );
    // The rounds' downloads summed into one line per root.
    for total in [
        format!("-> {}: 4 files from 3 manifests;", home.display()),
        format!(
            "-> {}: 1 file from 1 manifest;",
            other.join("comp").display()
        ),
    ] {
        assert_eq!(
            err.lines().filter(|l| l.contains(&total)).count(),
            1,
            "{total}: {err}"
        );
    }

    // Bad usage: the interval too short, --until-idle alone, a watch of a dry run.
    for flags in [
        &["--watch", "10ms"][..],
        &["--until-idle", "1m"],
        &["--watch", "5s", "-n"],
        &["--watch", "soon"],
    ] {
        let (code, _, err) = run(&mut f.download_outputs(flags));
        assert_eq!(code, 2, "{flags:?}: {err}");
    }
}

#[test]
fn dry_run_submit_writes_nothing() {
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("a"), b"a");
    let out = f.ok(f
        .attache("ws")
        .arg("submit")
        .args(IDS)
        .arg(&proj)
        .arg("--dry-run")
        .arg("--json"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["roots"][0]["upload"]["uploaded_objects"], 1,
        "would upload one object"
    );
    assert_eq!(
        v["dry_run"], true,
        "as get's and sync-outputs' --json say: {v}"
    );
    assert!(f.s3.object_keys().is_empty(), "{:?}", f.s3.object_keys());
    // With -o: the attachments name manifests that were not published, so no file a
    // pipeline would take for real; they are printed instead.
    let att = f.path("att.json");
    let (code, out, err) = run(f
        .attache("ws")
        .arg("submit")
        .args(IDS)
        .arg(&proj)
        .arg("--dry-run")
        .arg("-o")
        .arg(&att));
    assert_eq!(code, 0, "{err}");
    assert!(!att.exists());
    assert!(
        err.contains("dry run: ") && err.contains("att.json is not written"),
        "{err}"
    );
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        printed["manifests"][0]["inputManifestPath"].is_string(),
        "{out}"
    );
}

#[test]
fn sync_outputs_refuses_output_directories_that_leave_the_root() {
    let f = Farm::new();
    // A file a hostile job would like uploaded: outside the session dir.
    write(&f.path("secrets/key.txt"), b"do not upload");
    let session = f.path("session");
    std::fs::create_dir_all(session.join(attache::jobs::attachments::asset_root_dir_name("/proj")))
        .unwrap();
    let att = serde_json::json!({"manifests": [{"rootPath": "/proj", "rootPathFormat": "posix",
        "outputRelativeDirectories": ["renders", "../../secrets"]}], "fileSystem": "COPIED"});
    let att_path = f.path("att.json");
    std::fs::write(&att_path, att.to_string()).unwrap();
    let (code, _, err) = run(sync_outputs(
        &mut f.attache("w"),
        "sa-1",
        &att_path,
        &session,
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("../../secrets") && err.contains("'..' segment"),
        "{err}"
    );
    // A Windows root's entries are read with `/` for `\\`: `..\\..` leaves the root too.
    let att = serde_json::json!({"manifests": [{"rootPath": "C:\\proj", "rootPathFormat": "windows",
        "outputRelativeDirectories": ["..\\..\\secrets"]}], "fileSystem": "COPIED"});
    std::fs::write(&att_path, att.to_string()).unwrap();
    let (code, _, err) = run(sync_outputs(
        &mut f.attache("w"),
        "sa-1",
        &att_path,
        &session,
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("'..' segment"), "{err}");
    assert!(
        f.s3.object_keys().is_empty(),
        "nothing may be uploaded: {:?}",
        f.s3.object_keys()
    );
}

/// A file given where a directory goes (a session directory, a --root-map target, a --dest, or
/// a directory below a file) is named as such before anything is fetched, not met as "File
/// exists" once it was.
#[test]
fn a_file_given_where_a_directory_goes_is_named() {
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("scene.ma"), b"scene");
    let att = f.submit(std::slice::from_ref(&proj), &[proj.join("renders")]);
    let file = f.path("afile");
    write(&file, b"not a directory");
    let refused = |c: &mut Command, what: &str| {
        let (code, _, err) = run(c);
        assert_eq!(code, 1, "{what}: {err}");
        let says = format!("{}: is a file, not a directory", file.display());
        assert!(err.contains(&says), "{what}: {err}");
    };
    refused(&mut f.sync_inputs(&att, &file), "sync-inputs");
    refused(&mut f.sync_inputs(&att, &file.join("session")), "below");
    let (code, _, err) = run(sync_outputs(&mut f.attache("w"), "sa-1", &att, &file));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("afile: not a directory (give the --session-dir"),
        "{err}"
    );
    let manifest = f.path("m.json");
    f.ok(f
        .attache("ws")
        .arg("hash")
        .arg(&proj)
        .arg("-o")
        .arg(&manifest));
    refused(
        f.attache("ws")
            .arg("get")
            .arg(&manifest)
            .arg("--dest")
            .arg(&file),
        "get",
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

/// A texture directory holding a link to a file elsewhere (a studio's HDRI library): refused
/// by default, naming the link and the directory it leaves; taken whole with the flag.
#[test]
fn submit_follows_links_out_of_an_input_directory_when_told() {
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("tex/wood.png"), b"wood");
    write(&f.path("library/sky.hdr"), b"sky");
    std::os::unix::fs::symlink(f.path("library/sky.hdr"), proj.join("tex/sky.hdr")).unwrap();
    let submit = |flag: Option<&str>| {
        let mut c = f.attache("ws");
        c.arg("submit").args(IDS).arg(proj.join("tex"));
        c.args(flag);
        c.arg("-o").arg(f.path("att.json"));
        c
    };
    let (code, _, err) = run(&mut submit(None));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("sky.hdr: symlink points outside the directory"),
        "{err}"
    );
    assert!(err.contains("give --follow-external-symlinks"), "{err}");
    f.ok(&mut submit(Some("--follow-external-symlinks")));
    let key = input_manifest_key(&f.path("att.json"));
    assert_eq!(manifest_paths(&f, &key), ["sky.hdr", "wood.png"]);
}

/// With `--json` and `-o FILE`, the file gets what the farm's next step reads (as without
/// --json) and stdout the whole report.
#[test]
fn json_and_an_output_file_each_get_their_own() {
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("scene.ma"), b"scene");
    let att = f.path("att.json");
    let out = f.ok(f
        .attache("ws")
        .arg("submit")
        .args(IDS)
        .arg(proj.join("scene.ma"))
        .args(["--json", "-o"])
        .arg(&att));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["kind"], "submit", "{out}");
    let attachments: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&att).unwrap()).unwrap();
    assert_eq!(attachments, report["attachments"]);
    let rules = f.path("rules.json");
    let out = f.ok(f
        .sync_inputs(&att, &f.path("session"))
        .args(["--json", "-o"])
        .arg(&rules));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rules).unwrap()).unwrap();
    assert!(written.is_array(), "{written}");
    assert_eq!(written, report["path_mapping_rules"]);
}

/// A session's user may plant links where the session's records go (`.attache/`), to have a
/// daemon that serves it write elsewhere, into a device, or wait on a FIFO: none is followed.
#[test]
fn links_planted_among_a_session_s_records_are_not_followed() {
    use std::os::unix::fs::OpenOptionsExt;
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("scene.ma"), b"scene");
    std::fs::create_dir_all(proj.join("renders")).unwrap();
    let att = f.submit(&[proj.join("scene.ma")], &[proj.join("renders")]);
    let session = f.path("session");
    let elsewhere = f.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(&session).unwrap();
    std::os::unix::fs::symlink(&elsewhere, session.join(".attache")).unwrap();
    let (code, _, err) = run(&mut f.sync_inputs(&att, &session));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(".attache: is a link or a file"), "{err}");
    assert!(
        files_under(&elsewhere).is_empty(),
        "{:?}",
        files_under(&elsewhere)
    );

    // The same at the asset root's own directory: the download would follow it.
    std::fs::remove_file(session.join(".attache")).unwrap();
    let local = local_root(&session, &proj);
    // (The refused sync made it before it met the link.)
    let _ = std::fs::remove_dir_all(&local);
    std::os::unix::fs::symlink(&elsewhere, &local).unwrap();
    let (code, _, err) = run(&mut f.sync_inputs(&att, &session));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}: is a link or a file where attache keeps a directory",
            local.display()
        )),
        "{err}"
    );
    assert!(
        files_under(&elsewhere).is_empty(),
        "{:?}",
        files_under(&elsewhere)
    );
    std::fs::remove_file(&local).unwrap();

    // The links removed, the sync goes on; then a FIFO at the name of the task's outputs
    // record: sync-outputs publishes, warns, and neither waits on it nor writes into it.
    f.ok(&mut f.sync_inputs(&att, &session));
    write(&local.join("renders/f1.exr"), b"frame");
    let records = session
        .join(".attache/outputs")
        .join(attache::jobs::sync_inputs::root_id(&local).to_string());
    std::fs::create_dir_all(&records).unwrap();
    let fifo = std::ffi::CString::new(records.join("task-1.manifest").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(records.join("task-1.manifest"))
        .unwrap();
    let outs = f.ok(sync_outputs(
        &mut f.attache("worker"),
        "sa-1",
        &att,
        &session,
    ));
    let (_, paths) = published_outputs(&f, &outs);
    assert_eq!(paths, ["renders/f1.exr"]);
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &reader, &mut got);
    assert!(got.is_empty(), "the record was written into the FIFO");
    // The record replaced the FIFO (renamed over its name).
    assert!(
        std::fs::symlink_metadata(records.join("task-1.manifest"))
            .unwrap()
            .is_file()
    );
}

/// Storage-profile locations from the configuration, no flags: the workstation's from the
/// environment, the worker's from its config file; a worker's flag replaces the same name.
#[test]
fn configured_storage_profile_locations_map_roots_on_both_sides() {
    let f = Farm::new();
    let proj = f.path("ws-projects");
    write(&proj.join("shot/scene.ma"), b"scene");
    let lib = f.path("ws-library");
    write(&lib.join("tex.png"), b"shared texture");
    let att = f.path("att.json");
    f.ok(f
        .attache("ws")
        .arg("submit")
        .args(IDS)
        .arg(proj.join("shot/scene.ma"))
        .arg(lib.join("tex.png"))
        .arg("-o")
        .arg(&att)
        .env(
            "ATTACHE_STORAGE_PROFILE__LOCATIONS",
            format!("Projects={}", proj.display()),
        )
        .env("ATTACHE_STORAGE_PROFILE__SHARED", &lib));
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(&att).unwrap()).unwrap();
    let manifests = a["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "the shared library is not a root: {a}");
    assert_eq!(manifests[0]["fileSystemLocationName"], "Projects");
    assert_eq!(manifests[0]["rootPath"], proj.to_str().unwrap());
    let shared_object = format!(
        "DeadlineCloud/Data/{}.xxh128",
        ContentHash::of(b"shared texture")
    );
    assert!(
        f.s3.read_object(&shared_object).is_none(),
        "shared uploaded"
    );

    // The worker's config file says where Projects is on it.
    let worker_projects = f.path("worker-projects");
    let config = f.path("worker/no-config/attache/config.toml");
    write(
        &config,
        format!(
            "[storage_profile]\nlocations = [\"Projects={}\"]\n",
            worker_projects.display()
        )
        .as_bytes(),
    );
    let session = f.path("session");
    let sync = |extra: &[String]| {
        let mut c = f.attache("worker");
        c.arg("sync-inputs")
            .arg("--attachments")
            .arg(&att)
            .arg("--session-dir")
            .arg(&session)
            .args(extra);
        f.ok(&mut c)
    };
    sync(&[]);
    assert_eq!(
        std::fs::read(worker_projects.join("shot/scene.ma")).unwrap(),
        b"scene"
    );
    let elsewhere = f.path("flag-projects");
    sync(&[
        "--location".into(),
        format!("Projects={}", elsewhere.display()),
    ]);
    assert_eq!(
        std::fs::read(elsewhere.join("shot/scene.ma")).unwrap(),
        b"scene",
        "the flag replaces the configured location of the same name"
    );

    // A flag's relative path is taken from the working directory, as an input's is, and a
    // trailing `/` changes nothing: the same root path, so the same manifest key.
    let (code, out, err) = run(f
        .attache("ws")
        .current_dir(f.path(""))
        .arg("submit")
        .args(IDS)
        .arg(proj.join("shot/scene.ma"))
        .args(["--location", "Projects=ws-projects/", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        again["manifests"][0]["fileSystemLocationName"], "Projects",
        "{again}"
    );
    assert_eq!(again["manifests"][0]["rootPath"], proj.to_str().unwrap());
    // The submission's folder is new each time; the manifest's name is its root's hash.
    let name = |m: &serde_json::Value| {
        let path = m["inputManifestPath"].as_str().unwrap().to_string();
        path.rsplit('/').next().unwrap().to_string()
    };
    assert_eq!(name(&again["manifests"][0]), name(&manifests[0]));
}

/// A task of another step, run in `session` on a worker: sync-outputs as session action `sa`
/// (`task` `None`: a chunk of a chunked step's tasks).
fn step_task_outputs(
    f: &Farm,
    step: &str,
    task: Option<&str>,
    sa: &str,
    att: &Path,
    session: &Path,
) -> String {
    let mut c = f.attache("worker");
    c.arg("sync-outputs")
        .args(IDS)
        .args(["--job-id", "job-1", "--step-id", step])
        .args(task.map(|t| ["--task-id", t]).into_iter().flatten())
        .args(["--session-action-id", sa, "--attachments"])
        .arg(att)
        .arg("--session-dir")
        .arg(session);
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    // Run by hand (no DEADLINE_SESSIONACTION_ID), a missing task id may be a forgotten flag.
    assert_eq!(
        err.contains(
            "no --task-id (and no DEADLINE_TASK_ID): publishing the outputs at the step level"
        ),
        task.is_none(),
        "{err}"
    );
    out
}

/// A step that depends on another (a comp on its renders) gets the other step's outputs with
/// its inputs: the latest run of each of its tasks (and every run of a chunked step's), in the
/// same local root, and its own sync-outputs does not send them again as its outputs.
#[test]
fn a_step_s_dependencies_outputs_are_synced_with_its_inputs_and_are_not_its_outputs() {
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("scenes/shot.ma"), b"scene");
    write(
        &proj.join("renders/old.exr"),
        b"an input where the outputs go",
    );
    let att = f.submit(
        &[proj.join("scenes/shot.ma"), proj.join("renders/old.exr")],
        &[proj.join("renders")],
    );
    let sync_inputs = |session: &Path| f.sync_inputs(&att, session);
    let local_in = |session: &Path| local_root(session, &proj);

    // Step "render": two tasks, the first one run twice (a retry replaces its outputs); the
    // second renders over the input old.exr.
    for (task, sa, file, data) in [
        (
            "task-1",
            "sa-1",
            "renders/f1.exr",
            &b"frame 1, failed run"[..],
        ),
        ("task-2", "sa-2", "renders/f2.exr", b"frame 2"),
        ("task-1", "sa-3", "renders/f1.exr", b"frame 1"),
    ] {
        let session = f.path(&format!("render-{sa}"));
        f.ok(&mut sync_inputs(&session));
        write(&local_in(&session).join(file), data);
        if task == "task-2" {
            write(&local_in(&session).join("renders/old.exr"), b"re-rendered");
        }
        step_task_outputs(&f, "render", Some(task), sa, &att, &session);
    }
    // A session action that ran a chunk of the step's tasks (no task id) publishes without a
    // task folder, `…/job-1/render/{startTime}_{sa}/…_output`, as the worker does.
    let chunk = f.path("render-chunk");
    f.ok(&mut sync_inputs(&chunk));
    write(&local_in(&chunk).join("renders/f3.exr"), b"frame 3");
    let printed = step_task_outputs(&f, "render", None, "sa-5", &att, &chunk);
    let (chunk_key, _) = published_outputs(&f, &printed);
    let chunk_dir = chunk_key.rsplit_once('/').unwrap().0;
    assert!(
        chunk_dir.starts_with("DeadlineCloud/Manifests/farm-1/queue-1/job-1/render/")
            && chunk_dir.ends_with("Z_sa-5")
            && chunk_dir.matches('/').count() == 6,
        "{chunk_key}"
    );

    // Step "comp" depends on "render". A dry run says what would come and writes nothing.
    let comp = f.path("comp-session");
    let deps = ["--step-dependency", "render", "--job-id", "job-1"];
    let (code, dry_rules, err) = run(sync_inputs(&comp).args(IDS).args(deps).arg("--dry-run"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("step render: outputs of 3 tasks (3 manifests)"),
        "{err}"
    );
    assert!(
        err.contains(
            "5 files (with 3 output manifests of steps depended on); would download 5 objects"
        ),
        "{err}"
    );
    assert!(!comp.exists(), "a dry run wrote {:?}", files_under(&comp));
    f.s3.stats.reset();
    let (code, rules, err) = run(sync_inputs(&comp).args(IDS).args(deps));
    assert_eq!(code, 0, "{err}");
    // Each manifest is one GET: its root comes in its metadata, no HEAD is needed.
    let manifest_reqs = |method: &str| {
        f.s3.stats
            .requests_matching(|r| r.method == method && r.key.contains("/Manifests/"))
    };
    assert_eq!(
        (manifest_reqs("GET"), manifest_reqs("HEAD")),
        (4, 0),
        "the input manifest and three output manifests"
    );
    assert_eq!(rules, dry_rules);
    let rules: serde_json::Value = serde_json::from_str(&rules).unwrap();
    assert_eq!(rules.as_array().unwrap().len(), 1, "one root: {rules}");
    let local = local_in(&comp);
    assert_eq!(rules[0]["destination_path"], local.to_str().unwrap());
    for (rel, want) in [
        ("scenes/shot.ma", &b"scene"[..]),
        ("renders/f1.exr", b"frame 1"),
        ("renders/f2.exr", b"frame 2"),
        ("renders/old.exr", b"re-rendered"),
        ("renders/f3.exr", b"frame 3"),
    ] {
        assert_eq!(std::fs::read(local.join(rel)).unwrap(), want, "{rel}");
    }

    // The comp writes its own output: only that is published for it. Run as a Deadline task
    // script runs it: the ids come from the environment the worker sets.
    write(&local.join("renders/comp.exr"), b"comp");
    let printed = f.ok(f
        .attache("worker")
        .args(["sync-outputs", "--attachments"])
        .arg(&att)
        .arg("--session-dir")
        .arg(&comp)
        .envs([
            ("DEADLINE_FARM_ID", "farm-1"),
            ("DEADLINE_QUEUE_ID", "queue-1"),
            ("DEADLINE_JOB_ID", "job-1"),
            ("DEADLINE_STEP_ID", "comp"),
            ("DEADLINE_TASK_ID", "task-1"),
            ("DEADLINE_SESSIONACTION_ID", "sa-4"),
        ]));
    let (comp_key, _) = published_outputs(&f, &printed);
    assert!(
        comp_key.contains("/farm-1/queue-1/job-1/comp/task-1/") && comp_key.contains("Z_sa-4/"),
        "{comp_key}"
    );
    let comp_outputs: serde_json::Value = serde_json::from_str(&f.ok(&mut f.download_outputs(&[
        "--step-id",
        "comp",
        "--dry-run",
        "--json",
    ])))
    .unwrap();
    assert_eq!(
        comp_outputs["roots"][0]["report"]["files"], 1,
        "the comp step published only its own output: {comp_outputs}"
    );

    // Usage: the job must be named; a step with no outputs is said, not an error.
    let (code, _, err) = run(sync_inputs(&comp).args(["--step-dependency", "render"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--farm-id"), "{err}");
    let (code, _, err) = run(sync_inputs(&comp).args(IDS).args([
        "--step-dependency",
        "lighting",
        "--job-id",
        "job-1",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("step lighting of job job-1: no output manifests in the store"),
        "{err}"
    );
    assert_eq!(err.matches("lighting").count(), 1, "said once: {err}");
}

/// With the content cache on, a worker keeps the outputs it uploads: a task of a dependent
/// step it runs next takes them from there, not from the store, and the session's next
/// sync-outputs still knows them without reading them.
#[test]
fn a_worker_keeps_its_outputs_for_the_dependent_step_it_runs_next() {
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("scenes/shot.ma"), b"scene");
    std::fs::create_dir_all(proj.join("renders")).unwrap();
    let att = f.submit(&[proj.join("scenes/shot.ma")], &[proj.join("renders")]);
    let worker = |session: &Path, args: &[&str]| {
        let mut c = f.attache("worker");
        c.env("ATTACHE_CACHE__CONTENT_SIZE", "1GiB")
            .args(args)
            .arg("--attachments")
            .arg(&att)
            .arg("--session-dir")
            .arg(session);
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 0, "{err}");
        (out, err)
    };
    let render = f.path("render-session");
    worker(&render, &["sync-inputs"]);
    let local = local_root(&render, &proj);
    write(&local.join("renders/f1.exr"), &vec![1u8; 200 << 10]);
    write(&local.join("renders/f2.exr"), b"frame 2");
    let outputs = |sa: &'static str| {
        vec![
            "sync-outputs",
            "--farm-id",
            "farm-1",
            "--queue-id",
            "queue-1",
            "--job-id",
            "job-1",
            "--step-id",
            "render",
            "--task-id",
            "task-1",
            "--session-action-id",
            sa,
        ]
    };
    let (_, err) = worker(&render, &outputs("sa-1"));
    assert!(err.contains("; 2 kept in the content cache"), "{err}");
    // The task is run again in the same session: its outputs are known, not read.
    let mut again = outputs("sa-2");
    again.push("--json");
    let (out, _) = worker(&render, &again);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hash = &report["roots"][0]["hash"];
    assert_eq!(
        (hash["cached_files"].as_u64(), hash["hashed_files"].as_u64()),
        (Some(2), Some(0)),
        "{report}"
    );

    // The comp, on the same worker: the inputs and both frames from the content cache.
    let comp = f.path("comp-session");
    f.s3.stats.reset();
    let (_, err) = worker(
        &comp,
        &[
            "sync-inputs",
            "--step-dependency",
            "render",
            "--farm-id",
            "farm-1",
            "--queue-id",
            "queue-1",
            "--job-id",
            "job-1",
        ],
    );
    assert!(
        err.contains("downloaded 0 objects (0 B), 3 from the content cache"),
        "{err}"
    );
    assert_eq!(
        f.s3.stats
            .requests_matching(|r| r.is_get() && r.key.contains("/Data/")),
        0,
        "no data fetched"
    );
    let comp_local = local_root(&comp, &proj);
    assert_eq!(
        std::fs::read(comp_local.join("renders/f2.exr")).unwrap(),
        b"frame 2"
    );
}

/// A queue whose jobs run as another OS user: the worker (here with a umask that keeps
/// everything private) gives every file and directory it places, and a root the job only
/// writes outputs to, to that user's group, with group read and write.
#[test]
fn a_job_run_as_another_user_finds_its_inputs_in_its_group() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("scenes/shot.ma"), b"scene");
    write(&proj.join("tex/a/wood.png"), b"texture");
    write(&proj.join("tex/b/wood copy.png"), b"texture"); // placed as a local copy
    write(&proj.join("tex/big.exr"), &vec![7u8; 9 << 20]); // fetched in ranged parts
    let att = f.submit(std::slice::from_ref(&proj), &[]);
    // A second root the job only writes outputs to.
    let mut a: serde_json::Value = serde_json::from_slice(&std::fs::read(&att).unwrap()).unwrap();
    a["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
        {"rootPath": "/comp-out", "rootPathFormat": "posix", "outputRelativeDirectories": ["."]}));
    std::fs::write(&att, a.to_string()).unwrap();
    // A group other than ours where we may give files away (root may use any id).
    let group = if unsafe { libc::geteuid() } == 0 {
        4242
    } else {
        unsafe { libc::getegid() }
    };
    let session = f.path("session");
    let sync = |extra: &[&str]| {
        let mut c = f.sync_inputs(&att, &session);
        c.args(extra);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
        run(&mut c)
    };
    let (code, _, err) = sync(&["--job-group", "no-such-group-attache"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("job_group") && err.contains("no-such-group-attache"),
        "{err}"
    );
    let (code, _, err) = sync(&["--job-group", &group.to_string()]);
    assert_eq!(code, 0, "{err}");
    let local = local_root(&session, &proj);
    let outputs_only = local_root(&session, Path::new("/comp-out"));
    let mut seen = (0, 0);
    let mut stack = vec![local.clone(), outputs_only];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let want = if m.is_dir() { 0o070 } else { 0o060 };
        assert_eq!(m.gid(), group, "{}", p.display());
        assert_eq!(
            m.mode() & want,
            want,
            "{}: mode {:o}",
            p.display(),
            m.mode()
        );
        if m.is_dir() {
            seen.0 += 1;
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            seen.1 += 1;
        }
    }
    assert_eq!(seen, (6, 4), "(directories, files) checked");
}

/// `attache check --attachments` as a wrangler runs it when a task fails for a missing input:
/// it names what the store lacks and the files that need it; `--deep` tells damaged content
/// from a wrong size, `--delete-damaged` clears it away, and the submitting machine's next
/// submit uploads all of it again.
#[test]
fn check_names_what_a_job_lacks_in_the_store_and_a_resubmit_repairs_it() {
    let f = Farm::new();
    let proj = f.path("proj");
    for (name, data) in [
        ("a.exr", "alpha"),
        ("sub/b.exr", "alpha"),
        ("c.exr", "charlie content"),
        ("d.exr", "delta content"),
        ("e.exr", "echo"),
    ] {
        write(&proj.join(name), data.as_bytes());
    }
    let att = f.path("attachments.json");
    f.ok(f
        .attache("ws")
        .arg("submit")
        .args(IDS)
        .arg(&proj)
        .arg("-o")
        .arg(&att));
    let check = |cache: &str, flags: &[&str]| {
        let (code, out, err) = run(f
            .attache(cache)
            .args(["check", "--json", "--attachments"])
            .arg(&att)
            .args(flags));
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        (code, v)
    };
    let (code, v) = check("wrangler", &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (&v["passed"], &v["manifests"], &v["files"], &v["objects"]),
        (&true.into(), &1.into(), &5.into(), &4.into()),
        "{v}"
    );

    let key = |data: &str| {
        format!(
            "DeadlineCloud/Data/{}.xxh128",
            ContentHash::of(data.as_bytes())
        )
    };
    std::fs::remove_file(f.s3.object_path(&key("alpha"))).unwrap();
    f.s3.write_object(&key("charlie content"), b"CHARLIE CONTENT"); // same size
    f.s3.write_object(&key("delta content"), b"d");

    // A HEAD per object: the missing one with both files that need it, the wrong size; the
    // damage of the same size is not seen.
    let (code, v) = check("wrangler", &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["passed"], false);
    assert_eq!(v["missing"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["missing"][0]["key"], key("alpha"));
    assert_eq!(
        v["missing"][0]["paths"],
        serde_json::json!(["a.exr", "sub/b.exr"])
    );
    assert_eq!(v["missing"][0]["files"], 2);
    assert_eq!(v["wrong_size"][0]["key"], key("delta content"), "{v}");
    assert_eq!(
        (
            &v["wrong_size"][0]["size"],
            &v["wrong_size"][0]["found_size"]
        ),
        (&13.into(), &1.into())
    );
    assert_eq!(v["damaged"], serde_json::json!([]));
    assert_eq!(v["present"], 2);
    // A HEAD each, and two for the missing one (its key and the legacy one).
    assert_eq!(
        (&v["head_requests"], &v["list_requests"]),
        (&5.into(), &0.into()),
        "{v}"
    );

    // "echo" now only under the key very old clients used: still there. Listing the store's
    // content finds what HEADs find, without a HEAD; `--lookup head` never lists.
    let echo = f.s3.read_object(&key("echo")).unwrap();
    std::fs::remove_file(f.s3.object_path(&key("echo"))).unwrap();
    f.s3.write_object(
        &format!("DeadlineCloud/Data/{}", ContentHash::of(b"echo")),
        &echo,
    );
    let findings = |v: &serde_json::Value| {
        (
            v["missing"].clone(),
            v["wrong_size"].clone(),
            v["present"].clone(),
        )
    };
    for (how, lists) in [("list", true), ("head", false)] {
        f.s3.stats.reset();
        let (code, w) = check("wrangler", &["--lookup", how]);
        assert_eq!(code, 1, "{w}");
        assert_eq!(findings(&w), findings(&v), "--lookup {how}: {w}");
        let sent = |op: &str| {
            f.s3.stats
                .requests_matching(|r| r.operation() == op && !r.key.contains("/Manifests/"))
        };
        let (lists_sent, heads_sent) = (sent("ListObjectsV2"), sent("HeadObject"));
        assert_eq!(
            (lists_sent > 0, heads_sent > 0),
            (lists, !lists),
            "--lookup {how}"
        );
        assert_eq!(
            (&w["list_requests"], &w["head_requests"]),
            (&lists_sent.into(), &heads_sent.into()),
            "--lookup {how}"
        );
    }
    let (code, _, err) = run(f
        .attache("wrangler")
        .args(["check", "--deep", "--lookup", "list", "--attachments"])
        .arg(&att));
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = run(f
        .attache("wrangler")
        .arg("check")
        .arg("--attachments")
        .arg(&att));
    assert_eq!(code, 1, "{err}");
    assert!(
        out.contains(&format!(
            "missing   {}  (5 B; needed by 2 file(s): a.exr, sub/b.exr)",
            key("alpha")
        )),
        "{out}"
    );
    assert!(out.contains("FAILED: 2 of 4 objects"), "{out}");
    assert!(err.contains("KNOWN_PRESENT_TTL=0"), "{err}");

    // Deep, from the workstation that uploaded them: both damaged objects are found by their
    // hash, and deleted.
    let (code, v) = check("ws", &["--deep", "--delete-damaged"]);
    assert_eq!(code, 1, "{v}");
    let damaged: Vec<(&str, bool)> = v["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap(), p["deleted"].as_bool().unwrap()))
        .collect();
    let mut want = [(key("charlie content"), true), (key("delta content"), true)];
    want.sort();
    let want: Vec<(&str, bool)> = want.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    assert_eq!(damaged, want, "{v}");
    assert_eq!(v["damaged"][0]["found_hash"].as_str().unwrap().len(), 32);
    assert_eq!(v["missing"][0]["key"], key("alpha"));
    assert_eq!(v["wrong_size"], serde_json::json!([]));
    assert_eq!(f.s3.read_object(&key("delta content")), None);

    // The check told this machine's known-present index; the next submit sends all three.
    f.ok(f.attache("ws").arg("submit").args(IDS).arg(&proj));
    let (code, v) = check("wrangler", &["--deep"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["present"], 4);
    assert_eq!(v["downloaded_bytes"], 5 + 15 + 13 + 4);

    // A manifest that is not what the job recorded is reported, not used.
    let manifest_key = input_manifest_key(&att);
    let mut bytes = f.s3.read_object(&manifest_key).unwrap();
    bytes.push(b'\n');
    f.s3.write_object(&manifest_key, &bytes);
    let (code, v) = check("wrangler", &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["unusable_manifests"][0]["key"], manifest_key.as_str());
    assert!(
        v["unusable_manifests"][0]["error"]
            .as_str()
            .unwrap()
            .contains("the manifest was changed or damaged"),
        "{v}"
    );

    let (code, _, err) = run(f
        .attache("wrangler")
        .args(["check", "--attachments"])
        .arg(f.path("nope.json")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope.json"), "{err}");
}

/// A job of 1,000 objects or more is checked by listing the store's content, a request per
/// 1,000 objects instead of a HEAD each, and what is missing is still named with its files.
#[test]
fn check_of_a_big_job_lists_the_store_instead_of_a_head_per_object() {
    let f = Farm::new();
    let proj = f.path("proj");
    for i in 0..1200 {
        write(
            &proj.join(format!("d{}/f{i}.exr", i % 7)),
            format!("frame {i}").as_bytes(),
        );
    }
    let manifest = f.path("job.manifest");
    f.ok(f
        .attache("ws")
        .arg("put")
        .arg(&proj)
        .arg("-o")
        .arg(&manifest));
    let key = format!("DeadlineCloud/Data/{}.xxh128", ContentHash::of(b"frame 17"));
    std::fs::remove_file(f.s3.object_path(&key)).unwrap();

    f.s3.stats.reset();
    let (code, out, err) = run(f
        .attache("wrangler")
        .args(["check", "--json"])
        .arg(&manifest));
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&v["objects"], &v["present"]), (&1200.into(), &1199.into()));
    assert_eq!(v["missing"][0]["key"], key.as_str(), "{v}");
    assert_eq!(v["missing"][0]["paths"], serde_json::json!(["d3/f17.exr"]));
    let lists =
        f.s3.stats
            .requests_matching(|r| r.operation() == "ListObjectsV2");
    assert_eq!(
        (&v["list_requests"], &v["head_requests"]),
        (&lists.into(), &0.into()),
        "{v}"
    );
    assert_eq!(f.s3.stats.requests_of("HEAD"), 0);
    // Five ranges of 240 objects listed side by side, a page each (1,200 HEADs before).
    assert!(lists <= 5, "{lists} listing requests: {v}");
}

/// `attache check --job-id …` checks a job's outputs as download-outputs would take them (the
/// latest run of each task), beside its inputs, and names an output file whose object is gone.
#[test]
fn check_of_a_job_s_outputs_names_the_output_whose_object_is_gone() {
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("scene.ma"), b"scene");
    std::fs::create_dir_all(proj.join("renders")).unwrap();
    let att = f.path("att.json");
    f.ok(f
        .attache("ws")
        .arg("submit")
        .args(IDS)
        .arg(&proj)
        .arg("--output-dir")
        .arg(proj.join("renders"))
        .arg("-o")
        .arg(&att));
    let session = f.path("session");
    f.ok(f
        .attache("w")
        .args(["sync-inputs", "--attachments"])
        .arg(&att)
        .arg("--session-dir")
        .arg(&session));
    let local = session.join(attache::jobs::attachments::asset_root_dir_name(
        proj.to_str().unwrap(),
    ));
    write(&local.join("renders/f1.exr"), b"frame one");
    write(&local.join("renders/f2.exr"), b"frame two");
    f.ok(sync_outputs(&mut f.attache("w"), "sa-1", &att, &session));
    let check = || {
        let (code, out, err) = run(f
            .attache("wrangler")
            .args(["check", "--json", "--attachments"])
            .arg(&att)
            .args(IDS)
            .args(["--job-id", "job-1"]));
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        (code, v)
    };
    let (code, v) = check();
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (
            &v["manifests"],
            &v["output_tasks"],
            &v["files"],
            &v["objects"]
        ),
        (&2.into(), &1.into(), &3.into(), &3.into()),
        "the input manifest and one task's output manifest: {v}"
    );
    let gone = format!(
        "DeadlineCloud/Data/{}.xxh128",
        ContentHash::of(b"frame two")
    );
    std::fs::remove_file(f.s3.object_path(&gone)).unwrap();
    let (code, v) = check();
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["missing"][0]["key"], gone.as_str(), "{v}");
    assert_eq!(
        v["missing"][0]["paths"],
        serde_json::json!(["renders/f2.exr"])
    );
    // A mistyped job id finds no manifest: nothing was checked, which is no OK.
    let (code, out, err) = run(f
        .attache("wrangler")
        .arg("check")
        .args(IDS)
        .args(["--job-id", "job-l"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.starts_with("FAILED: 0 of 0 objects") && err.contains("Nothing was checked"),
        "{out}{err}"
    );

    // What the job read and wrote, as the store holds it: `manifest cat` of its input
    // manifest and of its task's output manifest, each under its key.
    let (code, out, err) = run(f
        .attache("wrangler")
        .args(["manifest", "cat", "--attachments"])
        .arg(&att)
        .args(IDS)
        .args(["--job-id", "job-1"]));
    assert_eq!(code, 0, "{err}");
    let headers: Vec<&str> = out.lines().filter(|l| l.starts_with("# ")).collect();
    assert!(
        headers[0].starts_with("# DeadlineCloud/Manifests/farm-1/queue-1/Inputs/")
            && headers[2].starts_with("# DeadlineCloud/Manifests/farm-1/queue-1/job-1/")
            && headers[2].ends_with("_output"),
        "{out}"
    );
    assert_eq!(
        (headers[1], headers[3]),
        ("# 1 file, 5 bytes", "# 2 files, 18 bytes"),
        "{out}"
    );
    assert!(out.contains("  renders/f2.exr\n"), "{out}");
    let (code, out, err) = run(f
        .attache("wrangler")
        .args(["manifest", "cat", "--json"])
        .args(IDS)
        .args(["--job-id", "job-1", "--step-id", "step-1"]));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[1]["path"], "renders/f2.exr");
    assert!(
        lines[1]["manifest"].as_str().unwrap().ends_with("_output"),
        "{out}"
    );
    // A manifest changed since the job recorded it is said, exit 1.
    let key = input_manifest_key(&att);
    let mut bytes = f.s3.read_object(&key).unwrap();
    bytes.push(b'\n');
    f.s3.write_object(&key, &bytes);
    let (code, _, err) = run(f
        .attache("wrangler")
        .args(["manifest", "cat", "--attachments"])
        .arg(&att));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&key) && err.contains("changed or damaged"),
        "{err}"
    );
}

/// An input that does not exist yet (a simulation's caches, which an earlier step of the job
/// writes) is submitted as a referenced path by default, as the official client does: the
/// submit says so, its root still covers it, nothing is uploaded for it. With
/// `--require-paths-exist` it is an error and nothing is published.
#[test]
fn a_missing_input_is_referenced_unless_paths_must_exist() {
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("scenes/shot.ma"), b"scene");
    let cache = proj.join("sim/cache.vdb");
    // A link to what the simulation will write: missing too, as for the official client.
    let latest = proj.join("scenes/latest.vdb");
    std::os::unix::fs::symlink(&cache, &latest).unwrap();
    let submit = |extra: &[&str]| {
        let mut c = f.attache("ws");
        c.arg("submit")
            .args(IDS)
            .arg(proj.join("scenes/shot.ma"))
            .arg(&cache)
            .arg(&latest)
            .args(["--json"])
            .args(extra);
        run(&mut c)
    };

    let (code, _, err) = submit(&["--require-paths-exist"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("2 input(s) do not exist (--require-paths-exist)")
            && err.contains(&cache.display().to_string()),
        "{err}"
    );
    assert!(
        !f.s3.object_keys().iter().any(|k| k.contains("/Manifests/")),
        "published: {:?}",
        f.s3.object_keys()
    );

    let (code, out, err) = submit(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "input {} does not exist: submitted as a referenced path",
            cache.display()
        )),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["missing_inputs"],
        serde_json::json!([cache.to_str().unwrap(), latest.to_str().unwrap()]),
        "{v}"
    );
    assert_eq!(
        v["attachments"]["manifests"][0]["rootPath"],
        proj.to_str().unwrap(),
        "the root covers the scene and the cache: {v}"
    );
    assert_eq!(v["roots"][0]["files"], 1, "{v}");

    // Nothing but paths to come: their roots are mapped, nothing is uploaded, no manifest
    // (as the official client, whose root for a lone path is that path).
    let mut c = f.attache("ws");
    c.arg("submit").args(IDS).arg(&cache).args(["--json"]);
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["attachments"]["manifests"],
        serde_json::json!([{"rootPath": cache.to_str().unwrap(), "rootPathFormat": "posix"}]),
        "{v}"
    );

    // Every path on storage the farm reaches itself: no attachments at all (CreateJob takes
    // none with no manifest entry; the official client leaves them out), and the result file
    // says so rather than keeping an older submission's.
    let written = f.path("attachments.json");
    std::fs::write(&written, b"{\"an\": \"older submission\"}").unwrap();
    let mut c = f.attache("ws");
    c.arg("submit")
        .args(IDS)
        .arg(proj.join("scenes/shot.ma"))
        .arg("--shared")
        .arg(&proj)
        .arg("-o")
        .arg(&written);
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("every path is under a SHARED storage-profile location"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&written).unwrap().trim(), "null");
}

/// A job bundle's asset_references.yaml (what `deadline bundle submit` and the DCC submitters
/// read) and a list of inputs on stdin submit what the same paths given as arguments do.
#[test]
fn a_job_bundle_s_asset_references_and_a_list_of_inputs_submit_what_arguments_would() {
    let f = Farm::new();
    let proj = f.path("proj");
    write(&proj.join("scenes/shot.ma"), b"scene");
    write(&proj.join("tex/a.png"), b"texture a");
    write(&proj.join("tex/sub/b.png"), b"texture b");
    let bundle = f.path("bundle");
    // The scene relative to the current directory, as the official client reads it.
    write(
        &bundle.join("asset_references.yaml"),
        format!(
            "assetReferences:\n  inputs:\n    filenames:\n    - scenes/shot.ma\n    directories:\n    - {proj}/tex\n  outputs:\n    directories:\n    - {proj}/renders\n  referencedPaths:\n  - {proj}/sim/cache.vdb\n",
            proj = proj.display()
        )
        .as_bytes(),
    );
    let submit = |extra: &[&std::ffi::OsStr], stdin: &str| {
        let mut c = f.attache("ws");
        c.current_dir(&proj)
            .arg("submit")
            .args(IDS)
            .arg("--json")
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        // The manifest's name has a fresh id per submission; its root, bytes and outputs not.
        let m = &v["attachments"]["manifests"][0];
        (
            v["attachments"]["manifests"].as_array().unwrap().len(),
            m["rootPath"].clone(),
            m["inputManifestHash"].clone(),
            m["outputRelativeDirectories"].clone(),
            v["roots"][0]["files"].clone(),
        )
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let by_arguments = submit(
        &[
            &os("scenes/shot.ma"),
            proj.join("tex").as_os_str(),
            &os("--output-dir"),
            proj.join("renders").as_os_str(),
            &os("--referenced"),
            proj.join("sim/cache.vdb").as_os_str(),
        ],
        "",
    );
    assert_eq!(
        (
            &by_arguments.0,
            &by_arguments.1,
            &by_arguments.3,
            &by_arguments.4
        ),
        (
            &1,
            &serde_json::json!(proj.to_str().unwrap()),
            &serde_json::json!(["renders"]),
            &serde_json::json!(3)
        )
    );
    let by_bundle = submit(&[&os("--asset-references"), bundle.as_os_str()], "");
    assert_eq!(by_bundle, by_arguments);
    let by_list = submit(
        &[
            &os("--inputs-from"),
            &os("-"),
            &os("--output-dir"),
            proj.join("renders").as_os_str(),
            &os("--referenced"),
            proj.join("sim/cache.vdb").as_os_str(),
        ],
        &format!(
            "# the shot's inputs\nscenes/shot.ma\n{}/tex\n",
            proj.display()
        ),
    );
    assert_eq!(by_list, by_arguments);

    // A bundle with a template and no asset references: its PATH parameters are the paths,
    // valued by --parameter (relative to the current directory), the bundle's
    // parameter_values and, for Frames, a default.
    let templated = f.path("templated");
    write(
        &templated.join("template.yaml"),
        b"specificationVersion: jobtemplate-2023-09\nname: shot\nparameterDefinitions:\n\
          - {name: Scene, type: PATH, objectType: FILE, dataFlow: IN}\n\
          - {name: Textures, type: PATH, objectType: DIRECTORY, dataFlow: IN}\n\
          - {name: Renders, type: PATH, objectType: DIRECTORY, dataFlow: OUT}\n\
          - {name: Cache, type: PATH, objectType: FILE}\n\
          - {name: Frames, type: STRING, default: 1-10}\n\
          steps: []\n",
    );
    write(
        &templated.join("parameter_values.yaml"),
        format!(
            "parameterValues:\n- {{name: Textures, value: {proj}/tex}}\n- {{name: Renders, value: {proj}/renders}}\n- {{name: Cache, value: {proj}/sim/cache.vdb}}\n",
            proj = proj.display()
        )
        .as_bytes(),
    );
    let by_template = submit(
        &[
            &os("--asset-references"),
            templated.as_os_str(),
            &os("-p"),
            &os("Scene=scenes/shot.ma"),
        ],
        "",
    );
    assert_eq!(by_template, by_arguments);

    let refused = |extra: &[&str]| {
        let (code, _, err) = run(f
            .attache("ws")
            .current_dir(&proj)
            .arg("submit")
            .args(IDS)
            .args(extra));
        (code, err)
    };
    let t = templated.to_str().unwrap();
    let (code, err) = refused(&["--asset-references", t]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "parameter Scene has no value and no default: give it with --parameter Scene=VALUE"
        ),
        "{err}"
    );
    assert!(err.contains("template.yaml"), "{err}");
    let (code, err) = refused(&["-p", "Scene=scenes/shot.ma", "scenes/shot.ma"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--asset-references"), "{err}");
    let (code, err) = refused(&["--asset-references", t, "-p", "Scene"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("give it as NAME=VALUE"), "{err}");
    // A name the template does not define is warned about: its paths would be left out.
    let (code, err) = refused(&[
        "--asset-references",
        t,
        "-p",
        "Scene=scenes/shot.ma",
        "-p",
        "Scnee=other.ma",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("--parameter Scnee: not a parameter of the bundle's template"),
        "{err}"
    );
}

/// A job with no outputs (yet, or a mistyped id) is not an error, as for the official client,
/// but the command says where it looked.
#[test]
fn download_outputs_of_a_job_without_any_says_where_it_looked() {
    let f = Farm::new();
    // Beside --json too: a script reads the JSON, its log shows the typo'd id.
    for json in [&[][..], &["--json"]] {
        let (code, out, err) = run(f.download_outputs(&["--step-id", "step-9"]).args(json));
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains(&format!(
                "no outputs: no task has published any under {}/Manifests/farm-1/queue-1/job-1/step-9/",
                f.s3.store_url("DeadlineCloud")
            )),
            "{err}"
        );
        if !json.is_empty() {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["tasks"], 0, "{v}");
        }
    }
}

/// A worker runs thousands of sessions, each recording its files in the hash cache under its
/// own directory: the next sync forgets those of the sessions the worker agent has removed,
/// so the cache holds the sessions that are there, not every session ever run.
#[test]
fn a_worker_s_hash_cache_forgets_the_sessions_that_were_removed() {
    let f = Farm::new();
    let proj = f.path("proj");
    build_fixture_tree("tiny", &proj);
    let att = f.submit(std::slice::from_ref(&proj), &[]);
    let known = || {
        let (code, out, err) = run(f.attache("worker").args(["cache", "--json"]));
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["hash_cache"]["entries"].as_u64().unwrap()
    };
    let sessions = f.path("sessions");
    for s in ["session-1", "session-2"] {
        f.ok(&mut f.sync_inputs(&att, &sessions.join(s)));
    }
    let per_session = known() / 2;
    assert!(per_session > 0);
    std::fs::remove_dir_all(sessions.join("session-1")).unwrap();
    let (code, _, err) = run(&mut f.sync_inputs(&att, &sessions.join("session-3")));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "hash cache: forgot {per_session} files of directories removed from {} (1 of them)",
            sessions.display()
        )),
        "{err}"
    );
    assert_eq!(known(), 2 * per_session, "session-2 and session-3");

    // `attache cache trim` does the same for any directory that is gone.
    std::fs::remove_dir_all(&sessions).unwrap();
    let (code, out, err) = run(f.attache("worker").args(["cache", "trim"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "hash cache: forgot {} files under directories that no longer exist (1 of them)",
            2 * per_session
        )),
        "{out}"
    );
    assert_eq!(known(), 0);
}
