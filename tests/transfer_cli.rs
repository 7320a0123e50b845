//! `attache put` / `attache get` as a user runs them, against the in-process S3 server and the
//! local store, configured through the environment.

mod common;

use std::path::Path;

use std::process::Command;
use std::time::{Duration, Instant};

use common::s3::TestS3;
use common::*;

#[test]
fn put_then_get_through_s3_configured_by_environment() {
    let s3 = TestS3::start_background();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("edge", &root);
    let cache = t.path().join("cache");
    let manifest = t.path().join("m.json");
    let (code, out, err) = run(attache(&cache)
        .envs(s3.env())
        .args(["put", "--json", "--store", &s3.store_url("DeadlineCloud")])
        .arg(&root)
        .arg("-o")
        .arg(&manifest));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["upload"]["objects"], 5, "{v}");
    assert_eq!(v["upload"]["uploaded_objects"], 5);
    // The official client's object keys, exactly.
    let mut keys: Vec<String> = s3.object_keys();
    keys.sort();
    let want = std::fs::read_to_string(fixture("edge").join("keys.txt")).unwrap();
    let want: Vec<&str> = want.lines().filter(|k| k.contains("/Data/")).collect();
    assert_eq!(keys, want);
    assert_eq!(
        std::fs::read(&manifest).unwrap(),
        std::fs::read(fixture("edge").join("manifest.json")).unwrap()
    );

    let dest = t.path().join("dest");
    let (code, _, err) = run(attache(&cache)
        .envs(s3.env())
        .args(["get", "--store", &s3.store_url("DeadlineCloud")])
        .arg(&manifest)
        .arg("--dest")
        .arg(&dest));
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(attache(&cache)
        .args(["manifest", "verify", "--strict"])
        .arg(&manifest)
        .arg("--root")
        .arg(&dest));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_default_local_store_needs_no_setup() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let data_home = t.path().join("data");
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let manifest = t.path().join("m.json");
    let (code, _, err) = run(attache(&cache)
        .env("XDG_DATA_HOME", &data_home)
        .arg("put")
        .arg(&root)
        .arg("-o")
        .arg(&manifest));
    assert_eq!(code, 0, "{err}");
    assert!(
        data_home
            .join("attache/store/Data/eefac9d87100cd1336b2e733a5484425.xxh128")
            .is_file()
    );
    let dest = t.path().join("dest");
    let (code, _, err) = run(attache(&cache)
        .env("XDG_DATA_HOME", &data_home)
        .arg("get")
        .arg(&manifest)
        .arg("--dest")
        .arg(&dest));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(dest.join("hello.txt")).unwrap(),
        b"hello world\n"
    );
}

/// `attache put ROOT` into a file:// store under `dir`; returns (cache dir, store URL,
/// manifest path).
/// Writes `cache`'s copying-stores measurements: for each store identity, a slow completion
/// (7 s after 12 s of parts, a 1 GiB upload) at each of the given times (Unix ms).
fn measured_copying(cache: &Path, stores: &[(&str, &[i64])]) {
    let slow = |at_ms: &i64| serde_json::json!({"at_ms": at_ms, "bytes": 1u64 << 30, "parts_ms": 12000, "complete_ms": 7000});
    let stores: serde_json::Map<String, serde_json::Value> = stores
        .iter()
        .map(|(store, at)| (store.to_string(), at.iter().map(slow).collect()))
        .collect();
    let file = serde_json::json!({ "stores": stores });
    std::fs::write(cache.join("copying-stores.json"), file.to_string()).unwrap();
}

fn put_to_local_store(
    dir: &std::path::Path,
    root: &std::path::Path,
) -> (std::path::PathBuf, String, std::path::PathBuf) {
    let cache = dir.join("cache");
    let store = format!("file://{}", dir.join("store").display());
    let manifest = dir.join("m.json");
    let (code, _, err) = run(attache(&cache)
        .args(["put", "--store", &store])
        .arg(root)
        .arg("-o")
        .arg(&manifest));
    assert_eq!(code, 0, "{err}");
    (cache, store, manifest)
}

/// A root in `dir` of `a.txt` ("hello") and `second` ("other"), put to a local store.
fn hello_and_other(dir: &Path, second: &str) -> (std::path::PathBuf, String, std::path::PathBuf) {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.txt"), "hello\n").unwrap();
    std::fs::write(root.join(second), "other\n").unwrap();
    put_to_local_store(dir, &root)
}

/// `attache get --json` of `manifest` from `store` into `dest`, with `flags`; its report.
fn get_json(
    cache: &Path,
    store: &str,
    manifest: &Path,
    dest: &Path,
    flags: &[&str],
) -> serde_json::Value {
    let (code, out, err) = run(attache(cache)
        .args(["get", "--json", "--store", store])
        .args(flags)
        .arg(manifest)
        .arg("--dest")
        .arg(dest));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn a_manifest_cannot_write_through_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    // The destination holds a link where the manifest has a directory.
    let dest = t.path().join("dest");
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dest.join("sub")).unwrap();
    let (code, _, err) = run(attache(&cache)
        .args(["get", "--store", &store])
        .arg(&manifest)
        .arg("--dest")
        .arg(&dest));
    assert_eq!(code, 1);
    assert!(err.contains("sub: is a symlink"), "{err}");
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written through the link"
    );
}

/// `put -o -` piped into `get -`: the manifest goes from one to the other without a file.
#[test]
fn a_manifest_piped_from_put_is_materialized_by_get() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let cache = t.path().join("cache");
    let store = format!("file://{}", t.path().join("store").display());
    let mut put = attache(&cache)
        .args(["put", "--store", &store])
        .arg(&root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let dest = t.path().join("dest");
    let (code, _, err) = run(attache(&cache)
        .args(["get", "--store", &store, "-", "--dest"])
        .arg(&dest)
        .stdin(put.stdout.take().unwrap()));
    assert!(put.wait().unwrap().success());
    assert_eq!(code, 0, "{err}");
    // Nothing was in the way: the summary says nothing of it.
    assert!(err.contains(", 0 already in place\n"), "{err}");
    let contents = |dir: &Path| {
        let mut files: Vec<_> = files_under(dir)
            .into_iter()
            .map(|p| {
                (
                    p.strip_prefix(dir).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    assert_eq!(contents(&dest), contents(&root));
}

/// A directory where the manifest has a file is refused while planning, before a byte is
/// fetched, and left as it is; `--conflict skip` leaves it, `create-copy` puts the file beside it.
#[test]
fn a_directory_where_the_manifest_has_a_file_is_refused_before_anything_is_fetched() {
    let t = tempfile::tempdir().unwrap();
    let (cache, store, manifest) = hello_and_other(t.path(), "z.txt");
    let dest = t.path().join("dest");
    std::fs::create_dir_all(dest.join("z.txt")).unwrap();
    std::fs::write(dest.join("z.txt/keep"), "mine\n").unwrap();
    let get = |flags: &[&str]| {
        run(attache(&cache)
            .args(["get", "--store", &store])
            .args(flags)
            .arg(&manifest)
            .arg("--dest")
            .arg(&dest))
    };
    for flags in [&[][..], &["--dry-run"]] {
        let (code, _, err) = get(flags);
        assert_eq!(code, 1, "{flags:?}: {err}");
        assert!(
            err.contains("z.txt: is a directory where the manifest has a file")
                && err.contains("--conflict create-copy"),
            "{flags:?}: {err}"
        );
        assert!(!err.contains("replac"), "{flags:?}: {err}");
        assert!(!dest.join("a.txt").exists(), "{flags:?}: nothing fetched");
    }
    assert_eq!(std::fs::read(dest.join("z.txt/keep")).unwrap(), b"mine\n");
    for (conflict, says) in [
        (
            "skip",
            "0 already in place, 1 left alone (other content there)\n",
        ),
        (
            "create-copy",
            "1 already in place, 1 copy beside files with other content\n",
        ),
    ] {
        let (code, _, err) = get(&["--conflict", conflict]);
        assert_eq!(code, 0, "{conflict}: {err}");
        assert!(err.contains(says), "{conflict}: {err}");
        assert_eq!(std::fs::read(dest.join("z.txt/keep")).unwrap(), b"mine\n");
    }
    assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read(dest.join("z (1).txt")).unwrap(), b"other\n");
}

/// A download that cannot fit is refused before a byte is written; into a directory not there
/// yet, it leaves no empty tree behind to be taken for a download.
#[test]
fn a_download_that_cannot_fit_is_refused_and_leaves_no_directory_behind() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("sub/deeper/a.txt"), "hello\n").unwrap();
    std::fs::write(root.join("b.txt"), "other\n").unwrap();
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    // A file of 1 PiB: more than this machine has free.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let huge = text.replacen("\"size\":6}", "\"size\":1125899906842624}", 1);
    assert_ne!(huge, text);
    let huge_manifest = t.path().join("huge.json");
    std::fs::write(&huge_manifest, huge).unwrap();
    let there = t.path().join("there");
    std::fs::create_dir(&there).unwrap();
    for dest in [t.path().join("new/shot/plates"), there.clone()] {
        let (code, _, err) = run(attache(&cache)
            .args(["get", "--store", &store])
            .arg(&huge_manifest)
            .arg("--dest")
            .arg(&dest));
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("not enough disk space: 1.0 PiB to download"),
            "{err}"
        );
    }
    assert!(!t.path().join("new").exists(), "no empty tree left");
    assert!(there.is_dir(), "the directory that was there stays");
    assert_eq!(
        std::fs::read_dir(&there).unwrap().count(),
        0,
        "nothing placed, and the directories the plan made (sub/deeper) removed again"
    );
}

/// A plan refused part-way (a directory where the manifest has a file, found after the
/// directories of the files before it were made) removes the directories it made, those only.
#[test]
fn a_plan_refused_part_way_leaves_no_directory_it_made() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/c.txt"), "c\n").unwrap();
    std::fs::create_dir_all(root.join("kept")).unwrap();
    std::fs::write(root.join("kept/d.txt"), "d\n").unwrap();
    std::fs::write(root.join("z.txt"), "z\n").unwrap();
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    for dest in [t.path().join("new/dest"), t.path().join("there")] {
        // In the way: a directory where the manifest has z.txt; kept/ was there already.
        std::fs::create_dir_all(dest.join("z.txt")).unwrap();
        std::fs::create_dir_all(dest.join("kept")).unwrap();
        let (code, _, err) = run(attache(&cache)
            .args(["get", "--store", &store])
            .arg(&manifest)
            .arg("--dest")
            .arg(&dest));
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("z.txt: is a directory where the manifest has a file"),
            "{err}"
        );
        let mut left: Vec<String> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["kept", "z.txt"], "a/ and a/b/ removed again");
    }
}

/// A manifest that is not a tree (a file with paths below it) is refused before anything is
/// written, by `get` and `manifest verify`; of a path listed twice, the later entry is placed,
/// every time (not whichever landed last).
#[test]
fn a_manifest_that_lists_a_path_below_a_file_is_refused_and_one_listed_twice_placed_once() {
    let t = tempfile::tempdir().unwrap();
    let (cache, store, manifest) = hello_and_other(t.path(), "b.txt");
    let root = t.path().join("root");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let get = |name: &str, faulty: String| {
        let bad = t.path().join(format!("{name}.json"));
        std::fs::write(&bad, faulty).unwrap();
        let dest = t.path().join(format!("dest-{name}"));
        let got = run(attache(&cache)
            .args(["get", "--store", &store])
            .arg(&bad)
            .arg("--dest")
            .arg(&dest));
        (got, bad, dest)
    };
    let ((code, _, err), bad, dest) = get("below", text.replace("\"b.txt\"", "\"a.txt/b\""));
    let says = "\"a.txt/b\" is listed below \"a.txt\", which is a file";
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(says), "{err}");
    assert!(
        !dest.exists() || std::fs::read_dir(&dest).unwrap().count() == 0,
        "nothing placed"
    );
    let (code, _, err) = run(attache(&cache)
        .args(["manifest", "verify", "--root"])
        .arg(&root)
        .arg(&bad));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(says), "{err}");
    // `a.txt` twice: "hello" then (b.txt's) "other"; the later wins, run after run.
    for _ in 0..4 {
        let ((code, _, err), _, dest) = get("twice", text.replace("\"b.txt\"", "\"a.txt\""));
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains("a path of the manifest is listed twice: the later entry is placed"),
            "{err}"
        );
        assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), b"other\n");
        std::fs::remove_dir_all(&dest).unwrap();
    }
}

/// With `--log-file`, the log goes to the file (appended to, run after run) and not to
/// stderr; the summary and the error go to both; a file that cannot be opened is bad usage.
#[test]
fn log_file_takes_the_log_and_a_copy_of_the_summary_and_the_error() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let cache = t.path().join("cache");
    let store = format!("file://{}", t.path().join("store").display());
    let log = t.path().join("attache.log");
    let (code, _, err) = run(attache(&cache)
        .arg("--log-file")
        .arg(&log)
        .args(["put", "--store", &store])
        .arg(&root)
        .arg("-o")
        .arg(t.path().join("m.json")));
    assert_eq!(code, 0, "{err}");
    let logged = std::fs::read_to_string(&log).unwrap();
    let event = "the store directory does not exist; creating it";
    assert!(logged.contains(event), "{logged}");
    assert!(!err.contains(event), "{err}");
    let summary = "distinct objects: uploaded";
    assert!(err.contains(summary), "{err}");
    assert!(
        logged.contains(&format!(" INFO {}: ", root.display())),
        "{logged}"
    );
    assert!(logged.contains(summary), "{logged}");
    // JSON lines, after the text ones: the error too.
    let (code, _, err) = run(attache(&cache)
        .env("ATTACHE_LOG__FILE", &log)
        .args(["--log-format", "json", "get", "--store", &store])
        .arg(t.path().join("nope.json"))
        .arg("--dest")
        .arg(t.path().join("out")));
    assert_eq!(code, 1, "{err}");
    let logged = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(logged.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR", "{logged}");
    assert!(logged.contains(event), "appended, not replaced: {logged}");
    let (code, _, err) = run(attache(&cache)
        .arg("--log-file")
        .arg(t.path().join("no-such-dir/attache.log"))
        .args(["hash"])
        .arg(&root));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot open log.file") && err.contains("no-such-dir/attache.log"),
        "{err}"
    );
}

/// `-q` leaves stderr to warnings and errors (stdout, -o and --json keep their output); `-v`
/// is `--log-level debug`. Either clashing with the flag it stands for is bad usage.
#[test]
fn quiet_says_only_warnings_and_errors_and_verbose_logs_debug() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let cache = t.path().join("cache");
    let store = format!("file://{}", t.path().join("store").display());
    let manifest = t.path().join("m.json");
    let (code, out, err) = run(attache(&cache)
        .args(["-q", "put", "--store", &store])
        .arg(&root)
        .arg("-o")
        .arg(&manifest));
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    assert!(manifest.exists());
    let (code, out, err) = run(attache(&cache)
        .args(["get", "--quiet", "--json", "--store", &store])
        .arg(&manifest)
        .arg("--dest")
        .arg(t.path().join("out")));
    assert_eq!((code, err.as_str()), (0, ""));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["files"], files_under(&t.path().join("out")).len(), "{v}");
    let (code, _, err) = run(attache(&cache)
        .args(["-q", "get", "--store", &store])
        .arg(t.path().join("nope.json"))
        .arg("--dest")
        .arg(t.path().join("out")));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("nope.json"),
        "{err}"
    );
    // A warning stays: a config with a secret every user can read.
    let config = t.path().join("config.toml");
    std::fs::write(&config, "[s3]\nsecret_access_key = \"hunter2\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(attache(&cache)
        .arg("--config")
        .arg(&config)
        .args(["-q", "hash"])
        .arg(&root)
        .arg("-o")
        .arg(t.path().join("h.json")));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("every user of this machine can read it") && !err.contains("files ("),
        "the warning, not the summary: {err}"
    );
    // -v: the debug lines too, which the default level leaves out.
    let hash = |verbose: &[&str]| {
        run(attache(&cache)
            .arg("--config")
            .arg(&config)
            .args(verbose)
            .arg("hash")
            .arg(&root)
            .arg("-o")
            .arg(t.path().join("h.json")))
    };
    let (code, _, err) = hash(&["-v"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("config loaded"), "{err}");
    let (_, _, err) = hash(&[]);
    assert!(!err.contains("config loaded"), "{err}");
    for clash in [
        &["-q", "-v"][..],
        &["-v", "--log-level", "info"],
        &["-q", "--stats", "5s"],
    ] {
        let (code, _, err) = hash(clash);
        assert_eq!(code, 2, "{clash:?}: {err}");
        assert!(err.contains("cannot be used with"), "{err}");
    }
}

/// rclone's `--transfers` is `--workers` (`transfer.workers`).
#[test]
fn transfers_is_workers_as_in_rclone() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let cache = t.path().join("cache");
    let store = format!("file://{}", t.path().join("store").display());
    let put = |n: &str| {
        run(attache(&cache)
            .args(["put", "--transfers", n, "--store", &store])
            .arg(&root)
            .arg("-o")
            .arg(t.path().join("m.json")))
    };
    let (code, _, err) = put("0");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`transfer.workers`"), "{err}");
    let (code, _, err) = put("2");
    assert_eq!(code, 0, "{err}");
}

/// What `c` writes on its stderr, a terminal (a pty): (exit code, the bytes it drew there).
fn run_with_stderr_on_a_terminal(c: &mut Command) -> (i32, String) {
    use std::io::Read;
    let (mut leader, terminal) = pty();
    let mut child = c.stderr(terminal).spawn().unwrap();
    // The command holds the follower's only other copy: read until it is gone (EIO), at
    // the same time, as a full pty buffer would block the command's drawing.
    c.stderr(std::process::Stdio::null());
    let reader = std::thread::spawn(move || {
        let mut drawn = Vec::new();
        let _ = leader.read_to_end(&mut drawn);
        drawn
    });
    let code = child.wait().unwrap().code().unwrap_or(-1);
    let drawn = reader.join().unwrap();
    (code, String::from_utf8_lossy(&drawn).into_owned())
}

/// On a terminal, a download draws a bar that moves; `-q` draws nothing; `-P` logs progress
/// where there is no terminal.
#[test]
fn a_terminal_gets_a_progress_bar_and_quiet_gets_none() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("plate.exr"), vec![7u8; 3 << 20]).unwrap();
    let cache = t.path().join("cache");
    let store = format!("file://{}", t.path().join("store").display());
    let manifest = t.path().join("m.json");
    let (code, _, err) = run(attache(&cache)
        .args(["put", "--store", &store])
        .arg(&root)
        .arg("-o")
        .arg(&manifest));
    assert_eq!(code, 0, "{err}");
    // 3 MiB at 2 MB/s: over a second, the bar redrawn every 100 ms.
    let get = |quiet: &[&str], dest: &str| {
        run_with_stderr_on_a_terminal(
            attache(&cache)
                .args(quiet)
                .args(["get", "--bwlimit", "2MB/s", "--store", &store])
                .arg(&manifest)
                .arg("--dest")
                .arg(t.path().join(dest)),
        )
    };
    let (code, drawn) = get(&[], "out");
    assert_eq!(code, 0, "{drawn}");
    assert!(
        drawn.contains("downloading [") && drawn.contains("left)"),
        "a bar: {drawn:?}"
    );
    assert!(
        drawn.contains("downloaded 1 object (3.0 MiB)"),
        "and the summary: {drawn:?}"
    );
    let (code, drawn) = get(&["-q"], "quiet");
    assert_eq!((code, drawn.as_str()), (0, ""));
    // Not a terminal: a progress line each second with -P (rclone's), none within 30 s without.
    for (flags, dest, lines) in [(&["-P"][..], "piped-P", true), (&[][..], "piped", false)] {
        let (code, _, err) = run(attache(&cache)
            .args(flags)
            .args(["get", "--bwlimit", "2MB/s", "--store", &store])
            .arg(&manifest)
            .arg("--dest")
            .arg(t.path().join(dest)));
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            err.contains("INFO downloading: "),
            lines,
            "{flags:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(t.path().join("quiet/plate.exr"))
            .unwrap()
            .len(),
        3 << 20
    );
}

#[test]
fn with_json_logs_every_line_on_stderr_is_json_the_summary_and_the_error_too() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let cache = t.path().join("cache");
    let store = format!("file://{}", t.path().join("store").display());
    let lines = |err: &str| -> Vec<serde_json::Value> {
        err.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{err}")))
            .collect()
    };
    let (code, _, err) = run(attache(&cache)
        .args(["--log-format", "json", "put", "--store", &store])
        .arg(&root)
        .arg("-o")
        .arg(t.path().join("m.json")));
    assert_eq!(code, 0, "{err}");
    let said = lines(&err);
    assert!(
        said.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("already in the store"))),
        "the summary: {err}"
    );
    let (code, _, err) = run(attache(&cache)
        .args(["--log-format", "json", "get", "--store", &store])
        .arg(t.path().join("nope.json"))
        .arg("--dest")
        .arg(t.path().join("out")));
    assert_eq!(code, 1, "{err}");
    let said = lines(&err);
    let last = said.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{err}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot read manifest"),
        "{err}"
    );
}

#[test]
fn a_second_get_leaves_files_in_place_and_fetches_only_what_changed() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    // Half of them of 64 KiB and up (fetched first, largest first), half smaller (fetched in
    // path order): every placed file reaches the hash cache.
    let content = |tag: &str| tag.repeat(6000);
    let small = |tag: &str| tag.repeat(50);
    for i in 0..50 {
        let p = root.join(format!("d{}/f{i}.txt", i % 5));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let tag = format!("content {i:04}");
        let data = if i % 2 == 0 {
            small(&tag)
        } else {
            content(&tag)
        };
        std::fs::write(&p, data).unwrap();
    }
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    let dest = t.path().join("dest");
    let get = || {
        let v = get_json(&cache, &store, &manifest, &dest, &[]);
        (
            v["unchanged_files"].as_u64().unwrap(),
            v["unchanged_read_files"].as_u64().unwrap(),
            v["download"]["objects"].as_u64().unwrap(),
        )
    };
    assert_eq!(get(), (0, 0, 50));
    assert_eq!(
        get(),
        (50, 0, 0),
        "everything already in place, known from the hash cache without reading a file"
    );
    // Same size, mtime put back: only the content differs, of a large and a small file.
    let changed = dest.join("d3/f13.txt");
    let changed_small = dest.join("d2/f12.txt");
    for (p, data) in [
        (&changed, content("CONTENT 0013")),
        (&changed_small, small("CONTENT 0012")),
    ] {
        let mtime = filetime::FileTime::from_last_modification_time(&p.metadata().unwrap());
        std::fs::write(p, data).unwrap();
        filetime::set_file_mtime(p, mtime).unwrap();
    }
    assert_eq!(get(), (48, 0, 2), "the changed files are fetched again");
    assert_eq!(
        std::fs::read_to_string(&changed).unwrap(),
        content("content 0013")
    );
    assert_eq!(
        std::fs::read_to_string(&changed_small).unwrap(),
        small("content 0012")
    );
    assert_eq!(get(), (50, 0, 0));
    // Without the cache's knowledge the files are read to be recognized, and recorded once
    // they are old enough to be trusted.
    std::fs::remove_dir_all(&cache).unwrap();
    wait_out_racy_window();
    assert_eq!(get(), (50, 50, 0));
    assert_eq!(get(), (50, 0, 0));
}

#[test]
fn a_get_names_the_local_files_with_other_content_and_what_it_does_with_them() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    write_tree(&root, &["renders/render.log", "scenes/shot.ma"]);
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    let dest = t.path().join("dest");
    get_json(&cache, &store, &manifest, &dest, &[]);
    let edited = dest.join("renders/render.log");
    std::fs::write(&edited, "an artist's edit").unwrap();
    let get = |flags: &[&str]| {
        let (code, _, err) = run(attache(&cache)
            .args(["get", "--store", &store])
            .args(flags)
            .arg(&manifest)
            .arg("--dest")
            .arg(&dest));
        assert_eq!(code, 0, "{err}");
        err
    };
    let named = |what: &str| format!("{}: other content there; {what}", edited.display());
    let err = get(&["--dry-run"]);
    assert!(err.contains(&named("would replace it")), "{err}");
    let err = get(&["--conflict", "skip"]);
    assert!(
        err.contains(&named("left alone (--conflict skip)")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&edited).unwrap(),
        "an artist's edit"
    );
    let err = get(&["--conflict", "create-copy"]);
    assert!(
        err.contains(&named("the manifest's file goes beside it as")),
        "{err}"
    );
    assert!(err.contains("render (1).log"), "{err}");
    // Run again: the copy holds the manifest's file already; no `render (2).log`.
    let err = get(&["--conflict", "create-copy"]);
    assert!(!err.contains("other content there"), "{err}");
    assert!(!dest.join("renders/render (2).log").exists());
    assert_eq!(
        std::fs::read(dest.join("renders/render (1).log")).unwrap(),
        std::fs::read(root.join("renders/render.log")).unwrap()
    );
    let err = get(&[]);
    assert!(err.contains(&named("replacing it")), "{err}");
    assert!(
        !err.contains("scenes/shot.ma"),
        "only the file with other content: {err}"
    );
}

#[test]
fn a_failed_get_keeps_what_it_placed_and_the_next_one_trusts_it_without_reading() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    for i in 0..40 {
        let p = root.join(format!("d{}/f{i:02}.txt", i % 4));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("content {i:02}").repeat(100)).unwrap();
    }
    // Last in path order, and fetched last: small files go in path order, one at a time here.
    let last = "the last object".repeat(100);
    std::fs::create_dir_all(root.join("zz")).unwrap();
    std::fs::write(root.join("zz/last.txt"), &last).unwrap();
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    let object = files_under(&t.path().join("store/Data"))
        .into_iter()
        .find(|p| std::fs::read(p).unwrap() == last.as_bytes())
        .unwrap();
    let away = t.path().join("away");
    std::fs::rename(&object, &away).unwrap();

    let dest = t.path().join("dest");
    let (code, _, err) = run(attache(&cache)
        .args(["get", "--workers", "1", "--store", &store])
        .arg(&manifest)
        .arg("--dest")
        .arg(&dest));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not found") && err.contains("`attache check` lists every object"),
        "{err}"
    );
    // The file it was for, first: which one a wrangler looks for.
    assert!(
        err.contains(&format!(
            "{}: its content is missing from the store: Data/",
            dest.join("zz/last.txt").display()
        )),
        "{err}"
    );
    assert_eq!(files_under(&dest).len(), 40, "every other file was placed");

    std::fs::rename(&away, &object).unwrap();
    let v = get_json(&cache, &store, &manifest, &dest, &[]);
    assert_eq!(v["unchanged_files"], 40, "{v}");
    assert_eq!(
        v["unchanged_read_files"], 0,
        "the failed run recorded the files it placed: none is read again ({v})"
    );
    assert_eq!(v["download"]["objects"], 1, "{v}");
}

/// The paths of a manifest file, in its order.
fn manifest_paths(file: &Path) -> Vec<String> {
    let m = attache::manifest::decode(&std::fs::read(file).unwrap()).unwrap();
    m.entries()
        .iter()
        .map(|e| e.path.display().into_owned())
        .collect()
}

#[test]
fn put_leaves_out_what_exclude_matches_and_does_not_enter_excluded_directories() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    write_tree(
        &root,
        &[
            "shot.ma",
            "shot.ma.tmp",
            ".DS_Store",
            "tex/wood.png",
            "tex/.DS_Store",
            "tex/cache",
            "sim/cache/frame1.bc",
            "backup/shot.ma",
            "tex/backup/shot.ma",
        ],
    );
    // Read, it would fail the put: a link out of the root, in a directory left out.
    std::os::unix::fs::symlink("/etc/hostname", root.join("sim/cache/outside")).unwrap();
    let cache = t.path().join("cache");
    let store = format!("file://{}", t.path().join("store").display());
    let manifest = t.path().join("m.json");
    let ignore = t.path().join("ignore");
    std::fs::write(&ignore, "# old versions\nbackup/*\n").unwrap();
    let (code, _, err) = run(attache(&cache)
        .env("ATTACHE_HASH__EXCLUDE", ".DS_Store;*.tmp")
        .args(["put", "--store", &store])
        .args(["--exclude", "cache/", "--exclude-from"])
        .arg(&ignore)
        .arg(&root)
        .arg("-o")
        .arg(&manifest));
    assert_eq!(code, 0, "{err}");
    let paths = manifest_paths(&manifest);
    assert_eq!(
        paths,
        ["shot.ma", "tex/backup/shot.ma", "tex/cache", "tex/wood.png"],
        "a name pattern at any depth, a path pattern from the root, a directory pattern for directories"
    );
    assert_eq!(files_under(&t.path().join("store/Data")).len(), 4);

    let (code, _, err) = run(attache(&cache)
        .args(["put", "--store", &store, "--exclude", "tex/[a"])
        .arg(&root));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--exclude \"tex/[a\""), "{err}");
    let (code, _, err) = run(attache(&cache)
        .args(["put", "--store", &store, "--exclude-from"])
        .arg(t.path().join("no-such-ignore"))
        .arg(&root));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--exclude-from") && err.contains("no-such-ignore"),
        "{err}"
    );
    let (code, _, err) = run(attache(&cache)
        .env("ATTACHE_HASH__EXCLUDE", "/abs/*.tmp")
        .args(["put", "--store", &store])
        .arg(&root));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("hash.exclude") && err.contains("relative"),
        "{err}"
    );

    // Inclusion: only the files a pattern matches (by name, or by path from the root), an
    // exclusion still winning; from the config and the flags.
    let included = t.path().join("included.json");
    let (code, _, err) = run(attache(&cache)
        .env("ATTACHE_HASH__EXCLUDE", "*.tmp;sim/")
        .env("ATTACHE_HASH__INCLUDE", "*.ma")
        .args(["put", "--store", &store, "--include", "tex/*.png"])
        .args(["--exclude", "tex/backup/"])
        .arg(&root)
        .arg("-o")
        .arg(&included));
    assert_eq!(code, 0, "{err}");
    let paths = manifest_paths(&included);
    assert_eq!(paths, ["backup/shot.ma", "shot.ma", "tex/wood.png"]);
    let (code, _, err) = run(attache(&cache)
        .args(["put", "--store", &store, "--include", "tex/"])
        .arg(&root));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--include \"tex/\"") && err.contains("dir/**"),
        "{err}"
    );
}

/// An rclone filter file, read as rclone reads it: the first rule that matches decides, a
/// directory left out by a rule is not entered, and the rules come before the config's
/// exclusions; `get --filter` picks among a manifest's files the same way.
#[test]
fn put_and_get_follow_rclone_filter_rules_in_order() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    write_tree(
        &root,
        &[
            "renders/010/beauty.0001.exr",
            "renders/010/beauty.0001.tmp.exr",
            "renders/010/render.log",
            "comp/010/final.mov",
            "shots/010/comp/review.mov",
            "shots/010/notes.txt",
            "cache/sim.vdb",
            "keep.tmp",
        ],
    );
    // Read, it would fail the put: a link out of the root, in a directory a rule leaves out.
    std::os::unix::fs::symlink("/etc/hostname", root.join("cache/outside")).unwrap();
    let filters = t.path().join("filters.txt");
    std::fs::write(
        &filters,
        "# renders and movies, as rclone takes them\n; a comment too\n- *.tmp.exr\n+ /renders/**\n- cache/**\n+ *.mov\n+ keep.tmp\n- **\n",
    )
    .unwrap();
    let cache = t.path().join("cache-dir");
    let store = format!("file://{}", t.path().join("store").display());
    let manifest = t.path().join("m.json");
    let (code, _, err) = run(attache(&cache)
        .env("ATTACHE_HASH__EXCLUDE", "*.tmp")
        .args(["put", "--store", &store, "--filter-from"])
        .arg(&filters)
        .arg(&root)
        .arg("-o")
        .arg(&manifest));
    assert_eq!(code, 0, "{err}");
    let paths = manifest_paths(&manifest);
    assert_eq!(
        paths,
        [
            "comp/010/final.mov",
            "keep.tmp",
            "renders/010/beauty.0001.exr",
            "renders/010/render.log",
            "shots/010/comp/review.mov",
        ],
        "the first matching rule decides, before hash.exclude"
    );

    let dest = t.path().join("dest");
    let (code, _, err) = run(attache(&cache)
        .args(["get", "--store", &store, "--dest"])
        .arg(&dest)
        .args(["--filter", "+ /renders/**/*.exr", "--filter", "- **"])
        .arg(&manifest));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        files_under(&dest),
        [dest.join("renders/010/beauty.0001.exr")],
        "only the renders' frames"
    );

    let (code, _, err) = run(attache(&cache)
        .args(["put", "--store", &store, "--filter", "*.exr"])
        .arg(&root));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--filter \"*.exr\"") && err.contains("`+ PATTERN`"),
        "{err}"
    );
}

/// rclone reads `- renders/` as `- renders/**`: an earlier `+ renders/final.exr` takes that
/// one file, and no other file under `renders/` is sent or fetched (as `rclone lsf -R` lists).
#[test]
fn a_directory_rule_leaves_out_the_files_under_it_in_put_and_get() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    write_tree(
        &root,
        &[
            "renders/final.exr",
            "renders/wip.exr",
            "renders/beauty/b.exr",
            "top.txt",
        ],
    );
    let filters = t.path().join("filters.txt");
    std::fs::write(&filters, "+ renders/final.exr\n- renders/\n").unwrap();
    let cache = t.path().join("cache-dir");
    let store = format!("file://{}", t.path().join("store").display());
    let (filtered, all) = (t.path().join("filtered.json"), t.path().join("all.json"));
    for (manifest, with_filters) in [(&filtered, true), (&all, false)] {
        let mut put = attache(&cache);
        put.args(["put", "--store", &store]).arg(&root);
        if with_filters {
            put.arg("--filter-from").arg(&filters);
        }
        let (code, _, err) = run(put.arg("-o").arg(manifest));
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(manifest_paths(&filtered), ["renders/final.exr", "top.txt"]);

    let dest = t.path().join("dest");
    let (code, _, err) = run(attache(&cache)
        .args(["get", "--store", &store, "--dest"])
        .arg(&dest)
        .arg("--filter-from")
        .arg(&filters)
        .arg(&all));
    assert_eq!(code, 0, "{err}");
    let mut fetched = files_under(&dest);
    fetched.sort();
    assert_eq!(
        fetched,
        [dest.join("renders/final.exr"), dest.join("top.txt")]
    );
}

#[test]
fn put_dry_run_uploads_nothing_and_leaves_the_next_put_everything_to_do() {
    let t = tempfile::tempdir().unwrap();
    let src = small_src(t.path(), 3);
    let store = t.path().join("store");
    let put = |dry: bool| {
        let mut c = attache(&t.path().join("cache"));
        c.args([
            "put",
            "--json",
            "--store",
            &format!("file://{}", store.display()),
        ]);
        if dry {
            c.arg("--dry-run");
        }
        let (code, out, err) = run(c.arg(&src).arg("-o").arg(t.path().join("m.json")));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let v = put(true);
    assert_eq!(
        (&v["dry_run"], &v["upload"]["uploaded_objects"]),
        (&true.into(), &3.into()),
        "{v}"
    );
    assert!(files_under(&store).is_empty(), "{:?}", files_under(&store));
    let v = put(false);
    assert_eq!(
        v["upload"]["uploaded_objects"], 3,
        "the dry run recorded nothing as present: {v}"
    );
}

/// `cache.content_size` turns the content cache on: a second `get` into another directory
/// takes the objects from it (the store is gone meanwhile) and its summary says so;
/// `--no-content-cache` neither fills it nor takes from it.
#[test]
fn a_get_with_the_content_cache_on_needs_the_store_only_once() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    let get_with = |dest: &str, flags: &[&str]| {
        run(attache(&cache)
            .env("ATTACHE_CACHE__CONTENT_SIZE", "10MiB")
            .args(["get", "--store", &store])
            .args(flags)
            .arg(&manifest)
            .arg("--dest")
            .arg(t.path().join(dest)))
    };
    let get = |dest: &str| get_with(dest, &[]);
    // --no-content-cache: this run leaves the cache alone.
    let (code, _, err) = get_with("zero", &["--no-content-cache"]);
    assert_eq!(code, 0, "{err}");
    assert!(files_under(&cache.join("content")).is_empty());
    let (code, _, err) = get("one");
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("from the content cache"), "{err}");
    assert!(!files_under(&cache.join("content")).is_empty());
    // The store loses every object: only the content cache can serve them now.
    std::fs::rename(t.path().join("store"), t.path().join("store-gone")).unwrap();
    std::fs::create_dir(t.path().join("store")).unwrap();
    let (code, _, err) = get_with("not-from-the-cache", &["--no-content-cache"]);
    assert_eq!(
        code, 1,
        "--no-content-cache took objects from the cache: {err}"
    );
    let (code, _, err) = get("two");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("downloaded 0 objects (0 B), "), "{err}");
    assert!(err.contains(" from the content cache ("), "{err}");
    for f in files_under(&root) {
        let got = t.path().join("two").join(f.strip_prefix(&root).unwrap());
        assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&f).unwrap());
    }
    // The first directory's files were linked into the cache after they were named (a link
    // moves the ctime): the hash cache holds their stat from after it, so a sync into that
    // directory again trusts them without reading them.
    let (code, _, err) = get("one");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("downloaded 0 objects"), "{err}");
    assert!(!err.contains("read to check"), "{err}");
}

/// `attache cache` shows what each cache holds; `clear` makes the next run find it out again
/// (read the files, ask the store, fetch the objects); `trim` shrinks the content cache.
#[test]
fn attache_cache_shows_clears_and_trims_the_machine_s_caches() {
    let t = tempfile::tempdir().unwrap();
    // On a machine that has transferred nothing yet, looking and emptying create nothing.
    let fresh = t.path().join("fresh-cache");
    for args in [&["--json"][..], &["clear", "--all"]] {
        let (code, out, err) = run(attache(&fresh).arg("cache").args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        if args == ["--json"] {
            let u: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(u["hash_cache"]["entries"], 0, "{u}");
            assert_eq!(u["known_present"]["entries"], 0, "{u}");
        }
        assert!(
            !fresh.exists(),
            "attache cache {args:?} made {}",
            fresh.display()
        );
    }
    let src = small_src(t.path(), 3);
    // Older than the hash cache's racy window, so the put caches their hashes.
    std::thread::sleep(Duration::from_millis(1100));
    let (cache, store, manifest) = put_to_local_store(t.path(), &src);
    let (code, _, err) = run(attache(&cache)
        .env("ATTACHE_CACHE__CONTENT_SIZE", "10MiB")
        .args(["get", "--store", &store])
        .arg(&manifest)
        .arg("--dest")
        .arg(t.path().join("dest")));
    assert_eq!(code, 0, "{err}");
    let cache_cmd = |args: &[&str]| {
        let (code, out, err) = run(attache(&cache).arg("cache").args(args));
        (code, out, err)
    };
    let show = || {
        let (code, out, err) = cache_cmd(&["--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let u = show();
    assert_eq!(u["hash_cache"]["entries"], 6, "3 sources, 3 placed: {u}");
    assert_eq!(u["known_present"]["entries"], 3, "{u}");
    assert_eq!(u["known_present_stores"][0]["store"], store.as_str(), "{u}");
    assert_eq!(u["content"]["files"], 3, "{u}");
    assert_eq!(u["content"]["limit"], 0, "off in this run's settings: {u}");
    let (code, human, err) = cache_cmd(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        human.contains("6 files known")
            && human.contains("3 objects in 1 store (")
            && human.contains("copying stores   none measured yet"),
        "{human}"
    );

    let put = || {
        let (code, out, err) = run(attache(&cache)
            .args(["put", "--json", "--store", &store])
            .arg(&src)
            .arg("-o")
            .arg(t.path().join("m2.json")));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    // Another store's entries are not this one's.
    let (code, out, err) = cache_cmd(&["clear", "--known-present", "--store", "file:///elsewhere"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("forgot 0 objects"), "{out}");
    // ...and it says which stores it holds, for a typo; a store that is no URL is refused.
    assert!(
        out.contains(&format!("(it holds objects of {store}")),
        "{out}"
    );
    let (code, _, err) = cache_cmd(&["clear", "--known-present", "--store", "attache-test"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--store attache-test: "), "{err}");
    let (code, out, err) = cache_cmd(&["clear", "--known-present", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("forgot 3 objects"), "{out}");
    let v = put();
    assert_eq!(
        (
            &v["upload"]["known_objects"],
            &v["upload"]["present_objects"]
        ),
        (&0.into(), &3.into()),
        "the store is asked again: {v}"
    );
    assert_eq!(v["hash"]["hashed_files"], 0, "no file read: {v}");
    let (code, _, err) = cache_cmd(&["clear", "--hash"]);
    assert_eq!(code, 0, "{err}");
    let v = put();
    assert_eq!(v["hash"]["hashed_files"], 3, "every file read again: {v}");

    // The databases keep what still exists; the content cache is off: trimmed to a size only
    // when one is given, then emptied.
    let (code, out, err) = cache_cmd(&["trim"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "hash cache: forgot 0 files under directories that no longer exist (0 of them)"
        ) && out.contains("content cache: off"),
        "{out}"
    );
    let (code, out, err) = cache_cmd(&["trim", "--to", "1B"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed 3 objects"), "{out}");
    let (code, _, err) = cache_cmd(&["clear"]);
    assert_eq!(code, 2, "clear what? {err}");
    // Stores measured to copy parts on completion (see transfer_s3.rs,
    // a_store_that_completes_slowly_gets_large_files_in_one_put): this one twice in a row,
    // another once.
    let now_ms = attache::clock::now_ms();
    let other = "s3://other region=us-east-1";
    measured_copying(
        &cache,
        &[(&store, &[now_ms - 3_600_000, now_ms]), (other, &[now_ms])],
    );
    let (code, human, err) = cache_cmd(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        human.contains("2 stores measured, 1 copying parts on completion")
            && human.contains("one PUT per file until 20")
            && human.contains(&format!("  {store}\n")),
        "{human}"
    );
    let u = show();
    // By identity: file:// before s3://.
    let until = u["copying_stores"]["stores"][0]["copies_until_ms"].as_i64();
    assert_eq!(until, Some(now_ms + 86_400_000), "a day from the last: {u}");
    assert!(
        u["copying_stores"]["stores"][1]["copies_until_ms"].is_null(),
        "{u}"
    );
    for (other, forgot) in [
        ("file:///elsewhere", "0 stores"),
        (store.as_str(), "1 store"),
    ] {
        let (code, out, err) = cache_cmd(&["clear", "--copying-stores", "--store", other]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(&format!("forgot the measurements of {forgot}")),
            "{out}"
        );
    }
    assert_eq!(
        show()["copying_stores"]["stores"].as_array().unwrap().len(),
        1
    );
    // `trim` forgets a store measured only over a week ago.
    let trim_copying = || {
        let (code, out, err) = cache_cmd(&["trim"]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .find(|l| l.starts_with("copying stores: "))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string()
    };
    assert!(trim_copying().contains("forgot 0 stores"));
    measured_copying(&cache, &[(other, &[now_ms - 8 * 86_400_000])]);
    assert!(trim_copying().contains("forgot 1 store "));
    assert_eq!(show()["copying_stores"]["stores"], serde_json::json!([]));
    // A partial download a cancelled get left (see interrupt_a_large_get_then_get_again).
    let kept = cache.join("partial-downloads");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(kept.join(format!("{}-9.part", "0".repeat(32))), "123456789").unwrap();
    assert_eq!(show()["partial_downloads"]["files"], 1);
    let (code, _, err) = cache_cmd(&["clear", "--all"]);
    assert_eq!(code, 0, "{err}");
    let u = show();
    assert_eq!(
        (
            &u["hash_cache"]["entries"],
            &u["known_present"]["entries"],
            &u["content"]["files"],
            &u["partial_downloads"]["files"],
            &u["copying_stores"]["stores"]
        ),
        (
            &0.into(),
            &0.into(),
            &0.into(),
            &0.into(),
            &serde_json::json!([])
        ),
        "{u}"
    );
}

/// `get --include/--exclude` fetches only some of a manifest's files (the frames, not the
/// logs; not a scratch directory), and says how many it left out; the config's `hash.*`
/// patterns, which are about scanning, do not apply.
#[test]
fn get_picks_among_a_manifest_s_files_with_include_and_exclude() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    write_tree(
        &root,
        &[
            "f1.exr",
            "f2.exr",
            "render.log",
            "tmp/f3.exr",
            "comp/final.mov",
        ],
    );
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    let dest = t.path().join("dest");
    let (code, _, err) = run(attache(&cache)
        .env("ATTACHE_HASH__EXCLUDE", "*.exr")
        .args([
            "get",
            "--store",
            &store,
            "--include",
            "*.exr",
            "--include",
            "comp/*.mov",
        ])
        .args(["--exclude", "tmp/"])
        .arg(&manifest)
        .arg("--dest")
        .arg(&dest));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 left out by the filters"), "{err}");
    let other = t.path().join("other");
    let v = get_json(&cache, &store, &manifest, &other, &["--exclude", "*.exr"]);
    assert_eq!((&v["left_out"], &v["files"]), (&3.into(), &2.into()), "{v}");
    let mut got: Vec<String> = files_under(&dest)
        .iter()
        .map(|p| p.strip_prefix(&dest).unwrap().display().to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["comp/final.mov", "f1.exr", "f2.exr"]);
}

/// get's --min-size and --min-age (and their --max- pairs) go by the manifest's sizes and
/// times: tiny's empty.txt (0 bytes, 1700000000 s), hello.txt (12, …01), sub/… (10, …02).
#[test]
fn get_picks_by_the_manifest_s_sizes_and_times() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    let dest = t.path().join("dest");
    let bounds = ["--min-size", "1B", "--min-age", "2023-11-14T22:13:21Z"];
    let v = get_json(&cache, &store, &manifest, &dest, &bounds);
    assert_eq!((&v["left_out"], &v["files"]), (&2.into(), &1.into()), "{v}");
    assert_eq!(files_under(&dest), [dest.join("hello.txt")]);
    let v = get_json(&cache, &store, &manifest, &dest, &["--max-size", "10B"]);
    assert_eq!((&v["left_out"], &v["files"]), (&1.into(), &2.into()), "{v}");
}

#[test]
fn get_dry_run_says_what_it_would_fetch_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), "content a").unwrap();
    std::fs::write(root.join("sub/b.txt"), "content b").unwrap();
    std::fs::write(root.join("sub/copy-of-a.txt"), "content a").unwrap();
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    let dest = t.path().join("dest");
    let dry = || get_json(&cache, &store, &manifest, &dest, &["-n"]);

    // Into a directory that does not exist: all of it, one object per content.
    let v = dry();
    assert_eq!(v["dry_run"], true, "{v}");
    let d = &v["download"];
    assert_eq!(
        (&d["files"], &d["objects"], &d["copied_files"]),
        (&3.into(), &2.into(), &1.into()),
        "{v}"
    );
    assert_eq!(d["downloaded_bytes"], 18, "{v}");
    assert!(!dest.exists(), "a dry run created the destination");

    // One file already in place (with another mtime), one with other content.
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("a.txt"), "content a").unwrap();
    filetime::set_file_mtime(
        dest.join("a.txt"),
        filetime::FileTime::from_unix_time(1_000_000, 0),
    )
    .unwrap();
    std::fs::create_dir_all(dest.join("sub")).unwrap();
    std::fs::write(dest.join("sub/b.txt"), "other b").unwrap();
    let v = dry();
    assert_eq!(v["unchanged_files"], 1, "{v}");
    assert_eq!(v["replaced_files"], 1, "sub/b.txt has other content: {v}");
    assert_eq!(v["download"]["files"], 2, "{v}");
    assert_eq!(
        std::fs::read_to_string(dest.join("sub/b.txt")).unwrap(),
        "other b"
    );
    let mtime =
        filetime::FileTime::from_last_modification_time(&dest.join("a.txt").metadata().unwrap());
    assert_eq!(mtime.unix_seconds(), 1_000_000, "a dry run set an mtime");

    // The real run does what the dry run said.
    let v = get_json(&cache, &store, &manifest, &dest, &[]);
    assert_eq!(
        (&v["unchanged_files"], &v["download"]["files"]),
        (&1.into(), &2.into()),
        "{v}"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("sub/b.txt")).unwrap(),
        "content b"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_get_killed_mid_file_leaves_no_file_and_the_next_fetches_only_the_rest() {
    interrupt_a_large_get_then_get_again(libc::SIGKILL, 8, 16);
}

/// Killed with no chance to record how far its part in flight came, a get still keeps that
/// part's progress to its last 4 MiB mark: parts of 32 MiB, killed 8 MiB into the first.
#[cfg(target_os = "linux")]
#[test]
fn a_get_killed_mid_part_keeps_what_that_part_wrote() {
    let at_kill = interrupt_a_large_get_then_get_again(libc::SIGKILL, 32, 8);
    assert!(
        !at_kill.is_multiple_of(32 << 20),
        "no record inside the part in flight: {at_kill} bytes recorded"
    );
}

#[test]
fn ctrl_c_during_a_large_get_exits_130_and_the_next_fetches_only_the_rest() {
    interrupt_a_large_get_then_get_again(libc::SIGINT, 8, 16);
}

/// A command held before its first request, here by a local database another process keeps
/// locked (waited for up to 30 s, as a disk stalled in a flush would hold it), is still
/// cancelled at once by Ctrl-C: get, put and hash held by the hash cache, get and put by the
/// known-present index. Nothing is left in the get's destination, nothing stored.
#[test]
fn ctrl_c_cancels_a_command_held_before_its_first_request() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("shots")).unwrap();
    std::fs::write(root.join("shots/a.exr"), b"frame").unwrap();
    let (_, store, manifest) = put_to_local_store(t.path(), &root);
    let dest = t.path().join("dest");
    let other_store = format!("file://{}", t.path().join("other-store").display());
    let get: Vec<std::ffi::OsString> = vec![
        "get".into(),
        "--store".into(),
        store.into(),
        manifest.into(),
        "--dest".into(),
        dest.clone().into(),
    ];
    let put: Vec<std::ffi::OsString> = vec![
        "put".into(),
        "--store".into(),
        other_store.into(),
        root.clone().into(),
    ];
    let hash: Vec<std::ffi::OsString> = vec!["hash".into(), root.clone().into()];
    let held_files = [
        ("hash-cache-v1.sqlite3", vec![&get, &put, &hash]),
        ("known-present-v2.sqlite3", vec![&get, &put]),
    ];
    for (i, (file, commands)) in held_files.into_iter().enumerate() {
        let cache = t.path().join(format!("held-cache-{i}"));
        std::fs::create_dir_all(&cache).unwrap();
        let _held = lock_database(&cache.join(file));
        for args in commands {
            let name = format!("{} held by {file}", args[0].display());
            let mut child = attache(&cache)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            assert!(
                child.try_wait().unwrap().is_none(),
                "{name}: did not wait for the lock"
            );
            let signalled = Instant::now();
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let out = child.wait_with_output().unwrap();
            let took = signalled.elapsed();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(130), "{name}: {err}");
            // Waiting for the lock would take 30 s; the cancel's own figure is the scripted
            // tests'.
            assert!(
                took < Duration::from_secs(5),
                "{name}: exited {took:?} after Ctrl-C"
            );
            eprintln!("{name}: exited 130 {took:?} after Ctrl-C");
        }
    }
    assert_eq!(
        files_under(&dest),
        Vec::<std::path::PathBuf>::new(),
        "the get left a file in its destination"
    );
    assert!(
        files_under(&t.path().join("other-store")).is_empty(),
        "the put stored something"
    );
}

/// A 64 MiB file fetched in parts of `part_mib` MiB one at a time (16 MiB/s) is stopped by
/// `signal` once the partial download's record says `kill_at_mib` MiB landed: nothing is in the
/// destination, and the next get fetches only what did not land, the kept bytes verified with
/// the rest. Returns the bytes recorded when the signal was sent.
fn interrupt_a_large_get_then_get_again(
    signal: libc::c_int,
    part_mib: u64,
    kill_at_mib: u64,
) -> u64 {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("shots")).unwrap();
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("shots/plate.exr"), &data).unwrap();
    let (cache, store, manifest) = put_to_local_store(t.path(), &root);
    let dest = t.path().join("dest");
    let mut child = attache(&cache)
        .env("ATTACHE_BANDWIDTH__DOWNLOAD", "16MiB/s")
        .env("ATTACHE_TRANSFER__MAX_PARTS_IN_FLIGHT", "1")
        .env("ATTACHE_TRANSFER__PART_SIZE", format!("{part_mib}MiB"))
        .args(["get", "--store", &store])
        .arg(&manifest)
        .arg("--dest")
        .arg(&dest)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The bytes the record says landed: one part in flight at a time, so its `START END`
    // lines (after a header) reach END contiguously from 0.
    let kept = cache.join("partial-downloads");
    let landed = || {
        files_under(&kept)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "landed"))
            .flat_map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let ends: Vec<u64> = text
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(' ')?.1.parse().ok())
                    .collect();
                ends
            })
            .max()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let at_kill = loop {
        let at = landed();
        if at >= kill_at_mib << 20 {
            break at;
        }
        assert!(Instant::now() < deadline, "nothing landed");
        assert!(child.try_wait().unwrap().is_none(), "the get ended early");
        std::thread::sleep(Duration::from_millis(10));
    };
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    if signal == libc::SIGINT {
        assert_eq!(status.code(), Some(130), "{status:?}");
    }
    assert_eq!(
        files_under(&dest),
        Vec::<std::path::PathBuf>::new(),
        "a partial or temporary file was left in the destination"
    );
    assert_eq!(files_under(&kept).len(), 2, "the .part and its record");
    let (code, out, err) = run(attache(&cache).args(["cache", "--json"]));
    assert_eq!(code, 0, "{err}");
    let u: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(u["partial_downloads"]["files"], 1, "{u}");
    assert!(
        u["partial_downloads"]["bytes"].as_u64().unwrap() >= at_kill,
        "{u}"
    );

    // A dry run says what the get will fetch.
    let dry = get_json(&cache, &store, &manifest, &dest, &["--dry-run"]);
    let v = get_json(&cache, &store, &manifest, &dest, &[]);
    let d = &v["download"];
    let (resumed, fetched) = (
        d["resumed_bytes"].as_u64().unwrap(),
        d["downloaded_bytes"].as_u64().unwrap(),
    );
    assert_eq!(
        (
            &dry["download"]["resumed_bytes"],
            &dry["download"]["downloaded_bytes"]
        ),
        (&d["resumed_bytes"], &d["downloaded_bytes"]),
        "{dry}"
    );
    assert!(
        resumed >= at_kill,
        "what was recorded when the signal came was kept ({at_kill} bytes): {v}"
    );
    assert_eq!(resumed + fetched, 64 << 20, "no byte fetched twice: {v}");
    assert_eq!(std::fs::read(dest.join("shots/plate.exr")).unwrap(), data);
    assert_eq!(
        files_under(&kept),
        Vec::<std::path::PathBuf>::new(),
        "the partial download became the file"
    );
    at_kill
}

#[test]
fn ctrl_c_during_a_multipart_put_exits_130_and_aborts_the_upload() {
    cancel_a_multipart_put_with(libc::SIGINT);
}

#[test]
fn sigterm_during_a_multipart_put_cancels_it_the_same_way() {
    cancel_a_multipart_put_with(libc::SIGTERM);
}

/// Starts `attache put` of a sparse 2 GiB file (`dir/root`, manifest to `dir/m.json`) at
/// 100 MiB/s and returns once two parts were sent.
fn start_multipart_put(
    s3: &TestS3,
    dir: &std::path::Path,
    cache: &std::path::Path,
) -> std::process::Child {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::File::create(root.join("huge.bin"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let child = attache(cache)
        .envs(s3.env())
        .env("ATTACHE_BANDWIDTH__UPLOAD", "100MiB/s")
        .args(["put", "--store", &s3.store_url("p"), "-o"])
        .arg(dir.join("m.json"))
        .arg(&root)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3
        .stats
        .requests_matching(|r| r.query.contains("partNumber"))
        < 2
    {
        assert!(Instant::now() < deadline, "no part was uploaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn cancel_a_multipart_put_with(signal: libc::c_int) {
    let s3 = TestS3::start_background();
    let t = tempfile::tempdir().unwrap();
    let mut child = start_multipart_put(&s3, t.path(), &t.path().join("cache"));
    let sent = Instant::now();
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(130), "signal {signal}: {status:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(s3.open_multipart_uploads(), 0, "multipart upload left open");
    assert!(
        !t.path().join("m.json").exists(),
        "no manifest for a cancelled put"
    );
    eprintln!("put exited 130 {took:?} after signal {signal}");
}

/// `attache put --json` of a one-file tree under `dir` to the test store's prefix `p`, with the
/// cache dir `cache`: another run to the same store, uploading another file. Its report.
fn put_other_file(s3: &TestS3, dir: &Path, cache: &Path) -> serde_json::Value {
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("a.txt"), b"a").unwrap();
    let (code, out, err) = run(attache(cache)
        .envs(s3.env())
        .args(["put", "--json", "--store", &s3.store_url("p"), "-o"])
        .arg(dir.join("small.json"))
        .arg(&small));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// A put killed mid-upload (SIGKILL: no chance to abort) leaves its multipart upload open and
/// recorded; a put of other files leaves it alone, and the next put of the file resumes it,
/// sends only the parts the store lacks, and says so.
#[test]
fn a_put_killed_mid_upload_is_resumed_by_the_next_put() {
    let s3 = TestS3::start_background();
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let data = big_file_in_root(t.path(), 251);
    let put = |limit: &str| multipart_put(&s3, t.path(), &cache, limit);
    kill_once_parts_landed(put("10MiB/s"), &s3, 2);
    assert_eq!(s3.open_multipart_uploads(), 1, "a kill cannot abort");
    // A part the server had whole when the connection went is still written.
    std::thread::sleep(Duration::from_millis(200));
    let stored = s3.multipart_part_files();

    // A put of other files meanwhile leaves it alone: the kill was no cancel, and the upload
    // waits `transfer.resume_for` for a run that resumes it.
    let v = put_other_file(&s3, t.path(), &cache);
    assert_eq!(v["upload"]["aborted_leftover_uploads"], 0, "{v}");
    assert_eq!(
        s3.open_multipart_uploads(),
        1,
        "a killed put's upload was aborted"
    );

    let parts_before = s3
        .stats
        .requests_matching(|r| r.query.contains("partNumber"));
    let (code, _, err) = run(&mut put("0"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("resumed 1 multipart upload(s) an earlier run left open"),
        "{err}"
    );
    let sent = s3
        .stats
        .requests_matching(|r| r.query.contains("partNumber"))
        - parts_before;
    assert!(
        sent <= 8 - stored.min(8),
        "{stored} of 8 parts were in the store, {sent} sent again"
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert!(files_under(&cache.join("open-uploads")).is_empty());
    let m = attache::manifest::decode(&std::fs::read(t.path().join("m.json")).unwrap()).unwrap();
    let hash = m.entries()[0].hash;
    assert!(
        s3.read_object(&format!("p/Data/{hash}.xxh128")).unwrap() == data,
        "the object is not the file"
    );
}

/// Writes `dir`/root/big.bin, 40 MiB of bytes cycling below `modulus`; returns them.
fn big_file_in_root(dir: &Path, modulus: u32) -> Vec<u8> {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let data: Vec<u8> = (0..40u32 << 20).map(|i| (i % modulus) as u8).collect();
    std::fs::write(root.join("big.bin"), &data).unwrap();
    data
}

/// `attache put` of `dir`/root to `s3`'s prefix `p` with the cache dir `cache`, in 5 MiB parts,
/// sending at most `limit` (`0`: no limit).
fn multipart_put(s3: &TestS3, dir: &Path, cache: &Path, limit: &str) -> Command {
    let mut c = attache(cache);
    c.envs(s3.env())
        .env("ATTACHE_TRANSFER__PART_SIZE", "5MiB")
        .env("ATTACHE_TRANSFER__MULTIPART_THRESHOLD", "5MiB")
        .env("ATTACHE_BANDWIDTH__UPLOAD", limit)
        .args(["put", "--store", &s3.store_url("p"), "-o"])
        .arg(dir.join("m.json"))
        .arg(dir.join("root"));
    c
}

/// Starts `put` and SIGKILLs it (a crash: no chance to abort) once `parts` of its parts are
/// in the store.
fn kill_once_parts_landed(mut put: Command, s3: &TestS3, parts: usize) {
    let mut child = put.stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.multipart_part_files() < parts {
        assert!(Instant::now() < deadline, "no part was uploaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
}

/// A killed put's record says when its run last landed a part (the record's modification
/// time), not only when it started: the upload is kept for `transfer.resume_for` from then (a
/// long upload killed late is still resumed), and `attache cleanup` right after the kill
/// takes its parts for its own, not another machine's, and aborts it.
#[test]
fn a_killed_put_is_kept_from_its_last_part_and_cleanup_right_after_aborts_it() {
    let s3 = TestS3::start_background();
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    big_file_in_root(t.path(), 241);
    // One 5 MiB part at a time at 4 MiB/s: a part lands every 1.25 s.
    let mut put = multipart_put(&s3, t.path(), &cache, "4MiB/s");
    put.env("ATTACHE_TRANSFER__MAX_PARTS_IN_FLIGHT", "1");
    kill_once_parts_landed(put, &s3, 4);
    assert_eq!(s3.open_multipart_uploads(), 1, "a kill cannot abort");
    let records = files_under(&cache.join("open-uploads"));
    assert_eq!(records.len(), 1, "{records:?}");
    let mut record = read_json(&records[0]);
    let started = record["started_at"].as_u64().unwrap();
    let modified =
        filetime::FileTime::from_last_modification_time(&std::fs::metadata(&records[0]).unwrap());
    assert!(
        modified.unix_seconds() as u64 >= started + 2,
        "the record's time ({}) is its last part's, seconds after its start ({started})",
        modified.unix_seconds()
    );
    // `attache cache` says what becomes of it: resumed by the next put of the file, or, past
    // `transfer.resume_for`, aborted by the next put to the store.
    let (code, out, err) = run(attache(&cache).arg("cache"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1 multipart uploads recorded open: 0 running, 1 kept to resume"),
        "{out}"
    );
    let (code, out, err) = run(attache(&cache)
        .env("ATTACHE_TRANSFER__RESUME_FOR", "0s")
        .args(["cache", "--json"]));
    assert_eq!(code, 0, "{err}");
    let u: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(u["open_uploads"], 1, "{u}");
    assert_eq!(
        u["open_upload_states"],
        serde_json::json!({"running": 0, "kept": 0, "to_abort": 1}),
        "{u}"
    );

    // As if the put had started two days ago and run until now: the next put to the store
    // keeps the upload, for `resume_for` (24h) from its last part.
    record["started_at"] = (started - 2 * 86_400).into();
    std::fs::write(&records[0], record.to_string()).unwrap();
    filetime::set_file_mtime(&records[0], modified).unwrap();
    let v = put_other_file(&s3, t.path(), &cache);
    assert_eq!(v["upload"]["aborted_leftover_uploads"], 0, "{v}");
    assert_eq!(
        s3.open_multipart_uploads(),
        1,
        "a killed put's upload was aborted"
    );

    // Its parts landed before its last heartbeat (or within seconds of it): the killed run's
    // own, not another machine's at work, so `cleanup` aborts it, naming it.
    let cleanup = |flag: &str| {
        run(attache(&cache)
            .envs(s3.env())
            .args(["cleanup", flag, "--store", &s3.store_url("p")]))
    };
    let (code, _, err) = cleanup("--dry-run");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("would abort p/Data/")
            && err.contains("left open by an earlier run on this machine"),
        "{err}"
    );
    let (code, out, err) = cleanup("--json");
    assert_eq!(code, 0, "{err}");
    let cleaned: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cleaned["recorded_aborted"], 1, "{cleaned}\n{err}");
    let named = &cleaned["recorded"][0];
    assert!(
        named["key"].as_str().unwrap().starts_with("p/Data/") && named["upload_id"].is_string(),
        "{cleaned}"
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert!(files_under(&cache.join("open-uploads")).is_empty());
    let (_, out, _) = run(attache(&cache).arg("cache"));
    assert!(out.contains("0 multipart uploads recorded open\n"), "{out}");
}

/// A cancelled put does not wait long for a store that does not answer its abort: the upload
/// stays recorded in the cache dir, and the next put to that store aborts it.
#[test]
fn an_abort_the_store_does_not_answer_is_repeated_by_the_next_put() {
    let s3 = TestS3::start_background();
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    // Only the abort (DELETE ?uploadId) is throttled: every try gets 503 SlowDown.
    s3.faults
        .only_for(|m, k| m == http::Method::DELETE && k.contains("/Data/"));
    s3.faults.slow_down_for(Duration::from_secs(600));
    let mut child = start_multipart_put(&s3, t.path(), &cache);
    let sent = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(130), "{status:?}");
    // The abort gets half a second once the parts in flight have settled (up to 1 s).
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(
        s3.open_multipart_uploads(),
        1,
        "the store refused the abort"
    );
    let records = files_under(&cache.join("open-uploads"));
    assert_eq!(records.len(), 1, "{records:?}");
    let record = read_json(&records[0]);
    assert_eq!(record["url"], s3.store_url("p"), "{record}");
    let endpoint = format!("endpoint={}", s3.endpoint.trim_end_matches('/'));
    assert!(
        record["store"].as_str().unwrap().ends_with(&endpoint),
        "{record}"
    );
    assert_eq!(
        record["upload_id"],
        s3.multipart_upload_ids()[0].as_str(),
        "{record}"
    );
    assert_eq!(
        record["given_up"], true,
        "a cancel's abort to repeat: {record}"
    );

    // The store answers again: any later put to it aborts the upload.
    s3.faults.clear();
    let v = put_other_file(&s3, t.path(), &cache);
    assert_eq!(v["upload"]["aborted_leftover_uploads"], 1, "{v}");
    assert_eq!(
        s3.open_multipart_uploads(),
        0,
        "the leftover was not aborted"
    );
    assert_eq!(s3.multipart_part_files(), 0);
    assert_eq!(
        files_under(&cache.join("open-uploads")),
        Vec::<std::path::PathBuf>::new()
    );
    eprintln!("put exited 130 {took:?} after SIGINT; the next put aborted the leftover");
}

#[test]
fn cleanup_reports_what_it_did_and_refuses_a_bad_age() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let store = format!("file://{}", t.path().join("store").display());
    let (code, _, err) =
        run(attache(&cache).args(["cleanup", "--store", &store, "--older-than", "soon"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--older-than \"soon\""), "{err}");
    // A bare number is not taken as seconds: meant as days, it would abort running uploads.
    let (code, _, err) =
        run(attache(&cache).args(["cleanup", "--store", &store, "--older-than", "3"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--older-than 3: give a unit, e.g. 3d"),
        "{err}"
    );
    let (code, _, err) = run(attache(&cache).args(["cleanup", "--store", &store]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("0 open multipart upload(s) under Data/: aborted 0 started over 24h ago"),
        "{err}"
    );
    let (code, out, err) =
        run(attache(&cache).args(["cleanup", "--json", "--dry-run", "--store", &store]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["listed"].as_u64(), v["dry_run"].as_bool()),
        (Some(0), Some(true)),
        "{v}"
    );
}

/// The environment of `s3` without `skip`, and with no AWS or proxy settings of the machine
/// running the tests (credentials, profile, region, instance metadata, `HTTPS_PROXY`…).
fn s3_env_without(s3: &TestS3, skip: &[&str], home: &Path) -> Command {
    let mut c = attache(&home.join("cache"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.to_ascii_uppercase().ends_with("_PROXY") {
            c.env_remove(k);
        }
    }
    c.env("HOME", home).envs(
        s3.env()
            .into_iter()
            .filter(|(k, _)| !skip.contains(&k.as_str())),
    );
    c
}

/// `dir/src` with `n` small files (`f0`, `f1`, …), all different.
fn small_src(dir: &Path, n: usize) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..n {
        std::fs::write(src.join(format!("f{i}")), format!("content {i}")).unwrap();
    }
    src
}

#[test]
fn a_store_that_cannot_be_used_says_why_without_retrying_in_vain() {
    let s3 = TestS3::start_background();
    let t = tempfile::tempdir().unwrap();
    let src = small_src(t.path(), 2);
    let manifest = t.path().join("m.json");
    let no_debug_dump = |err: &str| {
        assert!(!err.contains("DispatchFailure("), "{err}");
        assert!(!err.contains("region from IMDS"), "{err}");
    };

    // `put --no-cache` of the tree to `store`, run by `c`.
    let put_with = |c: &mut Command, store: &str| {
        run(c
            .args(["put", "--no-cache", "--store", store])
            .arg(&src)
            .arg("-o")
            .arg(&manifest))
    };
    let put = |store: &str| {
        let mut c = s3_env_without(&s3, &[], t.path());
        put_with(c.env("ATTACHE_S3__RETRY_ATTEMPTS", "3"), store)
    };

    // A bucket that does not exist: named as such, not as missing objects, and not retried.
    let (code, _, err) = put("s3://no-such-bucket/p");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert!(err.contains("check the bucket name"), "{err}");
    assert!(s3.stats.requests_of("PUT") <= 2, "{:?}", s3.stats.log());
    no_debug_dump(&err);
    // A wrong secret: what it needs, not a generic "check the credentials".
    let (code, _, err) = put_with(
        s3_env_without(&s3, &[], t.path()).env("ATTACHE_S3__SECRET_ACCESS_KEY", "wrong-secret"),
        &s3.store_url("p"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("SignatureDoesNotMatch (needs the secret key that belongs to this access key"),
        "{err}"
    );
    let (code, _, err) = put(&s3.store_url("p"));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(s3_env_without(&s3, &[], t.path())
        .args(["get", "--store", "s3://no-such-bucket/p"])
        .arg(&manifest)
        .arg("--dest")
        .arg(t.path().join("dest")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert!(!err.contains("must be uploaded again"), "{err}");
    // check, which asks with a HEAD per object (bare 404s from a bucket that is not there):
    // the bucket named, not every object reported missing; so for a share not mounted.
    for (store, says) in [
        (
            "s3://no-such-bucket/p".to_string(),
            "no such bucket".to_string(),
        ),
        (
            format!("file://{}", t.path().join("not-mounted").display()),
            "not-mounted does not exist (is the share mounted?".to_string(),
        ),
    ] {
        let (code, out, err) = run(s3_env_without(&s3, &[], t.path())
            .args(["check", "--store", &store])
            .arg(&manifest));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(&says), "{err}");
        assert!(!out.contains("missing"), "{out}");
    }

    // No credentials anywhere: said at once, with what to set; nothing reaches the store.
    s3.stats.reset();
    let mut c = s3_env_without(
        &s3,
        &["ATTACHE_S3__ACCESS_KEY_ID", "ATTACHE_S3__SECRET_ACCESS_KEY"],
        t.path(),
    );
    let (code, _, err) = put_with(
        c.env("AWS_EC2_METADATA_DISABLED", "true"),
        &s3.store_url("p"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no credentials: set s3.access_key_id"),
        "{err}"
    );
    assert_eq!(s3.stats.requests(), 0, "{:?}", s3.stats.log());
    no_debug_dump(&err);

    // No credentials, and the instance metadata service refuses (turned off on an EC2
    // instance, or a proxy answering for its address): said at once, asked once, no warning
    // with a debug dump for each retry.
    let (imds, asked) = refusing_http_server();
    let mut c = s3_env_without(
        &s3,
        &["ATTACHE_S3__ACCESS_KEY_ID", "ATTACHE_S3__SECRET_ACCESS_KEY"],
        t.path(),
    );
    c.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)
        .env("ATTACHE_S3__RETRY_ATTEMPTS", "3");
    let (code, _, err) = put_with(&mut c, &s3.store_url("p"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the EC2 instance metadata service refused"),
        "{err}"
    );
    assert!(err.contains("set s3.access_key_id"), "{err}");
    assert!(!err.contains("WARN"), "{err}");
    // One put per file at most, each asking IMDS for a token once (the cache of credentials
    // keeps no failure): retried, there would be 3 rounds of 2 SDK attempts.
    let asked = asked.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&asked), "IMDS asked {asked} times: {err}");
    assert_eq!(s3.stats.requests(), 0, "{:?}", s3.stats.log());
    no_debug_dump(&err);

    // A store that is down: named, with what to check.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut c = s3_env_without(&s3, &[], t.path());
    c.env("ATTACHE_S3__ENDPOINT_URL", &down)
        .env("ATTACHE_S3__RETRY_ATTEMPTS", "1");
    let (code, _, err) = put_with(&mut c, &s3.store_url("p"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot reach {down}: check s3.endpoint_url")),
        "{err}"
    );
    no_debug_dump(&err);
    // With --json the failure is on stdout too, saying whether running the command again as
    // it is may succeed: yes for a store that is down, no for a bucket that does not exist.
    let json_failure = |endpoint: &str, store: &str| {
        let mut c = s3_env_without(&s3, &[], t.path());
        c.env("ATTACHE_S3__ENDPOINT_URL", endpoint)
            .env("ATTACHE_S3__RETRY_ATTEMPTS", "1")
            .args(["put", "--no-cache", "--json", "--store", store])
            .arg(&src);
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 1, "{err}");
        serde_json::from_str::<serde_json::Value>(out.trim())
            .unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let v = json_failure(&down, &s3.store_url("p"));
    assert_eq!(
        (&v["exit_code"], &v["retryable"]),
        (&1.into(), &true.into()),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("cannot reach"), "{v}");
    let v = json_failure(&s3.endpoint, "s3://no-such-bucket/p");
    assert_eq!(v["retryable"], false, "{v}");

    // An endpoint that is not an S3 server (a web server, a proxy: 404 to everything): the
    // PUT's status and what to check, not a content object "deleted from the store".
    let (web, _) = http_server_answering("404 Not Found");
    let mut c = s3_env_without(&s3, &[], t.path());
    c.env("ATTACHE_S3__ENDPOINT_URL", &web)
        .env("ATTACHE_S3__RETRY_ATTEMPTS", "1");
    let (code, _, err) = put_with(&mut c, &s3.store_url("p"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("PUT") && err.contains("HTTP 404"), "{err}");
    assert!(err.contains("is it an S3 server?"), "{err}");
    assert!(!err.contains("must be uploaded again"), "{err}");
}

#[test]
fn a_result_file_that_cannot_be_written_is_refused_before_any_transfer() {
    let s3 = TestS3::start_background();
    let t = tempfile::tempdir().unwrap();
    let src = small_src(t.path(), 3);
    let store = s3.store_url("p");
    let put = |o: &Path| {
        run(s3_env_without(&s3, &[], t.path())
            .args(["put", "--store", &store])
            .arg(&src)
            .arg("-o")
            .arg(o))
    };
    // A directory that does not exist (a typo): exit 2 before a byte is sent.
    let (code, _, err) = put(&t.path().join("no-such-dir/m.json"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no-such-dir") && err.contains("cannot write in"),
        "{err}"
    );
    assert!(!err.contains(".attache-tmp-"), "{err}");
    // A directory given for the file.
    let (code, _, err) = put(t.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a directory"), "{err}");
    // Nor does a submit publish manifests whose attachments it could not write.
    let (code, _, err) = run(s3_env_without(&s3, &[], t.path())
        .args([
            "submit",
            "--farm-id",
            "farm-1",
            "--queue-id",
            "queue-1",
            "--store",
            &store,
        ])
        .arg(&src)
        .arg("-o")
        .arg(t.path().join("no-such-dir/attachments.json")));
    assert_eq!(code, 2, "{err}");
    assert_eq!(s3.stats.requests(), 0, "{:?}", s3.stats.log());
    // /dev/null is written into.
    let (code, _, err) = put(Path::new("/dev/null"));
    assert_eq!(code, 0, "{err}");
}

/// An HTTP server that answers 403 to every request, and the count of requests: the EC2
/// instance metadata service where it is turned off.
fn refusing_http_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    http_server_answering("403 Forbidden")
}

/// An HTTP server that answers `status` to every request, and the count of requests.
fn http_server_answering(
    status: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while head.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = conn.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (url, asked)
}

#[test]
fn with_an_endpoint_and_no_region_instance_metadata_is_never_asked() {
    // The SDK would ask the EC2 metadata service for a region, 4 times with 1 s timeouts,
    // before each command on a machine that is not an EC2 instance.
    let s3 = TestS3::start_background();
    let t = tempfile::tempdir().unwrap();
    let src = small_src(t.path(), 1);
    let imds = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    imds.set_nonblocking(true).unwrap();
    let (code, _, err) = run(s3_env_without(&s3, &["ATTACHE_S3__REGION"], t.path())
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{}", imds.local_addr().unwrap()),
        )
        .args(["put", "--store", &s3.store_url("p")])
        .arg(&src)
        .arg("-o")
        .arg(t.path().join("m.json")));
    assert_eq!(code, 0, "{err}");
    assert!(
        matches!(imds.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "instance metadata was asked"
    );
    assert!(!err.contains("WARN"), "{err}");
}

#[test]
fn requests_go_through_the_proxy_the_environment_or_the_config_names() {
    use common::proxy::TestProxy;
    let s3 = TestS3::start_background();
    let proxy = TestProxy::start_background();
    let t = tempfile::tempdir().unwrap();
    let src = small_src(t.path(), 3);
    let put = |prefix: &str, env: &[(&str, &str)]| {
        run(s3_env_without(&s3, &[], t.path())
            .envs(env.iter().copied())
            .args(["put", "--no-cache", "--store", &s3.store_url(prefix)])
            .arg(&src)
            .arg("-o")
            .arg(t.path().join("m.json")))
    };

    // HTTP_PROXY from the environment, with credentials in it, as aws-cli and rclone read it.
    let with_auth = proxy.url_with_auth("artist", "pa55");
    let (code, _, err) = put("env", &[("HTTP_PROXY", &with_auth)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s3.object_keys().len(), 3, "{err}");
    assert_eq!(
        proxy.forwarded(),
        s3.stats.requests(),
        "every request went through it"
    );
    proxy.assert_every_request_authorized_as("artist", "pa55");
    assert!(!err.contains("pa55"), "{err}");

    // NO_PROXY, and s3.proxy = none, go direct.
    let before = proxy.forwarded();
    let no_proxy = [
        ("HTTP_PROXY", proxy.url.as_str()),
        ("NO_PROXY", "127.0.0.1"),
    ];
    let (code, _, err) = put("no-proxy", &no_proxy);
    assert_eq!(code, 0, "{err}");
    let none = [
        ("HTTP_PROXY", proxy.url.as_str()),
        ("ATTACHE_S3__PROXY", "none"),
    ];
    let (code, _, err) = put("none", &none);
    assert_eq!(code, 0, "{err}");
    assert_eq!(proxy.forwarded(), before, "nothing went through the proxy");

    // s3.proxy, with no environment variable.
    let (code, _, err) = put("config", &[("ATTACHE_S3__PROXY", &proxy.url)]);
    assert_eq!(code, 0, "{err}");
    assert!(proxy.forwarded() > before, "{err}");

    // A proxy that is down is named, not the store that runs (and not its password).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = format!("http://user:secret@127.0.0.1:{dead}");
    let (code, _, err) = put(
        "down",
        &[
            ("ATTACHE_S3__PROXY", &down),
            ("ATTACHE_S3__RETRY_ATTEMPTS", "1"),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("through the proxy"), "{err}");
    assert!(err.contains("check that the proxy runs"), "{err}");
    assert!(!err.contains("secret"), "{err}");

    // A bad s3.proxy is a usage error that does not repeat the password.
    let (code, _, err) = put("bad", &[("ATTACHE_S3__PROXY", "socks5://user:secret@host")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("s3.proxy"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn an_https_store_of_a_private_ca_is_trusted_by_its_bundle_also_through_a_proxy() {
    use common::tls::TlsFront;
    let s3 = TestS3::start_background();
    let front = TlsFront::start_background(s3.endpoint.trim_start_matches("http://"));
    let t = tempfile::tempdir().unwrap();
    let src = small_src(t.path(), 1);
    let ca = t.path().join("studio-ca.pem");
    front.write_ca(&ca);
    let put = |prefix: &str, env: &[(&str, &str)]| {
        run(s3_env_without(&s3, &[], t.path())
            .env("ATTACHE_S3__ENDPOINT_URL", &front.endpoint)
            .env("ATTACHE_S3__RETRY_ATTEMPTS", "0")
            .envs(env.iter().copied())
            .args(["put", "--no-cache", "--store", &s3.store_url(prefix)])
            .arg(&src)
            .arg("-o")
            .arg(t.path().join("m.json")))
    };

    // Not trusted by default: said so, with what to set.
    let (code, _, err) = put("untrusted", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("s3.ca_bundle or AWS_CA_BUNDLE"), "{err}");
    assert!(s3.object_keys().is_empty());

    let ca = ca.to_str().unwrap();
    let (code, _, err) = put("config", &[("ATTACHE_S3__CA_BUNDLE", ca)]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = put("env", &[("AWS_CA_BUNDLE", ca)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s3.object_keys().len(), 2, "one object under each prefix");

    // Behind a proxy, as most studios reach AWS: HTTPS_PROXY, a CONNECT tunnel, the CA.
    let proxy = common::proxy::TestProxy::start_background();
    let with_auth = proxy.url_with_auth("artist", "pa55");
    let (code, _, err) = put(
        "proxied",
        &[("HTTPS_PROXY", &with_auth), ("AWS_CA_BUNDLE", ca)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(proxy.tunnels() > 0 && proxy.forwarded() == 0, "{err}");
    proxy.assert_every_request_authorized_as("artist", "pa55");
    assert_eq!(s3.object_keys().len(), 3);

    // A file that is not a CA bundle is a usage error naming the setting.
    let not_pem = src.join("f0");
    let (code, _, err) = put(
        "bad",
        &[("ATTACHE_S3__CA_BUNDLE", not_pem.to_str().unwrap())],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("s3.ca_bundle") && err.contains("no PEM certificate"),
        "{err}"
    );
}

#[test]
fn aws_cli_style_flags_name_the_endpoint_region_and_profile() {
    let s3 = TestS3::start_background();
    let t = tempfile::tempdir().unwrap();
    let src = small_src(t.path(), 2);
    let aws = t.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[studio]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    // Nothing from the environment but the path style: endpoint, region and credentials come
    // from the flags and the profile they name.
    let (code, out, err) = run(s3_env_without(
        &s3,
        &[
            "ATTACHE_S3__ENDPOINT_URL",
            "ATTACHE_S3__REGION",
            "ATTACHE_S3__ACCESS_KEY_ID",
            "ATTACHE_S3__SECRET_ACCESS_KEY",
        ],
        t.path(),
    )
    .args(["put", "--json", "--store", &s3.store_url("p")])
    .args(["--endpoint-url", &s3.endpoint, "--region", "us-east-1"])
    .args(["--profile", "studio"])
    .arg(&src)
    .arg("-o")
    .arg(t.path().join("m.json")));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["upload"]["uploaded_objects"], 2, "{v}");
    assert_eq!(s3.object_keys().len(), 2);
}

/// Where stderr is not a terminal (a farm's task log), a long command logs its progress every
/// `log.stats`, in plain text: no colour codes.
#[test]
fn a_transfer_logs_its_progress_in_plain_lines_when_stderr_is_not_a_terminal() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..16 {
        std::fs::write(src.join(format!("f{i}")), vec![i as u8; 64 * 1024]).unwrap();
    }
    let (cache, store, manifest) = put_to_local_store(t.path(), &src);
    let get = |dest: &str, stats: &str| {
        let (code, _, err) = run(attache(&cache)
            .args([
                "get",
                "--store",
                &store,
                "--bwlimit",
                "2MB/s",
                "--stats",
                stats,
            ])
            .arg(&manifest)
            .arg("--dest")
            .arg(t.path().join(dest)));
        assert_eq!(code, 0, "{err}");
        err
    };
    // 1 MiB at 2 MB/s: about half a second.
    let err = get("a", "100ms");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("downloading: "))
        .collect();
    assert!(lines.len() >= 2, "{err}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" of 1.0 MiB (") && l.contains(" of 16 files, ")),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "no colour codes in a log: {err:?}");
    let err = get("b", "0");
    assert!(!err.contains("downloading: "), "{err}");

    // --bwlimit also takes a timetable, as rclone's does: entries in force all day here.
    let (code, _, err) = run(attache(&cache)
        .args(["get", "--store", &store, "--stats", "100ms"])
        .args(["--bwlimit", "00:00,2MB/s 12:00,1MB/s:2MB/s"])
        .arg(&manifest)
        .arg("--dest")
        .arg(t.path().join("c")));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.lines().filter(|l| l.contains("downloading: ")).count() >= 2,
        "paced by the timetable, 1 MiB takes half a second: {err}"
    );
    let (code, _, err) = run(attache(&cache)
        .args(["get", "--store", &store, "--bwlimit", "08:00,fast"])
        .arg(&manifest)
        .arg("--dest")
        .arg(t.path().join("d")));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bandwidth.schedule") && err.contains("--bwlimit") && err.contains("fast"),
        "{err}"
    );
}

/// An upload held back by a bandwidth limit shows its bytes moving before its file (or part)
/// is done: a single PUT to the local store, and a multipart upload's parts to S3.
#[test]
fn a_slow_upload_counts_its_bytes_as_they_go_out() {
    let t = tempfile::tempdir().unwrap();
    // (bytes done, files done) of each JSON progress line.
    let progress = |err: &str| -> Vec<(u64, u64)> {
        err.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["task"] == "uploading")
            .map(|v| {
                let f = &v["fields"];
                (
                    f["bytes_done"].as_u64().unwrap(),
                    f["files_done"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let moving = |lines: &[(u64, u64)]| lines.iter().any(|&(bytes, files)| bytes > 0 && files == 0);

    // One 2 MiB file, one PUT from memory, at 512 KiB/s: about 4 s.
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("frame.exr"), vec![7u8; 2 << 20]).unwrap();
    let (code, _, err) = run(attache(&t.path().join("cache"))
        .args([
            "--log-format",
            "json",
            "--stats",
            "500ms",
            "put",
            "--bwlimit",
            "512KiB/s",
        ])
        .args([
            "--store",
            &format!("file://{}", t.path().join("store").display()),
        ])
        .arg(&src)
        .args(["-o", "/dev/null"]));
    assert_eq!(code, 0, "{err}");
    let lines = progress(&err);
    assert!(
        moving(&lines),
        "no bytes counted before the file was done: {lines:?} {err}"
    );

    // 40 MiB in parts of 5 MiB at 16 MiB/s, all parts at once: about 2.5 s.
    let s3 = TestS3::start_background();
    let dir = t.path().join("mp");
    big_file_in_root(&dir, 251);
    let (code, _, err) = run(
        multipart_put(&s3, &dir, &t.path().join("cache2"), "16MiB/s").args([
            "--log-format",
            "json",
            "--stats",
            "500ms",
        ]),
    );
    assert_eq!(code, 0, "{err}");
    let lines = progress(&err);
    assert!(
        moving(&lines),
        "no bytes counted before the file was done: {lines:?} {err}"
    );
    // Counted once: at most the file's size at any time.
    assert!(
        lines.iter().all(|&(bytes, _)| bytes <= 40 << 20),
        "{lines:?}"
    );
}

/// `attache doctor` makes the requests a real run makes and passes on a usable store, leaves
/// nothing open, and on a refused one names what is wrong and what it needs (exit 1). A cache
/// it cannot open is a warning: transfers go on without it.
#[test]
fn doctor_checks_the_store_and_names_what_a_failure_needs() {
    let s3 = TestS3::start_background();
    let t = tempfile::tempdir().unwrap();
    let store = s3.store_url("DeadlineCloud");
    let doctor = |cmd: &mut Command| {
        let (code, out, err) = run(cmd.args(["doctor", "--json", "--store", &store]));
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        (code, v)
    };
    let (code, v) = doctor(attache(&t.path().join("cache")).envs(s3.env()));
    assert_eq!(code, 0, "{v}");
    let probes = v["probes"].as_array().unwrap();
    let names: Vec<&str> = probes.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "read content",
            "write content",
            "read back",
            "multipart",
            "list parts",
            "list open uploads",
            "read manifests",
            "conditional put",
            "hash cache",
            "known-present index",
            "content cache"
        ]
    );
    assert_every_probe_ok(&v);
    assert_eq!(
        v["probes"][10]["detail"], "off (cache.content_size = 0)",
        "{v}"
    );
    // A store that does not answer: said once, the other store probes not sent (each would
    // wait and fail the same way), none of them claiming a permission is missing.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, v) = doctor(
        attache(&t.path().join("cache"))
            .envs(s3.env())
            .env("ATTACHE_S3__ENDPOINT_URL", &down),
    );
    assert_eq!(code, 1, "{v}");
    assert!(
        v["probes"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{v}"
    );
    for p in &v["probes"].as_array().unwrap()[1..7] {
        assert!(
            p["detail"].as_str().unwrap().starts_with("not tried"),
            "{p}"
        );
        assert!(p["needs"].is_null(), "{p}");
    }
    // A bucket that does not exist: the first read says so (not "not found, as expected"),
    // with what to check; the write fails too, and the conditional put is not passed as fine.
    let (code, out, err) = run(attache(&t.path().join("cache")).envs(s3.env()).args([
        "doctor",
        "--json",
        "--store",
        "s3://no-such-bucket/DeadlineCloud",
    ]));
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let read = &v["probes"][0];
    assert_eq!(read["status"], "failed", "{v}");
    assert!(
        read["detail"].as_str().unwrap().contains("NoSuchBucket")
            && read["needs"].as_str().unwrap().contains("store.url"),
        "{v}"
    );
    assert_eq!(v["probes"][1]["status"], "failed", "{v}");
    assert_eq!(
        (&v["probes"][7]["status"], &v["probes"][7]["detail"]),
        (
            &"warning".into(),
            &"not tried: the write content probe failed".into()
        ),
        "{v}"
    );
    // A content cache that cannot be written is a warning: downloads go on without it.
    let not_a_dir = t.path().join("not-a-dir");
    std::fs::write(&not_a_dir, b"").unwrap();
    for (dir, status) in [(t.path().join("content"), "ok"), (not_a_dir, "warning")] {
        let (code, v) = doctor(
            attache(&t.path().join("cache"))
                .envs(s3.env())
                .env("ATTACHE_CACHE__CONTENT_SIZE", "1GiB")
                .env("ATTACHE_CACHE__CONTENT_DIR", &dir),
        );
        assert_eq!(code, 0, "{v}");
        let probe = &v["probes"][10];
        assert_eq!(probe["status"], status, "{v}");
        assert!(
            probe["detail"]
                .as_str()
                .unwrap()
                .contains(dir.to_str().unwrap()),
            "{v}"
        );
    }
    // The only object written is the empty file's content, under its own hash.
    assert_eq!(
        s3.object_keys(),
        [format!(
            "DeadlineCloud/Data/{}.xxh128",
            attache::hash::ContentHash::of(b"")
        )]
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    assert!(
        files_under(&t.path().join("cache/open-uploads")).is_empty(),
        "the probe's upload was recorded and, aborted, forgotten"
    );

    // A store that ignores If-None-Match (Garage): a warning that says what to set.
    s3.faults.ignore_if_none_match(true);
    let (code, v) = doctor(attache(&t.path().join("cache")).envs(s3.env()));
    s3.faults.clear();
    assert_eq!(code, 0, "only a warning: {v}");
    let probe = &v["probes"][7];
    assert_eq!(
        (probe["name"].as_str(), probe["status"].as_str()),
        (Some("conditional put"), Some("warning")),
        "{v}"
    );
    assert!(
        probe["needs"]
            .as_str()
            .unwrap()
            .starts_with("s3.conditional_put = false"),
        "{v}"
    );

    // An abort the store refuses: the probe fails, and its upload stays recorded, so the next
    // cleanup (or upload) from this machine aborts it.
    s3.faults
        .only_for(|m, k| m == http::Method::DELETE && k.contains("/Data/"));
    s3.faults.internal_error_next(3);
    let (code, v) = doctor(attache(&t.path().join("cache")).envs(s3.env()));
    s3.faults.clear();
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["probes"][3]["name"], "multipart");
    assert_eq!(v["probes"][3]["status"], "failed", "{v}");
    assert_eq!(s3.open_multipart_uploads(), 1);
    let (code, out, err) = run(attache(&t.path().join("cache"))
        .envs(s3.env())
        .args(["cleanup", "--json", "--store", &store]));
    assert_eq!(code, 0, "{err}");
    let cleaned: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cleaned["recorded_aborted"], 1, "{cleaned}");
    assert_eq!(s3.open_multipart_uploads(), 0);

    // Credentials the store does not accept, and a cache dir that is a file.
    let not_a_dir = t.path().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let (code, v) = doctor(
        attache(&not_a_dir)
            .envs(s3.env())
            .env("ATTACHE_S3__SECRET_ACCESS_KEY", "not-the-secret"),
    );
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["passed"], false);
    let write = &v["probes"][1];
    assert_eq!(write["status"], "failed", "{v}");
    assert!(
        write["detail"].as_str().unwrap().contains("403")
            && write["needs"]
                .as_str()
                .unwrap()
                .starts_with("the secret key"),
        "{v}"
    );
    assert_eq!(v["probes"][8]["name"], "hash cache", "{v}");
    assert_eq!(v["probes"][8]["status"], "warning", "{v}");

    // The local store passes every probe too. Before anything was uploaded to it, its
    // directory is not there: a warning (the write probe makes it; on a worker, a share not
    // mounted), not a failure.
    let local = format!("file://{}", t.path().join("local").display());
    let local_doctor = || {
        let (code, out, err) =
            run(attache(&t.path().join("cache")).args(["doctor", "--json", "--store", &local]));
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let v = local_doctor();
    let read = &v["probes"][0];
    assert_eq!(read["status"], "warning", "{v}");
    assert!(
        read["detail"].as_str().unwrap().contains("does not exist")
            && read["needs"]
                .as_str()
                .unwrap()
                .contains("the first upload makes it"),
        "{v}"
    );
    let v = local_doctor();
    assert_every_probe_ok(&v);
    // The multipart probe says why large files go to a store in one PUT: the file store
    // copies parts on completion, an S3 store was measured so (see
    // a_store_that_completes_slowly_gets_large_files_in_one_put).
    let multipart_detail =
        |v: &serde_json::Value| v["probes"][3]["detail"].as_str().unwrap().to_string();
    let one_put = "files up to 5.0 GiB go to this store in one PUT: ";
    let copies = format!("{one_put}it copies every part again on completion");
    assert!(multipart_detail(&v).contains(&copies), "{v}");
    let (_, v) = doctor(attache(&t.path().join("cache")).envs(s3.env()));
    assert!(!multipart_detail(&v).contains(one_put), "{v}");
    let now_ms = attache::clock::now_ms();
    let identity = v["identity"].as_str().unwrap();
    measured_copying(&t.path().join("cache"), &[(identity, &[now_ms, now_ms])]);
    let (code, v) = doctor(attache(&t.path().join("cache")).envs(s3.env()));
    assert_eq!(code, 0, "{v}");
    let measured = format!("{one_put}this machine measured it copying");
    assert!(multipart_detail(&v).contains(&measured), "{v}");

    let (code, out, err) = run(attache(&t.path().join("cache"))
        .envs(s3.env())
        .args(["doctor", "--store", &store]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok      write content")
            && out.ends_with("This machine can transfer with this store.\n"),
        "{out}"
    );
}
