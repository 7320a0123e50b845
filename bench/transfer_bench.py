#!/usr/bin/env python3
"""Transfer benchmark: attache (CLI and daemon) against the official Deadline client, rclone and
aws-cli, on the same machine, the same trees and the same local S3 servers.

Run it through bench/transfer_bench.sh, which builds and installs everything first. Usage:

    transfer_bench.py [--servers s3s,garage] [--trees small,mixed,large,huge-count]
                      [--tools attache,attache-daemon,official,rclone,rclone-16,aws-cli,plain]
                      (also, opt in: attache-16, attache with s3.max_connections=16;
                      attache-single, attache with transfer.multipart_threshold=5GiB)
                      [--runs N] [--all-tools-huge] [--quick]

For each server, tree, run and tool (tools interleaved within a run so drift spreads evenly),
on a fresh bucket: first upload, no-change re-upload, download to an empty directory (verified
byte for byte against the tree); attache also hash-only (cold and warm cache) and a worker
sync into a session directory that already holds the inputs (warm local state). Each command
is measured for wall time, client CPU seconds and peak RSS (wait4 rusage and GNU time; for the daemon, the
daemon's CPU and VmHWM are added), server CPU seconds (/proc), and request counts as the
server saw them. Results: bench/results/transfer-<UTC>.json and .md (median and min-max).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20

# name -> list of (sub-directory, gen_tree.py arguments); "" = the tree root itself.
TREES = {
    "small": [("", ["--count", "5000", "--min-size", "1KiB", "--max-size", "64KiB",
                    "--depth", "2", "--fanout", "8", "--seed", "11"])],
    "mixed": [("textures", ["--count", "500", "--min-size", "100KiB", "--max-size", "4MiB",
                            "--depth", "1", "--fanout", "10", "--seed", "21"])]
    + [(f"caches/c{i}", ["--single", f"{mib}MiB", "--seed", str(22 + i)])
       for i, mib in enumerate([50, 100, 150, 200])],
    "large": [(f"f{i}", ["--single", "1GiB", "--seed", str(31 + i)]) for i in range(4)],
    "huge-count": [("", ["--count", "200000", "--min-size", "0", "--max-size", "4KiB",
                         "--depth", "3", "--fanout", "10", "--seed", "41"])],
}
QUICK_TREES = {
    "small": [("", ["--count", "500", "--min-size", "1KiB", "--max-size", "64KiB",
                    "--depth", "2", "--fanout", "4", "--seed", "11"])],
    "mixed": [("textures", ["--count", "50", "--min-size", "100KiB", "--max-size", "4MiB",
                            "--depth", "1", "--fanout", "4", "--seed", "21"]),
              ("caches/c0", ["--single", "40MiB", "--seed", "22"])],
    "large": [(f"f{i}", ["--single", "128MiB", "--seed", str(31 + i)]) for i in range(2)],
    "huge-count": [("", ["--count", "5000", "--min-size", "0", "--max-size", "4KiB",
                         "--depth", "2", "--fanout", "10", "--seed", "41"])],
}
DEFAULT_RUNS = {"small": 3, "mixed": 3, "large": 2, "huge-count": 1}
ALL_TOOLS = ["attache", "attache-daemon", "official", "rclone", "rclone-16", "aws-cli", "plain"]
# The order of the tables (attache-16 and attache-single are opt in, named in --tools).
TABLE_ORDER = ["attache", "attache-16", "attache-single", "attache-daemon", "official", "rclone",
               "rclone-16", "aws-cli", "plain"]
# The Python tools take well over 15 minutes each on 200,000 files here; opt in with
# --all-tools-huge.
SLOW_ON_HUGE = {"official", "aws-cli"}
FARM, QUEUE = "farm-bench", "queue-bench"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset_hwm(pid: int) -> None:
    # "5" resets the peak RSS (VmHWM) to the current RSS.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def run_measured(cmd: list[str], env: dict, logdir: Path, name: str, server, daemon_pid=None,
                 timeout: float = 7200) -> dict:
    """Runs cmd to completion and measures it; raises if it fails."""
    os.sync()  # the previous step's writeback must not land in this measurement
    out = open(logdir / f"{name}.out", "wb")
    err = open(logdir / f"{name}.err", "wb")
    server.reset()
    s_cpu0 = server.cpu()
    d_cpu0 = proc_cpu(daemon_pid) if daemon_pid else 0.0
    if daemon_pid:
        reset_hwm(daemon_pid)
    # GNU time reports the peak RSS: wait4's ru_maxrss of a child forked from this (large)
    # Python process would include this process's own high-water mark, which Linux carries
    # across exec.
    rss_file = logdir / f"{name}.rss"
    t0 = time.monotonic()
    p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] + cmd, env=env,
                         stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline = t0 + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            os.wait4(p.pid, 0)
            raise RuntimeError(f"{name}: timed out after {timeout} s")
        time.sleep(0.002)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    out.close()
    err.close()
    cpu = ru.ru_utime + ru.ru_stime  # GNU time's own share is negligible
    try:
        rss_kib = int(rss_file.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        rss_kib = 0
    if daemon_pid:
        cpu += proc_cpu(daemon_pid) - d_cpu0
        rss_kib = max(rss_kib, proc_hwm_kib(daemon_pid))
    time.sleep(0.05)  # let the server account the last responses
    s_cpu = server.cpu() - s_cpu0
    reqs = server.requests()
    if p.returncode != 0:
        tail = (logdir / f"{name}.err").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name}: {' '.join(cmd)} exited {p.returncode}\n{tail}")
    return {"wall": wall, "cpu": cpu, "rss_mib": rss_kib / 1024, "server_cpu": s_cpu, **reqs}


def verify_tree(src: Path, dst: Path) -> int:
    """Every file of src is in dst with the same bytes, and dst has no other file (attache's
    .attache state dir aside). Returns the number of files compared."""
    def files(root: Path) -> set[str]:
        out = set()
        for dirpath, dirnames, filenames in os.walk(root):
            if dirpath == str(root):
                dirnames[:] = [d for d in dirnames if d != ".attache"]
            rel = os.path.relpath(dirpath, root)
            for f in filenames:
                out.add(f if rel == "." else os.path.join(rel, f))
        return out
    a, b = files(src), files(dst)
    if a != b:
        missing, extra = sorted(a - b)[:5], sorted(b - a)[:5]
        raise RuntimeError(f"download of {src} into {dst}: missing {missing} extra {extra}")
    for rel in a:
        with open(src / rel, "rb") as x, open(dst / rel, "rb") as y:
            while True:
                bx, by = x.read(MIB), y.read(MIB)
                if bx != by:
                    raise RuntimeError(f"download: {dst / rel} differs from {src / rel}")
                if not bx:
                    break
    return len(a)


# ---------------------------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------------------------

class S3sServer:
    """examples/s3_server.rs: s3s-fs 0.14.1, TCP_NODELAY on, requests counted per operation."""
    name = "s3s-fs"
    setup = "s3s-fs 0.14.1 (examples/s3_server), TCP_NODELAY"

    def __init__(self, workdir: Path, binary: str):
        self.root = workdir / "s3s-root"
        self.root.mkdir(parents=True)
        self.proc = subprocess.Popen([binary, "--root", str(self.root)], stdout=subprocess.PIPE,
                                     stderr=open(workdir / "s3s.log", "wb"))
        info = json.loads(self.proc.stdout.readline())
        self.endpoint, self.control = info["endpoint"], info["control"]
        self.access_key, self.secret_key = info["access_key"], info["secret_key"]
        self.region = "us-east-1"
        self.pid = self.proc.pid

    def _post(self, path: str) -> None:
        urllib.request.urlopen(urllib.request.Request(self.control + path, method="POST"))

    def new_bucket(self, name: str) -> None:
        self._post(f"/buckets/{name}")

    def drop_bucket(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)
        # s3s-fs keeps two files per object beside the buckets (`.bucket-B.object-K.metadata.json`
        # and `.internal.json`): left behind, three huge-count tools used up the journaled
        # image's 1.97 M inodes and the fourth got 500s. (Bench bucket names need no encoding.)
        mine = f".bucket-{name}.object-"
        with os.scandir(self.root) as entries:
            for e in entries:
                if e.name.startswith(mine):
                    os.unlink(e.path)

    def reset(self) -> None:
        self._post("/reset")

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def requests(self) -> dict:
        s = json.loads(urllib.request.urlopen(self.control + "/stats").read())
        return {"requests": s["requests"], "data_requests": s["data_requests"],
                "ops": s["operations"], "connections": s["connections_total"],
                "open_multipart": s["open_multipart_uploads"]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class GarageServer:
    """scripted_tests/garage.sh's single-node Garage, started with the TCP_NODELAY shim."""
    name = "garage"

    def __init__(self, workdir: Path, shim: str):
        self.dir = workdir / "garage"
        self.dir.mkdir(parents=True)
        env = dict(os.environ, LD_PRELOAD=shim)
        subprocess.run(["bash", str(REPO / "scripted_tests/garage.sh"), "start", str(self.dir)],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        vals = dict(re.findall(r"export (\w+)='([^']*)'", (self.dir / "env.sh").read_text()))
        self.endpoint = vals["AWS_ENDPOINT_URL"]
        self.access_key, self.secret_key = vals["AWS_ACCESS_KEY_ID"], vals["AWS_SECRET_ACCESS_KEY"]
        self.region = vals["AWS_REGION"]
        toml = (self.dir / "garage.toml").read_text()
        self.admin = "http://" + re.search(r'\[admin\][^\[]*api_bind_addr = "([^"]+)"', toml).group(1)
        self.metrics_token = re.search(r'metrics_token = "([^"]+)"', toml).group(1)
        # The metadata engine changes Garage's speed more than any client does (garage.sh).
        engine = re.search(r'db_engine = "([^"]+)"', toml).group(1)
        self.setup = f"Garage, single node, db_engine {engine}, TCP_NODELAY shim"
        self.pid = int((self.dir / "garage.pid").read_text())
        self._base = {}

    def _cli(self, *args: str) -> None:
        subprocess.run(["bash", "-c", f'source "{REPO}/scripted_tests/garage.sh"; garage_cli "$@"',
                        "garage_cli", str(self.dir), *args], check=True, stdout=subprocess.DEVNULL)

    def new_bucket(self, name: str) -> None:
        self._cli("bucket", "create", name)
        self._cli("bucket", "allow", "--read", "--write", "--owner", name, "--key", self.access_key)

    def drop_bucket(self, name: str) -> None:
        pass  # Garage keeps them until the node is deleted with the work directory

    def _counters(self) -> dict:
        req = urllib.request.Request(self.admin + "/metrics",
                                     headers={"Authorization": f"Bearer {self.metrics_token}"})
        text = urllib.request.urlopen(req).read().decode()
        out = {}
        for m in re.finditer(r'^api_s3_request_counter\{api_endpoint="(\w+)"\} (\d+)', text, re.M):
            out[m.group(1)] = int(m.group(2))
        return out

    def reset(self) -> None:
        self._base = self._counters()

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def requests(self) -> dict:
        now = self._counters()
        ops = {k: v - self._base.get(k, 0) for k, v in now.items() if v - self._base.get(k, 0)}
        return {"requests": sum(ops.values()), "data_requests": None, "ops": ops,
                "connections": None, "open_multipart": None}

    def stop(self) -> None:
        subprocess.run(["bash", str(REPO / "scripted_tests/garage.sh"), "stop", str(self.dir)],
                       check=False, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------------------------

def clean_env() -> dict:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("ATTACHE_", "AWS_", "RCLONE_"))}


class Ctx:
    """What one tool run needs: the server, the bucket, paths."""

    def __init__(self, args, server, tree: str, tree_dir: Path, bucket: str, rundir: Path):
        self.args, self.server, self.tree, self.tree_dir = args, server, tree, tree_dir
        self.bucket, self.rundir = bucket, rundir
        self.store = f"s3://{bucket}/p"

    def attache_env(self) -> dict:
        return dict(clean_env(), ATTACHE_S3__ENDPOINT_URL=self.server.endpoint,
                    ATTACHE_S3__FORCE_PATH_STYLE="true", ATTACHE_S3__REGION=self.server.region,
                    ATTACHE_S3__ACCESS_KEY_ID=self.server.access_key,
                    ATTACHE_S3__SECRET_ACCESS_KEY=self.server.secret_key)

    def aws_env(self) -> dict:
        empty = self.rundir / "empty.cfg"
        empty.write_text("")
        return dict(clean_env(), AWS_ENDPOINT_URL=self.server.endpoint,
                    AWS_ACCESS_KEY_ID=self.server.access_key,
                    AWS_SECRET_ACCESS_KEY=self.server.secret_key,
                    AWS_REGION=self.server.region, AWS_DEFAULT_REGION=self.server.region,
                    AWS_ACCOUNT_ID="123456789012", AWS_EC2_METADATA_DISABLED="true",
                    AWS_CONFIG_FILE=str(empty), AWS_SHARED_CREDENTIALS_FILE=str(empty))


def session_root(session: Path) -> Path:
    roots = [p for p in session.iterdir() if p.name.startswith("assetroot-")]
    if len(roots) != 1:
        raise RuntimeError(f"expected one assetroot-* in {session}, found {roots}")
    return roots[0]


def tool_attache(ctx: Ctx, daemon: bool, settings: dict | None = None) -> list[tuple[str, dict]]:
    """attache's farm cycle; `settings`: ATTACHE_* variables that tune it."""
    a = ctx.args
    env = dict(ctx.attache_env(), **(settings or {}))
    cache = ctx.rundir / "cache"
    conf = ctx.rundir / "attache.toml"
    conf.write_text(
        f'[store]\nurl = "{ctx.store}"\n[cache]\ndir = "{cache}"\n'
        f'[daemon]\nsocket = "{ctx.rundir}/d.sock"\nstate_dir = "{ctx.rundir}/state"\n')
    base = [a.attache, "--config", str(conf)]
    extra = ["--daemon"] if daemon else []
    results = []
    dproc = None
    dpid = None
    if daemon:
        dproc = subprocess.Popen([a.attache, "daemon", "--config", str(conf)], env=env,
                                 stdout=subprocess.DEVNULL,
                                 stderr=open(ctx.rundir / "daemon.log", "wb"))
        dpid = dproc.pid
        for _ in range(500):
            if (ctx.rundir / "d.sock").exists():
                break
            time.sleep(0.01)
        else:
            raise RuntimeError("daemon did not create its socket")
    try:
        att = ctx.rundir / "attachments.json"
        up = base + ["submit", str(ctx.tree_dir), "--farm-id", FARM, "--queue-id", QUEUE,
                     "-o", str(att)] + extra
        results.append(("upload", run_measured(up, env, ctx.rundir, "upload", ctx.server, dpid)))
        results.append(("re-upload",
                        run_measured(up, env, ctx.rundir, "reupload", ctx.server, dpid)))
        session = ctx.rundir / "session"
        down = base + ["sync-inputs", "--attachments", str(att), "--session-dir", str(session),
                       "-o", str(ctx.rundir / "rules.json")] + extra
        r = run_measured(down, env, ctx.rundir, "download", ctx.server, dpid)
        r["verified_files"] = verify_tree(ctx.tree_dir, session_root(session))
        results.append(("download", r))
        results.append(("warm sync",
                        run_measured(down, env, ctx.rundir, "warmsync", ctx.server, dpid)))
        # Hashing does not depend on transfer settings: timed for the CLI with its defaults.
        if not daemon and not settings:
            hcache = ctx.rundir / "hash-cache"
            h = [a.attache, "hash", str(ctx.tree_dir), "-o", "/dev/null", "--cache-dir",
                 str(hcache)]
            results.append(("hash cold", run_measured(h, env, ctx.rundir, "hashcold", ctx.server)))
            results.append(("hash warm", run_measured(h, env, ctx.rundir, "hashwarm", ctx.server)))
    finally:
        if dproc:
            dproc.send_signal(signal.SIGTERM)
            dproc.wait(timeout=30)
    shutil.rmtree(ctx.rundir / "session", ignore_errors=True)
    return results


def tool_official(ctx: Ctx) -> list[tuple[str, dict]]:
    a = ctx.args
    env = ctx.aws_env()
    py = [a.deadline_py, str(REPO / "scripted_tests/lib/official.py")]
    q = ["--bucket", ctx.bucket, "--root-prefix", "p", "--farm-id", FARM, "--queue-id", QUEUE]
    att = ctx.rundir / "attachments.json"
    up = py + ["upload"] + q + ["--hash-cache-dir", str(ctx.rundir / "hc"),
                                "--s3-check-cache-dir", str(ctx.rundir / "sc"),
                                "-o", str(att), str(ctx.tree_dir)]
    results = [("upload", run_measured(up, env, ctx.rundir, "upload", ctx.server)),
               ("re-upload", run_measured(up, env, ctx.rundir, "reupload", ctx.server))]
    session = ctx.rundir / "session"
    down = py + ["download"] + q + ["--attachments", str(att), "--dest", str(session),
                                    "-o", str(ctx.rundir / "rules.json")]
    r = run_measured(down, env, ctx.rundir, "download", ctx.server)
    r["verified_files"] = verify_tree(ctx.tree_dir, session_root(session))
    results.append(("download", r))
    shutil.rmtree(session, ignore_errors=True)
    return results


def copy_tool(ctx: Ctx, env: dict, up: list[str], down: list[str]) -> list[tuple[str, dict]]:
    """Upload, the same again, then download into ctx.rundir/dest (`down` + [dest])."""
    results = [("upload", run_measured(up, env, ctx.rundir, "upload", ctx.server)),
               ("re-upload", run_measured(up, env, ctx.rundir, "reupload", ctx.server))]
    dest = ctx.rundir / "dest"
    r = run_measured(down + [str(dest)], env, ctx.rundir, "download", ctx.server)
    r["verified_files"] = verify_tree(ctx.tree_dir, dest)
    results.append(("download", r))
    shutil.rmtree(dest, ignore_errors=True)
    return results


def tool_rclone(ctx: Ctx, flags: list[str]) -> list[tuple[str, dict]]:
    conf = ctx.rundir / "rclone.conf"
    conf.write_text(
        "[bench]\ntype = s3\nprovider = Other\n"
        f"endpoint = {ctx.server.endpoint}\naccess_key_id = {ctx.server.access_key}\n"
        f"secret_access_key = {ctx.server.secret_key}\nregion = {ctx.server.region}\n"
        "force_path_style = true\n")
    base = ["rclone", "--config", str(conf), "copy"] + flags
    remote = f"bench:{ctx.bucket}/p"
    return copy_tool(ctx, clean_env(), base + [str(ctx.tree_dir), remote], base + [remote])


def tool_aws(ctx: Ctx) -> list[tuple[str, dict]]:
    aws = [ctx.args.aws, "s3", "sync", "--endpoint-url", ctx.server.endpoint, "--only-show-errors"]
    url = f"s3://{ctx.bucket}/p"
    return copy_tool(ctx, ctx.aws_env(), aws + [str(ctx.tree_dir), url], aws + [url])


def tool_plain(ctx: Ctx) -> list[tuple[str, dict]]:
    env = ctx.attache_env()

    def plain(name: str, mode: str, store: str, *extra: str) -> dict:
        r = run_measured([ctx.args.plain, mode, str(ctx.tree_dir), "--store", store, *extra],
                         env, ctx.rundir, name, ctx.server)
        r["inner"] = json.loads((ctx.rundir / f"{name}.out").read_text())
        return r

    put = plain("plain-put", "put", ctx.store)
    # The same, large files as multipart uploads in attache's parts: the store's own cost of
    # multipart (s3s-fs copies and hashes every part again on Complete), without attache.
    parts = plain("plain-put-parts", "put-parts", ctx.store + "-parts")
    get = plain("plain-get", "get", ctx.store)
    # The same GETs, each written to a file as it streams: what any download must at least do.
    out = ctx.rundir / "plain-out"
    getw = plain("plain-get-write", "get", ctx.store, "--out", str(out))
    shutil.rmtree(out, ignore_errors=True)
    return [("upload", put), ("upload (multipart)", parts), ("download (no write)", get),
            ("download", getw)]

TOOLS = {
    "attache": lambda c: tool_attache(c, daemon=False),
    "attache-daemon": lambda c: tool_attache(c, daemon=True),
    # Tuned as rclone -16 is: 16 connections (fewer cost a server on the same cores less).
    "attache-16": lambda c: tool_attache(c, daemon=False,
                                         settings={"ATTACHE_S3__MAX_CONNECTIONS": "16"}),
    # For stores that copy every part again on Complete (s3s-fs): one PUT per file to 5 GiB.
    "attache-single": lambda c: tool_attache(
        c, daemon=False, settings={"ATTACHE_TRANSFER__MULTIPART_THRESHOLD": "5GiB"}),
    "official": tool_official,
    "rclone": lambda c: tool_rclone(c, []),
    "rclone-16": lambda c: tool_rclone(c, ["--transfers=16", "--checksum"]),
    "aws-cli": tool_aws,
    "plain": tool_plain,
}
TOOL_LABEL = {
    "attache": "attache",
    "attache-daemon": "attache (daemon)",
    "attache-16": "attache, s3.max_connections=16",
    "attache-single": "attache, transfer.multipart_threshold=5GiB",
    "official": "official client",
    "rclone": "rclone (defaults)",
    "rclone-16": "rclone --transfers=16 --checksum",
    "aws-cli": "aws s3 sync",
    "plain": "plain parallel PUT/GET",
}


# ---------------------------------------------------------------------------------------------
# trees
# ---------------------------------------------------------------------------------------------

def make_tree(trees_dir: Path, name: str, parts) -> Path:
    dest = trees_dir / name
    stamps = trees_dir / ".stamps"
    stamps.mkdir(parents=True, exist_ok=True)
    for sub, gen_args in parts:
        d = dest / sub if sub else dest
        stamp = stamps / f"{name}-{sub.replace('/', '_') or 'root'}.json"
        out = subprocess.run([sys.executable, str(HERE / "gen_tree.py"), str(d), "--stamp",
                              str(stamp)] + gen_args, check=True, capture_output=True, text=True)
        info = json.loads(out.stdout)
        if info.get("generated"):
            log(f"generated {d}: {info['files']} files, {info['bytes'] / MIB:.0f} MiB "
                f"in {info['seconds']} s")
    return dest


def warm_page_cache(root: Path) -> None:
    """Reads every file once, so every tool reads the tree from memory, not the disk."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb", buffering=0) as fh:
                while fh.read(4 * MIB):
                    pass


def tree_stats(root: Path) -> tuple[int, int]:
    n = size = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            n += 1
            size += os.stat(os.path.join(dirpath, f)).st_size
    return n, size


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt_spread(vals, unit="s", digits=2):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    m = statistics.median(vals)
    s = f"{m:.{digits}f}{unit}"
    if len(vals) > 1:
        s += f" ({min(vals):.{digits}f}–{max(vals):.{digits}f})"
    return s


def summarize(records: list[dict]) -> dict:
    """(server, tree, tool, phase) -> medians."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["server"], r["tree"], r["tool"], r["phase"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {
            "runs": len(rs),
            "wall": med([r["wall"] for r in rs]), "walls": [r["wall"] for r in rs],
            "cpu": med([r["cpu"] for r in rs]), "cpus": [r["cpu"] for r in rs],
            "rss_mib": med([r["rss_mib"] for r in rs]),
            "server_cpu": med([r["server_cpu"] for r in rs]),
            "requests": med([r["requests"] for r in rs]),
            "data_requests": med([r["data_requests"] for r in rs]),
        }
    return out


def goals(summary: dict, server: str, tree_files: dict) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) rows for one server."""
    rows = []

    def get(tree, tool, phase, field="wall"):
        v = summary.get((server, tree, tool, phase))
        return v[field] if v else None

    def ratio(a, b):
        return f"{b / a:.1f}×" if a and b else "–"

    def judged(checks, fail="not met"):
        """Verdict over (peer time or None, met) pairs: peers not run this time are not
        judged, and the verdict says so."""
        measured = [met for peer, met in checks if peer is not None]
        if not measured:
            return "no peer in this run"
        v = "pass" if all(measured) else fail
        return v if len(measured) == len(checks) else f"{v} (against the peers run)"

    def best(tree, tools, phase, field="wall"):
        vals = [(get(tree, t, phase, field), t) for t in tools]
        vals = [(v, t) for v, t in vals if v is not None]
        return min(vals) if vals else (None, None)

    for phase in ("upload", "download"):
        a = get("small", "attache", phase)
        o = get("small", "official", phase)
        r, rt = best("small", ["rclone", "rclone-16"], phase)
        if a:
            rows.append((f"small tree {phase}: ≥ 10× official, ≥ 2× best rclone",
                         f"{a:.2f} s: {ratio(a, o)} official" + (f" ({o:.1f} s)" if o else "")
                         + f", {ratio(a, r)} {TOOL_LABEL.get(rt, 'rclone')}"
                         + (f" ({r:.2f} s)" if r else ""),
                         judged([(o, bool(o) and o / a >= 10), (r, bool(r) and r / a >= 2)])))
        a16 = get("small", "attache-16", phase)
        if a16:
            # Not the goal (that is attache's defaults): attache tuned as rclone -16 is.
            rows.append((f"small tree {phase}, attache with 16 connections (reference)",
                         f"{a16:.2f} s: {ratio(a16, o)} official, {ratio(a16, r)} "
                         f"{TOOL_LABEL.get(rt, 'rclone')}",
                         judged([(o, bool(o) and o / a16 >= 10), (r, bool(r) and r / a16 >= 2)],
                                fail="below")))
    cpu = get("small", "attache", "upload", "cpu")
    if cpu and tree_files.get("small"):
        per = cpu / tree_files["small"] * 1000
        rows.append(("client CPU ≤ 0.3 ms per small file uploaded", f"{per:.3f} ms",
                     "pass" if per <= 0.3 else "not met"))
    w = get("small", "attache", "re-upload")
    d = get("small", "attache", "re-upload", "data_requests")
    if w is not None:
        rows.append(("no-change re-upload of small: ≤ 0.3 s, 0 data requests",
                     f"{w:.3f} s, {d if d is not None else '?'} data requests",
                     "not met" if w > 0.3 or d else
                     "pass" if d == 0 else "pass on time (data requests not counted)"))
    peers = ["official", "rclone", "rclone-16", "aws-cli"]
    for tree in ("mixed", "large"):
        for phase in ("upload", "download"):
            a = get(tree, "attache", phase)
            p, pt = best(tree, peers, phase)
            if a and p:
                rows.append((f"{tree} {phase}: wall no worse than the best peer",
                             f"{a:.2f} s vs {p:.2f} s ({TOOL_LABEL[pt]})",
                             "pass" if a <= p * 1.0 else "not met"))
            ac = get(tree, "attache", phase, "cpu")
            rc, _ = best(tree, ["rclone", "rclone-16"], phase, "cpu")
            if ac and rc:
                rows.append((f"{tree} {phase}: client CPU ≤ ½ rclone's",
                             f"{ac:.2f} s vs {rc:.2f} s", "pass" if ac <= rc / 2 else "not met"))
        for phase in ("upload", "download"):
            a = get(tree, "attache", phase)
            pl = get(tree, "plain", phase)
            if a and pl:
                rows.append((f"{tree} {phase}: ≥ 90% of plain parallel "
                             + ("PUT" if phase == "upload" else "GET written to files"),
                             f"{pl / a * 100:.0f}% ({a:.2f} s vs {pl:.2f} s)",
                             "pass" if pl / a >= 0.9 else "not met"))
        a1, pl = get(tree, "attache-single", "upload"), get(tree, "plain", "upload")
        if a1 and pl:
            # Not the goal (that is attache's defaults): tuned for a store whose multipart
            # uploads cost it a second copy, one PUT per file as the plain PUT sends.
            rows.append((f"{tree} upload, attache with multipart_threshold=5GiB: ≥ 90% of "
                         "plain parallel PUT (reference)",
                         f"{pl / a1 * 100:.0f}% ({a1:.2f} s vs {pl:.2f} s)",
                         "pass" if pl / a1 >= 0.9 else "below"))
        a, pm = get(tree, "attache", "upload"), get(tree, "plain", "upload (multipart)")
        if a and pm:
            # Not the goal (that is against the plain PUT above): how near attache comes to the
            # same request pattern, which tells its own overhead from the store's multipart cost.
            rows.append((f"{tree} upload: share of plain multipart PUT (same parts; reference)",
                         f"{pm / a * 100:.0f}% ({a:.2f} s vs {pm:.2f} s)",
                         "pass" if pm / a >= 0.9 else "below"))
    hc = get("huge-count", "attache", "hash cold", "rss_mib")
    if hc and tree_files.get("huge-count"):
        limit = 64 + 200 * tree_files["huge-count"] / MIB
        rows.append(("peak RSS hashing huge-count ≤ 64 MiB + 200 B/entry",
                     f"{hc:.0f} MiB (limit {limit:.0f} MiB)", "pass" if hc <= limit else "not met"))
    for phase in ("upload", "download"):
        v = get("huge-count", "attache", phase, "rss_mib")
        if v and tree_files.get("huge-count"):
            limit = 64 + 200 * tree_files["huge-count"] / MIB
            rows.append((f"peak RSS huge-count {phase} ≤ 64 MiB + 200 B/entry",
                         f"{v:.0f} MiB (limit {limit:.0f} MiB)",
                         "pass" if v <= limit else "not met"))
    return rows


def describe_fs(path: Path) -> str:
    """The filesystem under path, and for ext4 whether it has a journal (see
    transfer_bench.sh, JOURNALED_FS: without one, making files right after deleting others is
    far dearer)."""
    try:
        src, fstype = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "-T", str(path)],
                                     capture_output=True, text=True).stdout.split()[:2]
    except (OSError, ValueError):
        return "?"
    desc = f"{fstype} on {src}"
    if fstype == "ext4":
        task = Path("/sys/fs/ext4") / Path(src).name / "journal_task"
        try:
            desc += ", no journal" if task.read_text().strip() == "<none>" else ", journaled"
        except OSError:
            pass
    return desc


def markdown(meta: dict, records: list[dict]) -> str:
    summary = summarize(records)
    lines = [f"# Transfer benchmark {meta['started']}", "",
             f"Machine: {meta['machine']}. Filesystem of trees, server data and downloads: "
             f"{meta.get('filesystem', '?')}. Load average before each tree: "
             + ", ".join(f"{k} {v}" for k, v in meta["load"].items()) + ".",
             "Servers: " + "; ".join(meta["server_setup"].values()) + ".",
             f"Command: `{meta['command']}`. Trees: "
             + ", ".join(f"{t} ({n} files, {b / MIB:.0f} MiB)"
                         for t, (n, b) in meta["trees"].items()) + ".",
             "Cells: median (min–max) over the runs; CPU = client user+sys (attache daemon: "
             "CLI + daemon); RSS = peak; requests = as the server counted them.", ""]
    for server in meta["servers"]:
        for tree in meta["tree_order"]:
            keys = [k for k in summary if k[0] == server and k[1] == tree]
            if not keys:
                continue
            n, b = meta["trees"][tree]
            lines += [f"## {server}: {tree} ({n} files, {b / MIB:.0f} MiB)", "",
                      "| tool | phase | runs | wall | MiB/s | client CPU | peak RSS | server CPU | requests | data req. |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for tool in TABLE_ORDER:
                for phase in ("upload", "upload (multipart)", "re-upload", "download (no write)",
                              "download", "warm sync", "hash cold", "hash warm"):
                    v = summary.get((server, tree, tool, phase))
                    if not v:
                        continue
                    rate = (f"{b / MIB / v['wall']:.0f}"
                            if phase in ("upload", "upload (multipart)", "download", "hash cold")
                            else "")
                    dr = v["data_requests"]
                    lines.append(
                        f"| {TOOL_LABEL[tool]} | {phase} | {v['runs']} | {fmt_spread(v['walls'])}"
                        f" | {rate} | {fmt_spread(v['cpus'])} | {v['rss_mib']:.0f} MiB"
                        f" | {v['server_cpu']:.2f}s | {v['requests']:.0f}"
                        f" | {'' if dr is None else f'{dr:.0f}'} |")
            lines.append("")
        rows = goals(summary, server, {t: meta["trees"][t][0] for t in meta["trees"]})
        if rows:
            lines += [f"## Goals on {server}", "", "| goal | measured | verdict |", "|---|---|---|"]
            lines += [f"| {g} | {m} | {v} |" for g, m, v in rows]
            lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def runs_of(spec: str, tree: str) -> int:
    """--runs: "" (defaults), "N", or "tree=N,tree=N" (other trees keep their default)."""
    if spec.isdigit():
        return int(spec)
    per = dict(p.split("=", 1) for p in spec.split(",") if "=" in p)
    return int(per.get(tree, DEFAULT_RUNS[tree]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="s3s", help="s3s,garage (default s3s)")
    ap.add_argument("--trees", default="small,mixed,large,huge-count")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS))
    ap.add_argument("--runs", default="",
                    help="runs: N for every tree, or per tree like small=3,large=1 "
                         "(default: small 3, mixed 3, large 2, huge-count 1)")
    ap.add_argument("--all-tools-huge", action="store_true",
                    help="also run the official client and aws-cli on huge-count (slow)")
    ap.add_argument("--quick", action="store_true", help="tiny trees, one run: a smoke test")
    ap.add_argument("--bench-dir", default=os.environ.get("BENCH_DIR", "/tmp/attache-bench"))
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--attache", default=os.environ.get("ATTACHE_BIN",
                                                        str(REPO / "target/release/attache")))
    ap.add_argument("--examples", default=os.environ.get("EXAMPLES_DIR",
                                                         str(REPO / "target/release/examples")))
    ap.add_argument("--deadline-py", default=os.environ.get("DEADLINE_PY", ""))
    ap.add_argument("--aws", default=os.environ.get("AWS_CLI", "aws"))
    ap.add_argument("--shim", default=os.environ.get("NODELAY_SHIM", ""))
    args = ap.parse_args()
    args.plain = str(Path(args.examples) / "plain_s3")
    servers = args.servers.split(",")
    trees = args.trees.split(",")
    tools = args.tools.split(",")
    for t in tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}; known: {', '.join(TOOLS)}")
    for t in trees:
        if t not in TREES:
            ap.error(f"unknown tree {t!r}; known: {', '.join(TREES)}")

    bench_dir = Path(args.bench_dir)
    trees_dir = bench_dir / ("trees-quick" if args.quick else "trees")
    workdir = Path(tempfile.mkdtemp(prefix="transfer-", dir=bench_dir))
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    meta = {
        "started": started, "command": " ".join(sys.argv), "servers": [], "tree_order": trees,
        "machine": f"{os.cpu_count()} vCPU, {platform.machine()}, Linux {platform.release()}",
        "tools": {}, "trees": {}, "load": {}, "quick": args.quick, "server_setup": {},
        "filesystem": describe_fs(bench_dir),
    }
    for cmd, key in ((["rclone", "--version"], "rclone"), ([args.aws, "--version"], "aws-cli"),
                     ([args.attache, "--version"], "attache")):
        try:
            meta["tools"][key] = subprocess.run(cmd, capture_output=True, text=True
                                                ).stdout.splitlines()[0]
        except (OSError, IndexError):
            meta["tools"][key] = "?"
    records: list[dict] = []
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    base = results_dir / f"transfer-{started}"

    def save() -> None:
        base.with_suffix(".json").write_text(json.dumps({"meta": meta, "records": records},
                                                        indent=1))
        base.with_suffix(".md").write_text(markdown(meta, records))

    tree_dirs = {}
    for t in trees:
        parts = (QUICK_TREES if args.quick else TREES)[t]
        tree_dirs[t] = make_tree(trees_dir, t, parts)
        meta["trees"][t] = tree_stats(tree_dirs[t])
    bucket_no = 0
    try:
        for sname in servers:
            server = (S3sServer(workdir, str(Path(args.examples) / "s3_server")) if sname == "s3s"
                      else GarageServer(workdir, args.shim))
            meta["servers"].append(server.name)
            meta["server_setup"][server.name] = server.setup
            try:
                for t in trees:
                    runs = 1 if args.quick else runs_of(args.runs, t)
                    meta["load"][f"{server.name}/{t}"] = Path("/proc/loadavg").read_text().split()[0]
                    warm_page_cache(tree_dirs[t])
                    for run in range(runs):
                        for tool in tools:
                            if t == "huge-count" and tool in SLOW_ON_HUGE and not args.all_tools_huge:
                                continue
                            if tool == "plain" and t not in ("mixed", "large"):
                                continue
                            bucket_no += 1
                            bucket = f"b{bucket_no:04d}"
                            server.new_bucket(bucket)
                            rundir = workdir / f"{server.name}-{t}-{tool}-{run}"
                            rundir.mkdir()
                            log(f"{server.name} {t} run {run + 1}/{runs}: {tool}")
                            ctx = Ctx(args, server, t, tree_dirs[t], bucket, rundir)
                            for phase, r in TOOLS[tool](ctx):
                                records.append({"server": server.name, "tree": t, "tool": tool,
                                                "phase": phase, "run": run, **r})
                                log(f"  {phase}: {r['wall']:.3f} s, cpu {r['cpu']:.2f} s, "
                                    f"rss {r['rss_mib']:.0f} MiB, {r['requests']} requests")
                            server.drop_bucket(bucket)
                            save()
            finally:
                server.stop()
    finally:
        save()
        if os.environ.get("BENCH_KEEP_WORKDIR"):
            log(f"kept the work directory (BENCH_KEEP_WORKDIR): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(base.with_suffix(".md").read_text())
    log(f"results: {base}.json, {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
