#!/usr/bin/env python3
"""SIGTERM to the daemon in the middle of a 4 GiB multipart upload: time until it exits.

  cargo build --release --examples && bench/daemon_sigterm.py [--runs 12] [--seed 1] [--dir DIR]

Starts the test S3 server (examples/s3_server.rs) with its data under --dir, writes a 4 GiB
random file there, and for each run starts `attache daemon` (a fresh bucket, cache and state
dir), submits the file as a job, sends SIGTERM at a seeded random point in [0.5, 14] s and
times the daemon's exit (goal: 1 s). The daemon aborts the multipart upload as it exits and
waits at most 0.5 s for the store to confirm; an upload still open a second later must be
recorded in its cache dir and aborted by the next put to the store (run and reported here). Put --dir on the disk under test (default: $TMPDIR). Each run's daemon log (debug) is
kept as DIR/daemon-N.log. Every loop is bounded.
"""
import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from daemon_api import request, wait_ready

REPO = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--bin", default=str(REPO / "target/release/attache"))
    ap.add_argument("--server", default=str(REPO / "target/release/examples/s3_server"))
    a = ap.parse_args()
    random.seed(a.seed)
    work = Path(tempfile.mkdtemp(prefix="attache-daemon-sigterm.", dir=a.dir))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHE_")}
    server = subprocess.Popen([a.server, "--root", str(work / "s3")], stdout=subprocess.PIPE, env=env)
    info = json.loads(server.stdout.readline())
    big = work / "big"
    with open(big, "wb") as f:
        for _ in range(4096):
            f.write(os.urandom(1 << 20))
    times = []
    try:
        for i in range(a.runs):
            run = work / f"run{i}"
            bucket = f"sigterm-{i}"
            urllib.request.urlopen(urllib.request.Request(f"{info['control']}/buckets/{bucket}", method="POST")).read()
            cfg = run / "attache.toml"
            run.mkdir()
            cfg.write_text(
                f'[store]\nurl = "s3://{bucket}/p"\n[cache]\ndir = "{run}/cache"\n'
                f'[daemon]\nsocket = "{run}/s.sock"\nstate_dir = "{run}/state"\n'
                f'[s3]\nendpoint_url = "{info["endpoint"]}"\nforce_path_style = true\nregion = "us-east-1"\n'
                f'access_key_id = "{info["access_key"]}"\nsecret_access_key = "{info["secret_key"]}"\n'
                f'[log]\nlevel = "info,attache=debug"\n')
            denv = dict(env, XDG_CONFIG_HOME=str(run / "no-config"))
            log = open(work / f"daemon-{i}.log", "w")
            d = subprocess.Popen([a.bin, "--config", str(cfg), "daemon"], env=denv, stderr=log)
            sock = str(run / "s.sock")
            wait_ready(sock)
            job = {"kind": "submit", "inputs": [str(big)], "farm_id": "farm-1", "queue_id": "queue-1"}
            request(sock, "POST", "/v1/jobs", json.dumps(job).encode())
            at = random.uniform(0.5, 14)
            time.sleep(at)
            t0 = time.monotonic()
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=60)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
            took = time.monotonic() - t0
            times.append(took)
            left = leftovers(a.bin, cfg, denv, info, run)
            print(f"run {i}: SIGTERM at {at:.2f} s -> exit {d.returncode} after {took:.3f} s"
                  f"{'  OVER 1 s' if took > 1 else ''}{left}", flush=True)
    finally:
        server.terminate()
        server.wait()
    print(f"{len(times)} runs: median {statistics.median(times):.3f} s, max {max(times):.3f} s, "
          f"over 1 s: {sum(t > 1 for t in times)}; logs in {work}")
    big.unlink()
    subprocess.run(["rm", "-rf", str(work / "s3")])


def stats(info):
    with urllib.request.urlopen(f"{info['control']}/stats") as r:
        return json.load(r)


def leftovers(bin, cfg, env, info, run):
    """Multipart uploads the daemon left open (their abort unconfirmed when it exited) must be
    recorded in its cache dir and aborted by the next upload to the store: a one-file put."""
    time.sleep(1)  # let the server finish an abort that was sent
    open_mpu = stats(info)["open_multipart_uploads"]
    if not open_mpu:
        return ""
    recorded = len(list((run / "cache" / "open-uploads").glob("*.json")))
    tiny = run / "tiny"
    tiny.mkdir()
    (tiny / "a.txt").write_text("a")
    subprocess.run([bin, "--config", str(cfg), "put", str(tiny), "-o", str(run / "tiny.manifest")],
                   env=env, stderr=subprocess.DEVNULL, timeout=60)
    after = stats(info)["open_multipart_uploads"]
    return (f"; {open_mpu} upload(s) left open, {recorded} recorded, {after} open after the "
            f"next put{'  NOT CLEANED' if after else ''}")


if __name__ == "__main__":
    sys.exit(main())
