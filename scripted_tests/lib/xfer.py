"""Shared helpers for the transfer scripted tests: download_cancel_test, upload_cancel_test,
upload_scale_test and fault_test (Python 3.11 stdlib only).

- Work: a `mktemp -d` work dir with private copies of the binaries, removed on success (kept on
  failure or with --keep); every process started through it is ended (by pid) on exit.
- S3Server: the local S3 server (examples/s3_server.rs) on 127.0.0.1: start, SIGKILL, restart on
  the same root and ports, /stats, /reset, 503 slowdown.
- Run: a child process (own session) timed with time.monotonic and reaped with os.wait4 (exit
  time, CPU, peak RSS).
- TrafficWatch: polls /stats to find when the server last saw request traffic ("idle").
- Daemon: an `attache daemon` on a private socket, spoken to over HTTP on the Unix socket.
- Trees, content checks (destination and store), and Report (table, JSON, failures).

attache reads every ATTACHE_* variable as config and exits 2 on an unknown one, so attache runs
with every ATTACHE_* variable of this environment removed and only ATTACHE_S3__* set here, plus
the settings given with --set (e.g. --set transfer.multipart_threshold=5GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# The daemon's Unix-socket HTTP connection, from the Python client the project ships.
sys.path.insert(0, str(REPO / "clients" / "python"))
from attache_client import UnixHTTPConnection  # noqa: E402
T0 = time.monotonic()
MiB = 1 << 20
GiB = 1 << 30
# The 1 s goal for "time to idle" after a cancel.
IDLE_GOAL_S = 1.0


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def fmt_s(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def common_args(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and fewer points, for CI (~1-3 min)")
    ap.add_argument("--seed", type=int, default=None,
                    help="random seed for trees and cancel points (default: random, printed)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                    help="an attache setting for every attache process of the test, e.g. "
                         "transfer.multipart_threshold=5GiB (repeatable)")
    return ap


# ATTACHE_* variables from --set, given to every attache process (attache_env).
SETTINGS: dict = {}


def apply_settings(pairs: list[str]) -> None:
    """--set KEY=VALUE pairs as attache's environment variables (section.key ->
    ATTACHE_SECTION__KEY)."""
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            print(f"--set {pair!r}: expected section.key=value, "
                  "e.g. transfer.multipart_threshold=5GiB", file=sys.stderr)
            raise SystemExit(2)
        SETTINGS[f"ATTACHE_{section.upper()}__{name.upper()}"] = value


def resolve_seed(args) -> int:
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1 << 31)
    return args.seed


# ------------------------------------------------------------------------------------ processes

class Run:
    """A child process in its own session (a Ctrl-C at the terminal does not reach it), reaped by
    a thread with os.wait4 so the exit time is taken the moment it exits."""

    def __init__(self, argv, env=None, log_path=None, stdout_path=None, cwd=None, work=None,
                 rss_file=None):
        self.argv = [str(a) for a in argv]
        if "--cache-dir" in self.argv and env is not None:
            # attache 0.1.0 parses the global --cache-dir flag but never applies it (every run
            # shared ~/.cache/attache); the environment variable is honored.
            env = dict(env, ATTACHE_CACHE__DIR=self.argv[self.argv.index("--cache-dir") + 1])
        # Peak RSS: a child forked from this (large) Python process inherits its RSS high-water
        # mark across exec (Linux keeps the old mm's hiwater in signal->maxrss), so wait4's
        # ru_maxrss would be at least Python's RSS. GNU time, itself small, reports the exact
        # figure of its child.
        self.rss_file = None
        if rss_file is not None and os.access("/usr/bin/time", os.X_OK):
            self.rss_file = Path(rss_file)
            self.argv = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] + self.argv
        self.log_path = log_path
        self.stdout_path = stdout_path
        err = open(log_path, "ab") if log_path else subprocess.DEVNULL
        out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
        self.t_start = time.monotonic()
        self.p = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=err, cwd=cwd, start_new_session=True)
        for f in (err, out):
            if f is not subprocess.DEVNULL:
                f.close()
        self.pid = self.p.pid
        self.rc: int | None = None
        self.t_exit: float | None = None
        self.rusage = None
        self._done = threading.Event()
        if work is not None:
            work.procs.append(self)
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        _pid, status, ru = os.wait4(self.pid, 0)
        self.t_exit = time.monotonic()
        self.rusage = ru
        self.rc = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
        self.p.returncode = self.rc
        self._done.set()

    def running(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def signal(self, sig: int) -> None:
        if self.running():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after timeout."""
        if self.running():
            self.signal(signal.SIGTERM)
            if not self.wait(timeout):
                self.kill()

    @property
    def wall(self) -> float | None:
        return None if self.t_exit is None else self.t_exit - self.t_start

    @property
    def cpu(self) -> float | None:
        return None if self.rusage is None else self.rusage.ru_utime + self.rusage.ru_stime

    @property
    def maxrss(self) -> int | None:
        """Peak RSS in bytes (ru_maxrss is KiB on Linux); exact when started with rss_file."""
        if self.rss_file is not None:
            try:
                return int(self.rss_file.read_text().split()[-1]) * 1024
            except (OSError, ValueError, IndexError):
                return None
        return None if self.rusage is None else self.rusage.ru_maxrss * 1024

    def stdout(self) -> str:
        return Path(self.stdout_path).read_text(errors="replace") if self.stdout_path else ""

    def log_tail(self, n: int = 5) -> str:
        if not self.log_path or not Path(self.log_path).exists():
            return ""
        lines = Path(self.log_path).read_text(errors="replace").splitlines()
        return " | ".join(lines[-n:])

    def count_log(self, needle: str) -> int:
        if not self.log_path or not Path(self.log_path).exists():
            return 0
        return Path(self.log_path).read_text(errors="replace").count(needle)


def exit_desc(rc: int | None) -> str:
    if rc is None:
        return "running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


# ------------------------------------------------------------------------------------ work dir

class Work:
    """The test's work dir and the binaries it runs (private copies: a rebuild in the repo during
    the run cannot swap them)."""

    def __init__(self, name: str, keep: bool = False):
        base = os.environ.get("TMPDIR") or "/tmp"
        self.dir = Path(tempfile.mkdtemp(prefix=f"attache-{name}.", dir=base)).resolve()
        self.keep = keep
        self.procs: list[Run] = []
        self.extra_dirs: list[Path] = []  # outside the work dir, removed with it
        self.failed = False
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        (self.dir / "bin").mkdir()
        attache = Path(os.environ.get("ATTACHE_BIN") or REPO / "target/release/attache")
        server = Path(os.environ.get("ATTACHE_S3_SERVER")
                      or REPO / "target/release/examples/s3_server")
        for b, what in ((attache, "ATTACHE_BIN"), (server, "ATTACHE_S3_SERVER")):
            if not (b.is_file() and os.access(b, os.X_OK)):
                raise SystemExit(f"FAIL  setup: no executable at {b} (build it, or set {what})")
        self.attache = self.dir / "bin/attache"
        self.s3_server = self.dir / "bin/s3_server"
        shutil.copy2(attache, self.attache)
        shutil.copy2(server, self.s3_server)
        self.empty_config = self.dir / "empty.toml"
        self.empty_config.write_text("")
        self._n = 0
        log(f"work dir {self.dir}; attache {attache}; s3_server {server}")

    def path(self, name: str) -> Path:
        return self.dir / name

    def fresh(self, stem: str) -> Path:
        """A new, not yet existing path under the work dir."""
        self._n += 1
        return self.dir / f"{stem}{self._n}"

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            log(f"interrupted by {signal.Signals(signum).name}")
            self.failed = True
            raise SystemExit(130)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, handler)

    def cleanup(self) -> None:
        for r in reversed(self.procs):
            if r.running():
                r.signal(signal.SIGKILL)
                r.wait(5)
        for d in self.extra_dirs:
            subprocess.run(["rm", "-rf", "--", str(d)], check=False)
        if self.keep or self.failed:
            log(f"work dir kept: {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# An empty file for AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE (not /dev/null: botocore
# refuses it when /dev/null is not a character device, as in some containers).
EMPTY_AWS_FILE = Path(tempfile.gettempdir()) / "attache-scripted-tests-empty-aws-config"


def _empty_aws_file() -> str:
    if not EMPTY_AWS_FILE.is_file() or EMPTY_AWS_FILE.stat().st_size:
        EMPTY_AWS_FILE.write_text("")
    return str(EMPTY_AWS_FILE)


def attache_env(s3: "S3Server | None", extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ATTACHE_") and not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["AWS_CONFIG_FILE"] = _empty_aws_file()
    env["AWS_SHARED_CREDENTIALS_FILE"] = _empty_aws_file()
    env["NO_COLOR"] = "1"
    env.update(SETTINGS)
    if s3 is not None:
        env.update(s3.attache_env())
    if extra:
        env.update(extra)
    return env


def rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------ S3 server

class S3Server:
    def __init__(self, work: Work, root: Path, bucket: str = "bkt"):
        self.work = work
        self.root = root
        self.bucket = bucket
        self.port = 0
        self.control_port = 0
        self.run: Run | None = None
        self.starts = 0

    def start(self, timeout: float = 15) -> "S3Server":
        deadline = time.monotonic() + timeout
        while True:
            self.starts += 1
            out = self.work.logs / f"s3_server.{self.starts}.out"
            self.run = Run([self.work.s3_server, "--root", self.root, "--port", self.port,
                            "--control-port", self.control_port, "--bucket", self.bucket],
                           log_path=self.work.logs / "s3_server.log", stdout_path=out,
                           work=self.work)
            while self.run.running() and time.monotonic() < deadline:
                text = out.read_text() if out.exists() else ""
                if text.endswith("\n"):
                    info = json.loads(text.splitlines()[0])
                    self.endpoint = info["endpoint"]
                    self.control = info["control"]
                    self.access_key = info["access_key"]
                    self.secret_key = info["secret_key"]
                    self.port = int(self.endpoint.rsplit(":", 1)[1])
                    self.control_port = int(self.control.rsplit(":", 1)[1])
                    return self
                time.sleep(0.01)
            self.run.kill()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"s3_server did not start: {self.run.log_tail()}")
            time.sleep(0.2)  # port not free yet (restart): try again

    def kill9(self) -> None:
        if self.run:
            self.run.kill()

    def stop(self) -> None:
        if self.run:
            self.run.stop(5)

    def alive(self) -> bool:
        return self.run is not None and self.run.running()

    def _req(self, method: str, path: str, timeout: float = 30):
        req = urllib.request.Request(self.control + path, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def stats(self, multipart: bool = True) -> dict:
        """The server's counters; multipart=False skips counting open multipart uploads (that
        lists the server's root directory, one entry per object: too slow to poll)."""
        return self._req("GET", "/stats" if multipart else "/stats?multipart=false")

    def reset(self) -> None:
        self._req("POST", "/reset")

    def slowdown(self, seconds: float) -> None:
        self._req("POST", f"/faults/slowdown?seconds={seconds}")

    def clear_faults(self) -> None:
        self._req("POST", "/faults/clear")

    def attache_env(self) -> dict:
        return {
            "ATTACHE_S3__ENDPOINT_URL": self.endpoint,
            "ATTACHE_S3__FORCE_PATH_STYLE": "true",
            "ATTACHE_S3__REGION": "us-east-1",
            "ATTACHE_S3__ACCESS_KEY_ID": self.access_key,
            "ATTACHE_S3__SECRET_ACCESS_KEY": self.secret_key,
        }

    def aws_env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AWS_") and not k.startswith("ATTACHE_")}
        env.update({
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCOUNT_ID": "123456789012",
            "AWS_CONFIG_FILE": _empty_aws_file(),
            "AWS_SHARED_CREDENTIALS_FILE": _empty_aws_file(),
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        return env

    def store_url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def prefix_dir(self, prefix: str) -> Path:
        return self.root / self.bucket / prefix

    def server_tmp_files(self) -> int:
        """s3s-fs's own temporary files (`.tmp.N.internal.part`) in the root."""
        try:
            return sum(1 for n in os.listdir(self.root)
                       if n.startswith(".tmp.") and n.endswith(".internal.part"))
        except FileNotFoundError:
            return 0


class TrafficWatch:
    """Polls /stats and remembers when the request traffic (requests, bytes in, bytes out) last
    changed: the server is idle when it has not changed for `quiet` seconds."""

    def __init__(self, s3: S3Server, interval: float = 0.02):
        self.s3 = s3
        self.interval = interval
        self.first = None
        self.last = None
        self.last_change = None
        self.polls = 0
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t_started = time.monotonic()

    @staticmethod
    def _key(st: dict) -> tuple:
        return (st["requests"], st["bytes_in"], st["bytes_out"])

    def start(self) -> "TrafficWatch":
        self._t_started = time.monotonic()
        self._t.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                k = self._key(self.s3.stats(multipart=False))
            except Exception:  # server down (fault test): no traffic seen
                self.errors += 1
                k = None
            now = time.monotonic()
            with self._lock:
                self.polls += 1
                if k is not None:
                    if self.first is None:
                        self.first = k
                    if self.last is not None and k != self.last:
                        self.last_change = now
                    self.last = k
            self._stop.wait(self.interval)

    def wait_quiet(self, quiet: float = 0.3, timeout: float = 60) -> float | None:
        """Waits until no change for `quiet` s; returns the time of the last change seen (None:
        none since the watch started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                ref = self.last_change
                polls = self.polls
            start_ref = ref if ref is not None else self._t_started
            if polls >= 3 and time.monotonic() - start_ref >= quiet:
                return ref
            time.sleep(self.interval)
        return self.last_change

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)

    def requests_seen(self) -> int:
        if self.first is None or self.last is None:
            return 0
        return self.last[0] - self.first[0]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ------------------------------------------------------------------------------------ daemon


class Daemon:
    """`attache daemon` with its own socket, state dir and cache dir under DIR."""

    def __init__(self, work: Work, s3: S3Server, dir: Path, tag: str = "daemon"):
        self.work = work
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        self.sock = dir / "a.sock"
        self.config = dir / "config.toml"
        self.config.write_text(f'[daemon]\nsocket = "{self.sock}"\nstate_dir = "{dir / "state"}"\n')
        self.log_path = work.logs / f"{tag}.log"
        self.run = Run([work.attache, "--config", self.config, "--cache-dir", dir / "cache",
                        "daemon"], env=attache_env(s3), log_path=self.log_path, work=work)
        deadline = time.monotonic() + 15
        while True:
            try:
                st, _ = self.request("GET", "/v1/health", timeout=2)
                if st == 200:
                    break
            except OSError:
                pass
            if not self.run.running() or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start: {self.run.log_tail()}")
            time.sleep(0.02)

    def request(self, method: str, path: str, body=None, timeout: float = 15):
        c = UnixHTTPConnection(str(self.sock), timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            raw = r.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode(errors="replace")
            return r.status, parsed
        finally:
            c.close()

    def submit_job(self, spec: dict) -> str:
        st, rec = self.request("POST", "/v1/jobs", spec)
        if st != 201:
            raise RuntimeError(f"POST /v1/jobs -> {st}: {rec}")
        return rec["id"]

    def job(self, job_id: str) -> dict:
        st, rec = self.request("GET", f"/v1/jobs/{job_id}")
        if st != 200:
            raise RuntimeError(f"GET /v1/jobs/{job_id} -> {st}: {rec}")
        return rec

    def wait_job(self, job_id: str, timeout: float = 600, interval: float = 0.01) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            rec = self.job(job_id)
            if rec["state"] not in ("queued", "running"):
                return rec
            if time.monotonic() > deadline:
                return rec
            time.sleep(interval)

    def metrics(self) -> dict:
        c = UnixHTTPConnection(str(self.sock), timeout=15)
        try:
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
        finally:
            c.close()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, val = line.rpartition(" ")
                name = name.split("{", 1)[0]
                try:
                    out[name] = out.get(name, 0) + float(val)
                except ValueError:
                    pass
        return out

    def stop(self, timeout: float = 10) -> None:
        self.run.stop(timeout)


# ------------------------------------------------------------------------------------ trees

def write_random_file(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))


def _gen_tree():
    """bench/gen_tree.py, the project's deterministic tree generator."""
    sys.path.insert(0, str(REPO / "bench"))
    import gen_tree  # noqa: E402
    return gen_tree


def make_tree(root: Path, n_files: int, seed: int, min_size: int, max_size: int,
              per_dir: int = 100, fanout: int = 20) -> dict[str, int]:
    """n_files files of distinct, incompressible content and size in [min_size, max_size],
    about per_dir per directory in directories nested `fanout` wide (bench/gen_tree.py's
    layout). Deterministic for a seed. Returns rel -> size."""
    depth = 1
    while fanout ** depth * per_dir < n_files:
        depth += 1
    _gen_tree().gen_many(str(root), n_files, min_size, max_size, seed, 1_700_000_000,
                         depth, fanout)
    files: dict[str, int] = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            files[str(p.relative_to(root))] = p.stat().st_size
    return files


def make_big_file(path: Path, size: int, seed: int) -> None:
    """One large file of distinct content (bench/gen_tree.py's single-file generator)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _gen_tree().gen_single(str(path.parent), size, seed, 1_700_000_000)
    big = path.parent / "big.bin"
    if big != path:
        big.rename(path)


def same_bytes(a: Path, b: Path, buf: int = 4 * MiB) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x = fa.read(buf)
                y = fb.read(buf)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def tree_index(root: Path) -> dict[str, int]:
    out = {}
    for d, _dirs, names in os.walk(root):
        for n in names:
            p = Path(d) / n
            out[str(p.relative_to(root))] = p.stat().st_size
    return out


def check_dest(dest: Path, source: Path, src_index: dict[str, int], expect_complete: bool,
               strip_assetroot: bool = False) -> dict:
    """Every file under dest: `.attache-*` names are temp files; other files must be files of
    the source, complete and with the same bytes. With expect_complete, every source file must
    be there. With strip_assetroot, dest holds one `assetroot-*` dir (a session dir) and a
    `.attache` records dir (ignored but for temp names)."""
    res = {"present": 0, "temp": [], "partial": [], "unexpected": [], "missing": []}
    if not dest.exists():
        if expect_complete:
            res["missing"] = sorted(src_index)
        return res
    seen = set()
    for d, dirs, names in os.walk(dest):
        dpath = Path(d)
        for n in list(dirs) + names:
            if n.startswith(".attache-"):
                res["temp"].append(str(dpath / n))
        for n in names:
            if n.startswith(".attache-"):
                continue
            p = dpath / n
            rel = p.relative_to(dest)
            parts = rel.parts
            if strip_assetroot:
                if parts[0] == ".attache":
                    continue
                if not parts[0].startswith("assetroot-") or len(parts) < 2:
                    res["unexpected"].append(str(rel))
                    continue
                parts = parts[1:]
            key = "/".join(parts)
            if key not in src_index:
                res["unexpected"].append(str(rel))
                continue
            seen.add(key)
            if same_bytes(p, source / key):
                res["present"] += 1
            else:
                res["partial"].append(str(rel))
    if expect_complete:
        res["missing"] = sorted(set(src_index) - seen)
    return res


def dest_problems(res: dict) -> list[str]:
    out = []
    for k, what in (("temp", "temp file(s) left"), ("partial", "partial/corrupt file(s)"),
                    ("unexpected", "unexpected file(s)"), ("missing", "missing file(s)")):
        if res[k]:
            out.append(f"{len(res[k])} {what}, e.g. {res[k][0]}")
    return out


def read_manifest(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def hash_index(manifest: dict) -> dict[str, tuple[str, int]]:
    """hash -> (path, size) from a manifest."""
    return {e["hash"]: (e["path"], e["size"]) for e in manifest["paths"]}


def check_store(s3: S3Server, prefix: str, source: Path, by_hash: dict) -> dict:
    """Objects under {prefix}/Data/ must be named by a hash of the source tree and hold exactly
    that file's bytes. Also reports open multipart uploads and published manifests."""
    res = {"objects": 0, "bad": [], "unknown": []}
    data = s3.prefix_dir(prefix) / "Data"
    if data.is_dir():
        for n in os.listdir(data):
            h = n.removesuffix(".xxh128")
            if h not in by_hash:
                res["unknown"].append(n)
                continue
            rel, size = by_hash[h]
            if same_bytes(data / n, source / rel):
                res["objects"] += 1
            else:
                res["bad"].append(n)
    man = s3.prefix_dir(prefix) / "Manifests"
    res["manifests"] = sum(len(f) for _d, _s, f in os.walk(man)) if man.is_dir() else 0
    return res


# ------------------------------------------------------------------------------------ report

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def maximum(xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


class Report:
    def __init__(self, test: str, args):
        self.test = test
        self.args = args
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.tables: list[tuple[str, list[str], list[list]]] = []
        self.figures: dict = {"test": test, "quick": bool(getattr(args, "quick", False)),
                              "seed": getattr(args, "seed", None)}

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        log(f"FAIL  {msg}")

    def check(self, ok: bool, msg: str) -> bool:
        if not ok:
            self.fail(msg)
        return ok

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        log(f"note: {msg}")

    def table(self, title: str, headers: list[str], rows: list[list]) -> None:
        self.tables.append((title, headers, rows))

    def _print_table(self, title, headers, rows) -> None:
        cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        print(f"\n{title}")
        for j, r in enumerate(cells):
            print("  " + "  ".join(c.rjust(w) if j and _numeric(c) else c.ljust(w)
                                   for c, w in zip(r, widths)).rstrip())
            if j == 0:
                print("  " + "  ".join("-" * w for w in widths))

    def finish(self) -> int:
        print(f"\n== {self.test} ({'quick' if self.figures['quick'] else 'full'} mode, "
              f"seed {self.figures['seed']}) ==")
        for t in self.tables:
            self._print_table(*t)
        if self.notes:
            print("\nnotes:")
            for n in self.notes:
                print(f"  - {n}")
        print()
        if self.failures:
            print(f"FAIL  {self.test}: {len(self.failures)} broken invariant(s):")
            for f in self.failures:
                print(f"  - {f}")
        else:
            print(f"PASS  {self.test}: every invariant held")
        self.figures["failures"] = self.failures
        self.figures["notes"] = self.notes
        self.figures["tables"] = [{"title": t, "headers": h, "rows": r} for t, h, r in self.tables]
        if getattr(self.args, "json", None):
            Path(self.args.json).write_text(json.dumps(self.figures, indent=1, default=str) + "\n")
        sys.stdout.flush()
        return 1 if self.failures else 0


def _numeric(s: str) -> bool:
    try:
        float(s.rstrip("%x").split(" ")[0])
        return True
    except ValueError:
        return False


def deadline_python() -> str | None:
    """The official client's venv python (lib/deadline_venv.sh makes it once), or None."""
    try:
        r = subprocess.run([str(HERE / "deadline_venv.sh")], capture_output=True, text=True,
                           timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return None
    py = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else None
    return py if py and os.access(py, os.X_OK) else None


def check_cache_dir_flag(work: Work, report: Report) -> None:
    """`attache --cache-dir DIR` must put cache.dir at DIR (runs are isolated through it)."""
    want = work.dir / "flag-check-cache"
    r = subprocess.run([str(work.attache), "--config", str(work.empty_config), "--cache-dir",
                        str(want), "config", "show"], env=attache_env(None),
                       capture_output=True, text=True, timeout=30)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("dir = ")), "")
    if line != f'dir = "{want}"':
        report.fail(f"attache ignores the global --cache-dir flag: `attache --cache-dir {want} "
                    f"config show` prints cache `{line}` (this test sets ATTACHE_CACHE__DIR too, "
                    f"so its runs stay isolated)")


def main_wrapper(test: str, body, args) -> int:
    """Runs body(work, report) with cleanup on every exit path; returns the exit code."""
    apply_settings(args.set)
    work = Work(test, keep=args.keep)
    work.install_signal_handlers()
    report = Report(test, args)
    rc = 1
    try:
        check_cache_dir_flag(work, report)
        body(work, report)
        rc = report.finish()
    except SystemExit as e:
        work.failed = True
        rc = e.code if isinstance(e.code, int) else 1
        if rc != 130:
            print(f"FAIL  {test}: {e}")
    except Exception as e:  # noqa: BLE001 - report any crash as a failure
        import traceback
        traceback.print_exc()
        work.failed = True
        report.fail(f"test crashed: {type(e).__name__}: {e}")
        rc = report.finish()
    finally:
        if rc != 0:
            work.failed = True
        work.cleanup()
    return rc
