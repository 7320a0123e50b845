#!/usr/bin/env python3
"""Daemon API under load: 400 concurrent `GET /v1/jobs/{id}` while the daemon runs a transfer.

    bench/daemon_load.py [--clients 400] [--runs 3] [--size-mib 2048] [--bin target/release/attache]

For each run: start `attache daemon` on a temp socket with a fresh local store and cache,
submit a job that hashes and uploads one file of --size-mib MiB (to the local store, so disk
and CPU are the limits, not a network), and time it; then the same with --clients coroutines
each requesting the job's status in a loop (a new connection per request) until it ends.
Reports the transfer's seconds with and without load (median), its slowdown, and the request
latency p50/p99/max and count. Writes bench/results/daemon-load-<UTC>.json and .md.

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


async def one_run(sock, inputs, clients, max_seconds):
    spec = json.dumps({"kind": "submit", "inputs": [str(inputs)], "farm_id": "farm-1", "queue_id": "queue-1"}).encode()
    started = time.perf_counter()
    status, payload = await request(sock, "POST", "/v1/jobs", spec)
    assert status == 201, payload
    job_id = json.loads(payload)["id"]
    latencies = []
    done = asyncio.Event()

    async def client():
        deadline = time.perf_counter() + max_seconds
        while not done.is_set() and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            status, _ = await request(sock, "GET", f"/v1/jobs/{job_id}")
            latencies.append(time.perf_counter() - t0)
            assert status == 200

    async def watcher():
        deadline = time.perf_counter() + max_seconds
        while time.perf_counter() < deadline:
            if await job_state(sock, job_id) not in ("queued", "running"):
                break
            await asyncio.sleep(0.01)
        done.set()

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await watcher()
    seconds = time.perf_counter() - started
    await asyncio.gather(*tasks)
    state = await job_state(sock, job_id)
    assert state == "succeeded", state
    return seconds, latencies


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


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=400)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--bin", default=str(REPO / "target/release/attache"))
    a = ap.parse_args()
    top = pathlib.Path(tempfile.mkdtemp(prefix="attache-daemon-load."))
    data = top / "input"
    data.mkdir()
    with open(data / "big.bin", "wb") as f:
        chunk = os.urandom(1 << 20)
        for i in range(a.size_mib):
            f.write(chunk[: (1 << 20) - 8] + i.to_bytes(8, "little"))
    results = {"idle": [], "loaded": [], "latencies": []}
    try:
        for run in range(a.runs):
            for mode in ("idle", "loaded"):
                work = top / f"{mode}-{run}"
                work.mkdir()
                proc, sock = start_daemon(a.bin, work)
                try:
                    seconds, lat = asyncio.run(one_run(sock, data, a.clients if mode == "loaded" else 0, a.max_seconds))
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                results[mode].append(seconds)
                results["latencies"].extend(lat)
                print(f"run {run + 1} {mode}: transfer {seconds:.2f} s, {len(lat)} status requests", flush=True)
                shutil.rmtree(work / "store", ignore_errors=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    idle, loaded, lat = statistics.median(results["idle"]), statistics.median(results["loaded"]), results["latencies"]
    summary = {
        "clients": a.clients,
        "size_mib": a.size_mib,
        "runs": a.runs,
        "transfer_idle_s": results["idle"],
        "transfer_loaded_s": results["loaded"],
        "slowdown": loaded / idle - 1,
        "requests": len(lat),
        "latency_ms": {"p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3, "max": max(lat) * 1e3},
        "load_at_end": os.getloadavg(),
        "nproc": os.cpu_count(),
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = REPO / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"daemon-load-{stamp}.json").write_text(json.dumps(summary, indent=1))
    md = (
        f"# Daemon API under load {stamp}\n\n"
        f"- {a.clients} concurrent clients, each `GET /v1/jobs/{{id}}` in a loop (new connection per request)\n"
        f"- transfer: submit of one {a.size_mib} MiB file to a local store (hash + write), {a.runs} runs each way, "
        f"{os.cpu_count()} CPUs (the clients share them)\n\n"
        f"| | value |\n|---|---:|\n"
        f"| transfer, no API load (median) | {idle:.2f} s |\n"
        f"| transfer, {a.clients} clients polling (median) | {loaded:.2f} s |\n"
        f"| slowdown | {summary['slowdown'] * 100:.1f}% |\n"
        f"| status requests served | {len(lat)} |\n"
        f"| latency p50 / p99 / max | {summary['latency_ms']['p50']:.1f} / {summary['latency_ms']['p99']:.1f} / {summary['latency_ms']['max']:.1f} ms |\n"
    )
    (out / f"daemon-load-{stamp}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
