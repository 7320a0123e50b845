#!/usr/bin/env python3
"""A daemon's job history as it runs many jobs: memory, records on disk, `GET /v1/jobs`, and the
time to start again, with `daemon.jobs_kept` at its default and with it set so high that
nothing is forgotten (what every daemon did before the history was bounded).

    bench/daemon_history.py ATTACHE_BIN [--jobs 5000] [--every 1000] [--kept 1000,10000000]

Each variant gets a fresh daemon (file:// store, its own state dir) that runs JOBS small
submits one after the other (a 3-file tree; the same tree each time, so each job hashes from
its cache and publishes one manifest: the job's own cost is small and the history's shows).
Every EVERY jobs it prints the daemon's RSS, the job records in state_dir, and the size and
time of `GET /v1/jobs`; at the end it restarts the daemon and times it until it answers.
Stops by itself; listens on a Unix socket in a temp dir only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_api import daemon_config, request, rss_kib, start_daemon, wait_ready  # noqa: E402


def rss_mib(pid: int) -> float:
    return rss_kib(pid) / 1024


def run_variant(binary: str, kept: int, jobs: int, every: int) -> None:
    with tempfile.TemporaryDirectory(prefix="attache-history-") as d:
        d = Path(d)
        tree = d / "proj"
        (tree / "tex").mkdir(parents=True)
        for i in range(3):
            (tree / "tex" / f"t{i}.exr").write_bytes(os.urandom(4096))
        config, sock = daemon_config(d, f'jobs_kept = {kept}\njobs_kept_for = "0"\n')
        daemon = start_daemon(binary, config, d / "daemon.log")
        try:
            wait_ready(str(sock))
            spec = json.dumps({"kind": "submit", "inputs": [str(tree)], "farm_id": "farm-1",
                               "queue_id": "queue-1"}).encode()
            t0 = time.monotonic()
            for n in range(1, jobs + 1):
                job = json.loads(request(str(sock), "POST", "/v1/jobs", spec))
                while True:
                    state = json.loads(request(str(sock), "GET", f"/v1/jobs/{job['id']}"))["state"]
                    if state not in ("queued", "running"):
                        break
                    time.sleep(0.002)
                if state != "succeeded":
                    sys.exit(f"job {job['id']} {state}; see {d / 'daemon.log'}")
                if n % every == 0 or n == jobs:
                    t = time.monotonic()
                    listing = request(str(sock), "GET", "/v1/jobs")
                    took = time.monotonic() - t
                    records = len(list((d / "state" / "jobs").glob("*.json")))
                    print(f"jobs_kept={kept:<9} after {n:>6} jobs ({time.monotonic() - t0:6.1f} s): "
                          f"daemon RSS {rss_mib(daemon.pid):6.1f} MiB, {records:>6} records in state_dir, "
                          f"GET /v1/jobs {len(listing) / 1048576:6.2f} MiB in {took * 1000:7.1f} ms",
                          flush=True)
            daemon.terminate()
            daemon.wait(timeout=30)
            t = time.monotonic()
            daemon = start_daemon(binary, config, d / "daemon.log")
            wait_ready(str(sock), 120)
            print(f"jobs_kept={kept:<9} restart until it answers: {time.monotonic() - t:.2f} s, "
                  f"RSS then {rss_mib(daemon.pid):.1f} MiB", flush=True)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("attache")
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--kept", default="1000,10000000",
                    help="daemon.jobs_kept values, comma-separated (default: the default, and all)")
    a = ap.parse_args()
    for kept in (int(k) for k in a.kept.split(",")):
        run_variant(a.attache, kept, a.jobs, a.every)


if __name__ == "__main__":
    main()
