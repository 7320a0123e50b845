//! `attache hash` as a user runs it: the hash cache, bad trees, exit codes, Ctrl-C.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, Instant};

use attache::manifest::decode;
use common::*;

fn summary(cache: &Path, root: &Path) -> serde_json::Value {
    let (code, out, err) = run(attache(cache).arg("hash").arg(root).arg("--json"));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn manifest_of(cache: &Path, root: &Path) -> attache::manifest::Manifest {
    let (code, out, err) = run(attache(cache).arg("hash").arg(root));
    assert_eq!(code, 0, "{err}");
    decode(out.trim_end().as_bytes()).unwrap()
}

#[test]
fn second_hash_of_an_unchanged_tree_reads_no_file() {
    let t = tempfile::tempdir().unwrap();
    let (root, cache) = (t.path().join("root"), t.path().join("cache"));
    for i in 0..50 {
        let p = root.join(format!("d{}/f{i}.bin", i % 5));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, vec![i as u8; i * 100]).unwrap();
    }
    wait_out_racy_window();
    let first = summary(&cache, &root);
    assert_eq!(first["hashed_files"], 50);
    let second = summary(&cache, &root);
    assert_eq!(second["hashed_files"], 0, "{second}");
    assert_eq!(second["hashed_bytes"], 0);
    assert_eq!(second["cached_files"], 50);
    assert_eq!(
        second["roots"][0]["manifest_hash"],
        first["roots"][0]["manifest_hash"]
    );
    // The human summary says so too.
    let (_, _, err) = run(attache(&cache)
        .arg("hash")
        .arg(&root)
        .arg("-o")
        .arg(t.path().join("m")));
    assert!(
        err.contains("read 0 files (0 B), 50 from the hash cache"),
        "{err}"
    );
    // --no-cache reads everything again.
    let (_, out, _) = run(attache(&cache)
        .arg("hash")
        .arg(&root)
        .arg("--json")
        .arg("--no-cache"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["hashed_files"],
        50
    );
}

#[test]
fn a_file_changed_in_place_with_its_mtime_restored_is_rehashed() {
    let t = tempfile::tempdir().unwrap();
    let (root, cache) = (t.path().join("root"), t.path().join("cache"));
    fs::create_dir(&root).unwrap();
    let f = root.join("scene.ma");
    fs::write(&f, b"version 1").unwrap();
    set_mtime_ns(&f, 1_700_000_000_123_456_789);
    wait_out_racy_window();
    let before = manifest_of(&cache, &root);
    assert_eq!(summary(&cache, &root)["cached_files"], 1, "cache is warm");

    fs::write(&f, b"version 2, longer").unwrap();
    set_mtime_ns(&f, 1_700_000_000_123_456_789);
    let after = summary(&cache, &root);
    assert_eq!(
        after["hashed_files"], 1,
        "size and ctime changed: must re-read"
    );
    let m = manifest_of(&cache, &root);
    assert_ne!(m.entries()[0].hash, before.entries()[0].hash);
    assert_eq!(
        m.entries()[0].hash,
        attache::hash::ContentHash::of(b"version 2, longer")
    );
    assert_eq!(
        m.entries()[0].mtime_us,
        1_700_000_000_123_456,
        "mtime floored to microseconds"
    );
}

#[test]
fn symlinks_follow_the_policy() {
    let t = tempfile::tempdir().unwrap();
    let (root, cache) = (t.path().join("root"), t.path().join("cache"));
    fs::create_dir(&root).unwrap();
    fs::write(root.join("tex.png"), b"png").unwrap();
    symlink("tex.png", root.join("alias.png")).unwrap();
    let m = manifest_of(&cache, &root);
    assert_eq!(m.len(), 2);
    assert_eq!(
        m.entries()[0].hash,
        m.entries()[1].hash,
        "an internal link is its target's content"
    );

    fs::write(t.path().join("outside.txt"), b"o").unwrap();
    symlink(t.path().join("outside.txt"), root.join("escape")).unwrap();
    let (code, _, err) = run(attache(&cache).arg("hash").arg(&root));
    assert_eq!(code, 1);
    assert!(
        err.contains("escape: symlink points outside the directory"),
        "{err}"
    );
    assert!(err.contains("--follow-external-symlinks"), "{err}");
    let (code, _, err) = run(attache(&cache)
        .arg("hash")
        .arg(&root)
        .arg("--follow-external-symlinks"));
    assert_eq!(code, 0, "{err}");

    fs::remove_file(root.join("escape")).unwrap();
    symlink("loop-b", root.join("loop-a")).unwrap();
    symlink("loop-a", root.join("loop-b")).unwrap();
    let (code, _, err) = run(attache(&cache).arg("hash").arg(&root));
    assert_eq!(code, 1);
    assert!(
        err.contains("loop-a: symlink loop") && err.contains("loop-b: symlink loop"),
        "{err}"
    );
}

#[test]
fn non_utf8_names_and_empty_files_are_hashed() {
    let t = tempfile::tempdir().unwrap();
    let (root, cache) = (t.path().join("root"), t.path().join("cache"));
    fs::create_dir(&root).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(root.join(name), b"latin-1 name").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    let (code, out, err) = run(attache(&cache).arg("hash").arg(&root));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""path":"caf\udce9.txt""#), "{out}");
    assert!(
        out.contains(r#"{"hash":"99aa06d3014798d86001c324468d497f","mtime":"#),
        "{out}"
    );
    let m = decode(out.trim_end().as_bytes()).unwrap();
    let back = m
        .entries()
        .iter()
        .find(|e| e.size > 0)
        .unwrap()
        .path
        .to_posix_bytes()
        .unwrap()
        .into_owned();
    assert_eq!(back, b"caf\xe9.txt");
}

/// Every file that cannot be read is named in one run (a user fixing permissions does not
/// run it once a file), with a directory that cannot be listed too.
#[test]
fn unreadable_file_is_named_and_fails() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("ok.txt"), b"ok").unwrap();
    let locked = ["locked.txt", "locked-2.txt", "locked-3.txt"];
    for name in locked {
        fs::write(root.join(name), b"secret").unwrap();
        fs::set_permissions(root.join(name), fs::Permissions::from_mode(0o000)).unwrap();
    }
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // root reads anything: drop to nobody so the permission bites.
    let hash = || {
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_attache"),
            ]);
            c.env("XDG_CONFIG_HOME", "/nonexistent");
            c
        } else {
            attache(&t.path().join("cache"))
        };
        run(cmd.arg("hash").arg(&root).arg("--no-cache"))
    };
    let all_named = |err: &str| {
        for name in locked {
            assert!(
                err.contains(&format!("{name}: cannot read: Permission denied")),
                "{name}: {err}"
            );
        }
    };
    let (code, _, err) = hash();
    assert_eq!(code, 1, "{err}");
    all_named(&err);
    // A directory that cannot be listed does not hide them.
    let closed = root.join("closed");
    fs::create_dir(&closed).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o000)).unwrap();
    let (code, _, err) = hash();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("closed: cannot read: Permission denied"),
        "{err}"
    );
    all_named(&err);
}

#[test]
fn a_fifo_and_a_missing_root_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let (root, cache) = (t.path().join("root"), t.path().join("cache"));
    fs::create_dir(&root).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(root.join("pipe"))
            .status()
            .unwrap()
            .success()
    );
    let (code, _, err) = run(attache(&cache).arg("hash").arg(&root));
    assert_eq!(code, 1);
    assert!(err.contains("pipe: is a FIFO"), "{err}");
    // The way out it names works.
    assert!(err.contains("leave it out with --exclude 'pipe'"), "{err}");
    let (code, _, err) = run(attache(&cache)
        .arg("hash")
        .arg(&root)
        .args(["--exclude", "pipe"]));
    assert_eq!(code, 2, "an empty tree once it is left out: {err}");
    assert!(err.contains("exclude \"pipe\""), "{err}");
    // A missing root may be a share not mounted: a failure (1). A file given for the root
    // is the command line to fix (2), as an empty root is.
    let a_file = t.path().join("a-file");
    fs::write(&a_file, "x").unwrap();
    let (code, _, err) = run(attache(&cache).arg("hash").arg(&a_file));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not a directory; pass the directory that holds it"),
        "{err}"
    );
    let (code, _, err) = run(attache(&cache).arg("hash").arg(t.path().join("missing")));
    assert_eq!(code, 1);
    assert!(err.contains("missing: cannot read"), "{err}");
    let (code, _, err) = run(attache(&cache)
        .arg("hash")
        .arg(t.path().join("cache"))
        .arg("--threads")
        .arg("many"));
    assert_eq!(code, 2, "bad flag value is a usage error: {err}");
    assert!(
        err.contains("hash.threads") && err.contains("--threads"),
        "{err}"
    );
}

#[test]
fn an_empty_tree_has_no_manifest() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    let (code, _, err) = run(attache(&t.path().join("cache")).arg("hash").arg(&root));
    assert_eq!(code, 2);
    assert!(err.contains("no files to attach: it holds none"), "{err}");
    // Every file left out: the patterns that did it are named.
    fs::write(root.join("a.exr"), "x").unwrap();
    let (code, _, err) = run(attache(&t.path().join("cache"))
        .args(["hash", "--exclude", "*.exr"])
        .arg(&root));
    assert_eq!(code, 2);
    assert!(
        err.contains("no files to attach: the pattern left out every one (exclude \"*.exr\";"),
        "{err}"
    );
}

/// The paths of the manifest `hash` printed.
fn manifest_paths(printed: &str) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_str(printed).unwrap();
    m["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap().to_string())
        .collect()
}

/// rclone's --min-size, --max-size, --min-age and --max-age take files by what is on disk
/// (tiny: empty.txt 0 bytes at 1700000000 s, hello.txt 12 at …01, sub/déjà vu 日本.txt 10 at
/// …02); a size needs a unit; bounds that take nothing, or every file left out, are bad usage.
#[test]
fn size_and_age_bounds_take_files_by_what_is_on_disk() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let hash = |bounds: &[&str]| {
        run(attache(&t.path().join("cache"))
            .arg("hash")
            .args(bounds)
            .arg(&root))
    };
    let paths = |bounds: &[&str]| -> Vec<String> {
        let (code, out, err) = hash(bounds);
        assert_eq!(code, 0, "{bounds:?}: {err}");
        manifest_paths(&out)
    };
    let sub = "sub/déjà vu 日本.txt";
    assert_eq!(paths(&["--min-size", "1B"]), ["hello.txt", sub]);
    assert_eq!(paths(&["--max-size", "10B"]), ["empty.txt", sub]);
    assert_eq!(
        paths(&["--min-size", "11B", "--max-size", "1KiB"]),
        ["hello.txt"]
    );
    assert_eq!(
        paths(&["--max-age", "2023-11-14T22:13:21Z"]),
        ["hello.txt", sub]
    );
    assert_eq!(
        paths(&["--min-age", "2023-11-14T22:13:21Z"]),
        ["empty.txt", "hello.txt"]
    );
    // An age: tiny's files are three years old.
    assert_eq!(paths(&["--min-age", "365d"]).len(), 3);
    let (code, _, err) = hash(&["--max-age", "365d"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "no files to attach: the bound left out every one (--max-age (modified since "
        ),
        "{err}"
    );
    let (code, _, err) = hash(&["--max-size", "100"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--max-size: \"100\" needs a unit: 100B"),
        "{err}"
    );
    let (code, _, err) = hash(&["--max-age", "7d", "--min-age", "30d"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no file could be taken"), "{err}");
}

/// rclone's --exclude-if-present: a directory tagged with a marker file is left out whole,
/// from the flag or the config; `manifest verify` leaves it out on both sides; a marker at
/// the top leaves nothing, and says so; a name with a `/` is bad usage.
#[test]
fn a_directory_tagged_with_a_marker_file_is_left_out_whole() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let cache = t.path().join("cache");
    let paths = |cmd: &mut std::process::Command| -> Vec<String> {
        let (code, out, err) = run(cmd);
        assert_eq!(code, 0, "{err}");
        manifest_paths(&out)
    };
    let whole = paths(attache(&cache).arg("hash").arg(&root));
    assert_eq!(whole.len(), 3);
    let untagged = t.path().join("untagged.json");
    fs::write(&untagged, {
        let (_, out, _) = run(attache(&cache).arg("hash").arg(&root));
        out
    })
    .unwrap();
    // A simulation cache an artist tagged, with a directory inside it.
    fs::create_dir_all(root.join("sim/deep")).unwrap();
    fs::write(root.join("sim/.nojobattach"), "").unwrap();
    fs::write(root.join("sim/fluid.bgeo"), "fluid").unwrap();
    fs::write(root.join("sim/deep/frame.bgeo"), "frame").unwrap();
    fs::write(
        root.join("sub/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55",
    )
    .unwrap();
    let tagged = |env: &str, flags: &[&str]| {
        let mut cmd = attache(&cache);
        if !env.is_empty() {
            cmd.env("ATTACHE_HASH__EXCLUDE_IF_PRESENT", env);
        }
        paths(cmd.arg("hash").args(flags).arg(&root))
    };
    assert_eq!(
        tagged("", &["--exclude-if-present", ".nojobattach"]),
        ["empty.txt", "hello.txt", "sub/CACHEDIR.TAG", &whole[2]],
    );
    assert_eq!(
        tagged(".nojobattach;CACHEDIR.TAG", &[]),
        ["empty.txt", "hello.txt"]
    );
    // Flags add to the config's.
    assert_eq!(
        tagged(".nojobattach", &["--exclude-if-present", "CACHEDIR.TAG"]),
        ["empty.txt", "hello.txt"]
    );

    // manifest verify: the tagged directory's files, in the manifest but tagged on disk, are
    // left out, not missing.
    let (code, out, err) = run(attache(&cache)
        .args(["manifest", "verify", "--strict"])
        .args(["--exclude-if-present", ".nojobattach"])
        .args(["--exclude-if-present", "CACHEDIR.TAG"])
        .arg(&untagged)
        .arg("--root")
        .arg(&root));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("OK: 2 of 2 files match; 0 missing, 0 differ, 0 other mtime, 0 extra; 1 left out by the filters"),
        "{out}"
    );
    let (code, out, _) = run(attache(&cache)
        .args(["manifest", "verify", "--strict"])
        .arg(&untagged)
        .arg("--root")
        .arg(&root));
    assert_eq!(code, 1, "without the marker the new files are extra: {out}");

    // A marker at the top: nothing to attach, and what left it out is named.
    fs::write(root.join(".nojobattach"), "").unwrap();
    let (code, _, err) = run(attache(&cache)
        .args(["hash", "--exclude-if-present", ".nojobattach"])
        .arg(&root));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no files to attach: the marker file left out every one (exclude-if-present \".nojobattach\""),
        "{err}"
    );
    for (how, bad) in [("--exclude-if-present", "sim/.nojobattach"), ("", "..")] {
        let mut cmd = attache(&cache);
        cmd.arg("hash");
        match how {
            "" => cmd.env("ATTACHE_HASH__EXCLUDE_IF_PRESENT", bad),
            flag => cmd.args([flag, bad]),
        };
        let (code, _, err) = run(cmd.arg(&root));
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!("{bad:?} is not a file name")),
            "{err}"
        );
        let named = if how.is_empty() {
            "hash.exclude_if_present"
        } else {
            how
        };
        assert!(err.contains(named), "{err}");
    }
}

/// A hash of a tree that takes far longer than a test waits, started with SIGHUP ignored
/// (as `nohup` starts it) or not; returns it once it has started hashing.
fn long_hash(t: &Path, hup_ignored: bool, stderr: Option<fs::File>) -> std::process::Child {
    let root = t.join("root");
    if !root.exists() {
        fs::create_dir(&root).unwrap();
        // Sparse: costs no disk, reads as zeros, takes far longer than the test waits to hash.
        for i in 0..4 {
            fs::File::create(root.join(format!("big{i}")))
                .unwrap()
                .set_len(64 << 30)
                .unwrap();
        }
    }
    let mut cmd = attache(&t.join("cache"));
    cmd.arg("hash").arg(&root).arg("--no-cache");
    if let Some(file) = stderr {
        cmd.stderr(file);
    }
    if hup_ignored {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "still hashing");
    child
}

/// Sends `sig` to `child` and waits for it to end (10 s at most); its exit code.
fn stopped_by(child: &mut std::process::Child, sig: i32) -> Option<i32> {
    let sent = Instant::now();
    unsafe { libc::kill(child.id() as i32, sig) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "hash did not stop after signal {sig}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("stopped {:?} after signal {sig}", sent.elapsed());
    status.code()
}

#[test]
fn ctrl_c_cancels_promptly_with_exit_130() {
    let t = tempfile::tempdir().unwrap();
    let mut child = long_hash(t.path(), false, None);
    assert_eq!(stopped_by(&mut child, libc::SIGINT), Some(130));
}

/// A closed terminal or SSH session (SIGHUP) cancels as Ctrl-C does, cleaning up, exit 130;
/// under `nohup` (SIGHUP ignored) the command goes on.
#[test]
fn a_hangup_cancels_as_ctrl_c_does_unless_nohup_ignores_it() {
    let t = tempfile::tempdir().unwrap();
    let mut child = long_hash(t.path(), false, None);
    assert_eq!(stopped_by(&mut child, libc::SIGHUP), Some(130));

    // As it comes: the terminal gone first (writing to it fails), then the hangup; saying
    // so fails too, and the command still ends as cancelled.
    let (terminal, given) = pty();
    let mut child = long_hash(t.path(), false, Some(given));
    drop(terminal);
    assert_eq!(stopped_by(&mut child, libc::SIGHUP), Some(130));

    let mut child = long_hash(t.path(), true, None);
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "nohup's hash goes on after a hangup"
    );
    assert_eq!(stopped_by(&mut child, libc::SIGINT), Some(130));
}

#[test]
fn the_cache_dir_flag_moves_the_cache_over_the_environment() {
    let t = tempfile::tempdir().unwrap();
    let (root, env_cache, flag_cache) = (
        t.path().join("root"),
        t.path().join("env-cache"),
        t.path().join("flag-cache"),
    );
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("a.txt"), b"a").unwrap();
    let (code, out, err) = run(attache(&env_cache)
        .arg("--cache-dir")
        .arg(&flag_cache)
        .args(["config", "show"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("dir = {:?}", flag_cache.to_str().unwrap())),
        "{out}"
    );
    let (code, _, err) = run(attache(&env_cache)
        .arg("hash")
        .arg(&root)
        .arg("--cache-dir")
        .arg(&flag_cache)
        .arg("-o")
        .arg(t.path().join("m.json")));
    assert_eq!(code, 0, "{err}");
    assert!(flag_cache.join(attache::hash::cache::FILE_NAME).exists());
    assert!(!env_cache.join(attache::hash::cache::FILE_NAME).exists());
}

#[test]
fn dash_as_the_output_file_means_stdout() {
    let t = tempfile::tempdir().unwrap();
    let (root, cache) = (t.path().join("root"), t.path().join("cache"));
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("a.txt"), b"hello").unwrap();
    let (code, out, err) = run(attache(&cache)
        .current_dir(t.path())
        .arg("hash")
        .arg(&root)
        .args(["-o", "-"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        decode(out.trim_end().as_bytes()).unwrap().entries().len(),
        1
    );
    assert!(!t.path().join("-").exists(), "wrote a file named '-'");
}

/// `-o` is checked before any hashing, as `put`'s is: a typo'd directory is bad usage (not
/// made), a directory is named with a trailing `/` or by several roots (made), a file where
/// several roots need a directory is refused, and `-o -` with `--json` would mix two
/// documents on stdout.
#[test]
fn the_output_path_is_checked_before_hashing() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, cache) = (
        t.path().join("a"),
        t.path().join("b"),
        t.path().join("cache"),
    );
    for root in [&a, &b] {
        fs::create_dir_all(root).unwrap();
        fs::write(root.join("f.txt"), b"hello").unwrap();
    }
    let hash = |roots: &[&Path], args: &[&str]| {
        run(attache(&cache)
            .current_dir(t.path())
            .arg("hash")
            .args(roots)
            .args(args))
    };
    let (code, _, err) = hash(&[&a], &["-o", "typo/deeper/m.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("-o typo/deeper/m.json: cannot write in typo/deeper"),
        "{err}"
    );
    assert!(!t.path().join("typo").exists(), "nothing made");

    let (code, _, err) = hash(&[&a], &["-o", "manifests/"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_dir(t.path().join("manifests")).unwrap().count(), 1);

    fs::write(t.path().join("existing.json"), b"").unwrap();
    let (code, _, err) = hash(&[&a, &b], &["-o", "existing.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("-o existing.json: is a file; with several roots"),
        "{err}"
    );
    assert!(!err.contains("hashing"), "refused before any work: {err}");

    let (code, out, err) = hash(&[&a], &["-o", "-", "--json"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("-o - and --json both write on stdout"),
        "{err}"
    );
    let failure: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(failure["exit_code"], 2, "{out}");
}
