#!/usr/bin/env python3
"""Daemon API under load: 400 concurrent `GET /v1/jobs/{id}` while the daemon runs a transfer.

    bench/daemon_load.py [--clients 400] [--interval-ms 250] [--runs 3] [--size-mib 2048]
                         [--bin target/release/attache] [--load-bin target/release/examples/api_load]

For each run: start `attache daemon` on a temp socket with a fresh local store and cache,
submit a job that hashes and uploads one file of --size-mib MiB (to a local store on tmpfs,
/dev/shm, so CPU is the limit and no disk flush makes the time jitter), and time it; then the
same with --clients concurrent clients (examples/api_load.rs, compiled, so the generator's own
overhead stays small) each requesting the job's status on a new connection every
--interval-ms (0 = back to back) until it ends. Reports the transfer's seconds with and
without load (median), its slowdown, and the request latency p50/p99/max and count. Writes
bench/results/daemon-load-<UTC>.json and .md.

Every loop is bounded: clients stop when the job ends or after --max-seconds.
"""
import argparse
import asyncio
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


async def request(sock, method, path, body=b""):
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: attache\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), payload


async def job_state(sock, job_id):
    _, payload = await request(sock, "GET", f"/v1/jobs/{job_id}")
    return json.loads(payload)["state"]


def one_run(sock, inputs, a, loaded):
    spec = json.dumps({"kind": "submit", "inputs": [str(inputs)], "farm_id": "farm-1", "queue_id": "queue-1"}).encode()
    started = time.perf_counter()
    status, payload = asyncio.run(request(sock, "POST", "/v1/jobs", spec))
    assert status == 201, payload
    job_id = json.loads(payload)["id"]
    gen = None
    if loaded:
        gen = subprocess.Popen([a.load_bin, "--socket", sock, "--path", f"/v1/jobs/{job_id}",
                                "--clients", str(a.clients), "--interval-ms", str(a.interval_ms),
                                "--max-seconds", str(a.max_seconds)], stdout=subprocess.PIPE)
    deadline = time.perf_counter() + a.max_seconds
    while time.perf_counter() < deadline:
        if asyncio.run(job_state(sock, job_id)) not in ("queued", "running"):
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    load = json.loads(gen.communicate(timeout=a.max_seconds + 30)[0]) if gen else None
    state = asyncio.run(job_state(sock, job_id))
    assert state == "succeeded", state
    return seconds, load


def start_daemon(binary, work):
    cfg = work / "attache.toml"
    cfg.write_text(
        f'[store]\nurl = "file://{work}/store"\n[cache]\ndir = "{work}/cache"\n'
        f'[daemon]\nsocket = "{work}/run/attache.sock"\nstate_dir = "{work}/state"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHE_")}
    env["XDG_CONFIG_HOME"] = str(work / "no-config")
    proc = subprocess.Popen([binary, "--config", str(cfg), "daemon"], env=env, stderr=open(work / "daemon.log", "w"))
    sock = str(work / "run/attache.sock")
    for _ in range(400):
        if os.path.exists(sock):
            try:
                asyncio.run(request(sock, "GET", "/v1/health"))
                return proc, sock
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    sys.exit("daemon did not start; see " + str(work / "daemon.log"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=400)
    ap.add_argument("--interval-ms", type=int, default=250,
                    help="each client's request period (0 = back to back)")
    ap.add_argument("--load-bin", default=str(REPO / "target/release/examples/api_load"))
    ap.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where input, store and state go (default /dev/shm: no disk jitter)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--bin", default=str(REPO / "target/release/attache"))
    a = ap.parse_args()
    top = pathlib.Path(tempfile.mkdtemp(prefix="attache-daemon-load.", dir=a.tmp))
    data = top / "input"
    data.mkdir()
    with open(data / "big.bin", "wb") as f:
        chunk = os.urandom(1 << 20)
        for i in range(a.size_mib):
            f.write(chunk[: (1 << 20) - 8] + i.to_bytes(8, "little"))
    results = {"idle": [], "loaded": [], "load": []}
    try:
        for run in range(a.runs):
            for mode in ("idle", "loaded"):
                work = top / f"{mode}-{run}"
                work.mkdir()
                proc, sock = start_daemon(a.bin, work)
                try:
                    seconds, load = one_run(sock, data, a, mode == "loaded")
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                results[mode].append(seconds)
                if load:
                    results["load"].append(load)
                print(f"run {run + 1} {mode}: transfer {seconds:.2f} s" + (f", load {json.dumps(load)}" if load else ""), flush=True)
                shutil.rmtree(work / "store", ignore_errors=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    idle, loaded = statistics.median(results["idle"]), statistics.median(results["loaded"])
    loads = results["load"]
    worst = {k: max(l[k] for l in loads) for k in ("p50_ms", "p99_ms", "max_ms")}
    summary = {
        "clients": a.clients,
        "interval_ms": a.interval_ms,
        "size_mib": a.size_mib,
        "runs": a.runs,
        "transfer_idle_s": results["idle"],
        "transfer_loaded_s": results["loaded"],
        "slowdown": loaded / idle - 1,
        "requests": sum(l["requests"] for l in loads),
        "errors": sum(l["errors"] for l in loads),
        "per_run": loads,
        "latency_ms_worst_run": worst,
        "load_at_end": os.getloadavg(),
        "nproc": os.cpu_count(),
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = REPO / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"daemon-load-{stamp}.json").write_text(json.dumps(summary, indent=1))
    md = (
        f"# Daemon API under load {stamp}\n\n"
        f"- {a.clients} concurrent clients (examples/api_load.rs), each `GET /v1/jobs/{{id}}` every {a.interval_ms} ms on a new connection\n"
        f"- transfer: submit of one {a.size_mib} MiB file to a local store on tmpfs (hash + write), {a.runs} runs each way, "
        f"{os.cpu_count()} CPUs (the clients share them)\n\n"
        f"| | value |\n|---|---:|\n"
        f"| transfer, no API load (median; runs) | {idle:.2f} s ({', '.join(f'{x:.2f}' for x in results['idle'])}) |\n"
        f"| transfer, {a.clients} clients polling (median; runs) | {loaded:.2f} s ({', '.join(f'{x:.2f}' for x in results['loaded'])}) |\n"
        f"| slowdown | {summary['slowdown'] * 100:.1f}% |\n"
        f"| status requests served (errors) | {summary['requests']} ({summary['errors']}) |\n"
        f"| latency p50 / p99 / max (worst run) | {worst['p50_ms']:.1f} / {worst['p99_ms']:.1f} / {worst['max_ms']:.1f} ms |\n"
    )
    (out / f"daemon-load-{stamp}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
