//! Helpers shared by the integration tests: fixture trees and running the binary.
#![allow(dead_code)]

pub mod proxy;
pub mod s3;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;

// s3s-fs limits keys to ~156 bytes: short ids here (the Garage script uses real-length ones).
/// The farm and queue of the tests' jobs.
pub const IDS: [&str; 4] = ["--farm-id", "farm-1", "--queue-id", "queue-1"];
/// The task a sync-outputs run belongs to (with [`IDS`] and a session action id).
pub const TASK_IDS: [&str; 6] = [
    "--job-id",
    "job-1",
    "--step-id",
    "step-1",
    "--task-id",
    "task-1",
];

/// `cmd` made a `sync-outputs` of the task [`IDS`] + [`TASK_IDS`] as session action `sa`, for
/// the job whose attachments are in `att`, from the session directory `session`.
pub fn sync_outputs<'c>(
    cmd: &'c mut Command,
    sa: &str,
    att: &Path,
    session: &Path,
) -> &'c mut Command {
    cmd.arg("sync-outputs")
        .args(IDS)
        .args(TASK_IDS)
        .args(["--session-action-id", sa, "--attachments"])
        .arg(att)
        .arg("--session-dir")
        .arg(session)
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/deadline")
        .join(name)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Recreates a fixture's tree (contents and mtimes from its tree.json) under `dest`.
pub fn build_fixture_tree(name: &str, dest: &Path) {
    let tree = read_json(&fixture(name).join("tree.json"));
    for f in tree["files"].as_array().unwrap() {
        let path = dest.join(f["path"].as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, fixture_content(f)).unwrap();
        set_mtime_ns(&path, f["mtime_ns"].as_i64().unwrap());
    }
}

fn fixture_content(f: &serde_json::Value) -> Vec<u8> {
    if let Some(b64) = f["content_base64"].as_str() {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
    }
    // The one generated content: "b'x' * 70000".
    let spec = f["content_spec"].as_str().unwrap();
    let (byte, count) = spec.strip_prefix("b'").unwrap().split_once("' * ").unwrap();
    byte.as_bytes().repeat(count.parse().unwrap())
}

pub fn set_mtime_ns(path: &Path, ns: i64) {
    let t = filetime::FileTime::from_unix_time(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_mtime(path, t).unwrap();
}

/// Files just written are "racy" for the hash cache for one second (see hash::cache).
pub fn wait_out_racy_window() {
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

/// The attache binary with a clean environment: no user config, no stray ATTACHE_ variables,
/// and its own cache dir.
pub fn attache(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_attache"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ATTACHE_") {
            c.env_remove(k);
        }
    }
    c.env("XDG_CONFIG_HOME", cache.join("no-config"));
    c.env("ATTACHE_CACHE__DIR", cache);
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A pseudo-terminal: (its leader, the terminal a command is given, as a file).
pub fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut leader, mut follower) = (0, 0);
    let opened = unsafe {
        libc::openpty(
            &mut leader,
            &mut follower,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty");
    // The leader stays here: a command holding it too would keep the terminal alive.
    assert_eq!(
        unsafe { libc::fcntl(leader, libc::F_SETFD, libc::FD_CLOEXEC) },
        0
    );
    unsafe {
        (
            std::fs::File::from_raw_fd(leader),
            std::fs::File::from_raw_fd(follower),
        )
    }
}

/// Runs and returns (exit code, stdout, stderr).
pub fn run(c: &mut Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
}

/// Writes each of `rels` under `root` (directories made as needed), its content its own path.
pub fn write_tree(root: &Path, rels: &[&str]) {
    for rel in rels {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, p.to_string_lossy().as_bytes()).unwrap();
    }
}

/// Every file (not directory) under `dir`, at any depth; none if `dir` does not exist.
/// Another process's exclusive hold on a local database of attache's (the hash cache, the
/// known-present index) at `path`, made fresh, until the connection is dropped: attache waits
/// up to 30 s for it, as it would for a disk stalled in a flush.
pub fn lock_database(path: &Path) -> rusqlite::Connection {
    let held = rusqlite::Connection::open(path).unwrap();
    held.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE other(a); BEGIN EXCLUSIVE;")
        .unwrap();
    held
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p);
            }
        }
    }
    found
}

/// Asserts that every probe of an `attache doctor --json` report passed.
pub fn assert_every_probe_ok(report: &serde_json::Value) {
    let probes = report["probes"].as_array().expect("a doctor report");
    assert!(!probes.is_empty(), "{report}");
    assert!(probes.iter().all(|p| p["status"] == "ok"), "{report}");
}
