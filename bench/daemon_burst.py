#!/usr/bin/env python3
"""A burst of submissions arriving at a daemon together: its peak memory and the time until
the last one is done, with `daemon.max_running_jobs` at its default and set so high that every
job runs at once (what every daemon did before the cap).

    bench/daemon_burst.py ATTACHE_BIN [--jobs 50] [--files 400] [--size 16384] [--caps 8,1000]

Each variant gets a fresh daemon (file:// store and cache in a temp dir, its own socket) and
JOBS distinct trees of FILES random files of SIZE bytes, all submitted at once through the
API; the daemon's RSS is sampled every 20 ms until every job has ended. Stops by itself.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_api import daemon_config, request, rss_kib, start_daemon, wait_ready  # noqa: E402


def run_variant(binary: str, cap: int, jobs: int, files: int, size: int) -> None:
    with tempfile.TemporaryDirectory(prefix="attache-burst-") as d:
        d = Path(d)
        for j in range(jobs):
            tree = d / f"t{j}"
            tree.mkdir()
            for i in range(files):
                (tree / f"f{i}.bin").write_bytes(os.urandom(size))
        config, sock = daemon_config(d, f"max_running_jobs = {cap}\n")
        daemon = start_daemon(binary, config, d / "daemon.log")
        try:
            wait_ready(str(sock))
            idle = rss_kib(daemon.pid)
            peak = [idle]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], rss_kib(daemon.pid))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            t0 = time.monotonic()
            ids = []
            for j in range(jobs):
                spec = {"kind": "submit", "inputs": [str(d / f"t{j}")], "farm_id": "farm-1",
                        "queue_id": "queue-1"}
                ids.append(json.loads(request(str(sock), "POST", "/v1/jobs",
                                              json.dumps(spec).encode()))["id"])
            states = []
            while True:
                states = [json.loads(request(str(sock), "GET", f"/v1/jobs/{i}"))["state"]
                          for i in ids]
                if all(s not in ("queued", "running") for s in states):
                    break
                time.sleep(0.05)
            took = time.monotonic() - t0
            done.set()
            sampler.join()
            bad = [s for s in states if s != "succeeded"]
            if bad:
                sys.exit(f"jobs ended {set(bad)}; see {d / 'daemon.log'}")
            print(f"max_running_jobs={cap:<5} {jobs} submits of {files} x {size} B at once: "
                  f"all done in {took:5.2f} s, daemon peak RSS {peak[0] / 1024:6.1f} MiB "
                  f"(idle before {idle / 1024:.1f} MiB)", flush=True)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("attache")
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--caps", default="8,1000",
                    help="daemon.max_running_jobs values, comma-separated (default: 8, and 1000)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each cap, alternating")
    a = ap.parse_args()
    for _ in range(a.rounds):
        for cap in (int(c) for c in a.caps.split(",")):
            run_variant(a.attache, cap, a.jobs, a.files, a.size)


if __name__ == "__main__":
    main()
