#!/usr/bin/env python3
"""Driver of bench/hash_bench.sh (run that; it builds and prepares the venv first).

Generates the trees, warms the page cache, runs each tool RUNS times, computes median and
min/max, checks the goals, writes bench/results/hash-<UTC timestamp>.json and .md and prints
the markdown. Standard library only; the official client runs under $DEADLINE_PY.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GIB = float(1 << 30)

sys.path.insert(0, str(HERE))
from gen_tree import parse_size  # noqa: E402


def env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def log(msg: str) -> None:
    print(f"hash_bench: {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str] | str, **kw) -> str:
    r = subprocess.run(cmd, shell=isinstance(cmd, str), stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, **kw)
    return r.stdout.strip()


def stats(values: list[float]) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def cpu_busy_pct(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over `seconds`, from /proc/stat (load average lags by minutes)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle
    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except OSError:
        return None
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


def settle(max_wait: float, threshold: float = 25.0) -> float | None:
    """Wait (up to max_wait s) until the machine is mostly idle, e.g. right after the build."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy_pct()
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        log(f"machine busy ({busy:.0f}% CPU); waiting for it to settle")
        busy = cpu_busy_pct(2.0)
    return busy


def machine_snapshot() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    top = sh("ps -eo pcpu=,comm= --sort=-pcpu | head -5")
    busy = [l.strip() for l in top.splitlines() if l.strip()]
    return {
        "cpu_busy_pct": cpu_busy_pct(),
        "uptime": sh(["uptime"]),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
        "nproc": os.cpu_count(),
        "nproc_cmd": sh(["nproc"]),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "top_cpu_processes": busy,
        # rustc compiling next to the benchmark (an idle `cargo test` waiting on a test is not
        # counted; the load average and top processes show other load).
        "builds_running": bool(sh("pgrep -x rustc || true")),
    }


def warm_page_cache(root: Path) -> float:
    """Read every file once so runs measure hashing, not the disk."""
    t = time.perf_counter()
    buf = bytearray(1 << 20)
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
    return time.perf_counter() - t


class Bench:
    def __init__(self) -> None:
        self.runs = env_int("RUNS", 5)
        self.official_tree_runs = env_int("OFFICIAL_TREE_RUNS", min(self.runs, 3))
        self.bench_dir = Path(os.environ.get("BENCH_DIR", "/tmp/attache-bench"))
        self.tools = set(os.environ.get("TOOLS", "attache,official,raw").split(","))
        self.big_size = parse_size(os.environ.get("BIG_SIZE", "2GiB"))
        self.tree_count = env_int("TREE_COUNT", 50000)
        self.tree_min = os.environ.get("TREE_MIN", "1KiB")
        self.tree_max = os.environ.get("TREE_MAX", "64KiB")
        self.seed = env_int("SEED", 1)
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        self.attache = Path(os.environ.get("ATTACHE_BIN", target / "release" / "attache"))
        self.examples = Path(os.environ.get("EXAMPLES_DIR", target / "release" / "examples"))
        self.deadline_py = os.environ.get("DEADLINE_PY") or sys.executable
        self.results_dir = Path(os.environ.get("RESULTS_DIR", HERE / "results"))
        self.problems: list[str] = []

    # ---- trees ---------------------------------------------------------------------------
    def gen(self, name: str, args: list[str]) -> dict:
        dest = self.bench_dir / name
        out = subprocess.run([sys.executable, str(HERE / "gen_tree.py"), str(dest), *args,
                              "--seed", str(self.seed)], check=True, stdout=subprocess.PIPE,
                             text=True).stdout
        info = json.loads(out)
        log(f"tree {name}: {info['files']} files, {info['bytes'] / GIB:.2f} GiB "
            f"({'generated in %.1f s' % info['seconds'] if info['generated'] else 'reused'})")
        return info

    # ---- one timed process -----------------------------------------------------------------
    def timed(self, cmd: list[str], env: dict | None = None) -> tuple[float, dict]:
        t = time.perf_counter()
        r = subprocess.run(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
        try:  # the whole stdout (one-line or pretty-printed JSON) ...
            return wall, json.loads(r.stdout)
        except ValueError:
            pass
        lines = [l for l in r.stdout.splitlines() if l.strip().startswith("{")]
        try:  # ... or its last JSON line, after other output
            return wall, json.loads(lines[-1])
        except (IndexError, ValueError):
            raise RuntimeError(f"{' '.join(cmd)} printed no JSON:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def run_attache(self, root: Path, cache: Path, manifest: Path | None) -> dict:
        cmd = [str(self.attache), "hash", str(root), "--json"]
        if manifest:
            cmd[3:3] = ["-o", str(manifest)]
        wall, out = self.timed(cmd, env={"ATTACHE_CACHE__DIR": str(cache)})
        return {"wall": wall, "seconds": wall, "reported_seconds": out.get("seconds"), "out": out,
                "files": out.get("files"), "bytes": out.get("bytes"),
                "hashed_files": out.get("hashed_files"), "cached_files": out.get("cached_files"),
                "manifest_hash": (out.get("roots") or [{}])[0].get("manifest_hash")}

    def run_official(self, root: Path, cache: Path, manifest: Path | None) -> dict:
        cmd = [self.deadline_py, str(HERE / "official_hash.py"), str(root), "--cache-dir", str(cache)]
        if manifest:
            cmd += ["-o", str(manifest)]
        wall, out = self.timed(cmd)
        # seconds = the client's own in-process time (walk+group+hash+encode), no interpreter
        # start-up or imports: this favours the official client.
        return {"wall": wall, "seconds": out["seconds"], "reported_seconds": out["seconds"],
                "out": out, "files": out["files"], "bytes": out["bytes"],
                "hashed_files": out["hashed_files"], "cached_files": out["cached_files"],
                "manifest_hash": out["manifest_hash"]}

    def measure_tool(self, tool: str, tree: str, root: Path, info: dict, runs: int) -> list[dict]:
        """`runs` pairs of (cold hash cache, warm = second run on the same cache dir)."""
        fn = self.run_attache if tool == "attache" else self.run_official
        rows: dict[str, list[dict]] = {"cold": [], "warm": []}
        cache_root = self.bench_dir / "caches"
        cache_root.mkdir(parents=True, exist_ok=True)
        mdir = self.bench_dir / "manifests"
        mdir.mkdir(parents=True, exist_ok=True)
        for i in range(runs):
            cache = Path(tempfile.mkdtemp(prefix=f"{tool}-{tree}-", dir=cache_root))
            try:
                manifest = mdir / f"{tree}.{tool}.manifest" if i == 0 else None
                for phase in ("cold", "warm"):
                    r = fn(root, cache, manifest if phase == "cold" else None)
                    rows[phase].append(r)
                    log(f"{tree:>6} {tool:>8} {phase} run {i + 1}/{runs}: {r['seconds']:.3f} s "
                        f"(wall {r['wall']:.3f} s; hashed {r['hashed_files']}, cached {r['cached_files']})")
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        out = []
        for phase, rs in rows.items():
            out.append(self.summarize(tree, tool, phase, rs, info))
        return out

    def summarize(self, tree: str, tool: str, phase: str, rs: list[dict], info: dict) -> dict:
        nbytes, nfiles = info["bytes"], info["files"]
        secs = [r["seconds"] for r in rs]
        row = {
            "tree": tree, "tool": tool, "cache": phase, "runs": len(rs),
            "seconds": stats(secs),
            "wall_seconds": stats([r["wall"] for r in rs]),
            "reported_seconds": stats([r["reported_seconds"] for r in rs]),
            "gib_per_s": stats([nbytes / GIB / s for s in secs]),
            "files_per_s": stats([nfiles / s for s in secs]),
            "hashed_files": [r["hashed_files"] for r in rs],
            "cached_files": [r["cached_files"] for r in rs],
            "manifest_hash": rs[0]["manifest_hash"] if rs else None,
            "samples": [{k: v for k, v in r.items() if k != "out"} for r in rs],
        }
        # A measurement is only meaningful if the cache did what the label says.
        for r in rs:
            if r["files"] != nfiles or r["bytes"] != nbytes:
                self.problems.append(f"{tree} {tool} {phase}: reported {r['files']} files / "
                                     f"{r['bytes']} bytes, tree has {nfiles} / {nbytes}")
                break
        want_cached = nfiles if phase == "warm" else 0
        if any(r["cached_files"] != want_cached for r in rs):
            self.problems.append(f"{tree} {tool} {phase}: cached_files {row['cached_files']} "
                                 f"(expected {want_cached} each run)")
        return row

    # ---- raw ceilings ----------------------------------------------------------------------
    def raw(self, big: Path) -> list[dict]:
        rows = []
        _, x = self.timed([str(self.examples / "xxh3_speed"), "--size", "1GiB", "--runs", str(self.runs)])
        rows.append({"tree": "memory 1 GiB", "tool": "xxh3_speed", "cache": "-", "runs": self.runs,
                     "gib_per_s": stats(x["oneshot_runs_gib_per_s"]), "out": x})
        rows.append({"tree": "memory 1 GiB", "tool": "xxh3_speed (1 MiB updates)", "cache": "-",
                     "runs": self.runs, "gib_per_s": stats(x["streaming_runs_gib_per_s"]), "out": x})
        # One fresh process per run, as attache itself is run: a warm process reads faster.
        for extra, name in (([], "read_speed"), (["--hash"], "read_speed --hash (1 thread)"),
                            (["--hash", "--pipeline"], "read_speed --hash --pipeline (2 threads)"),
                            (["--hash", "--readers", "3"], "read_speed --hash --readers 3")):
            outs = [self.timed([str(self.examples / "read_speed"), str(big), "--runs", "1", *extra])[1]
                    for _ in range(self.runs)]
            rates = [o["gib_per_s"] for o in outs]
            g = stats(rates)
            rows.append({"tree": "big", "tool": name, "cache": "-", "runs": self.runs, "gib_per_s": g,
                         "seconds": stats([o["bytes"] / GIB / v for o, v in zip(outs, rates)]),
                         "out": outs})
            log(f"   big {name}: median {g['median']:.2f} GiB/s (best {g['max']:.2f})")
        log(f"xxh3_speed: median {rows[0]['gib_per_s']['median']:.2f} GiB/s one-shot, "
            f"{rows[1]['gib_per_s']['median']:.2f} streaming ({x.get('simd')})")
        return rows

    # ---- main ------------------------------------------------------------------------------
    def main(self) -> int:
        settle(env_int("SETTLE_MAX", 60))
        started = dt.datetime.now(dt.timezone.utc)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        machine = machine_snapshot()
        log(f"machine: {machine['nproc']} cpus, {machine['cpu_busy_pct']:.0f}% busy, "
            f"load {machine['loadavg']}, {machine['cpu']}")
        if machine["builds_running"]:
            log("WARNING: rustc is compiling right now; results will be noisy")

        if "attache" in self.tools and not os.access(self.attache, os.X_OK):
            raise SystemExit(f"hash_bench: no attache binary at {self.attache} (build first, or TOOLS=official,raw)")
        self.bench_dir.mkdir(parents=True, exist_ok=True)
        trees = {
            "big": (self.gen("big", ["--single", str(self.big_size)]), self.bench_dir / "big"),
            "tree": (self.gen(f"tree{self.tree_count}", ["--count", str(self.tree_count),
                              "--min-size", self.tree_min, "--max-size", self.tree_max]),
                     self.bench_dir / f"tree{self.tree_count}"),
        }
        for name, (info, root) in trees.items():
            log(f"warming page cache: {root} ({warm_page_cache(root):.1f} s)")

        rows: list[dict] = []
        if "raw" in self.tools:
            rows += self.raw(trees["big"][1] / "big.bin")
        for tree, (info, root) in trees.items():
            for tool in ("attache", "official"):
                if tool not in self.tools:
                    continue
                n = self.official_tree_runs if (tool == "official" and tree == "tree") else self.runs
                rows += self.measure_tool(tool, tree, root, info, n)

        # Cross-check: both tools must produce the same manifest bytes for the same tree.
        manifests = {}
        for tree in trees:
            a = self.bench_dir / "manifests" / f"{tree}.attache.manifest"
            o = self.bench_dir / "manifests" / f"{tree}.official.manifest"
            if "attache" in self.tools and "official" in self.tools:
                same = a.exists() and o.exists() and a.read_bytes() == o.read_bytes()
                manifests[tree] = same
                if not same:
                    self.problems.append(f"{tree}: attache manifest differs from the official one "
                                         f"({a} vs {o})")

        goals = self.goals(rows)
        finished = dt.datetime.now(dt.timezone.utc)
        result = {
            "bench": "hash", "started_utc": started.isoformat(), "finished_utc": finished.isoformat(),
            "config": {"runs": self.runs, "official_tree_runs": self.official_tree_runs,
                       "bench_dir": str(self.bench_dir), "big_size": self.big_size,
                       "tree_count": self.tree_count, "tree_min": self.tree_min,
                       "tree_max": self.tree_max, "seed": self.seed, "tools": sorted(self.tools)},
            "machine_at_start": machine,
            "machine_at_end": {"uptime": sh(["uptime"]), "cpu_busy_pct": cpu_busy_pct()},
            "versions": {
                "git": sh(["git", "-C", str(REPO), "describe", "--always", "--dirty"]) or None,
                "rustc": sh(["rustc", "--version"]),
                "attache": sh([str(self.attache), "--version"]) if os.access(self.attache, os.X_OK) else None,
                "deadline": sh([self.deadline_py, "-c", "import importlib.metadata as m; print(m.version('deadline'))"]),
            },
            "trees": {k: {**v[0], "root": str(v[1])} for k, v in trees.items()},
            "rows": rows, "manifests_identical": manifests, "goals": goals, "problems": self.problems,
        }
        md = self.markdown(result)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        jpath = self.results_dir / f"hash-{stamp}.json"
        mpath = self.results_dir / f"hash-{stamp}.md"
        jpath.write_text(json.dumps(result, indent=1) + "\n")
        mpath.write_text(md)
        print(md)
        log(f"wrote {jpath} and {mpath}")
        return 0

    def find(self, rows, tree, tool, cache):
        for r in rows:
            if r["tree"] == tree and r["tool"] == tool and r["cache"] == cache:
                return r
        return None

    def goals(self, rows: list[dict]) -> list[dict]:
        goals = []
        a_big = self.find(rows, "big", "attache", "cold")
        rd = self.find(rows, "big", "read_speed", "-")
        if a_big and rd:
            ratio = a_big["gib_per_s"]["median"] / rd["gib_per_s"]["median"]
            goals.append({"goal": "big file: attache (cold hash cache) >= 90% of read_speed",
                          "value": ratio, "shown": f"{ratio * 100:.0f}%",
                          "detail": f"{a_big['gib_per_s']['median']:.2f} vs {rd['gib_per_s']['median']:.2f} GiB/s (medians)",
                          "pass": ratio >= 0.90})
        pipe = self.find(rows, "big", "read_speed --hash --pipeline (2 threads)", "-")
        if a_big and pipe:
            ratio = a_big["gib_per_s"]["median"] / pipe["gib_per_s"]["median"]
            goals.append({"goal": "(info) big file: attache vs 2-thread read+hash pipeline",
                          "value": ratio, "shown": f"{ratio * 100:.0f}%",
                          "detail": f"{a_big['gib_per_s']['median']:.2f} vs {pipe['gib_per_s']['median']:.2f} GiB/s (medians)",
                          "pass": None})
        a_w = self.find(rows, "tree", "attache", "warm")
        o_w = self.find(rows, "tree", "official", "warm")
        if a_w and o_w:
            ratio = o_w["seconds"]["median"] / a_w["seconds"]["median"]
            goals.append({"goal": "many-file tree, warm hash cache: attache >= 20x faster than official",
                          "value": ratio, "shown": f"{ratio:.1f}x",
                          "detail": f"{o_w['seconds']['median']:.3f} s vs {a_w['seconds']['median']:.3f} s (medians)",
                          "pass": ratio >= 20})
        return goals

    def markdown(self, res: dict) -> str:
        def pct(v):
            return "?" if v is None else f"{v:.0f}%"

        m = res["machine_at_start"]
        t = res["trees"]
        c = res["config"]
        lines = [
            f"# Hash benchmark {res['started_utc'][:19]}Z",
            "",
            f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_total_gib']} GiB RAM, Linux {m['kernel']}",
            f"- at start: {pct(m['cpu_busy_pct'])} CPU busy over 1 s, `{m['uptime']}`"
            + ("  **(rustc was compiling)**" if m["builds_running"] else "")
            + ("  **(busy)**" if (m["cpu_busy_pct"] or 0) > 25 else ""),
            f"- at end: {pct(res['machine_at_end']['cpu_busy_pct'])} CPU busy over 1 s, `{res['machine_at_end']['uptime']}`",
            f"- versions: attache `{res['versions']['attache']}` (git {res['versions']['git']}), "
            f"{res['versions']['rustc']}, deadline {res['versions']['deadline']}",
            f"- trees: big = 1 file of {t['big']['bytes'] / GIB:.2f} GiB; tree = {t['tree']['files']} files "
            f"({c['tree_min']}-{c['tree_max']}), {t['tree']['bytes'] / GIB:.2f} GiB; page cache warm; seed {c['seed']}",
            f"- runs: {c['runs']} per row (official client on the many-file tree: {c['official_tree_runs']}); "
            "cold = fresh hash-cache dir, warm = second run on the same dir",
            "- attache seconds = process wall time; official seconds = its in-process walk+group+hash+encode "
            "time (no interpreter start-up or imports, favours it); GiB/s and files/s = tree size / seconds",
            "",
            "| tree | tool | hash cache | runs | seconds median (min-max) | GiB/s median (min-max) | files/s median | process wall s median | tool-reported s median |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]

        def rng(s, fmt):
            if not s:
                return "-"
            return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"

        for r in res["rows"]:
            files = r.get("files_per_s")
            wall = r.get("wall_seconds")
            files_s = f"{files['median']:,.0f}" if files else "-"
            wall_s = f"{wall['median']:.3f}" if wall else "-"
            rep = r.get("reported_seconds")
            rep_s = f"{rep['median']:.3f}" if rep else "-"
            lines.append(
                f"| {r['tree']} | {r['tool']} | {r['cache']} | {r['runs']} | {rng(r.get('seconds'), '.3f')} | "
                f"{rng(r.get('gib_per_s'), '.2f')} | {files_s} | {wall_s} | {rep_s} |")
        lines += ["", "## Goals", "", "| goal | result | detail | |", "|---|---:|---|---|"]
        for g in res["goals"]:
            lines.append(f"| {g['goal']} | {g['shown']} | {g['detail']} | {'info' if g['pass'] is None else 'PASS' if g['pass'] else '**FAIL**'} |")
        if not res["goals"]:
            lines.append("| (not computed: a tool was skipped) | | | |")
        if res["manifests_identical"]:
            lines += ["", "Manifests, attache vs official client: " + ", ".join(
                f"{k} {'identical' if v else '**DIFFERENT**'}" for k, v in res["manifests_identical"].items())]
        if res["problems"]:
            lines += ["", "## Problems", ""] + [f"- {p}" for p in res["problems"]]
        return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        sys.exit(Bench().main())
    except RuntimeError as e:
        print(f"hash_bench: {e}", file=sys.stderr)
        sys.exit(1)
