#!/usr/bin/env python3
"""`attache check` against a store holding 205,000 objects: a HEAD per object against
listing the store's content, and what `--lookup auto` picks.

    bench/check_bench.py [--server garage|s3s] [--runs 3]

Uploads the huge-count tree (200,000 files of 0-4 KiB) and the small tree (5,000 files of
1-64 KiB) into one fresh bucket, then checks, each `--runs` times and each with
`--lookup head`, `list` and `auto`:

  - huge-count: 200,000 objects, nearly all of the bucket (listing's best case);
  - small: 5,000 objects, 2.4% of the bucket (a page of 1,000 keys holds about 24 of them);
  - sparse: 1,250 of the small files, 0.6% of the bucket (a page holds about 6: `auto`
    lists a first page per range, then asks with HEADs).

Records wall time, client CPU, peak RSS, the server's CPU and the requests each check sent
(from attache's report and the server's counters), and checks that every check passed.
Writes bench/results/check-<time>.json and .md. Run through bench/check_bench.sh, which
builds attache and installs Garage and the TCP_NODELAY shim first.
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
from transfer_bench import (  # noqa: E402  (bench/ is not a package)
    HERE, TREES, GarageServer, S3sServer, clean_env, fmt_spread, log, make_tree, med,
    run_measured)

CASES = ["huge-count", "small", "sparse"]
LOOKUPS = ["head", "list", "auto"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", choices=["garage", "s3s"], default="garage")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bench-dir", default=os.environ.get("BENCH_DIR", "/tmp/attache-bench"))
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--attache", default=os.environ.get("ATTACHE_BIN", ""))
    ap.add_argument("--examples", default=os.environ.get("EXAMPLES_DIR", ""))
    ap.add_argument("--shim", default=os.environ.get("NODELAY_SHIM", ""))
    args = ap.parse_args()
    bench_dir = Path(args.bench_dir)
    trees = {t: make_tree(bench_dir / "trees", t, TREES[t]) for t in ("huge-count", "small")}
    work = Path(tempfile.mkdtemp(prefix="check-", dir=bench_dir))
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if args.server == "garage":
        server = GarageServer(work, args.shim)
    else:
        server = S3sServer(work, str(Path(args.examples) / "s3_server"))
    records = []
    try:
        server.new_bucket("check")
        env = dict(clean_env(), ATTACHE_S3__ENDPOINT_URL=server.endpoint,
                   ATTACHE_S3__FORCE_PATH_STYLE="true", ATTACHE_S3__REGION=server.region,
                   ATTACHE_S3__ACCESS_KEY_ID=server.access_key,
                   ATTACHE_S3__SECRET_ACCESS_KEY=server.secret_key,
                   ATTACHE_STORE__URL="s3://check/p", ATTACHE_CACHE__DIR=str(work / "cache"))
        manifests = {}
        for case, tree, extra in [("huge-count", trees["huge-count"], []),
                                  ("small", trees["small"], []),
                                  ("sparse", trees["small"], ["--include", "d0[01]/**"])]:
            out = work / f"{case}.manifest"
            cmd = [args.attache, "put", str(tree), "-o", str(out)] + extra
            r = run_measured(cmd, env, work, f"put-{case}", server, timeout=3600)
            log(f"put {case}: {r['wall']:.1f} s")
            manifests[case] = out
        for run in range(args.runs):
            for case in CASES:
                for lookup in LOOKUPS:
                    name = f"check-{case}-{lookup}-{run}"
                    cmd = [args.attache, "check", "--json", "--lookup", lookup,
                           str(manifests[case])]
                    r = run_measured(cmd, env, work, name, server)
                    report = json.loads((work / f"{name}.out").read_text())
                    if not report["passed"]:
                        raise RuntimeError(f"{name}: the check failed: {report}")
                    r.update(case=case, lookup=lookup, run=run, objects=report["objects"],
                             list_requests=report["list_requests"],
                             head_requests=report["head_requests"])
                    records.append(r)
                    log(f"{name}: {r['wall']:.2f} s, {r['list_requests']} pages, "
                        f"{r['head_requests']} HEADs, server CPU {r['server_cpu']:.2f} s")
    finally:
        server.stop()
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    meta = {"started": started, "server": server.setup, "runs": args.runs,
            "load": Path("/proc/loadavg").read_text().split()[0],
            "attache": os.popen(f"{args.attache} --version").read().strip()}
    (results / f"check-{started}.json").write_text(
        json.dumps({"meta": meta, "records": records}, indent=1))
    lines = [f"# attache check, {started}", "",
             f"{meta['attache']}; {meta['server']}; {args.runs} runs; load at the end "
             f"{meta['load']}. One bucket of 205,000 objects.", "",
             "| case | objects | lookup | wall | client CPU | peak RSS | server CPU | "
             "LIST | HEAD |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for case in CASES:
        for lookup in LOOKUPS:
            rs = [r for r in records if r["case"] == case and r["lookup"] == lookup]
            lines.append(
                f"| {case} | {rs[0]['objects']} | {lookup} | {fmt_spread([r['wall'] for r in rs])}"
                f" | {med([r['cpu'] for r in rs]):.2f} s | {med([r['rss_mib'] for r in rs]):.0f} MiB"
                f" | {med([r['server_cpu'] for r in rs]):.2f} s"
                f" | {med([r['list_requests'] for r in rs]):.0f}"
                f" | {med([r['head_requests'] for r in rs]):.0f} |")
    (results / f"check-{started}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
