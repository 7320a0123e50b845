#!/usr/bin/env python3
"""How long a no-change put takes on a machine that is not an EC2 instance, with no region set.

  cargo build --release --examples && bench/startup_no_region.py [--runs 5] [--bin A --bin B ...]

An on-prem workstation or render node talks to an S3-compatible store (s3.endpoint_url) and
often has no region configured. The AWS SDK's default region chain then asks the EC2 instance
metadata service (IMDS), 4 attempts with 1 s timeouts, and its SSO and credential chains ask
again. Here "IMDS" is a local listener that accepts connections and never answers (as a
firewalled link-local address does after the connect; where the connect itself times out it
is no faster). For each binary: one put of 200 files to the test S3 server, then --runs
unchanged re-puts timed with and without s3.region. Results: a table on stdout, JSON and text
in bench/results/ (with --record). Every loop is bounded.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def silent_imds():
    """A listener that accepts and never replies; returns its URL."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    held = []

    def accept():
        while True:
            c, _ = s.accept()
            held.append(c)

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{s.getsockname()[1]}", held


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin", action="append", help="attache binaries (default: target/release/attache)")
    ap.add_argument("--server", default=str(REPO / "target/release/examples/s3_server"))
    ap.add_argument("--record", action="store_true", help="write bench/results/startup-no-region-<time>.{json,txt}")
    a = ap.parse_args()
    bins = a.bin or [str(REPO / "target/release/attache")]
    work = Path(tempfile.mkdtemp(prefix="attache-startup."))
    src = work / "src"
    for i in range(200):
        d = src / f"d{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(1000 + i))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ATTACHE_", "AWS_"))}
    server = subprocess.Popen([a.server, "--root", str(work / "s3")], stdout=subprocess.PIPE, env=base)
    info = json.loads(server.stdout.readline())
    imds, held = silent_imds()
    rows = []
    try:
        for n, binary in enumerate(bins):
            cache = work / f"cache{n}"
            env = dict(base)
            env.update({
                "HOME": str(work),  # no ~/.aws
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds,
                "ATTACHE_CACHE__DIR": str(cache),
                "ATTACHE_S3__ENDPOINT_URL": info["endpoint"],
                "ATTACHE_S3__FORCE_PATH_STYLE": "true",
                "ATTACHE_S3__ACCESS_KEY_ID": info["access_key"],
                "ATTACHE_S3__SECRET_ACCESS_KEY": info["secret_key"],
            })
            cmd = [binary, "put", str(src), "--store", f"s3://{info['bucket']}/p", "-o", os.devnull]
            subprocess.run(cmd, env=dict(env, ATTACHE_S3__REGION="us-east-1"), check=True,
                           capture_output=True, timeout=120)
            for label, extra in (("s3.region set", {"ATTACHE_S3__REGION": "us-east-1"}), ("no region", {})):
                times = []
                before = len(held)
                for _ in range(a.runs):
                    t0 = time.monotonic()
                    subprocess.run(cmd, env=dict(env, **extra), check=True, capture_output=True, timeout=120)
                    times.append(time.monotonic() - t0)
                rows.append({
                    "bin": binary, "case": label, "runs": times,
                    "median_s": statistics.median(times), "max_s": max(times),
                    "imds_connections": len(held) - before,
                })
    finally:
        server.terminate()
        server.wait(timeout=10)
    lines = [f"no-change put of 200 files, silent IMDS, {a.runs} runs each ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "", "| binary | case | median | max | IMDS connections |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['bin']} | {r['case']} | {r['median_s']:.3f} s | {r['max_s']:.3f} s | {r['imds_connections']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.record:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = REPO / "bench/results" / f"startup-no-region-{stamp}"
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
        out.with_suffix(".txt").write_text(text)
        print(f"recorded {out}.{{json,txt}}", file=sys.stderr)


if __name__ == "__main__":
    main()
