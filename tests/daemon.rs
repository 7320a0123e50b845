//! The daemon as a service: a private socket, jobs through the CLI and the API, cancel,
//! restart, reload, the TCP token, a shared bandwidth limit, and a clean SIGTERM.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::s3::TestS3;
use common::*;

struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `attache daemon` with `extra` config lines and waits until it answers.
    fn start(extra: &str) -> Daemon {
        Daemon::start_in(tempfile::tempdir().unwrap(), extra, &[])
    }

    fn start_in(dir: tempfile::TempDir, extra: &str, env: &[(String, String)]) -> Daemon {
        let mut d = Daemon { dir, child: None };
        d.write_config(extra);
        d.launch(env);
        d
    }

    fn write_config(&self, extra: &str) {
        let p = self.dir.path();
        let text = format!(
            "[store]\nurl = \"file://{store}\"\n[cache]\ndir = \"{cache}\"\n[daemon]\nsocket = \"{sock}\"\nstate_dir = \"{state}\"\n{extra}",
            store = p.join("store").display(),
            cache = p.join("cache").display(),
            sock = self.socket().display(),
            state = p.join("state").display(),
        );
        // Sections in `extra` are appended as whole TOML tables, so rebuild the file each time.
        std::fs::write(p.join("attache.toml"), text).unwrap();
    }

    fn launch(&mut self, env: &[(String, String)]) {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        let child = self
            .cmd()
            .envs(env.iter().cloned())
            .arg("daemon")
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(&self.socket(), "GET", "/v1/health", "").is_none() {
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/attache.sock")
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// attache with this daemon's config.
    /// `c` (one of [`Self::cmd`]) started in the background, its stderr kept for [`ended`].
    fn start_cli(&self, c: &mut Command) -> std::process::Child {
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn cmd(&self) -> Command {
        let mut c = attache(&self.dir.path().join("cache"));
        c.env_remove("ATTACHE_CACHE__DIR")
            .arg("--config")
            .arg(self.dir.path().join("attache.toml"));
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.as_ref().unwrap().id() as i32, sig) };
    }

    /// Sends SIGTERM and returns (exit code, seconds it took).
    fn stop(&mut self) -> (Option<i32>, f64) {
        let started = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.child.take().unwrap().wait().unwrap();
        (status.code(), started.elapsed().as_secs_f64())
    }

    /// Asserts that `GET /metrics` has each of `lines`, whole.
    fn assert_metrics(&self, lines: &[&str]) {
        let metrics = self.api("GET", "/metrics", "").1;
        let metrics = metrics.as_str().unwrap();
        for line in lines {
            assert!(metrics.lines().any(|l| l == *line), "{line}:\n{metrics}");
        }
    }

    fn api(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let (status, text) = http(&self.socket(), method, path, body).expect("daemon answers");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// The upload limit in force and where it comes from, as `/v1/health` says.
    fn upload_limit(&self) -> (String, String) {
        let health = self.api("GET", "/v1/health", "").1;
        let b = &health["bandwidth"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        (text(&b["upload"]), text(&b["source"]))
    }

    /// Starts a job from `spec` through the API; returns its id.
    fn start_job(&self, spec: &str) -> String {
        let (status, job) = self.api("POST", "/v1/jobs", spec);
        assert_eq!(status, 201, "{job}");
        job["id"].as_str().unwrap().to_string()
    }

    /// Asserts that `POST /v1/jobs` refuses `spec` (400), naming `field`, with `words` in
    /// its message.
    fn assert_refused(&self, spec: &str, field: &str, words: &str) {
        let (status, e) = self.api("POST", "/v1/jobs", spec);
        assert_eq!((status, &e["field"]), (400, &field.into()), "{e}");
        assert!(e["error"].as_str().unwrap().contains(words), "{e}");
    }

    /// Starts a submit of one file of `bytes` in `proj/` (slow under a bandwidth limit);
    /// returns its id and when it started.
    fn start_slow_submit(&self, bytes: usize) -> (String, Instant) {
        let proj = self.path("proj");
        big_tree(&proj, 1, bytes);
        let started = Instant::now();
        (self.start_job(&submit_spec(&proj)), started)
    }

    /// Starts a submit of one file of `size` bytes (`slow/`) and waits until it has done
    /// `done` bytes; returns its id.
    fn slow_job_under_way(&self, size: usize, done: u64) -> String {
        let slow = self.path("slow");
        big_tree(&slow, 1, size);
        let id = self.start_job(&submit_spec(&slow));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let j = self.api("GET", &format!("/v1/jobs/{id}"), "").1;
            if j["progress"]["bytes_done"].as_u64().unwrap_or(0) >= done {
                return id;
            }
            assert!(Instant::now() < deadline, "{j}: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `n` submits of the tiny fixture tree in `dir`, one after the other, each to its
    /// end; returns their ids.
    fn small_submits(&self, dir: &Path, n: usize) -> Vec<String> {
        build_fixture_tree("tiny", dir);
        (0..n)
            .map(|_| {
                let id = self.start_job(&submit_spec(dir));
                assert_eq!(
                    self.wait(&id, Duration::from_secs(10))["state"],
                    "succeeded"
                );
                id
            })
            .collect()
    }

    /// Polls a job until it ends; returns its record.
    /// Runs the Python `script` as user nobody (the caller must be root), its arguments this
    /// daemon's socket and then `args`, after a prelude: `d`, the client of this daemon; `out`,
    /// a dict; `attempt(name, call)`, which puts in `out[name]` `[200, what call returned]` or
    /// `[status, error]` for a refusal. Returns `out`, which the script fills.
    fn python_as_nobody(&self, script: &str, args: &[&Path]) -> serde_json::Value {
        const PRELUDE: &str = r#"
import json, sys
from attache_client import Daemon, DaemonError
d = Daemon(socket_path=sys.argv[1])
out = {}
def attempt(name, call):
    try:
        out[name] = [200, call()]
    except DaemonError as e:
        out[name] = [e.status, str(e)]
"#;
        let script = format!("{PRELUDE}{script}\nprint(json.dumps(out))\n");
        // A copy nobody may read, beside the daemon's files (the checkout may be closed to it).
        let client = self.path("attache_client.py");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python/attache_client.py"),
            &client,
        )
        .unwrap();
        std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = Command::new("python3")
            .uid(65534)
            .gid(65534)
            .env("PYTHONPATH", self.path(""))
            .arg("-c")
            .arg(&script)
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Cancels job `id` through the API; it must be cancelled within a second.
    fn cancel_within_a_second(&self, id: &str) {
        let sent = Instant::now();
        let (status, _) = self.api("DELETE", &format!("/v1/jobs/{id}"), "");
        assert_eq!(status, 202);
        let j = self.wait(id, Duration::from_secs(5));
        let took = sent.elapsed();
        assert_eq!(j["state"], "cancelled", "{j}");
        assert!(
            took < Duration::from_secs(1),
            "job {id} took {took:?} to be cancelled"
        );
    }

    fn wait(&self, id: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let (_, j) = self.api("GET", &format!("/v1/jobs/{id}"), "");
            if !matches!(j["state"].as_str(), Some("queued" | "running")) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} still {} after {limit:?}",
                j["state"]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.1 client over the Unix socket (independent of attache's own client).
fn http(socket: &Path, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: attache\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    // Chunked replies (event streams) are not needed by these tests.
    Some((status, body))
}

/// The first record of a job's event stream (NDJSON, sent chunked), read as it comes.
fn first_event(socket: &Path, id: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/jobs/{id}/events HTTP/1.1\r\nHost: attache\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        // Chunk sizes (`209`) parse as JSON numbers: the record is the object.
        if let Some(record) = text.lines().find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.is_object())
        }) {
            return record;
        }
    }
}

fn tcp_http(addr: &str, path: &str, token: Option<&str>) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split(' ').nth(1).unwrap().parse().unwrap()
}

fn big_tree(root: &Path, files: usize, size: usize) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..files {
        let data: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7 % 251) as u8).collect();
        std::fs::write(root.join(format!("f{i}.bin")), data).unwrap();
    }
}

fn submit_spec(inputs: &Path) -> String {
    serde_json::json!({"kind": "submit", "inputs": [inputs], "farm_id": "farm-1", "queue_id": "queue-1"}).to_string()
}

/// A command started with [`Daemon::start_cli`], once it has exited: its code and stderr.
fn ended(child: std::process::Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`submit_spec`] to the store `store` (a test server's URL).
fn submit_spec_to(inputs: &Path, store: &str) -> String {
    serde_json::json!({"kind": "submit", "inputs": [inputs], "farm_id": "farm-1", "queue_id": "queue-1", "store": store}).to_string()
}

#[test]
fn jobs_run_through_a_private_socket_and_the_cli() {
    let mut d = Daemon::start("");
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket must refuse other users");
    let dir_mode = std::fs::metadata(d.socket().parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    // The job records (every job's paths) are the daemon's alone too.
    let records = std::fs::metadata(d.path("state/jobs")).unwrap();
    assert_eq!(records.permissions().mode() & 0o777, 0o700);

    let (status, health) = d.api("GET", "/v1/health", "");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");

    // The same command, locally and through the daemon, gives the same attachments shape.
    let proj = d.path("proj");
    build_fixture_tree("tiny", &proj);
    let (code, local, err) = run(d.cmd().arg("submit").args(IDS).arg(&proj));
    assert_eq!(code, 0, "{err}");
    let (code, remote, err) = run(d
        .cmd()
        .env("ATTACHE_DAEMON", "1")
        .args(["--cache-dir"])
        .arg(d.path("client-cache"))
        .arg("submit")
        .args(IDS)
        .args(["--workers", "4"])
        .arg(&proj));
    assert_eq!(code, 0, "{err}");
    // A flag for this process's transfers is not silently dropped.
    for flag in ["--workers", "--cache-dir"] {
        assert!(
            err.contains(&format!("{flag} does not apply to a job run by the daemon")),
            "{err}"
        );
    }
    assert!(!err.contains("--store"), "{err}");
    let (l, r): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&local).unwrap(),
        serde_json::from_str(&remote).unwrap(),
    );
    assert_eq!(
        l["manifests"][0]["inputManifestHash"],
        r["manifests"][0]["inputManifestHash"]
    );
    assert_eq!(
        l["manifests"][0]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        [
            "rootPath",
            "rootPathFormat",
            "inputManifestPath",
            "inputManifestHash"
        ],
        "the official key order"
    );

    let (code, jobs, _) = run(d.cmd().arg("jobs"));
    assert_eq!(code, 0);
    let header: Vec<&str> = jobs.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID", "KIND", "STATE", "AGE", "TOOK", "FILES", "BYTES", "WHAT"
        ]
    );
    let line = jobs.lines().nth(1).unwrap();
    let row: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (row[1], row[2], row[5]),
        ("submit", "succeeded", "3/3"),
        "{jobs}"
    );
    assert!(
        line.ends_with(&format!(" 22 B/22 B  {}", proj.display())),
        "what the job works on comes last: {jobs}"
    );
    assert!(row[4].ends_with("ms") || row[4].ends_with('s'), "{jobs}");

    // A bad spec is refused before it is queued, naming the field.
    let (status, e) = d.api("POST", "/v1/jobs", r#"{"kind":"submit","queue_id":"q"}"#);
    assert_eq!(status, 400);
    assert_eq!(e["field"], "farm_id", "{e}");
    let (status, e) = d.api(
        "POST",
        "/v1/jobs",
        r#"{"kind":"submit","inputs":["relative"],"farm_id":"f","queue_id":"q"}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(e["field"], "inputs", "{e}");
    let (status, e) = d.api(
        "POST",
        "/v1/jobs",
        r#"{"kind":"submit","inputs":["/p"],"farm_id":"f","queue_id":"q","exclude":["a[b"]}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(e["field"], "exclude", "{e}");
    // A misspelt field: the known ones listed, the job's priority among them.
    let (status, e) = d.api(
        "POST",
        "/v1/jobs",
        r#"{"kind":"submit","inputs":["/p"],"farm_id":"f","queue_id":"q","priorty":90}"#,
    );
    assert_eq!(status, 400);
    let said = e["error"].as_str().unwrap();
    assert!(
        said.contains("unknown field `priorty`") && said.contains("`priority`"),
        "{e}"
    );
    let (status, _) = d.api("GET", "/v1/jobs/job-nope", "");
    assert_eq!(status, 404);

    let (_, metrics) = http(&d.socket(), "GET", "/metrics", "").unwrap();
    assert!(
        metrics.contains("attache_jobs_finished_total{state=\"succeeded\"} 1"),
        "{metrics}"
    );
    // The local submit already uploaded the three objects: the daemon's job asked nothing.
    assert!(
        metrics.contains("attache_known_present_hits_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("attache_uploaded_objects_total 0"),
        "{metrics}"
    );

    // --exclude travels with the job: the daemon leaves out what a local run leaves out.
    let submitted = |daemon: &str, flags: &[&str]| {
        let (code, out, err) = run(d
            .cmd()
            .env("ATTACHE_DAEMON", daemon)
            .arg("submit")
            .args(IDS)
            .args(flags)
            .arg(&proj));
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["manifests"][0]["inputManifestHash"].clone()
    };
    let excluded = ["--exclude", "sub/"];
    let (local_ex, remote_ex) = (submitted("0", &excluded), submitted("1", &excluded));
    assert_eq!(local_ex, remote_ex);
    assert_ne!(local_ex, l["manifests"][0]["inputManifestHash"]);
    // So do the bounds of size and time (tiny's files: 0, 12 and 10 bytes, modified at
    // 1700000000, …01 and …02 s): hello.txt alone.
    let bounds = ["--min-size", "1B", "--min-age", "2023-11-14T22:13:21Z"];
    let (local_bounded, remote_bounded) = (submitted("0", &bounds), submitted("1", &bounds));
    assert_eq!(local_bounded, remote_bounded);
    let hello = proj.join("only-hello");
    std::fs::create_dir(&hello).unwrap();
    std::fs::copy(proj.join("hello.txt"), hello.join("hello.txt")).unwrap();
    set_mtime_ns(&hello.join("hello.txt"), 1_700_000_001_000_000_000);
    let (code, out, err) = run(d.cmd().args(["hash", "--json"]).arg(&hello));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["roots"][0]["manifest_hash"], local_bounded, "{v}");
    std::fs::remove_dir_all(&hello).unwrap();
    // And the marker files: sub/ tagged is left out whole, as --exclude sub/ leaves it.
    std::fs::write(proj.join("sub/.nojobattach"), "").unwrap();
    let tagged = ["--exclude-if-present", ".nojobattach"];
    let (local_tagged, remote_tagged) = (submitted("0", &tagged), submitted("1", &tagged));
    assert_eq!(local_tagged, remote_tagged);
    assert_eq!(local_tagged, local_ex);
    std::fs::remove_file(proj.join("sub/.nojobattach")).unwrap();
    let (status, e) = d.api(
        "POST",
        "/v1/jobs",
        r#"{"kind":"submit","inputs":["/p"],"farm_id":"f","queue_id":"q","exclude_if_present":["sub/.nojobattach"]}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(e["field"], "exclude_if_present", "{e}");
    let (status, e) = d.api(
        "POST",
        "/v1/jobs",
        r#"{"kind":"submit","inputs":["/p"],"farm_id":"f","queue_id":"q","size_age":{"min_size":2,"max_size":1}}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(e["field"], "size_age", "{e}");
    // download-outputs' watch: checked, and a watch of a job with no outputs ends once idle.
    let outputs =
        r#"{"kind":"download_outputs","farm_id":"farm-1","queue_id":"queue-1","job_id":"job-none""#;
    for (fields, field) in [
        (r#","watch":"100ms"}"#, "watch"),
        (r#","until_idle":"1m"}"#, "until_idle"),
        (r#","watch":"5s","dry_run":true}"#, "watch"),
    ] {
        let (status, e) = d.api("POST", "/v1/jobs", &format!("{outputs}{fields}"));
        assert_eq!(status, 400, "{fields}: {e}");
        assert_eq!(e["field"], field, "{e}");
    }
    let watch = d.start_job(&format!(r#"{outputs},"watch":"1s","until_idle":"2s"}}"#));
    let j = d.wait(&watch, Duration::from_secs(20));
    assert_eq!(j["state"], "succeeded", "{j}");
    assert!(j["result"]["rounds"].as_u64() >= Some(2), "{j}");
    assert_eq!(j["result"]["tasks"], 0, "{j}");

    // --detach: the job is started and left to run, its id on stdout; `status ID -o FILE`
    // writes its result once done.
    let (code, out, err) = run(d
        .cmd()
        .args(["submit", "--daemon", "--detach"])
        .args(IDS)
        .arg(&proj));
    assert_eq!(code, 0, "{err}");
    let id = out.trim();
    assert!(id.starts_with("job-") && !id.contains('\n'), "{out}");
    assert!(
        err.contains(&format!(
            "job {id} started in the daemon: `attache status {id} --follow`"
        )),
        "{err}"
    );
    assert_eq!(d.wait(id, Duration::from_secs(20))["state"], "succeeded");
    let att = d.path("detached.json");
    let (code, _, err) = run(d.cmd().args(["status", id, "-o"]).arg(&att));
    assert_eq!(code, 0, "{err}");
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&att).unwrap()).unwrap();
    assert_eq!(
        written["manifests"][0]["inputManifestHash"], l["manifests"][0]["inputManifestHash"],
        "{written}"
    );
    // A result that cannot be written yet, and a detach with no daemon, are bad usage.
    let (code, _, err) = run(d
        .cmd()
        .args(["submit", "--daemon", "--detach", "-o"])
        .arg(d.path("never.json"))
        .args(IDS)
        .arg(&proj));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--detach returns before the job's result exists"),
        "{err}"
    );
    assert!(!d.path("never.json").exists());
    let (code, _, err) = run(d
        .cmd()
        .env_remove("ATTACHE_DAEMON")
        .args(["download-outputs", "--detach", "--job-id", "j"])
        .args(IDS));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("give --daemon too"), "{err}");

    let (code, secs) = d.stop();
    assert_eq!(code, Some(0));
    assert!(secs < 5.0);
    assert!(!d.socket().exists(), "socket removed on exit");
}

#[test]
fn cancel_through_the_api_stops_a_job_within_a_second() {
    let d = Daemon::start("[bandwidth]\nupload = \"2MiB/s\"\n");
    let proj = d.path("proj");
    big_tree(&proj, 8, 2 << 20);
    let (status, job) = d.api("POST", "/v1/jobs", &submit_spec(&proj));
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(700));
    d.cancel_within_a_second(&id);
    let manifests = d.path("store/Manifests");
    assert!(
        !manifests.exists(),
        "a cancelled submit publishes no manifest"
    );
}

/// A job held before its first request, here by the hash cache or the known-present index
/// another process keeps locked (waited for up to 30 s), is still cancelled through the API
/// within a second, and the API answers meanwhile.
#[test]
fn cancel_through_the_api_stops_a_job_held_by_a_locked_database() {
    for file in ["hash-cache-v1.sqlite3", "known-present-v2.sqlite3"] {
        eprintln!("held by {file}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let held = lock_database(&dir.path().join("cache").join(file));
        let d = Daemon::start_in(dir, "", &[]);
        let proj = d.path("proj");
        build_fixture_tree("tiny", &proj);
        let id = d.start_job(&submit_spec(&proj));
        std::thread::sleep(Duration::from_millis(1500));
        let asked = Instant::now();
        let (_, j) = d.api("GET", &format!("/v1/jobs/{id}"), "");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{file}: the API was held"
        );
        assert_eq!(
            j["state"], "running",
            "{file}: did not wait for the lock: {j}"
        );
        d.cancel_within_a_second(&id);
        assert!(
            !d.path("store/Manifests").exists(),
            "{file}: a manifest was published"
        );
        drop(held);
    }
}

#[test]
fn finished_jobs_survive_a_restart_and_running_ones_are_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir, "[bandwidth]\nupload = \"1MiB/s\"\n", &[]);
    let small = d.path("small");
    build_fixture_tree("tiny", &small);
    let done_id = d.start_job(&submit_spec(&small));
    assert_eq!(
        d.wait(&done_id, Duration::from_secs(10))["state"],
        "succeeded"
    );
    let slow = d.path("slow");
    big_tree(&slow, 4, 4 << 20);
    let running_id = d.start_job(&submit_spec(&slow));
    std::thread::sleep(Duration::from_millis(300));
    // A second daemon on another socket (a login without XDG_RUNTIME_DIR) but the same
    // state_dir would take the first one's running jobs for interrupted ones: refused.
    let (code, _, err) = run(d
        .cmd()
        .env("ATTACHE_DAEMON__SOCKET", d.path("second.sock"))
        .arg("daemon"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("another attache daemon uses it (pid ") && err.contains("daemon.state_dir"),
        "{err}"
    );
    let (_, j) = d.api("GET", &format!("/v1/jobs/{running_id}"), "");
    assert_eq!(j["state"], "running", "{j}");
    // A task script's submit through the daemon, cut off by the crash.
    let slow2 = d.path("slow2");
    big_tree(&slow2, 2, 4 << 20);
    let client = d.start_cli(d.cmd().args(["submit", "--daemon"]).args(IDS).arg(&slow2));
    std::thread::sleep(Duration::from_millis(500));
    // A crash: no chance to clean up; the lock goes with the process.
    d.signal(libc::SIGKILL);
    d.child.take().unwrap().wait().unwrap();
    let (code, err) = ended(client);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("was cut off: the daemon stopped answering before the job ended"),
        "{err}"
    );
    d.launch(&[]);
    let (_, j) = d.api("GET", &format!("/v1/jobs/{done_id}"), "");
    assert_eq!(j["state"], "succeeded");
    assert!(
        j["result"]["attachments"]["manifests"][0]["inputManifestHash"].is_string(),
        "{j}"
    );
    let (_, j) = d.api("GET", &format!("/v1/jobs/{running_id}"), "");
    assert_eq!(j["state"], "interrupted", "{j}");
}

/// A job cut off by a crash keeps the progress its record last saved (every 2 s while it
/// runs), and its time ran ends then, not at the restart: the time the daemon was down is
/// not the job's.
#[test]
fn a_job_a_crash_cut_off_keeps_its_progress_and_ended_when_last_seen() {
    let mut d = Daemon::start("[bandwidth]\nupload = \"1MiB/s\"\n");
    let id = d.slow_job_under_way(32 << 20, 2 << 20);
    // A save after that progress.
    std::thread::sleep(Duration::from_millis(2500));
    let epoch_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let killed_ms = epoch_ms();
    d.signal(libc::SIGKILL);
    d.child.take().unwrap().wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    d.launch(&[]);
    let (_, j) = d.api("GET", &format!("/v1/jobs/{id}"), "");
    assert_eq!(j["state"], "interrupted", "{j}");
    assert!(
        j["progress"]["bytes_done"].as_u64().unwrap() >= 2 << 20,
        "the progress saved: {j}"
    );
    let (started, finished) = (
        j["started_ms"].as_i64().unwrap(),
        j["finished_ms"].as_i64().unwrap(),
    );
    assert!(
        started < finished && finished <= killed_ms,
        "ended when last seen, before the crash ({killed_ms}): {j}"
    );
}

/// `attache jobs` lists oldest first and filters by state and recency; `attache status ID
/// --follow` waits for someone else's job with its progress and exits with its outcome.
#[test]
fn attache_jobs_filters_and_status_follows_a_job_to_its_end() {
    let d = Daemon::start("[bandwidth]\nupload = \"2MiB/s\"\n");
    let small = d.path("small");
    let ids = d.small_submits(&small, 3);
    // 6 MiB at 2 MiB/s: about 3 s.
    let slow = d.path("slow");
    big_tree(&slow, 1, 6 << 20);
    let slow_id = d.start_job(&submit_spec(&slow));
    let listed = |args: &[&str]| -> Vec<String> {
        let (code, out, err) = run(d.cmd().arg("jobs").arg("--json").args(args));
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut all = ids.clone();
    all.push(slow_id.clone());
    assert_eq!(listed(&[]), all, "oldest first");
    assert_eq!(
        listed(&["--state", "running,queued"]),
        vec![slow_id.clone()]
    );
    assert_eq!(listed(&["--state", "succeeded", "--last", "2"]), ids[1..]);
    // None in a state asked for: said, not a bare header.
    let (code, out, err) = run(d.cmd().args(["jobs", "--state", "failed,interrupted"]));
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("no failed or interrupted jobs"), "{err}");
    let (code, _, err) = run(d.cmd().args(["jobs", "--state", "done"]));
    assert_eq!(code, 2, "{err}");
    let (status, e) = d.api("GET", "/v1/jobs?state=done", "");
    assert_eq!((status, &e["field"]), (400, &"state".into()), "{e}");

    // Following: until the job ends, then its outcome.
    let (code, out, err) = run(d.cmd().args(["status", "--follow", &slow_id]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{slow_id} submit succeeded")),
        "{out}"
    );
    // A job cancelled while it is followed: exit 130, and the follower did not cancel it.
    // (A second file: the first one's content is in the store already.)
    let slow2 = d.path("slow2");
    big_tree(&slow2, 2, 6 << 20);
    let id = d.start_job(&submit_spec(&slow2));
    let socket = d.socket();
    let canceller = std::thread::spawn({
        let id = id.clone();
        move || {
            std::thread::sleep(Duration::from_millis(500));
            http(&socket, "DELETE", &format!("/v1/jobs/{id}"), "")
        }
    });
    let started = Instant::now();
    let (code, out, err) = run(d.cmd().args(["status", "--follow", &id]));
    canceller.join().unwrap();
    assert_eq!(code, 130, "{out}{err}");
    assert!(out.contains("cancelled"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "it waited for the transfer's end"
    );
    let (code, _, err) = run(d.cmd().args(["status", "--follow", "job-nosuchjob"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no job job-nosuchjob"), "{err}");

    // Ctrl-C stops following, says so, and is not a cancel: the job goes on.
    let slow3 = d.path("slow3");
    big_tree(&slow3, 2, 6 << 20);
    let id = d.start_job(&submit_spec(&slow3));
    let follower = d.start_cli(d.cmd().args(["status", "--follow", &id]));
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill only sends a signal to the child just spawned.
    unsafe { libc::kill(follower.id() as i32, libc::SIGINT) };
    let (code, err) = ended(follower);
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains(&format!(
            "stopped following job {id}; it goes on in the daemon"
        )),
        "{err}"
    );
    assert!(!err.lines().any(|l| l == "cancelled"), "{err}");
    assert_eq!(
        d.api("GET", &format!("/v1/jobs/{id}"), "").1["state"],
        "running"
    );
    // `attache cancel` shows the job stopped, not its record from before; again, it says
    // there is nothing to cancel.
    let (code, out, err) = run(d.cmd().args(["cancel", &id]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{id} submit cancelled")), "{out}");
    let (code, _, err) = run(d.cmd().args(["cancel", &id]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("has ended (cancelled): nothing to cancel"),
        "{err}"
    );
}

/// `daemon.max_running_jobs`: the jobs beyond it wait, queued, in the order they came; one
/// cancelled while queued ends without having run; the others run as slots free up.
/// When the daemon's slots are taken, the queued job of the highest priority starts next
/// (the oldest among equals), and a wrangler can move a queued job up the queue.
#[test]
fn queued_jobs_start_by_priority_and_can_be_moved_up() {
    let d = Daemon::start("max_running_jobs = 1\n[bandwidth]\nupload = \"4MiB/s\"\n");
    // 8 MiB at 4 MiB/s: about 2 s, holding the one slot.
    let (slow, _) = d.start_slow_submit(8 << 20);
    let small = d.path("small");
    build_fixture_tree("tiny", &small);
    let with_priority = |p: serde_json::Value| {
        let mut spec: serde_json::Value = serde_json::from_str(&submit_spec(&small)).unwrap();
        spec["priority"] = p;
        spec.to_string()
    };
    let plain = d.start_job(&submit_spec(&small));
    let high = d.start_job(&with_priority(80.into()));
    let low = d.start_job(&with_priority(10.into()));
    let also_plain = d.start_job(&submit_spec(&small));
    d.assert_refused(&with_priority(101.into()), "priority", "from 0 to 100");
    d.assert_refused(&with_priority("high".into()), "priority", "from 0 to 100");

    // The low one is moved up from the command line, past the 80.
    let (code, out, err) = run(d.cmd().args(["priority", &low, "90"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("queued") && out.contains("[priority 90]"),
        "{out}"
    );
    let (code, out, err) = run(d.cmd().args(["jobs"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&high) && l.ends_with("[priority 80]")),
        "{out}"
    );
    // Each queued job's place: the moved one first, then by priority, then by arrival.
    let place = |id: &str| d.api("GET", &format!("/v1/jobs/{id}"), "").1["queue_position"].clone();
    assert_eq!(
        [
            place(&low),
            place(&high),
            place(&plain),
            place(&also_plain),
            place(&slow)
        ],
        [
            1.into(),
            2.into(),
            3.into(),
            4.into(),
            serde_json::Value::Null
        ]
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&plain) && l.contains(" queued #3 ")),
        "{out}"
    );
    // A plugin following a queued job sees its place too.
    assert_eq!(first_event(&d.socket(), &plain)["queue_position"], 3);
    // Nothing counted yet: `-`, not 0/0 of nothing.
    let line = out.lines().find(|l| l.starts_with(&plain)).unwrap();
    assert!(!line.contains("0/0") && line.contains(" - "), "{line}");
    // A running job holds its slot already.
    let (code, _, err) = run(d.cmd().args(["priority", &slow, "99"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("only a queued job's priority"), "{err}");
    let (code, _, err) = run(d.cmd().args(["priority", &low, "101"]));
    assert_eq!(code, 2, "{err}");

    // A command run with --daemon --priority goes first of all.
    let mut urgent = d
        .cmd()
        .args(["submit", "--daemon", "--priority", "100", "--json"])
        .args(IDS)
        .arg(&small)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let urgent_id = loop {
        let (_, jobs) = d.api("GET", "/v1/jobs?state=queued", "");
        if let Some(j) = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["priority"] == 100)
        {
            break j["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the urgent job never queued");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(urgent.wait().unwrap().success());
    let started = |id: &str| {
        let j = d.wait(id, Duration::from_secs(20));
        assert_eq!(j["state"], "succeeded", "{j}");
        j["started_ms"].as_i64().unwrap()
    };
    let order: Vec<i64> = [&slow, &urgent_id, &low, &high, &plain, &also_plain]
        .iter()
        .map(|id| started(id))
        .collect();
    assert!(order.is_sorted(), "started in this order: {order:?}");
}

#[test]
fn jobs_beyond_max_running_jobs_wait_queued_and_can_be_cancelled_there() {
    let d = Daemon::start("max_running_jobs = 1\n[bandwidth]\nupload = \"4MiB/s\"\n");
    // 8 MiB at 4 MiB/s: about 2 s, holding the one slot.
    let (slow, _) = d.start_slow_submit(8 << 20);
    let small = d.path("small");
    build_fixture_tree("tiny", &small);
    let waiting = d.start_job(&submit_spec(&small));
    let cancelled = d.start_job(&submit_spec(&small));
    std::thread::sleep(Duration::from_millis(300));
    let state = |id: &str| d.api("GET", &format!("/v1/jobs/{id}"), "").1;
    assert_eq!(state(&slow)["state"], "running");
    assert_eq!(state(&waiting)["state"], "queued");
    let health = d.api("GET", "/v1/health", "").1;
    assert_eq!(
        (&health["jobs_active"], &health["jobs_queued"]),
        (&3.into(), &2.into()),
        "{health}"
    );
    let metrics = d.api("GET", "/metrics", "").1;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("\nattache_jobs_queued 2\n"),
        "{metrics}"
    );
    let (status, _) = d.api("DELETE", &format!("/v1/jobs/{cancelled}"), "");
    assert_eq!(status, 202);
    let j = d.wait(&cancelled, Duration::from_secs(5));
    assert_eq!(j["state"], "cancelled", "{j}");
    assert!(j["started_ms"].is_null(), "it never ran: {j}");
    assert_eq!(
        state(&waiting)["state"],
        "queued",
        "still behind the slow one"
    );
    // Through the CLI, a job that has to wait says so, then runs.
    let (code, _, err) = run(d.cmd().args(["submit", "--daemon"]).args(IDS).arg(&small));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("is queued: the daemon runs daemon.max_running_jobs jobs at once"),
        "{err}"
    );
    for id in [&slow, &waiting] {
        assert_eq!(d.wait(id, Duration::from_secs(20))["state"], "succeeded");
    }
    assert!(
        d.log().contains("queued: daemon.max_running_jobs"),
        "{}",
        d.log()
    );
    // The time jobs waited and ran, for a farm's dashboards: three started (the cancelled one
    // never did), the first at once, the two others behind it; all three succeeded.
    d.assert_metrics(&[
        "attache_job_queued_seconds_count{kind=\"submit\"} 3",
        "attache_job_queued_seconds_bucket{kind=\"submit\",le=\"0.1\"} 1",
        "attache_job_queued_seconds_bucket{kind=\"submit\",le=\"+Inf\"} 3",
        "attache_job_duration_seconds_count{kind=\"submit\"} 3",
        "# TYPE attache_job_duration_seconds histogram",
    ]);
}

/// A daemon that runs for months keeps a bounded history: finished jobs beyond
/// `daemon.jobs_kept`, or older than `daemon.jobs_kept_for`, are forgotten (memory and
/// state_dir) at start and whenever a job finishes; one that just finished stays readable.
#[test]
fn a_long_running_daemon_forgets_old_finished_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir, "", &[]);
    let small = d.path("small");
    let ids = d.small_submits(&small, 4);
    d.stop();
    // Their records, aged: 9 days, 3 days, 2 hours and 1 hour since they finished.
    let state = d.path("state/jobs");
    let record = |id: &str| state.join(format!("{id}.json"));
    let hours_ago = |h: i64| attache::daemon::registry::now_ms() - h * 3_600_000;
    for (id, h) in ids.iter().zip([9 * 24, 3 * 24, 2, 1]) {
        let mut r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(record(id)).unwrap()).unwrap();
        r["finished_ms"] = hours_ago(h).into();
        std::fs::write(record(id), serde_json::to_vec(&r).unwrap()).unwrap();
    }

    // At start: older than the default 7 days goes.
    d.launch(&[]);
    let listed = |d: &Daemon| -> Vec<String> {
        let (_, list) = d.api("GET", "/v1/jobs", "");
        let mut l: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        l.sort();
        l
    };
    let sorted = |v: &[&String]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(listed(&d), sorted(&[&ids[1], &ids[2], &ids[3]]));
    assert!(!record(&ids[0]).exists());

    // A reload lowers the limits; the next job to finish applies them. It stays itself (it
    // has just finished), with the newest one before it; the rest go.
    // (write_config's extra lines land in its [daemon] table.)
    d.write_config("jobs_kept = 2\njobs_kept_for = \"2d\"\n");
    let (status, e) = d.api("POST", "/v1/reload", "");
    assert_eq!(status, 200, "{e}");
    assert!(!d.log().contains("apply at the next start"), "{}", d.log());
    let new = d.start_job(&submit_spec(&small));
    assert_eq!(d.wait(&new, Duration::from_secs(10))["state"], "succeeded");
    assert_eq!(listed(&d), sorted(&[&ids[3], &new]));
    for gone in &ids[..3] {
        assert!(!record(gone).exists(), "{gone}");
        let (status, _) = d.api("GET", &format!("/v1/jobs/{gone}"), "");
        assert_eq!(status, 404);
    }
    assert!(record(&new).exists() && record(&ids[3]).exists());
}

/// A daemon with `log.file` logs there, not on stderr; after logrotate moves the file away,
/// SIGHUP makes it open the file at its path again.
#[test]
fn a_daemon_logs_to_log_file_and_opens_it_again_at_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("attache.log");
    let d = Daemon::start_in(dir, &format!("[log]\nfile = \"{}\"\n", log.display()), &[]);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("attache daemon listening"), "{logged}");
    assert!(!d.log().contains("listening"), "stderr: {}", d.log());
    let rotated = d.path("attache.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("config reloaded")) {
        assert!(Instant::now() < deadline, "no new log file: {}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(!old.contains("config reloaded"), "{old}");
}

/// Under systemd (`Type=notify`): READY=1 once the socket answers, STATUS= following the
/// jobs, WATCHDOG=1 within the watchdog's interval, STOPPING=1 at SIGTERM.
#[test]
fn a_daemon_under_systemd_says_ready_its_jobs_and_stopping() {
    let mut d = Daemon {
        dir: tempfile::tempdir().unwrap(),
        child: None,
    };
    d.write_config("[bandwidth]\nupload = \"2MiB/s\"\n");
    let notify = d.path("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = manager.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let log = std::fs::File::create(d.path("daemon.log")).unwrap();
    d.child = Some(
        d.cmd()
            .env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", "300000")
            .arg("daemon")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let first = next();
    assert!(first.lines().any(|l| l == "READY=1"), "{first}");
    assert!(
        http(&d.socket(), "GET", "/v1/health", "").is_some(),
        "ready before the socket answers: {}",
        d.log()
    );
    let serving = format!("STATUS=listening on {}; ", d.socket().display());
    assert!(
        first.contains(&format!("{serving}0 job(s) running, 0 queued")),
        "{first}"
    );
    // A job: the status says so, and the watchdog is fed meanwhile (every 150 ms).
    let proj = d.path("proj");
    big_tree(&proj, 4, 2 << 20);
    let (status, job) = d.api("POST", "/v1/jobs", &submit_spec(&proj));
    assert_eq!(status, 201, "{job}");
    let (mut running, mut fed) = (false, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(running && fed >= 3) {
        assert!(Instant::now() < deadline, "running {running}, fed {fed}");
        let message = next();
        running |= message.contains(&format!("{serving}1 job(s) running, 0 queued"));
        fed += message.lines().filter(|l| *l == "WATCHDOG=1").count();
    }
    d.signal(libc::SIGTERM);
    let mut stopping = next();
    while !stopping.lines().any(|l| l == "STOPPING=1") {
        stopping = next();
    }
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    let ended = d.child.take().unwrap().wait().unwrap();
    assert_eq!(ended.code(), Some(0), "{}", d.log());
}

#[test]
fn sighup_applies_a_new_bandwidth_and_keeps_the_old_config_when_broken() {
    let d = Daemon::start("[bandwidth]\nupload = \"1MiB/s\"\n");
    assert_eq!(
        d.api("GET", "/v1/health", "").1["bandwidth"]["upload"],
        "1MiB/s"
    );
    // 8 MiB at 1 MiB/s would take 8 s; the reload lands while it is running.
    let (id, started) = d.start_slow_submit(8 << 20);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        d.api("GET", &format!("/v1/jobs/{id}"), "").1["state"],
        "running"
    );
    // The bytes on their way count at once, for a dashboard's rate(); the job's own count
    // comes at its end.
    let metrics = d.api("GET", "/metrics", "").1;
    let value = |line: &str| -> u64 {
        let metrics = metrics.as_str().unwrap();
        let found = metrics.lines().find(|l| l.starts_with(line));
        found
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{line}:\n{metrics}"))
    };
    let moving = value("attache_transferred_bytes_total{direction=\"upload\"}");
    assert!(
        moving >= 256 << 10,
        "{moving} bytes after a second at 1 MiB/s"
    );
    assert_eq!(value("attache_uploaded_bytes_total "), 0);
    d.write_config("[bandwidth]\nupload = \"64MiB/s\"\n");
    d.signal(libc::SIGHUP);
    assert_eq!(d.wait(&id, Duration::from_secs(20))["state"], "succeeded");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the running transfer kept the old rate: {took:?}"
    );
    assert_eq!(
        d.api("GET", "/v1/health", "").1["bandwidth"]["upload"],
        "64MiB/s"
    );

    std::fs::write(
        d.path("attache.toml"),
        "[bandwidth]\nupload = \"fast please\"\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.log().contains("config reload failed") {
        assert!(
            Instant::now() < deadline,
            "no log line for the broken reload: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        d.log().contains("bandwidth.upload"),
        "the log names the key: {}",
        d.log()
    );
    assert_eq!(
        d.api("GET", "/v1/health", "").1["bandwidth"]["upload"],
        "64MiB/s",
        "the old config stays"
    );
    let (status, e) = d.api("POST", "/v1/reload", "");
    assert_eq!(status, 422, "{e}");
    // `attache reload` (the units' ExecReload) tells how it went, by its exit code: a file it
    // cannot read itself (2), a config the daemon refuses (1: here a command with a config of
    // its own asks), a config the daemon took (0).
    let (code, _, err) = run(d.cmd().arg("reload"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bandwidth.upload"), "{err}");
    let (code, _, err) = run(attache(&d.path("client-cache"))
        .env("ATTACHE_DAEMON__SOCKET", d.socket())
        .arg("reload"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("config not reloaded") && err.contains("bandwidth.upload"),
        "{err}"
    );
    d.write_config("[bandwidth]\nupload = \"32MiB/s\"\n");
    let (code, _, err) = run(d.cmd().arg("reload"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("config reloaded"), "{err}");
    assert!(
        !err.contains("restart"),
        "nothing waits for a restart: {err}"
    );
    assert_eq!(
        d.api("GET", "/v1/health", "").1["bandwidth"]["upload"],
        "32MiB/s"
    );
    // Keys a running daemon takes only at its start are named, at this reload and the next
    // (they still wait), until the file is back to what the daemon runs.
    d.write_config(
        "max_running_jobs = 9\n[bandwidth]\nupload = \"32MiB/s\"\n[log]\nformat = \"json\"\n",
    );
    for _ in 0..2 {
        let (code, _, err) = run(d.cmd().arg("reload"));
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains("config reloaded; daemon.max_running_jobs, log.format changed")
                && err.contains("restart"),
            "{err}"
        );
    }
    let (status, r) = d.api("POST", "/v1/reload", "");
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["at_restart"],
        serde_json::json!(["daemon.max_running_jobs", "log.format"])
    );
    d.write_config("[bandwidth]\nupload = \"32MiB/s\"\n");
    let (code, _, err) = run(d.cmd().arg("reload"));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("restart"), "{err}");
}

/// A daemon listening on TCP at a free port with the token `s3cr3t-t0ken-0123456789`, and
/// `extra` config lines (in `[daemon]`, then any sections they open); returns it and its port.
fn daemon_on_tcp(extra: &str) -> (Daemon, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    private_file(&token, "s3cr3t-t0ken-0123456789\n");
    let extra = format!(
        "listen = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n{extra}",
        token.display()
    );
    // `listen` and `token_file` belong to [daemon], which the base config opens last.
    (Daemon::start_in(dir, &extra, &[]), port)
}

fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A cache.dir the service cannot write (made by root, a read-only mount, a path through a
/// file) is said once at start, not only by each job that then fails on it.
#[test]
fn a_daemon_whose_cache_dir_cannot_be_written_says_so_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let cache = file.join("cache");
    let d = Daemon::start_in(
        dir,
        "",
        &[("ATTACHE_CACHE__DIR".into(), cache.display().to_string())],
    );
    let log = d.log();
    assert!(
        log.contains(&format!(
            "cache.dir {}: cannot write there",
            cache.display()
        )),
        "{log}"
    );
    let proj = d.path("proj");
    build_fixture_tree("tiny", &proj);
    let id = d.start_job(&submit_spec(&proj));
    let job = d.wait(&id, Duration::from_secs(20));
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("hash cache"),
        "{job}"
    );
}

#[test]
fn the_tcp_listener_needs_the_token() {
    let (d, port) = daemon_on_tcp("");
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(tcp_http(&addr, "/v1/health", None), 401);
    assert_eq!(
        tcp_http(&addr, "/v1/health", Some("wrong-token-0123456789")),
        401
    );
    assert_eq!(
        tcp_http(&addr, "/v1/health", Some("s3cr3t-t0ken-0123456789")),
        200
    );
    assert!(!d.log().contains("s3cr3t"), "the token is never logged");

    // A token file others can read, or a socket group that does not exist, is the config to
    // fix: the daemon does not start, exit 2 (as for a client), naming the setting.
    let second = |env: &[(&str, &str)]| {
        let mut c = d.cmd();
        c.env("ATTACHE_DAEMON__SOCKET", d.path("second.sock"))
            .env("ATTACHE_DAEMON__STATE_DIR", d.path("second-state"))
            .envs(env.iter().copied())
            .arg("daemon");
        run(&mut c)
    };
    let (code, _, err) = second(&[("ATTACHE_DAEMON__SOCKET_GROUP", "no-such-group-here")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("daemon.socket_group") && err.contains("no-such-group-here"),
        "{err}"
    );
    assert!(
        !d.path("second-state").exists(),
        "nothing is made before the settings are checked"
    );
    // Its TCP address held by the first: it does not start, and leaves no socket behind
    // that nothing answers on (a client would be told "connection refused").
    let (code, _, err) = second(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!d.path("second.sock").exists(), "no socket left: {err}");
    std::fs::set_permissions(d.path("token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = second(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("daemon.token_file") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn a_wrangler_manages_another_machine_s_daemon_over_tcp() {
    let (d, port) = daemon_on_tcp("[bandwidth]\nupload = \"256KiB/s\"\n");
    let url = format!("http://127.0.0.1:{port}");
    // The wrangler's machine: no config of that daemon, no socket, a copy of its token.
    let desk = tempfile::tempdir().unwrap();
    let token = desk.path().join("farm.token");
    private_file(&token, "s3cr3t-t0ken-0123456789\n");
    let remote = |args: &[&str]| {
        let mut c = attache(&desk.path().join("cache"));
        c.env("XDG_RUNTIME_DIR", desk.path().join("run"))
            .args(args)
            .arg("--daemon-url")
            .arg(&url)
            .arg("--token-file")
            .arg(&token);
        run(&mut c)
    };

    // 4 MiB at 256 KiB/s would take 16 s.
    let (id, started) = d.start_slow_submit(4 << 20);
    let (code, out, err) = remote(&["jobs", "--state", "running,queued", "--json"]);
    assert_eq!(code, 0, "{err}");
    let jobs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(jobs[0]["id"], id.as_str(), "{jobs}");

    // Its uplink is free again: lift the limit for the transfer in flight, and follow it.
    let (code, out, err) = remote(&["bwlimit", "off", "--for", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("upload unlimited"), "{out}");
    assert_eq!(d.upload_limit(), ("unlimited".into(), "set".into()));
    let (code, out, err) = remote(&["status", &id, "--follow"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{id} submit succeeded")), "{out}");
    assert!(started.elapsed() < Duration::from_secs(12));

    // Its setup, as its daemon sees it (its config, credentials and store).
    let (code, out, err) = remote(&["doctor"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "checked by:  the daemon at {url} (its own config)"
        )) && out.contains(&format!(
            "store:       file://{}",
            d.path("store").display()
        )),
        "{out}"
    );

    // Back to the config's limit; a second submit is cancelled from afar.
    let (code, out, err) = remote(&["bwlimit", "--reset"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("upload 256KiB/s"), "{out}");
    std::fs::write(d.path("proj/f0"), vec![7u8; 4 << 20]).unwrap();
    let second = d.start_job(&submit_spec(&d.path("proj")));
    let (code, _, err) = remote(&["cancel", &second]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        d.wait(&second, Duration::from_secs(5))["state"],
        "cancelled"
    );

    // A wrong token, or one others can read, is the wrangler's config: exit 2, named.
    let wrong = desk.path().join("old.token");
    private_file(&wrong, "an-older-token-0123456789\n");
    let mut c = attache(&desk.path().join("cache"));
    c.args(["jobs", "--daemon-url", &url, "--token-file"])
        .arg(&wrong);
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("refused the token of") && err.contains("old.token"),
        "{err}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = remote(&["jobs"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("farm.token") && err.contains("chmod 600"),
        "{err}"
    );
    // The environment names the daemon as well, for a shell that manages one worker.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = attache(&desk.path().join("cache"));
    c.env("ATTACHE_DAEMON_URL", &url)
        .env("ATTACHE_DAEMON_TOKEN_FILE", &token)
        .args(["status", &second]);
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelled"), "{out}");
    assert!(!d.log().contains("s3cr3t"), "the token is never logged");
}

/// A farm seen from a wrangler's desk: one table of the jobs of several workers, one
/// bandwidth setting for all of them, a job's status, cancel and retry by its id alone; a
/// worker that does not answer is named and the others still are.
#[test]
fn a_wrangler_s_commands_speak_to_several_daemons_at_once() {
    let (a, port_a) = daemon_on_tcp("");
    let (b, port_b) = daemon_on_tcp("");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let desk = tempfile::tempdir().unwrap();
    let token = desk.path().join("farm.token");
    private_file(&token, "s3cr3t-t0ken-0123456789\n");
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let farm = |urls: &str, args: &[&str]| {
        let mut c = attache(&desk.path().join("cache"));
        c.args(args)
            .args(["--daemon-url", urls, "--token-file"])
            .arg(&token);
        run(&mut c)
    };
    for d in [&a, &b] {
        let small = d.path("small");
        build_fixture_tree("tiny", &small);
        let id = d.start_job(&submit_spec(&small));
        d.wait(&id, Duration::from_secs(10));
    }
    let both = format!("{url_a},{url_b}");
    let (code, out, err) = farm(&both, &["jobs", "--json"]);
    assert_eq!(code, 0, "{err}");
    let jobs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let daemons: std::collections::BTreeSet<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["daemon"].as_str().unwrap())
        .collect();
    assert_eq!(daemons, [url_a.as_str(), url_b.as_str()].into(), "{jobs}");
    let (code, out, err) = farm(&both, &["jobs"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("DAEMON") && out.contains(&format!("127.0.0.1:{port_b}")),
        "{out}"
    );

    // One setting for the farm; a worker down is named, the others take it.
    // (A trailing comma, as `printf '…,'` leaves, names no daemon.)
    let with_dead = format!("{both},http://127.0.0.1:{dead},");
    let (code, out, err) = farm(&with_dead, &["bwlimit", "7MiB/s", "--for", "1h"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("http://127.0.0.1:{dead}")), "{err}");
    assert!(out.contains(&format!("{url_a}: upload 7MiB/s")), "{out}");
    for d in [&a, &b] {
        assert_eq!(d.upload_limit(), ("7MiB/s".into(), "set".into()));
    }

    // A job's id is enough: of the farm's daemons, the one that has it is found (and named),
    // whichever else is down.
    let (code, _, err) = farm(&both, &["bwlimit", "64KiB/s", "--for", "1h"]);
    assert_eq!(code, 0, "{err}");
    let (running, _) = b.start_slow_submit(4 << 20);
    let (code, out, err) = farm(&with_dead, &["status", &running]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("{running} submit running")),
        "{out}"
    );
    assert!(err.contains(&format!("{running} is on {url_b}")), "{err}");
    assert!(err.contains(&format!("http://127.0.0.1:{dead}")), "{err}");
    let (code, _, err) = farm(&both, &["cancel", &running]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        b.wait(&running, Duration::from_secs(5))["state"],
        "cancelled"
    );
    let (code, out, err) = farm(&both, &["retry", "--state", "cancelled", "--json"]);
    assert_eq!(code, 0, "{err}");
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again[0]["retry_of"], running.as_str(), "{again}");
    let again = again[0]["id"].as_str().unwrap();
    let (code, _, err) = farm(&both, &["cancel", again]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(b.wait(again, Duration::from_secs(5))["state"], "cancelled");
    // The setup of each, one line each; a daemon down is named and counted.
    let (code, out, err) = farm(&with_dead, &["doctor"]);
    assert_eq!(code, 1, "{err}");
    assert!(out.contains(&format!("ok      {url_a}  file://")), "{out}");
    assert!(
        out.contains("2 of 3 daemons can transfer with their store (1 gave no report: see above)"),
        "{out}"
    );
    assert!(err.contains(&format!("http://127.0.0.1:{dead}")), "{err}");
    let (code, out, err) = farm(&both, &["doctor", "--json"]);
    assert_eq!(code, 0, "{err}");
    let reports: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reports.as_array().unwrap().len(), 2, "{reports}");
    assert_eq!(reports[0]["report"]["passed"], true, "{reports}");
    // A store neither can write to (`Data` is a file there): each says what failed.
    let broken = desk.path().join("broken-store");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("Data"), b"").unwrap();
    let broken = format!("file://{}", broken.display());
    let (code, out, err) = farm(&both, &["doctor", "--store", &broken]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out.matches("FAILED  http://127.0.0.1:").count(), 2, "{out}");
    assert!(out.contains("        write content: "), "{out}");
    assert!(
        out.contains("0 of 2 daemons can transfer with their store."),
        "{out}"
    );
    // A store whose directory cannot be made: each says so.
    let (code, out, err) = farm(&both, &["doctor", "--store", "file:///proc/attache-store"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out.matches("FAILED  http://127.0.0.1:").count(), 2, "{out}");
    assert!(
        out.contains("cannot create the store directory /proc/attache-store"),
        "{out}"
    );

    // An id no daemon has: said, exit 1.
    let (code, _, err) = farm(&both, &["status", "job-1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no job job-1 on any of the 2 daemons"),
        "{err}"
    );
    let (code, _, err) = farm(&both, &["retry", "job-1", again]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no job job-1 on any of the 2 daemons"),
        "{err}"
    );
}

/// A DCC plugin that writes job bundles sends the daemon the bundle, not its paths: the job
/// reads its asset_references.yaml and its record holds what it read.
#[test]
fn a_submit_through_the_api_takes_a_job_bundle_s_asset_references() {
    let d = Daemon::start("");
    let proj = d.path("proj");
    big_tree(&proj.join("tex"), 3, 1000);
    std::fs::write(proj.join("scene.ma"), b"scene").unwrap();
    let bundle = d.path("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let refs = |scene: &str| {
        format!(
            "assetReferences:\n  inputs:\n    filenames: [{scene}]\n    directories: [{p}/tex]\n  outputs:\n    directories: [{p}/renders]\n",
            p = proj.display()
        )
    };
    std::fs::write(
        bundle.join("asset_references.yaml"),
        refs(&proj.join("scene.ma").display().to_string()),
    )
    .unwrap();
    let spec = |bundle: &Path| {
        serde_json::json!({"kind": "submit", "asset_references": [bundle], "farm_id": "farm-1", "queue_id": "queue-1"}).to_string()
    };
    let id = d.start_job(&spec(&bundle));
    let j = d.wait(&id, Duration::from_secs(10));
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["result"]["roots"][0]["files"], 4, "{j}");
    let att = &j["result"]["attachments"]["manifests"][0];
    assert_eq!(
        att["outputRelativeDirectories"],
        serde_json::json!(["renders"]),
        "{j}"
    );
    assert_eq!(
        j["spec"]["inputs"],
        serde_json::json!([proj.join("scene.ma"), proj.join("tex")]),
        "the record holds what was read: {j}"
    );
    assert!(j["spec"].get("asset_references").is_none(), "{j}");

    // A relative path means the client's current directory, which the daemon does not know.
    std::fs::write(bundle.join("asset_references.yaml"), refs("scene.ma")).unwrap();
    d.assert_refused(&spec(&bundle), "asset_references", "scene.ma is relative");

    // A FIFO where the document is: refused at once, where reading it would block the daemon
    // (every client) until someone wrote to it.
    let fifo = d.path("fifo-bundle");
    std::fs::create_dir_all(&fifo).unwrap();
    let name =
        std::ffi::CString::new(fifo.join("asset_references.yaml").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
    d.assert_refused(
        &spec(&fifo.join("asset_references.yaml")),
        "asset_references",
        "not a regular file",
    );

    // A bundle with a template: its PATH parameters, valued by `parameters` (as the official
    // client's job_parameters) and a default inside the bundle, are the job's paths.
    let templated = d.path("templated");
    std::fs::create_dir_all(templated.join("plugins")).unwrap();
    std::fs::write(
        templated.join("template.json"),
        r#"{"specificationVersion": "jobtemplate-2023-09", "parameterDefinitions": [
            {"name": "Scene", "type": "PATH", "objectType": "FILE", "dataFlow": "IN"},
            {"name": "Tex", "type": "LIST[PATH]", "objectType": "DIRECTORY", "dataFlow": "IN"},
            {"name": "Out", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT"},
            {"name": "Plugins", "type": "PATH", "default": "plugins"}]}"#,
    )
    .unwrap();
    let with = |params: serde_json::Value| {
        serde_json::json!({"kind": "submit", "asset_references": [&templated], "parameters": params,
            "farm_id": "farm-1", "queue_id": "queue-1"})
        .to_string()
    };
    let id = d.start_job(&with(serde_json::json!([
        {"name": "Scene", "value": proj.join("scene.ma")},
        {"name": "Tex", "value": [proj.join("tex")]},
        {"name": "Out", "value": proj.join("renders")},
    ])));
    let j = d.wait(&id, Duration::from_secs(10));
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["result"]["roots"][0]["files"], 4, "{j}");
    assert_eq!(
        (
            &j["spec"]["inputs"],
            &j["spec"]["output_dirs"],
            &j["spec"]["referenced"]
        ),
        (
            &serde_json::json!([proj.join("scene.ma"), proj.join("tex")]),
            &serde_json::json!([proj.join("renders")]),
            &serde_json::json!([templated.join("plugins")]),
        ),
        "{j}"
    );
    d.assert_refused(
        &with(serde_json::json!([{"name": "Scene", "value": proj.join("scene.ma")}])),
        "asset_references",
        "parameter Tex has no value",
    );
}

/// Runs `script` with python3 and the Python client (`clients/python`) on its path; returns
/// its stdout as JSON.
fn python_client(script: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = Command::new("python3")
        .env(
            "PYTHONPATH",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python"),
        )
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A DCC plugin's way in: the Python client (stdlib only) submits a job bundle, follows the
/// job to its end, and gets the daemon's refusals as exceptions naming the field.
#[test]
fn the_python_client_submits_a_bundle_follows_it_and_reads_refusals() {
    let d = Daemon::start("");
    let proj = d.path("proj");
    big_tree(&proj, 4, 1000);
    let bundle = d.path("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("asset_references.json"),
        serde_json::json!({"assetReferences": {"inputs": {"directories": [proj]}}}).to_string(),
    )
    .unwrap();
    // The output directory is a template parameter, valued by the plugin.
    std::fs::write(
        bundle.join("template.yaml"),
        "specificationVersion: jobtemplate-2023-09\nparameterDefinitions:\n- {name: Renders, type: PATH, objectType: DIRECTORY, dataFlow: OUT}\n",
    )
    .unwrap();
    let script = r#"
import json, sys
from attache_client import Daemon, DaemonError
d = Daemon(socket_path=sys.argv[1])
job = d.submit(farm_id="farm-1", queue_id="queue-1", asset_references=[sys.argv[2]],
               parameters={"Renders": sys.argv[3]})
records = list(d.events(job["id"]))
out = {"states": [r["state"] for r in records], "final": records[-1]}
for name, call in [("retry", lambda: d.retry(job["id"])),
                   ("priority", lambda: d.set_priority(job["id"], 70)),
                   ("spec", lambda: d.submit(farm_id="farm/1", queue_id="q", inputs=["/p"]))]:
    try:
        call()
        out[name] = None
    except DaemonError as e:
        out[name] = [e.status, e.field, str(e)]
out["bandwidth"] = d.bandwidth("5MB/s", lasting="1h")
try:
    d.jobs(last=-1)
except DaemonError as e:
    out["bad_query"] = [e.status, e.field, str(e)]
out["succeeded"] = [j["id"] for j in d.jobs(states=["succeeded"])]
print(json.dumps(out))
"#;
    let v = python_client(
        script,
        &[
            d.socket().as_os_str(),
            bundle.as_os_str(),
            proj.join("renders").as_os_str(),
        ],
    );
    let states = v["states"].as_array().unwrap();
    assert_eq!(states.last().unwrap(), "succeeded", "{v}");
    let final_ = &v["final"];
    assert_eq!(final_["result"]["roots"][0]["files"], 4, "{v}");
    assert_eq!(
        final_["result"]["attachments"]["manifests"][0]["outputRelativeDirectories"],
        serde_json::json!(["renders"]),
        "{v}"
    );
    assert_eq!(v["retry"][0], 409, "{v}");
    assert_eq!(
        (&v["priority"][0], &v["priority"][1]),
        (&409.into(), &"id".into()),
        "only a queued job's priority changes: {v}"
    );
    assert!(v["retry"][2].as_str().unwrap().contains("succeeded"), "{v}");
    assert_eq!(
        (&v["spec"][0], &v["spec"][1]),
        (&400.into(), &"farm_id".into()),
        "{v}"
    );
    assert_eq!(v["bandwidth"]["source"], "set", "{v}");
    assert_eq!(v["succeeded"], serde_json::json!([final_["id"]]), "{v}");
    assert_eq!(
        (&v["bad_query"][0], &v["bad_query"][1]),
        (&400.into(), &"last".into()),
        "{v}"
    );

    // Every refusal is JSON naming the field, also those the HTTP layer makes, and a path
    // the daemon would read from its own working directory, or a store it cannot open, is
    // refused with the spec rather than failing the job later.
    let sync = |attachments: &str, store: &str| {
        format!(r#"{{"kind":"sync_inputs","attachments":{attachments},"session_dir":"/s"{store}}}"#)
    };
    for (method, path, body, status, field) in [
        ("GET", "/v1/jobs?last=abc", String::new(), 400, Some("last")),
        ("GET", "/v1/jobs?foo=1", String::new(), 400, Some("foo")),
        ("DELETE", "/v1/health", String::new(), 405, None),
        (
            "POST",
            "/v1/jobs",
            sync(r#""att.json""#, ""),
            400,
            Some("attachments"),
        ),
        (
            "POST",
            "/v1/jobs",
            sync(r#"{"manifests":[]}"#, r#","store":"ftp://x""#),
            400,
            Some("store"),
        ),
    ] {
        let (code, reply) = d.api(method, path, &body);
        assert_eq!(code, status, "{method} {path} {body}: {reply}");
        assert!(reply["error"].is_string(), "{method} {path}: {reply}");
        assert_eq!(reply["field"].as_str(), field, "{method} {path}: {reply}");
    }
}

/// A user allowed on the socket cannot have the daemon (here running as root) read or write
/// what the user could not: a file only its owner reads, a directory closed to it, a
/// session directory it may not write in. What the user may read goes through.
#[test]
fn the_daemon_does_for_another_user_only_what_that_user_could() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: acting as another user (nobody) needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_in(dir, "socket_group = \"nogroup\"\n", &[]);
    let public = d.path("public");
    std::fs::create_dir_all(public.join("tex")).unwrap();
    std::fs::write(public.join("tex/a.png"), b"texture").unwrap();
    let secret = d.path("secret.token");
    private_file(
        &secret,
        "s3cr3t-t0ken-0123456789
",
    );
    // A tree the user may enter, with one file it may not read.
    let mixed = d.path("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::write(mixed.join("ok.png"), b"fine").unwrap();
    private_file(
        &mixed.join("key.pem"),
        "private key
",
    );
    let closed = d.path("closed-session");
    std::fs::create_dir_all(&closed).unwrap();
    for p in [&public, &public.join("tex"), &mixed, &closed] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let open_session = d.path("open-session");
    std::fs::create_dir_all(&open_session).unwrap();
    std::fs::set_permissions(&open_session, std::fs::Permissions::from_mode(0o777)).unwrap();
    for p in [public.join("tex/a.png"), mixed.join("ok.png")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let script = r#"
def submit(name, **spec):
    try:
        out[name] = d.wait(d.start(spec)["id"])
    except DaemonError as e:
        out[name] = [e.status, str(e)]
ids = dict(farm_id="farm-1", queue_id="queue-1")
submit("public", kind="submit", inputs=[sys.argv[2]], **ids)
submit("secret", kind="submit", inputs=[sys.argv[3]], **ids)
submit("mixed", kind="submit", inputs=[sys.argv[4]], **ids)
submit("session", kind="sync_inputs", attachments={"manifests": []}, session_dir=sys.argv[5])
submit("store", kind="submit", inputs=[sys.argv[2]], store="file://" + sys.argv[6], **ids)
submit("group", kind="sync_inputs", attachments={"manifests": []}, session_dir=sys.argv[7],
       job_group="root")
"#;
    let v = d.python_as_nobody(
        script,
        &[
            &public,
            &secret,
            &mixed,
            &closed.join("s-1"),
            &d.path("elsewhere"),
            &open_session,
        ],
    );
    assert_eq!(v["public"]["state"], "succeeded", "{v}");
    for (name, path, what) in [
        ("secret", &secret, "read"),
        ("session", &closed, "write in"),
    ] {
        assert_eq!(v[name][0], 403, "{name}: {v}");
        let message = v[name][1].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "{}: user nobody (uid 65534) may not {what} it",
                path.display()
            )),
            "{name}: {message}"
        );
    }
    assert_eq!(v["mixed"]["state"], "failed", "{v}");
    assert_eq!(v["mixed"]["retryable"], false, "a lasting refusal: {v}");
    let error = v["mixed"]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "{}: user nobody (uid 65534) may not read it",
            mixed.join("key.pem").display()
        )),
        "{error}"
    );
    let key_object = d.path("store/Data").join(format!(
        "{}.xxh128",
        attache::hash::ContentHash::of(b"private key\n")
    ));
    assert!(!key_object.exists(), "never read for it, never uploaded");
    // A store of its own choosing would be written with the daemon's rights (a file:// one)
    // or its credentials.
    assert_eq!(v["store"][0], 403, "{v}");
    assert!(
        v["store"][1]
            .as_str()
            .unwrap()
            .contains("only its own store"),
        "{v}"
    );
    assert!(!d.path("elsewhere").exists());
    // Its files given to a group it is not in.
    assert_eq!(v["group"][0], 403, "{v}");
    assert!(
        v["group"][1]
            .as_str()
            .unwrap()
            .contains("job_group: root: user nobody (uid 65534) is not in this group"),
        "{v}"
    );
    // Root retries the failed job (as after an outage): it acts for nobody again, and fails
    // as it did, instead of reading the key with root's rights.
    let failed = v["mixed"]["id"].as_str().unwrap();
    let (status, retried) = d.api("POST", &format!("/v1/jobs/{failed}/retry"), "");
    assert_eq!(status, 201, "{retried}");
    assert_eq!(retried["run_as"]["uid"], 65534, "{retried}");
    let again = d.wait(retried["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(again["state"], "failed", "{again}");
    assert!(!key_object.exists(), "a retry by root read it for nobody");
}

/// What a job warns of reaches the command that sent it, as a local run prints it: a farm's
/// task log shows the input that was not there, not only the daemon's journal.
#[test]
fn a_daemon_job_s_warnings_reach_the_client_and_its_record() {
    let d = Daemon::start("");
    let proj = d.path("proj");
    build_fixture_tree("tiny", &proj);
    let missing = d.path("typo/scene.ma");
    let (code, _, err) = run(d
        .cmd()
        .args(["submit", "--daemon"])
        .args(IDS)
        .arg(&proj)
        .arg(&missing));
    assert_eq!(code, 0, "{err}");
    let said = format!(
        "input {} does not exist: submitted as a referenced path",
        missing.display()
    );
    assert!(err.contains(&said), "{err}");
    assert_eq!(err.matches(&said).count(), 1, "said once: {err}");
    let (_, jobs) = d.api("GET", "/v1/jobs", "");
    let warnings = &jobs[0]["warnings"];
    assert_eq!(warnings.as_array().map(Vec::len), Some(1), "{jobs}");
    assert!(warnings[0].as_str().unwrap().starts_with(&said), "{jobs}");
    // A later follower of the ended job hears of them too.
    let id = jobs[0]["id"].as_str().unwrap();
    let (code, _, err) = run(d.cmd().args(["status", id, "--follow"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&said), "{err}");
}

/// For a test of what user nobody may do on the socket (`None`, said, when this is not root):
/// a daemon with the `[daemon]` lines `extra`, an upload limit of 1 MiB/s and root's job of
/// 8 MiB held up by it (its id), and a directory `public` that user nobody may read (one
/// small file).
fn nobody_beside_a_slow_root_job(extra: &str) -> Option<(Daemon, String, PathBuf)> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: acting as another user (nobody) needs root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_in(
        dir,
        &format!("socket_group = \"nogroup\"\n{extra}[bandwidth]\nupload = \"1MiB/s\"\n"),
        &[],
    );
    let (root_job, _) = d.start_slow_submit(8 << 20);
    let public = d.path("public");
    std::fs::create_dir_all(&public).unwrap();
    std::fs::write(public.join("a.txt"), b"small").unwrap();
    for p in [&public, &public.join("a.txt")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Some((d, root_job, public))
}

/// A user on the socket may have `daemon.max_jobs_per_user` jobs queued or running: one more
/// is refused (429, saying what to do) until one of its jobs ends. Root is not limited.
#[test]
fn a_user_on_the_socket_may_have_max_jobs_per_user_jobs_at_once() {
    // Root's job holds the one slot: the user's jobs stay queued.
    let Some((d, root_job, public)) =
        nobody_beside_a_slow_root_job("max_running_jobs = 1\nmax_jobs_per_user = 2\n")
    else {
        return;
    };
    let script = r#"
spec = dict(kind="submit", farm_id="farm-1", queue_id="queue-1", inputs=[sys.argv[2]])
attempt("first", lambda: d.start(spec)["state"])
attempt("second", lambda: d.start(spec)["id"])
attempt("third", lambda: d.start(spec)["id"])
d.cancel(out["second"][1])
attempt("after_cancel", lambda: d.start(spec)["state"])
"#;
    let v = d.python_as_nobody(script, &[&public]);
    assert_eq!(v["first"], serde_json::json!([200, "queued"]), "{v}");
    assert_eq!(v["second"][0], 200, "{v}");
    assert_eq!(v["third"][0], 429, "{v}");
    let said = v["third"][1].as_str().unwrap();
    assert!(
        said.contains("user nobody (uid 65534) has 2 jobs queued or running")
            && said.contains("daemon.max_jobs_per_user"),
        "{said}"
    );
    assert_eq!(v["after_cancel"], serde_json::json!([200, "queued"]), "{v}");
    // Root (the daemon's own user here) is not limited.
    for _ in 0..3 {
        d.start_job(&submit_spec(&public));
    }
    d.api("DELETE", &format!("/v1/jobs/{root_job}"), "");
}

/// A user on the socket sees and changes only the jobs that act for it: another user's job
/// (its paths, its progress) is neither listed nor shown, and cannot be cancelled, retried or
/// reprioritized by it; the machine's bandwidth and config are for root and the daemon's user.
#[test]
fn another_user_sees_and_changes_only_its_own_jobs() {
    // Root's job, held up by the bandwidth limit while nobody tries to act on it.
    let Some((d, root_job, public)) = nobody_beside_a_slow_root_job("") else {
        return;
    };
    let script = r#"
root_job = sys.argv[2]
mine = d.wait(d.submit("farm-1", "queue-1", inputs=[sys.argv[3]])["id"])
out["mine"] = mine
attempt("list", lambda: [j["id"] for j in d.jobs()])
attempt("status", lambda: d.job(root_job))
attempt("events", lambda: next(d.events(root_job)))
attempt("cancel", lambda: d.cancel(root_job))
attempt("priority", lambda: d.set_priority(root_job, 100))
attempt("retry", lambda: d.retry(root_job))
attempt("bandwidth", lambda: d.bandwidth("off"))
attempt("bandwidth_reset", lambda: d.bandwidth(reset=True))
attempt("reload", lambda: d._call("POST", "/v1/reload"))
attempt("bandwidth_seen", lambda: d.bandwidth()["upload"])
attempt("own_status", lambda: d.job(mine["id"])["state"])
"#;
    let v = d.python_as_nobody(script, &[Path::new(&root_job), &public]);
    assert_eq!(v["mine"]["state"], "succeeded", "{v}");
    let mine = v["mine"]["id"].as_str().unwrap();
    assert_eq!(v["list"], serde_json::json!([200, [mine]]), "{v}");
    assert_eq!(
        v["own_status"],
        serde_json::json!([200, "succeeded"]),
        "{v}"
    );
    for name in ["status", "events", "cancel", "priority", "retry"] {
        assert_eq!(v[name][0], 403, "{name}: {v}");
        let message = v[name][1].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "job {root_job} acts for another user: user nobody"
            )),
            "{name}: {message}"
        );
    }
    for name in ["bandwidth", "bandwidth_reset", "reload"] {
        assert_eq!(v[name][0], 403, "{name}: {v}");
        assert!(
            v[name][1]
                .as_str()
                .unwrap()
                .contains("only root or the daemon's own user may"),
            "{name}: {v}"
        );
    }
    // Seeing the limit in force changes nothing: it stays open to every socket user.
    assert_eq!(v["bandwidth_seen"][0], 200, "{v}");
    // Root's job went on, at root's priority and limit, and root sees every job.
    let (_, j) = d.api("GET", &format!("/v1/jobs/{root_job}"), "");
    assert_eq!(j["state"], "running", "{j}");
    assert_eq!(d.upload_limit(), ("1MiB/s".into(), "config".into()));
    let (_, all) = d.api("GET", "/v1/jobs", "");
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [root_job.as_str(), mine], "{all}");
    let (status, _) = d.api("DELETE", &format!("/v1/jobs/{root_job}"), "");
    assert_eq!(status, 202);
    assert_eq!(
        d.wait(&root_job, Duration::from_secs(10))["state"],
        "cancelled"
    );
}

/// A plugin following a job must not take a daemon that stopped for the job's end: the
/// Python client raises, as the CLI says the job was cut off.
#[test]
fn the_python_client_raises_when_the_daemon_stops_before_the_job_ends() {
    use std::io::BufRead;
    let mut d = Daemon::start("[bandwidth]\nupload = \"1MiB/s\"\n");
    let slow = d.path("slow");
    big_tree(&slow, 4, 4 << 20);
    let id = d.start_job(&submit_spec(&slow));
    let script = r#"
import json, sys
from attache_client import Daemon, DaemonError
d = Daemon(socket_path=sys.argv[1])
try:
    for r in d.events(sys.argv[2]):
        print(json.dumps({"state": r["state"]}), flush=True)
    print(json.dumps({"raised": None}))
except DaemonError as e:
    print(json.dumps({"raised": [e.status, str(e)]}))
"#;
    let mut follower = Command::new("python3")
        .env(
            "PYTHONPATH",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python"),
        )
        .arg("-c")
        .arg(script)
        .arg(d.socket())
        .arg(&id)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("running") || first.contains("queued"),
        "{first}"
    );
    d.signal(libc::SIGKILL);
    d.child.take().unwrap().wait().unwrap();
    let last = lines.last().unwrap().unwrap();
    assert!(follower.wait().unwrap().success());
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["raised"][0], 0, "{v}");
    assert!(
        v["raised"][1].as_str().unwrap().contains("was cut off"),
        "{v}"
    );
}

#[test]
fn the_tcp_listener_speaks_https_with_a_certificate_and_the_cli_checks_it() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::tls::StudioCa::new().write_files(certs.path());
    let (d, port) = daemon_on_tcp(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    assert!(d.log().contains("HTTPS"), "{}", d.log());
    let token = certs.path().join("farm.token");
    private_file(&token, "s3cr3t-t0ken-0123456789\n");
    let remote = |url: &str, ca: Option<&Path>| {
        let mut c = attache(&certs.path().join("cache"));
        c.args(["jobs", "--json", "--daemon-url", url, "--token-file"])
            .arg(&token);
        if let Some(ca) = ca {
            c.arg("--daemon-ca").arg(ca);
        }
        run(&mut c)
    };
    let https = format!("https://localhost:{port}");
    let (code, out, err) = remote(&https, Some(&ca));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "[]");
    // The Python client too, with the same three things.
    let v = python_client(
        "import json, sys\nfrom attache_client import Daemon\nd = Daemon(url=sys.argv[1], token_file=sys.argv[2], ca_file=sys.argv[3])\nprint(json.dumps(d.health()))",
        &[
            std::ffi::OsStr::new(&https),
            token.as_os_str(),
            ca.as_os_str(),
        ],
    );
    assert_eq!(v["status"], "ok", "{v}");

    // A certificate of the studio's CA is not trusted without it.
    let (code, _, err) = remote(&https, None);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "TLS with the daemon at {https}: its certificate is not signed by a CA this machine trusts"
        )) && err.contains("--daemon-ca"),
        "{err}"
    );
    // Plain HTTP gets nothing from it, the token included.
    let (code, _, err) = remote(&format!("http://localhost:{port}"), None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("speaks https://"), "{err}");

    // Rotated files are taken at a reload, without the restart that would cancel every
    // transfer: a new certificate (of another CA here) and a new token.
    let rotated = common::tls::StudioCa::new();
    let new_ca = certs.path().join("new-ca.pem");
    std::fs::write(&new_ca, &rotated.ca_pem).unwrap();
    std::fs::write(&cert, &rotated.cert_pem).unwrap();
    private_file(&key, &rotated.key_pem);
    private_file(&d.path("token"), "r0tated-t0ken-0123456789\n");
    let (status, e) = d.api("POST", "/v1/reload", "");
    assert_eq!(status, 200, "{e}");
    let (code, _, err) = remote(&https, Some(&ca));
    assert_eq!(code, 1, "the old certificate is gone: {err}");
    let (code, _, err) = remote(&https, Some(&new_ca));
    assert_eq!(code, 2, "the old token is refused: {err}");
    private_file(&token, "r0tated-t0ken-0123456789\n");
    let (code, _, err) = remote(&https, Some(&new_ca));
    assert_eq!(code, 0, "{err}");
    // A key that does not go with the certificate: the reload is refused, naming it, and
    // the listener keeps what it had.
    private_file(&key, &common::tls::StudioCa::new().key_pem);
    let (status, e) = d.api("POST", "/v1/reload", "");
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("daemon.tls_key"),
        "{e}"
    );
    let (code, _, err) = remote(&https, Some(&new_ca));
    assert_eq!(code, 0, "{err}");
    assert!(
        !d.log().contains("s3cr3t") && !d.log().contains("r0tated"),
        "a token is never logged"
    );
}

/// A reload turns the listener's TLS on, and off again: a farm's listeners move to HTTPS
/// without the restart that would cancel every transfer in flight.
#[test]
fn a_reload_turns_the_listener_s_tls_on_and_off() {
    let (d, port) = daemon_on_tcp("");
    assert!(d.log().contains("plain HTTP"), "{}", d.log());
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::tls::StudioCa::new().write_files(certs.path());
    let token = certs.path().join("farm.token");
    private_file(&token, "s3cr3t-t0ken-0123456789\n");
    let health = |url: &str| {
        let mut c = attache(&certs.path().join("cache"));
        c.args(["jobs", "--daemon-url", url, "--daemon-ca"])
            .arg(&ca)
            .arg("--token-file")
            .arg(&token);
        run(&mut c)
    };
    let (http, https) = (
        format!("http://localhost:{port}"),
        format!("https://localhost:{port}"),
    );
    assert_eq!(health(&http).0, 0);
    // The daemon's own config, as daemon_on_tcp wrote it, with the certificate added.
    let listener = format!(
        "listen = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        d.path("token").display()
    );
    d.write_config(&format!(
        "{listener}tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let (status, e) = d.api("POST", "/v1/reload", "");
    assert_eq!(status, 200, "{e}");
    let (code, _, err) = health(&https);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = health(&http);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("speaks https://"), "{err}");
    assert!(d.log().contains("speaks HTTPS from now on"), "{}", d.log());
    // And off again: said as a warning.
    d.write_config(&listener);
    let (status, e) = d.api("POST", "/v1/reload", "");
    assert_eq!(status, 200, "{e}");
    let (code, _, err) = health(&http);
    assert_eq!(code, 0, "{err}");
    assert!(
        d.log().contains("speaks plain HTTP from now on"),
        "{}",
        d.log()
    );
}

/// A finished job's result, from the API.
fn rec_result(d: &Daemon, id: &str) -> serde_json::Value {
    d.api("GET", &format!("/v1/jobs/{id}"), "").1["result"].clone()
}

#[test]
fn attache_retry_runs_a_cancelled_job_again_and_refuses_one_that_runs_or_succeeded() {
    let d = Daemon::start("[bandwidth]\nupload = \"256KiB/s\"\n");
    let retry = |args: &[&str]| run(d.cmd().arg("retry").args(args));
    // 4 MiB at 256 KiB/s would take 16 s.
    let (first, _) = d.start_slow_submit(4 << 20);
    let (code, _, err) = retry(&[&first]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "job {first} is running: only a failed, cancelled or interrupted"
        )),
        "{err}"
    );
    d.api("DELETE", &format!("/v1/jobs/{first}"), "");
    assert_eq!(d.wait(&first, Duration::from_secs(5))["state"], "cancelled");

    let (code, out, err) = retry(&[&first, "job-unknown"]);
    assert_eq!(code, 1, "the unknown one fails the command: {err}");
    assert!(err.contains("no job job-unknown"), "{err}");
    assert!(out.contains(&format!("(retry of {first})")), "{out}");
    let second = out.split_whitespace().next().unwrap().to_string();
    assert_ne!(second, first);
    let (status, rec) = d.api("GET", &format!("/v1/jobs/{second}"), "");
    assert_eq!(status, 200);
    assert_eq!(
        rec["spec"],
        d.api("GET", &format!("/v1/jobs/{first}"), "").1["spec"]
    );
    assert_eq!(rec["retry_of"], first.as_str());
    let (code, _, err) = run(d.cmd().args(["bwlimit", "off"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        d.wait(&second, Duration::from_secs(10))["state"],
        "succeeded"
    );
    // The attachments the retried submit's command never wrote: from the job's result.
    let att = d.path("attachments.json");
    let (code, _, err) = run(d.cmd().args(["status", &second, "-o"]).arg(&att));
    assert_eq!(code, 0, "{err}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&att).unwrap()).unwrap();
    assert_eq!(written, rec_result(&d, &second)["attachments"]);
    assert!(
        written["manifests"][0]["inputManifestPath"].is_string(),
        "{written}"
    );
    let (code, out, _) = run(d.cmd().args(["status", &second, "-o", "-"]));
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        written
    );
    let (code, _, err) = run(d
        .cmd()
        .args(["status", &first, "-o"])
        .arg(d.path("none.json")));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "job {first} did not succeed (cancelled): nothing written"
        )),
        "{err}"
    );

    let (status, e) = d.api("POST", &format!("/v1/jobs/{second}/retry"), "");
    assert_eq!((status, &e["field"]), (409, &"id".into()), "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains(&format!("job {second} succeeded: only")),
        "{e}"
    );
    let (code, _, err) = retry(&[&first, &second, "--follow"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("give one ID"), "{err}");

    // A job is run again once: a second retry names the first one's job.
    let (code, _, err) = retry(&[&first]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "job {first} was already run again as {second} (succeeded)"
        )),
        "{err}"
    );
    // With --json, that refusal is the failure line a script reads.
    let (code, out, err) = retry(&[&first, "--json"]);
    assert_eq!(code, 1, "{err}");
    let failure: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(failure["exit_code"], 1, "{out}");
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("was already run again"),
        "{out}"
    );
    // After a crash: every interrupted (here: cancelled) job not yet run again, and only those.
    let (code, _, err) = retry(&["--state", "cancelled"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no cancelled job left to run again"), "{err}");
    let (third, _) = d.start_slow_submit(4 << 20);
    d.api("DELETE", &format!("/v1/jobs/{third}"), "");
    assert_eq!(d.wait(&third, Duration::from_secs(5))["state"], "cancelled");
    let (code, out, err) = retry(&["--state", "failed,cancelled,interrupted", "--json"]);
    assert_eq!(code, 0, "{err}");
    // One list of the new jobs' records, however many there are.
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(v[0]["retry_of"], third.as_str(), "{out}");
    let (code, _, err) = retry(&["--state", "cancelled"]);
    assert_eq!(
        (code, err.contains("no cancelled job left")),
        (0, true),
        "{err}"
    );
    // The table says which job ran which again.
    let (code, out, err) = run(d.cmd().arg("jobs"));
    assert_eq!(code, 0, "{err}");
    let line = |id: &str| out.lines().find(|l| l.starts_with(id)).unwrap().to_string();
    assert!(
        line(&first).ends_with(&format!("(run again as {second})")),
        "{out}"
    );
    assert!(
        line(&second).ends_with(&format!("(retry of {first})")),
        "{out}"
    );
    // Also in a list of the cancelled ones alone, where the retry is not listed.
    let (code, out, err) = run(d.cmd().args(["jobs", "--state", "cancelled"]));
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with(&first)).unwrap();
    assert!(line.ends_with(&format!("(run again as {second})")), "{out}");
}

#[test]
fn two_jobs_share_one_bandwidth_limit() {
    let d = Daemon::start("[bandwidth]\nupload = \"8MiB/s\"\n");
    let (a, b) = (d.path("a"), d.path("b"));
    big_tree(&a, 2, 8 << 20);
    std::fs::create_dir_all(&b).unwrap();
    for i in 0..2 {
        // Different content from `a`, so nothing is shared.
        std::fs::write(b.join(format!("g{i}.bin")), vec![i as u8 + 100; 8 << 20]).unwrap();
    }
    let started = Instant::now();
    let (_, ja) = d.api("POST", "/v1/jobs", &submit_spec(&a));
    let (_, jb) = d.api("POST", "/v1/jobs", &submit_spec(&b));
    for j in [ja, jb] {
        assert_eq!(
            d.wait(j["id"].as_str().unwrap(), Duration::from_secs(30))["state"],
            "succeeded"
        );
    }
    // 32 MiB through one 8 MiB/s limit: ~4 s; two separate limits would take ~2 s, which the
    // lower bound refuses. The upper one only catches a limit far below the rate set (at
    // 1 MiB/s: 32 s): a loaded machine has taken 7.7 s for this test's 4.
    let secs = started.elapsed().as_secs_f64();
    assert!((3.4..=16.0).contains(&secs), "{secs:.2} s");
}

#[test]
fn sigterm_during_a_multipart_upload_exits_cleanly() {
    let s3 = TestS3::start_background();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::File::create(proj.join("huge.bin"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let env = s3.env();
    let extra = "[bandwidth]\nupload = \"50MiB/s\"\n";
    let mut d = Daemon::start_in(dir, extra, &env);
    // A task script's submit through the daemon.
    let store = s3.store_url("DeadlineCloud");
    let client = d.start_cli(
        d.cmd()
            .args(["submit", "--daemon", "--store", &store])
            .args(IDS)
            .arg(&proj),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3
        .stats
        .requests_matching(|r| r.query.contains("partNumber"))
        < 2
    {
        assert!(Instant::now() < deadline, "no part uploaded: {}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, jobs) = d.api("GET", "/v1/jobs", "");
    let id = jobs[0]["id"].as_str().unwrap().to_string();
    let (code, secs) = d.stop();
    assert_eq!(code, Some(0), "{}", d.log());
    assert!(secs < 5.0, "took {secs:.1} s");
    assert_eq!(s3.open_multipart_uploads(), 0, "multipart upload left open");
    // The client was not cancelled: it says the daemon stopped, and fails (not 130).
    let (code, err) = ended(client);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("job {id} interrupted: the daemon stopped")),
        "{err}"
    );
    let record = std::fs::read_to_string(d.path(&format!("state/jobs/{id}.json"))).unwrap();
    // Interrupted, as after a crash: not taken for a cancel, and run again by
    // `retry --state interrupted`.
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["state"], "interrupted", "{record}");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("the daemon stopped while the job was running; `attache retry"),
        "{record}"
    );
}

#[test]
fn two_jobs_share_the_pool_and_move_each_object_once() {
    let s3 = TestS3::start_background();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("proj");
    big_tree(&proj, 6, 1 << 20);
    let extra =
        "[bandwidth]\nupload = \"2MiB/s\"\ndownload = \"2MiB/s\"\n[s3]\nmax_connections = 2\n";
    let d = Daemon::start_in(dir, extra, &s3.env());
    let store = s3.store_url("DeadlineCloud");
    let spec = submit_spec_to(&proj, &store);
    let (_, a) = d.api("POST", "/v1/jobs", &spec);
    let (_, b) = d.api("POST", "/v1/jobs", &spec);
    let a = d.wait(a["id"].as_str().unwrap(), Duration::from_secs(30));
    let b = d.wait(b["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(
        (a["state"].as_str(), b["state"].as_str()),
        (Some("succeeded"), Some("succeeded")),
        "{a} {b}"
    );
    let data_puts = s3
        .stats
        .requests_matching(|r| r.method == "PUT" && r.path.contains("/Data/"));
    assert_eq!(data_puts, 6, "each object uploaded once for both jobs");

    // Two workers' sessions needing the same inputs at once: each object is fetched once.
    let attachments = a["result"]["attachments"].clone();
    s3.stats.reset();
    let ids: Vec<String> = ["s1", "s2"]
        .iter()
        .map(|s| {
            let spec = serde_json::json!({"kind": "sync_inputs", "attachments": attachments, "session_dir": d.path(s), "store": store});
            let (status, j) = d.api("POST", "/v1/jobs", &spec.to_string());
            assert_eq!(status, 201, "{j}");
            j["id"].as_str().unwrap().to_string()
        })
        .collect();
    for id in &ids {
        assert_eq!(d.wait(id, Duration::from_secs(30))["state"], "succeeded");
    }
    let data_gets = s3
        .stats
        .requests_matching(|r| r.method == "GET" && r.path.contains("/Data/"));
    assert_eq!(
        data_gets, 6,
        "each object downloaded once for both sessions"
    );
    for s in ["s1", "s2"] {
        let root = std::fs::read_dir(d.path(s))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("assetroot-"))
            .unwrap()
            .path();
        for i in 0..6 {
            assert_eq!(
                std::fs::read(root.join(format!("f{i}.bin"))).unwrap(),
                std::fs::read(proj_file(&d, i)).unwrap()
            );
        }
    }
    let max = s3.stats.max_concurrent_connections();
    assert!(max <= 2, "the pool cap holds across jobs: {max}");
}

fn proj_file(d: &Daemon, i: usize) -> PathBuf {
    d.path("proj").join(format!("f{i}.bin"))
}

/// Multipart uploads earlier runs left open (here: recorded in the cache, their parts still
/// in the store) are aborted when the daemon starts, before any job: one a cancel gave up on
/// and one a crash left longer ago than `transfer.resume_for`. A crash's recent one is left
/// for the job sent again to resume.
#[test]
fn the_daemon_aborts_uploads_left_open_when_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let records = dir.path().join("cache/open-uploads");
    std::fs::create_dir_all(&records).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = |id: &str, started_at: u64, given_up: bool| {
        let upload = store.join(".attache-multipart").join(id);
        std::fs::create_dir_all(&upload).unwrap();
        std::fs::write(upload.join("key"), format!("Data/{id}.xxh128")).unwrap();
        std::fs::write(upload.join("00001"), b"part").unwrap();
        // Its part landed when it started: nobody took it over since.
        filetime::set_file_mtime(
            upload.join("00001"),
            filetime::FileTime::from_unix_time(started_at as i64, 0),
        )
        .unwrap();
        let record = serde_json::json!({
            "store": format!("file://{}", store.display()),
            "key": format!("Data/{id}.xxh128"),
            "upload_id": id,
            "started_at": started_at,
            "given_up": given_up,
        });
        let path = records.join(format!("{id}.json"));
        std::fs::write(&path, record.to_string()).unwrap();
        // Its run's last heartbeat: when it started.
        filetime::set_file_mtime(
            &path,
            filetime::FileTime::from_unix_time(started_at as i64, 0),
        )
        .unwrap();
        upload
    };
    let old_crash = left("0123456789abcdef0123456789abcde0", 1_700_000_000, false);
    let cancelled = left("0123456789abcdef0123456789abcde1", now, true);
    let recent_crash = left("0123456789abcdef0123456789abcde2", now - 60, false);
    let d = Daemon::start_in(dir, "", &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d
        .log()
        .contains("aborted 2 multipart upload(s) left open in file://")
    {
        assert!(Instant::now() < deadline, "not aborted: {}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = d.log();
    assert!(!old_crash.exists() && !cancelled.exists(), "{log}");
    assert!(recent_crash.join("00001").exists(), "{log}");
    assert_eq!(
        files_under(&records),
        [records.join("0123456789abcdef0123456789abcde2.json")]
    );
    // A farm's monitoring sees it: one upload kept to resume, none to abort.
    d.assert_metrics(&[
        "attache_open_uploads{state=\"running\"} 0",
        "attache_open_uploads{state=\"kept\"} 1",
        "attache_open_uploads{state=\"to_abort\"} 0",
    ]);
}

#[test]
fn a_secret_key_rotated_by_a_reload_is_used_by_the_next_job() {
    let s3 = TestS3::start_background();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("proj");
    big_tree(&proj, 2, 1000);
    let s3_section = |secret: &str| {
        format!(
            "[s3]\nendpoint_url = \"{}\"\nforce_path_style = true\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{secret}\"\nretry_attempts = 0\n",
            s3.endpoint, s3.access_key
        )
    };
    let d = Daemon::start_in(dir, &s3_section("revoked"), &[]);
    let spec = submit_spec_to(&proj, &s3.store_url("DeadlineCloud"));
    let (_, a) = d.api("POST", "/v1/jobs", &spec);
    let a = d.wait(a["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(a["state"], "failed", "{a}");
    assert!(a.to_string().contains("403"), "{a}");

    d.write_config(&s3_section(&s3.secret_key));
    let (status, r) = d.api("POST", "/v1/reload", "");
    assert_eq!(status, 200, "{r}");
    let (_, b) = d.api("POST", "/v1/jobs", &spec);
    let b = d.wait(b["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(
        b["state"], "succeeded",
        "the store client kept the revoked key: {b}"
    );

    // The store now has two clients (the old one and the reloaded one), but one sample per
    // metric: a label set given twice makes Prometheus reject the whole scrape. The label
    // names the endpoint, so one bucket name at two endpoints is told apart.
    let (_, metrics) = http(&d.socket(), "GET", "/metrics", "").unwrap();
    let samples: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("attache_requests_limit{"))
        .collect();
    assert_eq!(samples.len(), 1, "{metrics}");
    assert!(
        samples[0].contains(&format!("endpoint={}", s3.endpoint.trim_end_matches('/'))),
        "{metrics}"
    );
}

/// A running job's progress goes to the daemon's log every `log.stats` (its journal on a
/// service), and the CLI waiting for it logs the same where it has no terminal.
#[test]
fn a_running_job_logs_its_progress_in_the_daemon_and_in_the_waiting_command() {
    // 1 MiB at 1 MB/s: about a second, ten progress lines.
    let d = Daemon::start("[log]\nstats = \"100ms\"\n[bandwidth]\nupload = \"1MB/s\"\n");
    let proj = d.path("proj");
    big_tree(&proj, 16, 64 * 1024);
    let (code, _, err) = run(d
        .cmd()
        .args([
            "submit",
            "--daemon",
            "--farm-id",
            "farm-1",
            "--queue-id",
            "queue-1",
        ])
        .arg(&proj));
    assert_eq!(code, 0, "{err}");
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" (submit): ")).collect();
    assert!(lines.len() >= 2, "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("job-") && l.contains(" of 16 files, ")),
        "no line before the job knows its files: {log}"
    );
    assert!(
        !log.contains('\x1b'),
        "no colour codes in a journal: {log:?}"
    );
    assert!(
        err.contains("daemon job: ") && err.contains(" of 16 files"),
        "{err}"
    );
}

/// Following a job already under way: the first progress line's rate is of what the job
/// moves now, not of all it had done before the command began (a rate the limit cannot give,
/// and a time left far too short).
#[test]
fn following_a_job_under_way_shows_the_rate_it_goes_at_now() {
    let d = Daemon::start("[bandwidth]\nupload = \"2MiB/s\"\n");
    let id = d.slow_job_under_way(24 << 20, 8 << 20);
    let (code, _, err) = run(d
        .cmd()
        .env("ATTACHE_LOG__STATS", "2s")
        .args(["status", "--follow", &id]));
    assert_eq!(code, 0, "{err}");
    let first = err
        .lines()
        .find(|l| l.contains("daemon job: ") && l.contains("/s"))
        .unwrap_or_else(|| panic!("no progress line: {err}"));
    // "…, 1 of 1 files, 2.0 MiB/s, 6s left": 8 MiB or more done before, counted in would
    // make at least 4 MiB/s of a 2 s line.
    let rate = first
        .split(", ")
        .find_map(|p| p.strip_suffix("/s"))
        .unwrap_or_else(|| panic!("{first}"));
    let (n, unit) = rate.split_once(' ').unwrap_or_else(|| panic!("{first}"));
    let mib = n.parse::<f64>().unwrap()
        * match unit {
            "B" => 1.0 / 1048576.0,
            "KiB" => 1.0 / 1024.0,
            "MiB" => 1.0,
            "GiB" => 1024.0,
            other => panic!("{other}: {first}"),
        };
    assert!(mib < 3.5, "the rate of the first line: {first}");
}

/// `attache bwlimit` changes the daemon's limits while it runs, as rclone's `rc core/bwlimit`
/// does: a transfer in flight follows at once, a reload does not undo it, `--for` runs out by
/// itself and `--reset` gives the config's back.
#[test]
fn attache_bwlimit_changes_the_daemon_s_limits_while_it_runs() {
    let d = Daemon::start("[bandwidth]\nupload = \"1MiB/s\"\n");
    let bwlimit = |args: &[&str]| {
        let (code, out, err) = run(d.cmd().arg("bwlimit").args(args));
        (code, out, err)
    };
    let (code, out, err) = bwlimit(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("upload 1MiB/s, download unlimited (the config's"),
        "{out}"
    );

    // 8 MiB at 1 MiB/s would take 8 s; the limit is lifted while it runs.
    let (id, started) = d.start_slow_submit(8 << 20);
    std::thread::sleep(Duration::from_millis(700));
    let (code, out, err) = bwlimit(&["off"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "upload unlimited, download unlimited (set by hand, until `attache bwlimit --reset`)"
        ),
        "{out}"
    );
    assert_eq!(d.wait(&id, Duration::from_secs(20))["state"], "succeeded");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the running transfer kept the config's rate: {took:?}"
    );

    // A reload changes the config, not the limits set by hand.
    d.write_config("[bandwidth]\nupload = \"2MiB/s\"\n");
    let (status, e) = d.api("POST", "/v1/reload", "");
    assert_eq!(status, 200, "{e}");
    assert_eq!(d.upload_limit(), ("unlimited".into(), "set".into()));

    // For a while: then the (reloaded) config's limits are back by themselves.
    let (code, out, err) = bwlimit(&["3MiB/s:off", "--for", "2s", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v["upload"], &v["download"], &v["source"]),
        (&"3MiB/s".into(), &"unlimited".into(), &"set".into()),
        "{v}"
    );
    assert!(v["seconds_left"].as_u64().unwrap() <= 2, "{v}");
    let metrics = d.api("GET", "/metrics", "").1;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("attache_bandwidth_limit_bytes_per_second{direction=\"upload\"} 3145728"),
        "{metrics}"
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let v = d.api("GET", "/v1/bandwidth", "").1;
        if v["source"] == "config" {
            assert_eq!(v["upload"], "2MiB/s", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "--for 2s never ran out: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.log().contains("ran out"), "{}", d.log());

    // A timetable, or rclone's bare KiB a second, is said as such, not misread.
    let (code, _, err) = bwlimit(&["08:00,10MB/s 19:00,off"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is a timetable") && err.contains("bandwidth.schedule"),
        "{err}"
    );
    let (code, _, err) = bwlimit(&["512"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rclone's --bwlimit reads KiB"), "{err}");

    // Until reset.
    let (code, _, err) = bwlimit(&["500KiB/s"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = bwlimit(&["--reset"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("upload 2MiB/s, download unlimited (the config's"),
        "{out}"
    );
    // A reset holds until the next change: a duration given with it would be dropped.
    let (code, _, err) = bwlimit(&["--reset", "--for", "2h"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--for"), "{err}");

    // A typo is bad usage, named, and changes nothing.
    let (code, _, err) = bwlimit(&["fast"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"fast\""), "{err}");
    for lasting in ["0", "400d"] {
        let (code, _, err) = bwlimit(&["1MB/s", "--for", lasting]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("at most 365 days"), "{err}");
    }
    let (status, e) = d.api(
        "PUT",
        "/v1/bandwidth",
        r#"{"rate": "1MB/s", "for": "1000000y"}"#,
    );
    assert_eq!((status, &e["field"]), (400, &"for".into()), "{e}");
    let (status, e) = d.api("PUT", "/v1/bandwidth", r#"{"rate": "quick"}"#);
    assert_eq!((status, &e["field"]), (400, &"rate".into()), "{e}");
    assert_eq!(d.api("GET", "/v1/bandwidth", "").1["source"], "config");
}

/// Limits set by hand replace the config's timetable too, and a reset gives the timetable's
/// entry back at once.
/// A wrangler's `bwlimit --for 8h` on a farm outlives a restart of the daemon (a package
/// upgrade) with the time it had left; one that ran out meanwhile, or was reset, does not.
#[test]
fn bwlimit_set_by_hand_outlives_a_restart_until_its_time_is_up() {
    let mut d = Daemon::start("[bandwidth]\nupload = \"1MiB/s\"\n");
    let bwlimit = |d: &Daemon, args: &[&str]| {
        let (code, out, err) = run(d.cmd().arg("bwlimit").args(args));
        assert_eq!(code, 0, "{err}");
        out
    };
    let restart = |d: &mut Daemon| {
        assert_eq!(d.stop().0, Some(0));
        d.launch(&[]);
    };
    bwlimit(&d, &["3MiB/s:off", "--for", "1h"]);
    restart(&mut d);
    assert_eq!(d.upload_limit(), ("3MiB/s".into(), "set".into()));
    let v: serde_json::Value = serde_json::from_str(&bwlimit(&d, &["--json"])).unwrap();
    let left = v["seconds_left"].as_u64().unwrap();
    assert!((3590..=3600).contains(&left), "{v}");
    assert!(d.log().contains("taken back"), "{}", d.log());

    // Reset: the config's after a restart too.
    bwlimit(&d, &["--reset"]);
    restart(&mut d);
    assert_eq!(d.upload_limit(), ("1MiB/s".into(), "config".into()));

    // Until reset: kept as long as it takes.
    bwlimit(&d, &["off"]);
    restart(&mut d);
    assert_eq!(d.upload_limit(), ("unlimited".into(), "set".into()));

    // Ran out while the daemon was stopped: dropped.
    bwlimit(&d, &["2MiB/s", "--for", "2s"]);
    assert_eq!(d.stop().0, Some(0));
    assert!(
        d.path("state/bandwidth.json").exists(),
        "kept while stopped"
    );
    std::thread::sleep(Duration::from_millis(2500));
    d.launch(&[]);
    assert_eq!(d.upload_limit(), ("1MiB/s".into(), "config".into()));
    assert!(!d.path("state/bandwidth.json").exists());
}

#[test]
fn bwlimit_set_by_hand_replaces_the_timetable_until_reset() {
    // One entry: in force all week.
    let d = Daemon::start("[bandwidth]\nschedule = [\"00:00,3MiB/s:5MiB/s\"]\n");
    let view = || d.api("GET", "/v1/bandwidth", "").1;
    let v = view();
    assert_eq!(
        (&v["source"], &v["upload"], &v["download"]),
        (&"schedule".into(), &"3MiB/s".into(), &"5MiB/s".into()),
        "{v}"
    );
    let (status, v) = d.api("PUT", "/v1/bandwidth", r#"{"rate": "off:1MiB/s"}"#);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["source"], &v["upload"], &v["download"]),
        (&"set".into(), &"unlimited".into(), &"1MiB/s".into()),
        "{v}"
    );
    let health = d.api("GET", "/v1/health", "").1;
    assert_eq!(
        health["bandwidth"]["download"], "1MiB/s",
        "the limiters follow: {health}"
    );
    let (code, out, err) = run(d.cmd().args(["bwlimit", "--reset"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("upload 3MiB/s, download 5MiB/s (the config's timetable"),
        "{out}"
    );
    assert_eq!(d.upload_limit(), ("3MiB/s".into(), "schedule".into()));
}

/// `bandwidth.schedule`: the entry in force applies when the daemon starts, the next one when
/// its time comes (here at the next minute: up to a minute of waiting), and a reload replaces
/// the timetable at once.
#[test]
fn the_bandwidth_timetable_applies_each_entry_when_its_time_comes() {
    let now = attache::config::WeekTime::now().0;
    let minute = (now / 60) % (24 * 60);
    let hhmm = |m: u32| format!("{:02}:{:02}", m / 60 % 24, m % 60);
    let d = Daemon::start(&format!(
        "[bandwidth]\nupload = \"9MiB/s\"\nschedule = [\"{},1MiB/s:3MiB/s\", \"{},2MiB/s:off\"]\n",
        hhmm(minute),
        hhmm(minute + 1)
    ));
    let bandwidth = || d.api("GET", "/v1/health", "").1["bandwidth"].clone();
    let started = Instant::now();
    let first = bandwidth();
    // Unless the minute turned while the daemon started.
    if first["upload"] != "2MiB/s" {
        assert_eq!(
            (&first["upload"], &first["download"]),
            (&"1MiB/s".into(), &"3MiB/s".into()),
            "{}",
            d.log()
        );
    }
    while bandwidth()["upload"] != "2MiB/s" {
        assert!(
            started.elapsed() < Duration::from_secs(65),
            "the next entry never applied: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(bandwidth()["download"], "unlimited");
    assert!(d.log().contains("bandwidth limits now"), "{}", d.log());

    d.write_config("[bandwidth]\nschedule = [\"00:00,5MiB/s\"]\n");
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while bandwidth()["upload"] != "5MiB/s" {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(bandwidth()["download"], "5MiB/s");
}

/// The worker's side through the daemon: sync-outputs reports what it found and sent, as a
/// local run does, and its uploads count in the metrics.
#[test]
fn sync_outputs_through_the_daemon_reports_and_counts_its_uploads() {
    let d = Daemon::start("");
    let proj = d.path("proj");
    std::fs::create_dir_all(proj.join("renders")).unwrap();
    std::fs::write(proj.join("scene.ma"), b"scene").unwrap();
    let att = d.path("att.json");
    let ok = |c: &mut Command| {
        let (code, out, err) = run(c.arg("--daemon"));
        assert_eq!(code, 0, "{err}");
        (out, err)
    };
    ok(d.cmd()
        .arg("submit")
        .args(IDS)
        .arg(proj.join("scene.ma"))
        .arg("--output-dir")
        .arg(proj.join("renders"))
        .arg("-o")
        .arg(&att));
    let session = d.path("session");
    ok(d.cmd()
        .args(["sync-inputs", "--attachments"])
        .arg(&att)
        .arg("--session-dir")
        .arg(&session));
    let local = session.join(attache::jobs::attachments::asset_root_dir_name(
        proj.to_str().unwrap(),
    ));
    // The renderer makes its output directory, as with the official worker code.
    std::fs::create_dir_all(local.join("renders")).unwrap();
    std::fs::write(local.join("renders/f1.exr"), b"frame 1").unwrap();
    let (out, err) = ok(sync_outputs(&mut d.cmd(), "sa-1", &att, &session));
    assert!(
        err.contains(": 1 new or changed output (7 B); uploaded 1 object")
            && err.contains("; published farm-1/queue-1/job-1/step-1/task-1/"),
        "{err}"
    );
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed.as_array().unwrap().len(), 1, "{printed}");
    let (_, metrics) = http(&d.socket(), "GET", "/metrics", "").unwrap();
    assert!(
        metrics.contains("attache_uploaded_objects_total 2"),
        "the scene and the frame: {metrics}"
    );
}

/// `attache doctor --daemon` probes with the daemon's config, credentials and caches, which a
/// service does not share with the user who asks.
#[test]
fn doctor_through_the_daemon_probes_the_daemon_s_store() {
    let d = Daemon::start("");
    // A store in use (one not made yet is a warning: see the doctor's test in transfer_cli).
    std::fs::create_dir_all(d.path("store")).unwrap();
    let (code, out, err) = run(d
        .cmd()
        .env("ATTACHE_CACHE__DIR", d.path("a-user-s-cache"))
        .args(["doctor", "--daemon", "--json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["passed"], true, "{v}");
    assert_eq!(
        v["store"],
        format!("file://{}", d.path("store").display()),
        "{v}"
    );
    assert_eq!(v["cache_dir"], d.path("cache").display().to_string(), "{v}");
    assert_every_probe_ok(&v);
    let (code, out, err) = run(d.cmd().args(["doctor", "--daemon"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("checked by:  the daemon at "), "{out}");
}

/// `DIR/proj` holding `big.bin`, 23 MiB (five parts of 5 MiB) of bytes `i % modulus`.
fn project_of_one_big_file(dir: &Path, modulus: u32) -> (PathBuf, Vec<u8>) {
    let proj = dir.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let data: Vec<u8> = (0..23u32 << 20).map(|i| (i % modulus) as u8).collect();
    std::fs::write(proj.join("big.bin"), &data).unwrap();
    (proj, data)
}

/// A submit whose multipart upload the store fails past its retries keeps the upload open; the
/// next submit of the file (a wrangler's retry) resumes it in the same daemon, sends only the
/// parts the store lacks, and `/metrics` counts the bytes kept.
#[test]
fn a_submit_the_store_failed_is_resumed_by_the_next_job() {
    let s3 = TestS3::start_background();
    let dir = tempfile::tempdir().unwrap();
    let (proj, _) = project_of_one_big_file(dir.path(), 253);
    let extra = "[transfer]\npart_size = \"5MiB\"\nmultipart_threshold = \"5MiB\"\nmax_parts_in_flight = 1\n[s3]\nretry_attempts = 0\n";
    let d = Daemon::start_in(dir, extra, &s3.env());
    let spec = submit_spec_to(&proj, &s3.store_url("DeadlineCloud"));
    // Every UploadPart after the first two fails.
    s3.faults.fail_data_puts_after(2);
    let (_, a) = d.api("POST", "/v1/jobs", &spec);
    let a = d.wait(a["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(a["state"], "failed", "{a}");
    assert_eq!(a["retryable"], true, "the store failed: worth a retry: {a}");
    assert_eq!(s3.open_multipart_uploads(), 1, "kept to be resumed");
    // The service's log says what the job worked on, and why it failed.
    let id = a["id"].as_str().unwrap();
    let log = d.log();
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what) && l.contains(id))
            .unwrap_or_else(|| panic!("no {what:?} line for {id}:\n{log}"))
            .to_string()
    };
    let started = line("job started");
    assert!(
        started.contains("kind=\"submit\"") || started.contains("kind=submit"),
        "{started}"
    );
    assert!(started.contains(proj.to_str().unwrap()), "{started}");
    let failed = line("job failed");
    assert!(
        failed.contains("WARN") && failed.contains(a["error"].as_str().unwrap()),
        "{failed}"
    );
    s3.faults.clear();
    s3.faults.for_all();

    let parts = |r: &common::s3::RequestInfo| r.query.contains("partNumber");
    let before = s3.stats.requests_matching(parts);
    let (_, b) = d.api("POST", "/v1/jobs", &spec);
    let b = d.wait(b["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(b["state"], "succeeded", "{b}");
    let upload = &b["result"]["roots"][0]["upload"];
    assert_eq!(
        (&upload["resumed_uploads"], &upload["resumed_bytes"]),
        (&serde_json::json!(1), &serde_json::json!(10 << 20)),
        "{b}"
    );
    assert_eq!(
        s3.stats.requests_matching(parts) - before,
        3,
        "parts 3 to 5"
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    let (_, metrics) = http(&d.socket(), "GET", "/metrics", "").unwrap();
    assert!(
        metrics.contains(&format!("attache_resumed_bytes_total {}", 10 << 20)),
        "{metrics}"
    );
}

/// A daemon killed mid-upload (SIGKILL: a crash, a power cut) cannot abort its multipart
/// upload; restarted, it leaves it for the job sent again, which resumes it and sends only
/// the parts the store lacks.
#[test]
fn a_job_the_daemon_crashed_in_is_resumed_after_the_restart() {
    let s3 = TestS3::start_background();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let data: Vec<u8> = (0..40u32 << 20).map(|i| (i % 241) as u8).collect();
    std::fs::write(proj.join("big.bin"), &data).unwrap();
    let parts = "[transfer]\npart_size = \"5MiB\"\nmultipart_threshold = \"5MiB\"\nmax_parts_in_flight = 1\n";
    let slow = format!("{parts}[bandwidth]\nupload = \"10MiB/s\"\n");
    let mut d = Daemon::start_in(dir, &slow, &s3.env());
    let spec = submit_spec_to(&proj, &s3.store_url("DeadlineCloud"));
    let (_, a) = d.api("POST", "/v1/jobs", &spec);
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.multipart_part_files() < 2 {
        assert!(Instant::now() < deadline, "no part was uploaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.signal(libc::SIGKILL);
    d.child.take().unwrap().wait().unwrap();
    // A part the server had whole when the connection went is still written.
    std::thread::sleep(Duration::from_millis(200));
    let stored = s3.multipart_part_files();

    d.write_config(parts);
    d.launch(&s3.env());
    let (_, a) = d.api(
        "GET",
        &format!("/v1/jobs/{}", a["id"].as_str().unwrap()),
        "",
    );
    assert_eq!(a["state"], "interrupted", "{a}");
    // Its start-up pass over earlier runs' uploads has had time to abort it, had it wanted to.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s3.open_multipart_uploads(),
        1,
        "aborted at start: {}",
        d.log()
    );

    let sent = || {
        s3.stats
            .requests_matching(|r| r.query.contains("partNumber"))
    };
    let before = sent();
    // `attache retry` runs it again from its record (the DCC that sent it is gone).
    let old = a["id"].as_str().unwrap();
    let said = a["error"].as_str().unwrap();
    assert!(said.contains(&format!("`attache retry {old}`")), "{said}");
    let (code, out, err) = run(d.cmd().args(["retry", old, "--follow", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("{old} runs again as job-")), "{err}");
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&b["state"], &b["retry_of"]),
        (&"succeeded".into(), &old.into()),
        "{b}"
    );
    let upload = &b["result"]["roots"][0]["upload"];
    assert_eq!(upload["resumed_uploads"], 1, "{b}");
    assert!(upload["resumed_bytes"].as_u64().unwrap() > 0, "{b}");
    assert!(
        sent() - before <= 8 - stored.min(8),
        "{stored} of 8 parts were in the store"
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    let hash = attache::hash::ContentHash::of(&data);
    assert!(
        s3.read_object(&format!("DeadlineCloud/Data/{hash}.xxh128"))
            .unwrap()
            == data,
        "the object is not the file"
    );
}

/// A sync-inputs the store fails part-way through a large object keeps what it fetched; the
/// job retried (`POST /v1/jobs/ID/retry`, a wrangler's requeue) fetches only the rest, and
/// `/metrics` counts the bytes kept.
#[test]
fn a_failed_sync_inputs_retried_fetches_only_what_it_lacked() {
    let s3 = TestS3::start_background();
    let dir = tempfile::tempdir().unwrap();
    let (proj, data) = project_of_one_big_file(dir.path(), 251);
    let extra =
        "[transfer]\npart_size = \"5MiB\"\nmax_parts_in_flight = 1\n[s3]\nretry_attempts = 0\n";
    let d = Daemon::start_in(dir, extra, &s3.env());
    let store = s3.store_url("DeadlineCloud");
    let (_, a) = d.api("POST", "/v1/jobs", &submit_spec_to(&proj, &store));
    let a = d.wait(a["id"].as_str().unwrap(), Duration::from_secs(30));
    let spec = serde_json::json!({"kind": "sync_inputs", "attachments": a["result"]["attachments"],
        "session_dir": d.path("session"), "store": store});
    // Every GET of content after the first two parts fails.
    s3.faults.fail_data_gets_after(2);
    let (_, j) = d.api("POST", "/v1/jobs", &spec.to_string());
    let id = j["id"].as_str().unwrap().to_string();
    let j = d.wait(&id, Duration::from_secs(60));
    assert_eq!(j["state"], "failed", "{j}");
    s3.faults.clear();

    let gets = |r: &common::s3::RequestInfo| r.method == "GET" && r.path.contains("/Data/");
    let before = s3.stats.requests_matching(gets);
    let (_, retried) = d.api("POST", &format!("/v1/jobs/{id}/retry"), "");
    let r = d.wait(retried["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(r["state"], "succeeded", "{r}");
    let download = &r["result"]["roots"][0]["report"]["download"];
    assert_eq!(download["resumed_bytes"], 10 << 20, "{r}");
    assert_eq!(download["downloaded_bytes"], (13 << 20) as u64, "{r}");
    assert_eq!(s3.stats.requests_matching(gets) - before, 3, "parts 3 to 5");
    let placed = common::files_under(&d.path("session"))
        .into_iter()
        .find(|p| p.ends_with("big.bin"))
        .unwrap();
    assert!(
        std::fs::read(placed).unwrap() == data,
        "the file is not the object"
    );
    let (_, metrics) = http(&d.socket(), "GET", "/metrics", "").unwrap();
    assert!(
        metrics.contains(&format!(
            "attache_download_resumed_bytes_total {}",
            10 << 20
        )),
        "{metrics}"
    );
}

/// With the content cache on, a worker's next session is served from it: the daemon's second
/// sync-inputs of a job fetches nothing, says so in its result, and counts it in /metrics.
#[test]
fn a_daemon_s_next_session_takes_its_inputs_from_the_content_cache() {
    let s3 = TestS3::start_background();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("proj");
    big_tree(&proj, 4, 300_000);
    let mut env = s3.env();
    env.push(("ATTACHE_CACHE__CONTENT_SIZE".into(), "1GiB".into()));
    let d = Daemon::start_in(dir, "", &env);
    let store = s3.store_url("DeadlineCloud");
    let (_, a) = d.api("POST", "/v1/jobs", &submit_spec_to(&proj, &store));
    let a = d.wait(a["id"].as_str().unwrap(), Duration::from_secs(30));
    let attachments = a["result"]["attachments"].clone();
    let data_gets = || {
        s3.stats
            .requests_matching(|r| r.method == "GET" && r.path.contains("/Data/"))
    };
    let mut downloads = Vec::new();
    for session in ["s1", "s2"] {
        let before = data_gets();
        let spec = serde_json::json!({"kind": "sync_inputs", "attachments": attachments, "session_dir": d.path(session), "store": store});
        let (_, j) = d.api("POST", "/v1/jobs", &spec.to_string());
        let j = d.wait(j["id"].as_str().unwrap(), Duration::from_secs(30));
        assert_eq!(j["state"], "succeeded", "{j}");
        downloads.push((
            data_gets() - before,
            j["result"]["roots"][0]["report"]["download"].clone(),
        ));
    }
    let (gets, first) = &downloads[0];
    assert_eq!(
        (*gets, &first["content_cache_files"]),
        (4, &0.into()),
        "{first}"
    );
    let (gets, second) = &downloads[1];
    assert_eq!(*gets, 0, "the next session fetched again: {second}");
    assert_eq!(
        (
            &second["objects"],
            &second["content_cache_files"],
            &second["content_cache_bytes"]
        ),
        (&0.into(), &4.into(), &1_200_000.into()),
        "{second}"
    );
    let (_, metrics) = http(&d.socket(), "GET", "/metrics", "").unwrap();
    assert!(
        metrics.contains("attache_content_cache_bytes_total 1200000"),
        "{metrics}"
    );
}

/// The farm fields of the newer worker flow through the API: a chunk's sync_outputs without a
/// task id, then a dependent task's sync_inputs with `step_dependencies` and `job_group`.
#[test]
fn a_daemon_job_syncs_a_step_s_outputs_for_a_job_run_as_another_user() {
    use std::os::unix::fs::MetadataExt;
    let s3 = TestS3::start_background();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(proj.join("renders")).unwrap();
    std::fs::write(proj.join("shot.ma"), b"scene").unwrap();
    let d = Daemon::start_in(dir, "", &s3.env());
    let store = s3.store_url("DeadlineCloud");
    let run = |spec: serde_json::Value| {
        let (_, j) = d.api("POST", "/v1/jobs", &spec.to_string());
        let j = d.wait(j["id"].as_str().unwrap(), Duration::from_secs(30));
        assert_eq!(j["state"], "succeeded", "{j}");
        j["result"].clone()
    };
    let a = run(
        serde_json::json!({"kind": "submit", "inputs": [proj.join("shot.ma")],
        "output_dirs": [proj.join("renders")], "farm_id": "farm-1", "queue_id": "queue-1",
        "store": store}),
    );
    let attachments = a["attachments"].clone();
    let render = d.path("render");
    run(
        serde_json::json!({"kind": "sync_inputs", "attachments": attachments,
        "session_dir": render, "store": store}),
    );
    let local = |session: &Path| {
        session.join(attache::jobs::attachments::asset_root_dir_name(
            proj.to_str().unwrap(),
        ))
    };
    std::fs::create_dir_all(local(&render).join("renders")).unwrap();
    std::fs::write(local(&render).join("renders/f1.exr"), b"frame 1").unwrap();
    let out = run(
        serde_json::json!({"kind": "sync_outputs", "attachments": attachments,
        "session_dir": render, "farm_id": "farm-1", "queue_id": "queue-1", "job_id": "job-1",
        "step_id": "render", "session_action_id": "sa-1", "store": store}),
    );
    let path = out["manifests"][0]["outputManifestPath"].as_str().unwrap();
    assert!(
        path.starts_with("farm-1/queue-1/job-1/render/20"),
        "a chunk's: {path}"
    );
    // A group other than ours where we may give files away (root may use any id).
    let group = if unsafe { libc::geteuid() } == 0 {
        4242
    } else {
        unsafe { libc::getegid() }
    };
    let comp = d.path("comp");
    let r = run(
        serde_json::json!({"kind": "sync_inputs", "attachments": attachments,
        "session_dir": comp, "store": store, "step_dependencies": ["render"],
        "farm_id": "farm-1", "queue_id": "queue-1", "job_id": "job-1",
        "job_group": group.to_string()}),
    );
    assert_eq!(
        (
            &r["step_dependencies"][0]["tasks"],
            &r["roots"][0]["step_output_manifests"]
        ),
        (&1.into(), &1.into()),
        "{r}"
    );
    let frame = local(&comp).join("renders/f1.exr");
    assert_eq!(std::fs::read(&frame).unwrap(), b"frame 1");
    assert_eq!(std::fs::metadata(&frame).unwrap().gid(), group);
}
