//! `attache manifest cat|diff|verify` and `attache config show` as a user runs them.

mod common;

use std::fs;

use common::*;

const ENTRY: &str = r#"{"hash":"eefac9d87100cd1336b2e733a5484425","mtime":1700000001000000,"path":"PATH","size":12}"#;

fn manifest_with(path: &str) -> String {
    format!(
        r#"{{"hashAlg":"xxh128","manifestVersion":"2023-03-03","paths":[{}],"totalSize":12}}"#,
        ENTRY.replace("PATH", path)
    )
}

#[test]
fn unsafe_manifests_are_refused_naming_the_entry() {
    let t = tempfile::tempdir().unwrap();
    for (path, why) in [
        ("../x", "'..' segment"),
        ("/etc/passwd", "absolute"),
        ("a//b", "empty segment"),
        ("C:/x", "drive letter"),
    ] {
        let f = t.path().join("bad.json");
        fs::write(&f, manifest_with(path)).unwrap();
        let (code, _, err) = run(attache(t.path()).args(["manifest", "cat"]).arg(&f));
        assert_eq!(code, 1, "{path}");
        assert!(
            err.contains("bad.json") && err.contains("paths[0]") && err.contains(why),
            "{path}: {err}"
        );
        // verify refuses before it touches the disk.
        let (code, _, err) = run(attache(t.path())
            .args(["manifest", "verify"])
            .arg(&f)
            .arg("--root")
            .arg(t.path()));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn malformed_manifests_get_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let good = manifest_with("a.txt");
    let cases = [
        (
            good.replace("\"size\":12", "\"size\":\"12\""),
            "\"size\" must be a non-negative integer",
        ),
        (
            good.replace("2023-03-03", "2099-01-01"),
            "unsupported manifest version",
        ),
        (
            good.replace("xxh128\",\"m", "md5\",\"m"),
            "unsupported hash algorithm",
        ),
        (
            good.replace(",\"totalSize\":12", ""),
            "missing required key \"totalSize\"",
        ),
        (good.replace("eefac9d8", "zzzz"), "not 32 hex digits"),
        (
            r#"{"hashAlg":"xxh128","manifestVersion":"2023-03-03","paths":[],"totalSize":0}"#
                .into(),
            "lists no files",
        ),
        (good[..40].to_string(), "not valid JSON"),
        (
            good.replace("{\"hash\"", "{\"extra\":[1,{\"x\":null}],\"hash\""),
            "",
        ),
    ];
    for (text, want) in cases {
        let f = t.path().join("m.json");
        fs::write(&f, &text).unwrap();
        let (code, out, err) = run(attache(t.path()).args(["manifest", "cat"]).arg(&f));
        if want.is_empty() {
            assert_eq!(code, 0, "unknown keys are accepted: {err}");
            assert!(out.contains("a.txt"));
        } else {
            assert_eq!(code, 1, "{text}");
            assert!(err.contains(want), "{text}: {err}");
        }
    }
    // A manifest that is not there: the error names it.
    let missing = t.path().join("missing.json");
    let (code, _, err) = run(attache(t.path()).args(["manifest", "cat"]).arg(&missing));
    assert_eq!(code, 1, "{err}");
    let want = format!("cannot read manifest {}", missing.display());
    assert!(err.contains(&want), "{err}");
}

/// `manifest cat` picks among the files as `get` does, and says how many it left out.
#[test]
fn manifest_cat_takes_get_s_filters() {
    let t = tempfile::tempdir().unwrap();
    let tiny = fixture("tiny").join("manifest.json");
    let cat = |filters: &[&str]| {
        let (code, out, err) = run(attache(t.path())
            .args(["manifest", "cat"])
            .args(filters)
            .arg(&tiny));
        assert_eq!(code, 0, "{filters:?}: {err}");
        out
    };
    let empty = cat(&["--max-size", "0"]);
    assert!(empty.contains("  empty.txt\n"), "{empty}");
    assert!(
        empty.ends_with("# 1 file, 0 bytes (2 left out by the filters)\n"),
        "{empty}"
    );
    let sub = cat(&["--include", "sub/**", "--max-age", "2023-11-14T22:13:22Z"]);
    assert_eq!(sub.lines().count(), 2, "{sub}");
    assert!(sub.contains("sub/d\u{e9}j\u{e0} vu"), "{sub}");
    let all = cat(&[]);
    assert!(all.ends_with("# 3 files, 22 bytes\n"), "{all}");
}

#[test]
fn diff_and_verify_report_changes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    build_fixture_tree("tiny", &root);
    let tiny = fixture("tiny").join("manifest.json");
    let (code, out, err) = run(attache(t.path())
        .args(["manifest", "verify"])
        .arg(&tiny)
        .arg("--root")
        .arg(&root));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK: 3 of 3 files match"), "{out}");

    fs::write(root.join("hello.txt"), b"hello WORLD\n").unwrap();
    set_mtime_ns(&root.join("hello.txt"), 1_700_000_001_000_000_000);
    fs::remove_file(root.join("empty.txt")).unwrap();
    fs::write(root.join("new.txt"), b"n").unwrap();
    let (code, out, _) = run(attache(t.path())
        .args(["manifest", "verify", "--json"])
        .arg(&tiny)
        .arg("--root")
        .arg(&root));
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["passed"], false);
    assert_eq!(v["missing"][0]["path"], "empty.txt");
    assert_eq!(v["content_mismatch"][0]["expected"]["path"], "hello.txt");
    assert_eq!(v["extra"][0]["path"], "new.txt");

    // The filters pick among the manifest's files and the files on disk alike: the frames
    // alone are checked, and a file the config leaves out (here the changed one) is neither
    // missing nor different, though the manifest has it.
    let (code, out, err) = run(attache(t.path())
        .env("ATTACHE_HASH__EXCLUDE", "hello.txt")
        .args(["manifest", "verify", "--strict", "--exclude", "new.txt"])
        .args(["--exclude", "empty.txt"])
        .arg(&tiny)
        .arg("--root")
        .arg(&root));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("OK: 1 of 1 files match; 0 missing, 0 differ, 0 other mtime, 0 extra; 2 left out by the filters"),
        "{out}"
    );
    let (code, out, _) = run(attache(t.path())
        .args(["manifest", "verify", "--json", "--include", "sub/**"])
        .arg(&tiny)
        .arg("--root")
        .arg(&root));
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["checked"].as_u64(), v["left_out"].as_u64()),
        (Some(1), Some(2))
    );

    let edge = fixture("edge").join("manifest.json");
    let (code, out, _) = run(attache(t.path())
        .args(["manifest", "diff"])
        .arg(&tiny)
        .arg(&edge));
    assert_eq!(code, 0);
    assert!(out.contains("6 added, 0 changed, 3 removed"), "{out}");
    let (code, _, _) = run(attache(t.path())
        .args(["manifest", "diff", "--exit-code"])
        .arg(&tiny)
        .arg(&edge));
    assert_eq!(code, 1);
    let (code, _, _) = run(attache(t.path())
        .args(["manifest", "diff", "--exit-code"])
        .arg(&tiny)
        .arg(&tiny));
    assert_eq!(code, 0);
}

/// `-` reads a manifest from standard input (`attache hash DIR | attache manifest diff OLD -`),
/// once per command; what cannot be decoded is named as standard input.
#[test]
fn a_manifest_can_come_from_standard_input_once() {
    let t = tempfile::tempdir().unwrap();
    let tiny = fixture("tiny").join("manifest.json");
    let edge = fixture("edge").join("manifest.json");
    let from = |file: &std::path::Path| std::process::Stdio::from(fs::File::open(file).unwrap());
    let (code, out, err) = run(attache(t.path())
        .args(["manifest", "diff"])
        .arg(&tiny)
        .arg("-")
        .stdin(from(&edge)));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("6 added, 0 changed, 3 removed"), "{out}");
    let (code, piped, err) = run(attache(t.path())
        .args(["manifest", "cat", "-"])
        .stdin(from(&tiny)));
    assert_eq!(code, 0, "{err}");
    let (_, named, _) = run(attache(t.path()).args(["manifest", "cat"]).arg(&tiny));
    assert_eq!(piped, named);
    let (code, _, err) = run(attache(t.path())
        .args(["manifest", "diff", "-", "-"])
        .stdin(from(&tiny)));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`-` (standard input) is given twice"), "{err}");
    // A terminal on stdin: said at once, not waited on.
    let (mut leader, terminal) = pty();
    // An end of input typed ahead (^D): a build that read the terminal would end at once
    // with a decode error, not hang the test.
    std::io::Write::write_all(&mut leader, b"\x04").unwrap();
    let (code, _, err) = run(attache(t.path())
        .args(["manifest", "cat", "-"])
        .stdin(terminal));
    drop(leader);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("which is a terminal here"), "{err}");
    let not_one = t.path().join("notes.txt");
    fs::write(&not_one, "not a manifest\n").unwrap();
    let (code, _, err) = run(attache(t.path())
        .args(["manifest", "cat", "-"])
        .stdin(from(&not_one)));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("manifest - (standard input) is not usable"),
        "{err}"
    );
}

/// `config init` writes the documented example with the keys given set (0600), loads back as
/// them, refuses to replace a file without --force, and writes nothing for a bad value.
#[test]
fn config_init_writes_a_starter_file_that_loads_as_given() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home-config");
    let init = |flags: &[&str]| {
        run(attache(t.path())
            .env("XDG_CONFIG_HOME", &home)
            .args(["config", "init"])
            .args(flags))
    };
    let garage = [
        "--store",
        "s3://farm-bucket/DeadlineCloud",
        "--endpoint-url",
        "http://garage.lan:3900",
        "--region",
        "garage",
        "--force-path-style",
    ];
    let (code, _, err) = init(&garage);
    assert_eq!(code, 0, "{err}");
    let file = home.join("attache/config.toml");
    assert!(
        err.contains(&format!("wrote {}", file.display())) && err.contains("attache doctor"),
        "{err}"
    );
    let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("# Region to sign requests for."),
        "the example's comments: {text}"
    );
    let (code, shown, err) = run(attache(t.path())
        .env("XDG_CONFIG_HOME", &home)
        .args(["config", "show"]));
    assert_eq!(code, 0, "{err}");
    for line in [
        "url = \"s3://farm-bucket/DeadlineCloud\"",
        "endpoint_url = \"http://garage.lan:3900\"",
        "region = \"garage\"",
        "force_path_style = true",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line}: {shown}");
    }
    // There already: kept, unless --force; a broken one is replaced too.
    let (code, _, err) = init(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("exists already") && err.contains("--force"),
        "{err}"
    );
    fs::write(&file, "not toml\n").unwrap();
    let (code, _, err) = init(&["--force", "--profile", "render"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        fs::read_to_string(&file)
            .unwrap()
            .contains("\nprofile = \"render\"\n")
    );
    // -o elsewhere; a bad value writes nothing.
    let other = t.path().join("etc/attache.toml");
    let (code, _, err) = init(&["-o", other.to_str().unwrap(), "--store", "bucket/prefix"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not written: invalid value for `store.url` in flag --store"),
        "{err}"
    );
    assert!(!other.exists());
    assert_eq!(
        fs::read_dir(other.parent().unwrap()).unwrap().count(),
        0,
        "no temp file left"
    );
}

/// ATTACHE_CONFIG names the config file, as --config does (which wins); empty, it is unset.
#[test]
fn attache_config_names_the_config_file() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("farm.toml");
    fs::write(&file, "[transfer]\nworkers = 5\n").unwrap();
    let other = t.path().join("other.toml");
    fs::write(&other, "[transfer]\nworkers = 7\n").unwrap();
    let show = |config: &std::ffi::OsStr, flag: &[&std::ffi::OsStr]| {
        run(attache(t.path())
            .env("ATTACHE_CONFIG", config)
            .args(flag)
            .args(["config", "show"]))
    };
    let (code, out, err) = show(file.as_os_str(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("workers = 5"), "{out}");
    let (_, out, _) = show(file.as_os_str(), &["--config".as_ref(), other.as_os_str()]);
    assert!(out.contains("workers = 7"), "--config wins: {out}");
    let (code, out, err) = show("".as_ref(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("workers = 5") && !out.contains("workers = 7"),
        "{out}"
    );
    let missing = t.path().join("nope.toml");
    let (code, _, err) = show(missing.as_os_str(), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("config file {} does not exist", missing.display()))
            && err.contains("ATTACHE_CONFIG"),
        "{err}"
    );
}

#[test]
fn config_show_applies_env_and_redacts_secrets() {
    let t = tempfile::tempdir().unwrap();
    let (code, out, err) = run(attache(t.path())
        .args(["config", "show"])
        .env("ATTACHE_S3__SECRET_ACCESS_KEY", "hunter2-very-secret")
        .env("ATTACHE_BANDWIDTH__DOWNLOAD", "50MB/s"));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("<redacted>"), "{out}");
    assert!(out.contains("download = \"50MB/s\""), "{out}");
    // What is left to attache is shown as comments, so the output still loads back as the
    // same settings (the content cache following cache.dir).
    let content = format!(
        "#   cache.content_dir: {}",
        t.path().join("content").display()
    );
    assert!(out.lines().any(|l| l.starts_with(&content)), "{out}");
    assert!(out.contains("#   hash.threads: "), "{out}");
    let shown = t.path().join("shown.toml");
    fs::write(&shown, &out).unwrap();
    let (code, again, err) = run(attache(t.path())
        .arg("--config")
        .arg(&shown)
        .args(["config", "show"]));
    assert_eq!(code, 0, "{err}");
    let settings = |text: &str| {
        // The first line names the config file read.
        text.lines().skip(1).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(settings(&again), settings(&out));

    let (code, _, err) = run(attache(t.path())
        .args(["config", "show"])
        .env("ATTACHE_S3__MAX_CONECTIONS", "4"));
    assert_eq!(code, 2);
    assert!(
        err.contains("s3.max_conections") && err.contains("ATTACHE_S3__MAX_CONECTIONS"),
        "{err}"
    );

    // A key in a file every user can read is warned about, naming it; not in a private one.
    use std::os::unix::fs::PermissionsExt;
    let keys = t.path().join("keys.toml");
    fs::write(
        &keys,
        "[s3]\naccess_key_id = \"AKIAEXAMPLE\"\nsecret_access_key = \"hunter2-very-secret\"\n",
    )
    .unwrap();
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        fs::set_permissions(&keys, fs::Permissions::from_mode(mode)).unwrap();
        let (code, out, err) = run(attache(t.path())
            .arg("--config")
            .arg(&keys)
            .args(["config", "show"]));
        assert_eq!(code, 0, "{err}");
        assert!(
            !out.contains("hunter2") && !err.contains("hunter2"),
            "{out}{err}"
        );
        assert_eq!(
            err.contains("holds s3.secret_access_key and every user of this machine can read it"),
            warned,
            "mode {mode:o}: {err}"
        );
    }

    let f = t.path().join("c.toml");
    fs::write(&f, "[transfer]\npart_size = \"1KiB\"\n").unwrap();
    let (code, _, err) = run(attache(t.path())
        .arg("--config")
        .arg(&f)
        .args(["config", "show"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("transfer.part_size") && err.contains("c.toml"),
        "{err}"
    );

    let (code, _, err) = run(attache(t.path())
        .arg("--config")
        .arg(t.path().join("nope.toml"))
        .args(["config", "show"]));
    assert_eq!(code, 2);
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn a_log_level_or_endpoint_that_would_misbehave_is_refused() {
    let t = tempfile::tempdir().unwrap();
    // A bare word that is not a level parses as a target: every warning would be hidden.
    for (env, value, says) in [
        (
            "ATTACHE_LOG__LEVEL",
            "warning",
            "\"warning\" is not a level",
        ),
        ("ATTACHE_LOG__LEVEL", "verbose", "TARGET=LEVEL"),
        ("ATTACHE_LOG__LEVEL", "attache=bogus[", "not a log filter"),
        (
            "ATTACHE_S3__ENDPOINT_URL",
            "127.0.0.1:9000",
            "expected http://HOST:PORT",
        ),
    ] {
        let (code, _, err) = run(attache(t.path()).args(["config", "show"]).env(env, value));
        assert_eq!(code, 2, "{env}={value}: {err}");
        assert!(err.contains(says) && err.contains(env), "{err}");
    }
    for (env, value) in [
        ("ATTACHE_LOG__LEVEL", "WARN"),
        ("ATTACHE_LOG__LEVEL", "warn,attache=debug"),
        ("ATTACHE_S3__ENDPOINT_URL", "https://s3.example.com"),
    ] {
        let (code, _, err) = run(attache(t.path()).args(["config", "show"]).env(env, value));
        assert_eq!(code, 0, "{env}={value}: {err}");
    }
}

#[test]
fn output_cut_short_by_its_reader_ends_quietly() {
    // `attache config show | head -1`: the reader has gone before attache writes.
    let t = tempfile::tempdir().unwrap();
    let (root, m) = hashed_tree(t.path(), &[("a.txt", b"a")]);
    let (root, m) = (root.to_str().unwrap(), m.to_str().unwrap());
    for args in [
        &["config", "show"][..],
        &["completions", "bash"],
        &["man"],
        &["cache", "--json"],
        &["hash", root, "--json"],
        &["manifest", "verify", "--json", m, "--root", root],
        &["manifest", "diff", "--json", m, m],
        &["manifest", "cat", "--json", m],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = attache(t.path())
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn the_man_page_says_the_environment_the_files_and_the_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let (code, page, err) = run(attache(t.path()).arg("man"));
    assert_eq!(code, 0, "{err}");
    for section in [".SH ENVIRONMENT", ".SH FILES", ".SH EXIT STATUS"] {
        assert!(page.contains(section), "no {section}");
    }
    // Every variable a flag reads (`[env: …]` in --help) is there.
    for sub in [&["sync-outputs"][..], &["jobs"]] {
        let (_, help, _) = run(attache(t.path()).args(sub).arg("--help"));
        for var in help.split("[env: ").skip(1) {
            let var = var.trim_start().split(['=', ']']).next().unwrap();
            assert!(
                page.contains(&format!("\\fB{var}\\fR")),
                "{var} is not in the man page"
            );
        }
    }
    for code in ["\\fB0\\fR", "\\fB1\\fR", "\\fB2\\fR", "\\fB130\\fR"] {
        assert!(page.contains(code), "no exit status {code}");
    }
}

#[test]
fn a_command_missing_what_to_work_on_says_every_way_to_give_it() {
    let t = tempfile::tempdir().unwrap();
    for args in [&["check"][..], &["manifest", "cat"]] {
        let (code, _, err) = run(attache(t.path()).args(args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("--attachments FILE") && err.contains("--job-id"),
            "{args:?}: {err}"
        );
    }
    // An attachments file where a manifest goes: which flag takes it.
    let att = t.path().join("attachments.json");
    fs::write(&att, r#"{"manifests": [], "fileSystem": "COPIED"}"#).unwrap();
    let (code, _, err) = run(attache(t.path()).args(["manifest", "cat"]).arg(&att));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("it is a job's attachments JSON"), "{err}");
    let (code, _, err) =
        run(attache(t.path()).args(["cache", "clear", "--hash", "--store", "s3://b/p"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--store goes with --known-present or --copying-stores"),
        "{err}"
    );
}

#[test]
fn an_empty_daemon_url_is_refused_not_taken_for_this_machine() {
    // `attache bwlimit 20MB/s --daemon-url "$FARM"` with FARM unset.
    let t = tempfile::tempdir().unwrap();
    let (code, _, err) = run(attache(t.path()).args(["bwlimit", "20MB/s", "--daemon-url", ""]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--daemon-url (or ATTACHE_DAEMON_URL) is empty"),
        "{err}"
    );
    let (code, _, err) = run(attache(t.path())
        .args(["jobs"])
        .env("ATTACHE_DAEMON_URL", ""));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is empty (an unset variable?)"), "{err}");
}

/// A file name with a newline in it stays on one line of text output (`manifest cat`,
/// `verify`, `diff`), written `\u000a`; `--json` has it as it is.
#[test]
fn text_output_keeps_one_line_per_path() {
    let t = tempfile::tempdir().unwrap();
    let (root, m) = hashed_tree(t.path(), &[("nl\nname.txt", b"x"), ("plain.txt", b"y")]);
    let (code, out, err) = run(attache(t.path()).args(["manifest", "cat"]).arg(&m));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "two files and the total: {out}");
    assert!(out.contains("  nl\\u000aname.txt\n"), "{out}");
    fs::remove_file(root.join("nl\nname.txt")).unwrap();
    let (code, out, _) = run(attache(t.path())
        .args(["manifest", "verify"])
        .arg(&m)
        .arg("--root")
        .arg(&root));
    assert_eq!(code, 1);
    assert!(out.starts_with("missing   nl\\u000aname.txt\n"), "{out}");
    let (code, out, err) = run(attache(t.path())
        .args(["manifest", "cat", "--json"])
        .arg(&m));
    assert_eq!(code, 0, "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["path"], "nl\nname.txt");
}

/// `dir/root` holding `files`, and its manifest written by `attache hash` to `dir/m.json`.
fn hashed_tree(
    dir: &std::path::Path,
    files: &[(&str, &[u8])],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = dir.join("root");
    fs::create_dir_all(&root).unwrap();
    for (name, data) in files {
        fs::write(root.join(name), data).unwrap();
    }
    let m = dir.join("m.json");
    let (code, _, err) = run(attache(dir).arg("hash").arg(&root).arg("-o").arg(&m));
    assert_eq!(code, 0, "{err}");
    (root, m)
}
